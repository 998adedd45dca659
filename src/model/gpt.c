/*
 * The GPT-2 language model: tokens (B, T) -> token + learned position embedding ->
 * L pre-norm blocks (x + attn(ln1(x)), then x + mlp(ln2(x)), with causal multi-head
 * self-attention and a 4x GELU MLP) -> final norm -> logits (B, T, V) through the token
 * embedding (tied output projection). The norms are LayerNorm, or RMSNorm with --norm. Tensor names
 * and shapes follow the usual PyTorch GPT-2 state dict (nn.Linear weights (out, in)), so an export
 * loads there.
 *
 * Initialization as GPT-2: weights normal(0, 0.02), the two projections that write into
 * the residual stream scaled by 1/sqrt(2 L), biases 0, LayerNorm weights 1. Its registry
 * entry: --layers, --dim, --heads, --ctx, --norm, the description "gpt L4 C256 H4 T128
 * V256" (" rmsnorm" after it with RMSNorm), a text (the vocabulary is the data's: 256
 * bytes).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/layer.h"

#define INIT_STD 0.02f

const char *const ddp_norm_names[] = {DDP_NORMS(DDP_X_NAME) NULL};

static const ddp_init init_zero = {DDP_INIT_ZERO, 0.0f};
static const ddp_init init_one = {DDP_INIT_ONE, 0.0f};

/* ---- token and position embedding ------------------------------------------------------ */

typedef struct {
    ddp_layer base;
    int wte, wpe; /* (V, C), (ctx, C) */
    int C;
} embed;

static ddp_status embed_forward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                                float *y) {
    embed *E = (embed *)l;
    DDP_CHECK(ddp_backend_encoder_forward(ddp_model_backend(m), y, p->batch->tokens,
                                          ddp_model_w(m, E->wte), ddp_model_w(m, E->wpe), (int)p->n,
                                          (int)p->t, E->C));
    return DDP_OK;
}

static ddp_status embed_backward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                                 const float *y, const float *dy, float *dx) {
    embed *E = (embed *)l;
    /* The output projection has written wte's gradient already (it runs first in
     * backward); this adds the embedding's part, the tensor's last contribution. */
    DDP_CHECK(ddp_grad_prepare_add(m, E->wte));
    DDP_CHECK(ddp_grad_prepare_add(m, E->wpe));
    DDP_CHECK(ddp_backend_encoder_backward(ddp_model_backend(m), ddp_model_dw(m, E->wte),
                                           ddp_model_dw(m, E->wpe), dy, p->batch->tokens, (int)p->n,
                                           (int)p->t, E->C));
    DDP_CHECK(ddp_grad_done(m, E->wpe));
    DDP_CHECK(ddp_grad_done(m, E->wte));
    return DDP_OK;
}

static const ddp_layer_ops embed_ops = {"embedding", embed_forward, embed_backward, NULL, NULL};

/* ---- normalization: LayerNorm or RMSNorm (--norm) --------------------------------------- */

/* A normalization over the channels and its tensors: weight (C), and LayerNorm's bias (C)
 * (-1 for RMSNorm, which has none). */
typedef struct {
    ddp_norm kind;
    int w, b;
} norm;

/* Declares prefix.name.weight (1) and, for LayerNorm, prefix.name.bias (0). */
static ddp_status norm_declare(ddp_model *m, const char *prefix, const char *name, size_t C,
                               ddp_norm kind, norm *n) {
    char full[128];
    size_t shape[1] = {C};
    n->kind = kind;
    n->b = -1;
    snprintf(full, sizeof full, "%s%s.weight", prefix, name);
    DDP_CHECK(ddp_model_add_param(m, full, 1, shape, init_one, 0, &n->w));
    if (kind == DDP_NORM_LAYERNORM) {
        snprintf(full, sizeof full, "%s%s.bias", prefix, name);
        DDP_CHECK(ddp_model_add_param(m, full, 1, shape, init_zero, 0, &n->b));
    }
    return DDP_OK;
}

/* out (rows, C) from inp; mean and rstd (rows) kept for the backward (RMSNorm leaves mean
 * alone). */
static ddp_status norm_forward(ddp_model *m, const norm *n, float *out, float *mean, float *rstd,
                               const float *inp, size_t rows, int C) {
    ddp_backend *b = ddp_model_backend(m);
    switch (n->kind) {
    case DDP_NORM_LAYERNORM:
        DDP_CHECK(ddp_backend_layernorm_forward(b, out, mean, rstd, inp, ddp_model_w(m, n->w),
                                                ddp_model_w(m, n->b), (int)rows, C));
        return DDP_OK;
    case DDP_NORM_RMSNORM:
        DDP_CHECK(
            ddp_backend_rmsnorm_forward(b, out, rstd, inp, ddp_model_w(m, n->w), (int)rows, C));
        return DDP_OK;
    case DDP_NORM_COUNT: break;
    }
    return DDP_FAIL(DDP_ERR_INVALID_ARG, "gpt: unknown normalization %d", (int)n->kind);
}

/* The backward adds its input gradient into dres (a residual stream's gradient) and its
 * parameter gradients into its tensors. */
static ddp_status norm_backward(ddp_model *m, const norm *n, float *dres, const float *dout,
                                const float *inp, const float *mean, const float *rstd, size_t rows,
                                int C) {
    ddp_backend *b = ddp_model_backend(m);
    DDP_CHECK(ddp_grad_prepare_add(m, n->w));
    switch (n->kind) {
    case DDP_NORM_LAYERNORM:
        DDP_CHECK(ddp_grad_prepare_add(m, n->b));
        DDP_CHECK(ddp_backend_layernorm_backward(b, dres, ddp_model_dw(m, n->w),
                                                 ddp_model_dw(m, n->b), dout, inp,
                                                 ddp_model_w(m, n->w), mean, rstd, (int)rows, C));
        DDP_CHECK(ddp_grad_done(m, n->b));
        break;
    case DDP_NORM_RMSNORM:
        DDP_CHECK(ddp_backend_rmsnorm_backward(b, dres, ddp_model_dw(m, n->w), dout, inp,
                                               ddp_model_w(m, n->w), rstd, (int)rows, C));
        break;
    case DDP_NORM_COUNT:
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "gpt: unknown normalization %d", (int)n->kind);
    }
    DDP_CHECK(ddp_grad_done(m, n->w));
    return DDP_OK;
}

/* ---- one transformer block ------------------------------------------------------------- */

/* Its parts (ddp_layer_ops.parts), in the order forward uses them: ln_1 with the first
 * chunk of the qkv map, its other chunks, the attention's projection, ln_2 with the first
 * chunk of the MLP's up map, its other chunks, the down map; each map's bias in its last
 * chunk's part. Whole maps unless the model cuts them (ddp_model_set_unit_limit). */
typedef struct {
    ddp_layer base;
    int C, NH, ctx;
    norm ln1, ln2;
    ddp_matmul_parts qkv, proj; /* attention half */
    ddp_matmul_parts fc, fcp;   /* MLP half */
} block;

/* The block's saved activations for a batch of `rows` positions of t each. */
typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd; /* (rows, C), (rows), (rows) */
    float *qkv;                       /* (rows, 3C) */
    float *att;                       /* (n, NH, t, t) */
    float *atty;                      /* (rows, C): attention output before its projection */
    float *res2;                      /* (rows, C): x + attention */
    float *ln2, *ln2_mean, *ln2_rstd; /* (rows, C), (rows), (rows) */
    float *fch, *fch_gelu;            /* (rows, 4C) each */
} block_acts;

static block_acts carve(block *K, const ddp_pass *p) {
    size_t rows = p->n * p->t, C = (size_t)K->C;
    float *s = K->base.saved;
    block_acts a;
    a.ln1 = s, s += rows * C;
    a.ln1_mean = s, s += rows;
    a.ln1_rstd = s, s += rows;
    a.qkv = s, s += rows * 3 * C;
    a.att = s, s += rows * (size_t)K->NH * p->t;
    a.atty = s, s += rows * C;
    a.res2 = s, s += rows * C;
    a.ln2 = s, s += rows * C;
    a.ln2_mean = s, s += rows;
    a.ln2_rstd = s, s += rows;
    a.fch = s, s += rows * 4 * C;
    a.fch_gelu = s;
    return a;
}

static ddp_status block_forward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                                float *y) {
    block *K = (block *)l;
    ddp_backend *b = ddp_model_backend(m);
    size_t rows = p->n * p->t, C = (size_t)K->C;
    block_acts a = carve(K, p);
    /* x + attn(ln1(x)) */
    DDP_CHECK(ddp_layer_part(m, l, K->qkv.part, DDP_UNIT_FORWARD_BEGIN));
    DDP_CHECK(norm_forward(m, &K->ln1, a.ln1, a.ln1_mean, a.ln1_rstd, x, rows, K->C));
    DDP_CHECK(ddp_matmul_parts_forward(m, l, &K->qkv, a.ln1, a.qkv, rows, 1));
    DDP_CHECK(ddp_backend_attention_forward(b, a.atty, a.att, a.qkv, l->scratch, (int)p->n,
                                            (int)p->t, K->C, K->NH));
    DDP_CHECK(ddp_matmul_parts_forward(m, l, &K->proj, a.atty, a.res2, rows, 0));
    DDP_CHECK(ddp_backend_add(b, a.res2, a.res2, x, rows * C));
    /* res2 + mlp(ln2(res2)) */
    DDP_CHECK(ddp_layer_part(m, l, K->fc.part, DDP_UNIT_FORWARD_BEGIN));
    DDP_CHECK(norm_forward(m, &K->ln2, a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, rows, K->C));
    DDP_CHECK(ddp_matmul_parts_forward(m, l, &K->fc, a.ln2, a.fch, rows, 1));
    DDP_CHECK(ddp_backend_act_forward(b, DDP_ACT_GELU, a.fch, a.fch_gelu, rows * 4 * C));
    DDP_CHECK(ddp_matmul_parts_forward(m, l, &K->fcp, a.fch_gelu, y, rows, 0));
    DDP_CHECK(ddp_backend_add(b, y, y, a.res2, rows * C));
    return DDP_OK;
}

/* The gradients go where the saved tensors that backward has finished with were: the MLP's
 * hidden gradient over fch_gelu, the attention's qkv gradient over fch, each (rows, C)
 * input gradient of a linear map over that map's input (ddp_matmul_parts_backward reads
 * its input before it writes the gradient); only attention's work is scratch. */
static ddp_status block_backward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                                 const float *y, const float *dy, float *dx) {
    block *K = (block *)l;
    ddp_backend *b = ddp_model_backend(m);
    size_t rows = p->n * p->t, C = (size_t)K->C;
    block_acts a = carve(K, p);
    float *d_fch = a.fch_gelu; /* (rows, 4C) */
    float *d_qkv = a.fch;      /* (rows, 3C) of (rows, 4C) */
    /* dx accumulates the gradient of the residual stream: y = res2 + mlp(..), so the
     * gradient of res2 starts as dy, and the two norms' input gradients add to it. */
    DDP_CHECK(ddp_backend_copy(b, dx, dy, rows * C * sizeof(float), DDP_COPY_D2D));
    DDP_CHECK(ddp_matmul_parts_backward(m, l, &K->fcp, a.fch_gelu, dy, d_fch, rows, 0));
    DDP_CHECK(ddp_backend_act_backward(b, DDP_ACT_GELU, a.fch, d_fch, d_fch, rows * 4 * C));
    DDP_CHECK(ddp_matmul_parts_backward(m, l, &K->fc, a.ln2, d_fch, a.ln2, rows, 1));
    DDP_CHECK(norm_backward(m, &K->ln2, dx, a.ln2, a.res2, a.ln2_mean, a.ln2_rstd, rows, K->C));
    DDP_CHECK(ddp_layer_part(m, l, K->fc.part, DDP_UNIT_BACKWARD_END));
    /* res2 = x + proj(atty): the gradient of x starts as that of res2 (in dx already). */
    DDP_CHECK(ddp_matmul_parts_backward(m, l, &K->proj, a.atty, dx, a.atty, rows, 0));
    DDP_CHECK(ddp_backend_attention_backward(b, d_qkv, a.atty, a.qkv, a.att, l->scratch, (int)p->n,
                                             (int)p->t, K->C, K->NH));
    DDP_CHECK(ddp_matmul_parts_backward(m, l, &K->qkv, a.ln1, d_qkv, a.ln1, rows, 1));
    DDP_CHECK(norm_backward(m, &K->ln1, dx, a.ln1, x, a.ln1_mean, a.ln1_rstd, rows, K->C));
    DDP_CHECK(ddp_layer_part(m, l, K->qkv.part, DDP_UNIT_BACKWARD_END));
    return DDP_OK;
}

/* The parts: each map's chunks (whole at limit 0), a cut where the projection, ln_2 and
 * the down map begin. */
static int block_parts(ddp_layer *l, ddp_model *m, size_t limit, size_t *cuts, int max) {
    block *K = (block *)l;
    ddp_matmul_parts *maps[4] = {&K->qkv, &K->proj, &K->fc, &K->fcp};
    int begins[4] = {-1, K->proj.w, K->ln2.w, K->fcp.w}; /* the first tensor of each part */
    int n = 0, parts = 0;
    for (int i = 0; i < 4; i++) {
        if (begins[i] >= 0) {
            if (n < max) cuts[n] = ddp_model_view(m, begins[i])->offset;
            n++;
        }
        maps[i]->part = parts;
        parts += ddp_matmul_parts_plan(m, maps[i], limit);
        ddp_matmul_parts_cuts(m, maps[i], cuts, &n, max);
    }
    return parts;
}

static const ddp_layer_ops block_ops = {"transformer block", block_forward, block_backward, NULL,
                                        block_parts};

/* ---- final norm ------------------------------------------------------------------------ */

typedef struct {
    ddp_layer base;
    norm n;
    int C;
} final_norm;

static ddp_status lnf_forward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                              float *y) {
    final_norm *N = (final_norm *)l;
    size_t rows = p->n * p->t;
    DDP_CHECK(norm_forward(m, &N->n, y, l->saved, l->saved + rows, x, rows, N->C));
    return DDP_OK;
}

static ddp_status lnf_backward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                               const float *y, const float *dy, float *dx) {
    final_norm *N = (final_norm *)l;
    size_t rows = p->n * p->t;
    /* The op adds into its input gradient; here nothing else does. */
    DDP_CHECK(ddp_backend_zero(ddp_model_backend(m), dx, rows * (size_t)N->C * sizeof(float)));
    DDP_CHECK(norm_backward(m, &N->n, dx, dy, x, l->saved, l->saved + rows, rows, N->C));
    return DDP_OK;
}

static const ddp_layer_ops lnf_ops = {"norm", lnf_forward, lnf_backward, NULL, NULL};

/* ---- output projection through the token embedding ------------------------------------- */

typedef struct {
    ddp_layer base;
    int wte, C, V;
} lm_head;

static ddp_status head_forward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                               float *y) {
    lm_head *H = (lm_head *)l;
    int rows = (int)(p->n * p->t);
    /* logits (rows, V) = x (rows, C) . wte^T (C, V) */
    DDP_CHECK(ddp_backend_gemm(ddp_model_backend(m), 0, 1, rows, H->V, H->C, 1.0f, x, H->C,
                               ddp_model_w(m, H->wte), H->C, 0.0f, y, H->V));
    return DDP_OK;
}

static ddp_status head_backward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                                const float *y, const float *dy, float *dx) {
    lm_head *H = (lm_head *)l;
    ddp_backend *b = ddp_model_backend(m);
    int rows = (int)(p->n * p->t);
    /* dwte (V, C) (+)= dlogits^T (V, rows) . x (rows, C): the first of wte's two
     * contributions; the embedding adds the other and reports it. */
    DDP_CHECK(ddp_backend_gemm(b, 1, 0, H->V, H->C, rows, 1.0f, dy, H->V, x, H->C,
                               ddp_grad_gemm_beta(m, H->wte), ddp_model_dw(m, H->wte), H->C));
    DDP_CHECK(ddp_grad_done(m, H->wte));
    /* dx (rows, C) = dlogits (rows, V) . wte (V, C) */
    DDP_CHECK(ddp_backend_gemm(b, 0, 0, rows, H->C, H->V, 1.0f, dy, H->V, ddp_model_w(m, H->wte),
                               H->C, 0.0f, dx, H->C));
    return DDP_OK;
}

static const ddp_layer_ops head_ops = {"output projection", head_forward, head_backward, NULL,
                                       NULL};

/* ---- the model ------------------------------------------------------------------------- */

/* Declares tensor `name` (prefix.name) of the given shape. */
static ddp_status param(ddp_model *m, const char *prefix, const char *name, size_t d0, size_t d1,
                        ddp_init init, int decay, int *id) {
    char full[128]; /* names are cut to a view's 64 bytes; none of ours is that long */
    snprintf(full, sizeof full, "%s%s", prefix, name);
    size_t shape[2] = {d0, d1};
    DDP_CHECK(ddp_model_add_param(m, full, d1 ? 2 : 1, shape, init, decay, id));
    return DDP_OK;
}

static ddp_status add_block(ddp_model *m, const ddp_model_spec *spec, int i) {
    size_t C = (size_t)spec->dim;
    block *K = calloc(1, sizeof *K);
    if (!K) return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
    K->base.ops = &block_ops;
    snprintf(K->base.name, sizeof K->base.name, "h%d", i);
    K->C = spec->dim;
    K->NH = spec->heads;
    K->ctx = spec->ctx;
    K->base.in_per_pos = C;
    K->base.out_per_pos = C;
    /* With recomputation each block is a block of its own: its output (the next one's
     * input) is kept, its saved tensors are recomputed. */
    K->base.segment_end = 1;
    /* ln1, mean, rstd, qkv, att, atty, res2, ln2, mean, rstd, fch, fch_gelu (carve()) */
    K->base.saved_per_pos = 15 * C + 4 + (size_t)spec->heads * (size_t)spec->ctx;
    /* attention's work (per position of a full context); backward's gradients live over
     * the saved tensors (block_backward) */
    K->base.scratch_per_pos =
        DDP_ATTENTION_WORK(1, spec->ctx, spec->dim, spec->heads) / (size_t)spec->ctx;
    char prefix[48];
    snprintf(prefix, sizeof prefix, "transformer.h.%d.", i);
    ddp_init w = {DDP_INIT_NORMAL, INIT_STD};
    ddp_init wres = {DDP_INIT_NORMAL, INIT_STD / sqrtf(2.0f * (float)spec->layers)};
    ddp_status s = DDP_OK;
    if (s == DDP_OK) s = norm_declare(m, prefix, "ln_1", C, spec->norm, &K->ln1);
    if (s == DDP_OK) s = param(m, prefix, "attn.c_attn.weight", 3 * C, C, w, 1, &K->qkv.w);
    if (s == DDP_OK) s = param(m, prefix, "attn.c_attn.bias", 3 * C, 0, init_zero, 0, &K->qkv.b);
    if (s == DDP_OK) s = param(m, prefix, "attn.c_proj.weight", C, C, wres, 1, &K->proj.w);
    if (s == DDP_OK) s = param(m, prefix, "attn.c_proj.bias", C, 0, init_zero, 0, &K->proj.b);
    if (s == DDP_OK) s = norm_declare(m, prefix, "ln_2", C, spec->norm, &K->ln2);
    if (s == DDP_OK) s = param(m, prefix, "mlp.c_fc.weight", 4 * C, C, w, 1, &K->fc.w);
    if (s == DDP_OK) s = param(m, prefix, "mlp.c_fc.bias", 4 * C, 0, init_zero, 0, &K->fc.b);
    if (s == DDP_OK) s = param(m, prefix, "mlp.c_proj.weight", C, 4 * C, wres, 1, &K->fcp.w);
    if (s == DDP_OK) s = param(m, prefix, "mlp.c_proj.bias", C, 0, init_zero, 0, &K->fcp.b);
    if (s != DDP_OK) {
        free(K);
        DDP_CHECK(s);
    }
    /* The four linear maps (out, in), whole until the model cuts them; their weights meet
     * nothing but products. */
    K->qkv.in = K->proj.in = K->fc.in = C;
    K->fcp.in = 4 * C;
    K->qkv.out = 3 * C;
    K->proj.out = K->fcp.out = C;
    K->fc.out = 4 * C;
    ddp_matmul_parts *maps[4] = {&K->qkv, &K->proj, &K->fc, &K->fcp};
    for (int k = 0; k < 4; k++) {
        maps[k]->rows = maps[k]->out;
        ddp_model_products_only(m, maps[k]->w);
    }
    /* Per sequence of a full context: the four linear maps (24 C^2 multiply-adds per
     * position, counted as 2 FLOPs each) and attention's two products over all ctx
     * positions. */
    int T = spec->ctx, Ci = spec->dim;
    ddp_model_add_product(m, T, 3 * Ci, Ci); /* qkv */
    ddp_model_add_product(m, T, Ci, Ci);     /* the attention's projection */
    ddp_model_add_product(m, T, 4 * Ci, Ci); /* the MLP's up projection */
    ddp_model_add_product(m, T, Ci, 4 * Ci); /* and down */
    ddp_model_add_flops(m, 4.0 * T * T * Ci);
    DDP_CHECK(ddp_model_add_layer(m, &K->base));
    return DDP_OK;
}

/* Every head takes dim / heads channels. */
static ddp_status check(const ddp_model_spec *spec) {
    if (spec->heads < 1 || spec->dim % spec->heads != 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--heads %d does not divide --dim %d: each head takes dim / heads "
                        "channels",
                        spec->heads, spec->dim);
    return DDP_OK;
}

static size_t positions(const ddp_model_spec *spec) {
    return spec->ctx > 0 ? (size_t)spec->ctx : 1;
}

/* The vocabulary is the data's classes (256 for bytes). */
static ddp_status build(ddp_model *m, const ddp_model_spec *spec, char *describe, size_t cap) {
    int vocab = spec->num_classes;
    if (spec->layers < 1 || spec->layers > 1024 || spec->dim < 1 || spec->dim > 65536 ||
        spec->heads < 1 || spec->dim % spec->heads != 0 || spec->ctx < 1 || spec->ctx > 65536 ||
        vocab < 2 || vocab > (1 << 24))
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "gpt: %d layers, width %d, %d heads, context %d, vocabulary %d: need "
                        "1..1024 layers, a width that the heads divide, a context of 1..65536 "
                        "and a vocabulary of 2 or more",
                        spec->layers, spec->dim, spec->heads, spec->ctx, vocab);
    if ((int)spec->norm < 0 || spec->norm >= DDP_NORM_COUNT)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "gpt: unknown normalization %d", (int)spec->norm);
    /* LayerNorm, the default, is not written: descriptions from before --norm still read. */
    snprintf(describe, cap, "gpt L%d C%d H%d T%d V%d%s%s", spec->layers, spec->dim, spec->heads,
             spec->ctx, vocab, spec->norm == DDP_NORM_LAYERNORM ? "" : " ",
             spec->norm == DDP_NORM_LAYERNORM ? "" : ddp_norm_names[spec->norm]);
    ddp_model_set_positions(m, (size_t)spec->ctx);
    size_t C = (size_t)spec->dim, V = (size_t)vocab;
    ddp_init w = {DDP_INIT_NORMAL, INIT_STD};

    embed *E = calloc(1, sizeof *E);
    if (!E) return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
    E->base.ops = &embed_ops;
    snprintf(E->base.name, sizeof E->base.name, "embedding");
    E->base.in_per_pos = 0; /* tokens */
    E->base.out_per_pos = C;
    E->base.segment_end = 1; /* the first block's input */
    E->C = spec->dim;
    ddp_status s = param(m, "transformer.", "wte.weight", V, C, w, 1, &E->wte);
    if (s == DDP_OK)
        s = param(m, "transformer.", "wpe.weight", (size_t)spec->ctx, C, w, 0, &E->wpe);
    if (s != DDP_OK) {
        free(E);
        DDP_CHECK(s);
    }
    DDP_CHECK(ddp_model_add_layer(m, &E->base));

    for (int i = 0; i < spec->layers; i++)
        DDP_CHECK(add_block(m, spec, i));

    final_norm *N = calloc(1, sizeof *N);
    if (!N) return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
    N->base.ops = &lnf_ops;
    snprintf(N->base.name, sizeof N->base.name, "ln_f");
    N->base.in_per_pos = C;
    N->base.out_per_pos = C;
    N->base.saved_per_pos = 2; /* mean, rstd */
    N->base.segment_end = 1;
    N->C = spec->dim;
    s = norm_declare(m, "transformer.", "ln_f", C, spec->norm, &N->n);
    if (s != DDP_OK) {
        free(N);
        DDP_CHECK(s);
    }
    DDP_CHECK(ddp_model_add_layer(m, &N->base));

    lm_head *H = calloc(1, sizeof *H);
    if (!H) return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
    H->base.ops = &head_ops;
    snprintf(H->base.name, sizeof H->base.name, "lm_head");
    H->base.in_per_pos = C;
    H->base.out_per_pos = V;
    H->wte = E->wte;
    H->C = spec->dim;
    H->V = vocab;
    ddp_model_share_param(m, E->wte);
    ddp_model_add_product(m, spec->ctx, (int)V, spec->dim);
    DDP_CHECK(ddp_model_add_layer(m, &H->base));
    return DDP_OK;
}

static ddp_status parse(const char *rest, ddp_model_spec *spec) {
    int used = 0;
    int ok = sscanf(rest, "L%d C%d H%d T%d V%d%n", &spec->layers, &spec->dim, &spec->heads,
                    &spec->ctx, &spec->num_classes, &used) == 5 &&
             spec->layers >= 1 && spec->dim >= 1 && spec->heads >= 1 && spec->ctx >= 1 &&
             spec->num_classes >= 2;
    spec->norm = DDP_NORM_LAYERNORM;
    if (ok && rest[used] == ' ') {
        /* Another norm than the default is named. */
        int k = ddp_enum_find(ddp_norm_names, rest + used + 1);
        ok = k > (int)DDP_NORM_LAYERNORM;
        if (ok) spec->norm = (ddp_norm)k;
    } else if (ok) {
        ok = rest[used] == '\0';
    }
    if (!ok)
        return DDP_FAIL(DDP_ERR_FORMAT, "a GPT is described as \"gpt L4 C256 H4 T128 V256\", "
                                        "followed by \" rmsnorm\" for RMSNorm");
    return DDP_OK;
}

static const ddp_opt options[] = {
    {.kind = DDP_OPT_HEADING, .help = "The GPT (--model gpt)"},
    {.name = "layers",
     .kind = DDP_OPT_INT,
     DDP_OPT_FIELD(ddp_model_spec, layers),
     .arg = "L",
     .help = "transformer blocks",
     .lo = 1,
     .hi = 1024,
     .def = "4"},
    {.name = "dim",
     .kind = DDP_OPT_INT,
     DDP_OPT_FIELD(ddp_model_spec, dim),
     .arg = "C",
     .help = "width",
     .lo = 1,
     .hi = 65536,
     .def = "256"},
    {.name = "heads",
     .kind = DDP_OPT_INT,
     DDP_OPT_FIELD(ddp_model_spec, heads),
     .arg = "H",
     .help = "attention heads, dividing the width",
     .lo = 1,
     .hi = 65536,
     .def = "4"},
    {.name = "ctx",
     .kind = DDP_OPT_INT,
     DDP_OPT_FIELD(ddp_model_spec, ctx),
     .arg = "T",
     .help = "context length in bytes",
     .lo = 2,
     .hi = 65536,
     .def = "128"},
    {.name = "norm",
     .kind = DDP_OPT_CHOICE,
     DDP_OPT_FIELD(ddp_model_spec, norm),
     .help = "the blocks' and the final normalization: LayerNorm, or\n"
             "RMSNorm (no mean removed, no bias)",
     .choices = ddp_norm_names,
     .def = "layernorm"},
};

const ddp_model_type ddp_model_type_gpt = {
    .summary = "a GPT language model on a text (--text)",
    .options = options,
    .n_options = sizeof options / sizeof *options,
    .data = DDP_DATA_TEXT,
    .check = check,
    .positions = positions,
    .build = build,
    .parse = parse,
};
