/*
 * Layers of any kind: Linear (y = x W^T + b, W (out, in), row-major: x (rows, in), y (rows,
 * out)) and elementwise activations.
 */
#include <stdio.h>
#include <stdlib.h>

#include "model/layer.h"

typedef struct {
    ddp_layer base;
    int w, b; /* tensor ids: weight (out, in), bias (out) */
    size_t in, out;
    /* Weight-gradient rows per ready report, last rows first (0: the whole weight in one
     * report). Set on the first layer only: its gradients are final last, so slices let
     * most of its all-reduce overlap with the rest of its own backward. */
    size_t slice_rows;
} linear;

typedef struct {
    ddp_layer base;
    ddp_act act;
} activation;

ddp_status ddp_matmul_forward(ddp_model *m, const float *x, int w, int b, float *y, size_t rows,
                              size_t in, size_t out) {
    ddp_backend *be = ddp_model_backend(m);
    /* y (rows, out) = x (rows, in) . W^T (in, out) */
    DDP_CHECK(ddp_backend_gemm(be, 0, 1, (int)rows, (int)out, (int)in, 1.0f, x, (int)in,
                               ddp_model_w(m, w), (int)in, 0.0f, y, (int)out));
    DDP_CHECK(ddp_backend_bias_add(be, y, ddp_model_w(m, b), (int)rows, (int)out));
    return DDP_OK;
}

ddp_status ddp_matmul_backward(ddp_model *m, const float *x, const float *dy, int w, int b,
                               float *dx, size_t rows, size_t in, size_t out) {
    ddp_backend *be = ddp_model_backend(m);
    DDP_CHECK(ddp_grad_prepare_add(m, b));
    DDP_CHECK(ddp_backend_bias_grad(be, ddp_model_dw(m, b), dy, (int)rows, (int)out));
    DDP_CHECK(ddp_grad_done(m, b));
    /* dW (out, in) (+)= dy^T (out, rows) . x (rows, in): beta 0 on the first contribution of
     * a step, so the product is written and the stale buffer never read (BLAS). */
    DDP_CHECK(ddp_backend_gemm(be, 1, 0, (int)out, (int)in, (int)rows, 1.0f, dy, (int)out, x,
                               (int)in, ddp_grad_gemm_beta(m, w), ddp_model_dw(m, w), (int)in));
    DDP_CHECK(ddp_grad_done(m, w));
    /* dx (rows, in) = dy (rows, out) . W (out, in) */
    if (dx)
        DDP_CHECK(ddp_backend_gemm(be, 0, 0, (int)rows, (int)in, (int)out, 1.0f, dy, (int)out,
                                   ddp_model_w(m, w), (int)in, 0.0f, dx, (int)in));
    return DDP_OK;
}

/* ---- a linear map in row chunks ------------------------------------------------------- */

int ddp_matmul_parts_plan(ddp_model *m, ddp_matmul_parts *mp, size_t limit) {
    /* At least limit elements per chunk (a bucket closes once it holds that much). */
    size_t rows = limit ? (limit + mp->in - 1) / mp->in : mp->out;
    if (rows > mp->out) rows = mp->out;
    mp->rows = rows;
    ddp_model_chunk_rows(m, mp->w, rows);
    return (int)((mp->out + rows - 1) / rows);
}

void ddp_matmul_parts_cuts(ddp_model *m, const ddp_matmul_parts *mp, size_t *cuts, int *n,
                           int max) {
    size_t w0 = ddp_model_view(m, mp->w)->offset;
    for (size_t r = mp->rows; r < mp->out; r += mp->rows) {
        if (*n < max) cuts[*n] = w0 + r * mp->in;
        (*n)++;
    }
}

ddp_status ddp_matmul_parts_forward(ddp_model *m, ddp_layer *l, const ddp_matmul_parts *mp,
                                    const float *x, float *y, size_t rows, int begun) {
    ddp_backend *be = ddp_model_backend(m);
    const float *w = ddp_model_w(m, mp->w);
    int k = 0;
    for (size_t r0 = 0; r0 < mp->out; r0 += mp->rows, k++) {
        size_t n = mp->out - r0 < mp->rows ? mp->out - r0 : mp->rows;
        if (k > 0 || !begun) DDP_CHECK(ddp_layer_part(m, l, mp->part + k, DDP_UNIT_FORWARD_BEGIN));
        /* y[:, r0:r0+n] (rows, n) = x (rows, in) . W[r0:r0+n]^T (in, n) */
        DDP_CHECK(ddp_backend_gemm(be, 0, 1, (int)rows, (int)n, (int)mp->in, 1.0f, x, (int)mp->in,
                                   w + r0 * mp->in, (int)mp->in, 0.0f, y + r0, (int)mp->out));
        if (r0 + n == mp->out)
            DDP_CHECK(ddp_backend_bias_add(be, y, ddp_model_w(m, mp->b), (int)rows, (int)mp->out));
        DDP_CHECK(ddp_layer_part(m, l, mp->part + k, DDP_UNIT_FORWARD_END));
    }
    return DDP_OK;
}

ddp_status ddp_matmul_parts_backward(ddp_model *m, ddp_layer *l, const ddp_matmul_parts *mp,
                                     const float *x, const float *dy, float *dx, size_t rows,
                                     int keep_first) {
    ddp_backend *be = ddp_model_backend(m);
    int in = (int)mp->in, out = (int)mp->out, chunks = (int)((mp->out + mp->rows - 1) / mp->rows);
    DDP_CHECK(ddp_grad_prepare_add(m, mp->b));
    DDP_CHECK(ddp_backend_bias_grad(be, ddp_model_dw(m, mp->b), dy, (int)rows, out));
    DDP_CHECK(ddp_grad_done(m, mp->b));
    /* dW rows [r0, r0 + n) (+)= dy[:, r0:r0+n]^T (n, rows) . x (rows, in), the last rows
     * first (as backward reports the buffer, from its end). */
    float beta = ddp_grad_gemm_beta(m, mp->w);
    for (int k = chunks - 1; k >= 0; k--) {
        size_t r0 = (size_t)k * mp->rows, n = mp->out - r0 < mp->rows ? mp->out - r0 : mp->rows;
        DDP_CHECK(ddp_backend_gemm(be, 1, 0, (int)n, in, (int)rows, 1.0f, dy + r0, out, x, in, beta,
                                   ddp_model_dw(m, mp->w) + r0 * mp->in, in));
        if (chunks > 1) DDP_CHECK(ddp_grad_report_part(m, mp->w, r0 * mp->in, n * mp->in));
    }
    if (chunks > 1)
        ddp_grad_done_reported(m, mp->w);
    else
        DDP_CHECK(ddp_grad_done(m, mp->w));
    /* dx (rows, in) = sum over chunks of dy[:, r0:r0+n] (rows, n) . W[r0:r0+n] (n, in) */
    for (int k = chunks - 1; k >= 0; k--) {
        size_t r0 = (size_t)k * mp->rows, n = mp->out - r0 < mp->rows ? mp->out - r0 : mp->rows;
        DDP_CHECK(ddp_layer_part(m, l, mp->part + k, DDP_UNIT_BACKWARD_BEGIN));
        if (dx)
            DDP_CHECK(ddp_backend_gemm(be, 0, 0, (int)rows, in, (int)n, 1.0f, dy + r0, out,
                                       ddp_model_w(m, mp->w) + r0 * mp->in, in,
                                       k == chunks - 1 ? 0.0f : 1.0f, dx, in));
        if (k > 0 || !keep_first)
            DDP_CHECK(ddp_layer_part(m, l, mp->part + k, DDP_UNIT_BACKWARD_END));
    }
    return DDP_OK;
}

static ddp_status linear_forward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                                 float *y) {
    linear *L = (linear *)l;
    DDP_CHECK(ddp_matmul_forward(m, x, L->w, L->b, y, p->n * p->t, L->in, L->out));
    return DDP_OK;
}

/* dW rows [r0, r1) (r1 - r0, in) (+)= dy[:, r0:r1]^T (r1 - r0, rows) . x (rows, in) */
static ddp_status weight_grad_rows(linear *L, ddp_model *m, const float *x, const float *dy,
                                   int rows, float beta, size_t r0, size_t r1) {
    int in = (int)L->in, out = (int)L->out;
    DDP_CHECK(ddp_backend_gemm(ddp_model_backend(m), 1, 0, (int)(r1 - r0), in, rows, 1.0f, dy + r0,
                               out, x, in, beta, ddp_model_dw(m, L->w) + r0 * L->in, in));
    return DDP_OK;
}

static ddp_status linear_backward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                                  const float *y, const float *dy, float *dx) {
    linear *L = (linear *)l;
    ddp_backend *b = ddp_model_backend(m);
    int rows = (int)(p->n * p->t), in = (int)L->in, out = (int)L->out;
    if (L->slice_rows == 0 || L->slice_rows >= L->out) {
        DDP_CHECK(ddp_matmul_backward(m, x, dy, L->w, L->b, dx, (size_t)rows, L->in, L->out));
        return DDP_OK;
    }
    DDP_CHECK(ddp_grad_prepare_add(m, L->b));
    DDP_CHECK(ddp_backend_bias_grad(b, ddp_model_dw(m, L->b), dy, rows, out));
    DDP_CHECK(ddp_grad_done(m, L->b));
    /* Slices from the last rows down: each report extends the final tail of the flat
     * buffer. */
    float beta = ddp_grad_gemm_beta(m, L->w);
    for (size_t r1 = L->out; r1 > 0;) {
        size_t r0 = r1 > L->slice_rows ? r1 - L->slice_rows : 0;
        DDP_CHECK(weight_grad_rows(L, m, x, dy, rows, beta, r0, r1));
        DDP_CHECK(ddp_grad_report_part(m, L->w, r0 * L->in, (r1 - r0) * L->in));
        r1 = r0;
    }
    ddp_grad_done_reported(m, L->w);
    if (dx) {
        /* dx (rows, in) = dy (rows, out) . W (out, in) */
        DDP_CHECK(ddp_backend_gemm(b, 0, 0, rows, in, out, 1.0f, dy, out, ddp_model_w(m, L->w), in,
                                   0.0f, dx, in));
    }
    return DDP_OK;
}

static const ddp_layer_ops linear_ops = {"linear", linear_forward, linear_backward, NULL, NULL};

ddp_status ddp_layer_linear_create(ddp_model *m, const char *name, const char *param_prefix,
                                   size_t in, size_t out, ddp_init weight_init, ddp_layer **out_l) {
    linear *L = calloc(1, sizeof *L);
    if (!L) return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
    L->base.ops = &linear_ops;
    snprintf(L->base.name, sizeof L->base.name, "%s", name);
    L->base.in_per_pos = in;
    L->base.out_per_pos = out;
    L->in = in;
    L->out = out;
    char pname[64];
    size_t wshape[2] = {out, in}, bshape[1] = {out};
    snprintf(pname, sizeof pname, "%s.weight", param_prefix);
    ddp_status s = ddp_model_add_param(m, pname, 2, wshape, weight_init, 1, &L->w);
    snprintf(pname, sizeof pname, "%s.bias", param_prefix);
    if (s == DDP_OK)
        s = ddp_model_add_param(m, pname, 1, bshape, (ddp_init){DDP_INIT_ZERO, 0.0f}, 0, &L->b);
    if (s != DDP_OK) {
        free(L);
        DDP_CHECK(s);
    }
    ddp_model_products_only(m, L->w);
    ddp_model_add_product(m, 1, (int)out, (int)in);
    if (out_l) *out_l = &L->base;
    DDP_CHECK(ddp_model_add_layer(m, &L->base));
    return DDP_OK;
}

int ddp_layer_is_linear(const ddp_layer *l) { return l->ops == &linear_ops; }
void ddp_layer_linear_set_slices(ddp_layer *l, size_t rows) { ((linear *)l)->slice_rows = rows; }
size_t ddp_layer_linear_slice_rows(const ddp_layer *l) { return ((const linear *)l)->slice_rows; }
int ddp_layer_linear_weight(const ddp_layer *l) { return ((const linear *)l)->w; }
int ddp_layer_linear_bias(const ddp_layer *l) { return ((const linear *)l)->b; }
size_t ddp_layer_linear_out(const ddp_layer *l) { return ((const linear *)l)->out; }

static ddp_status act_forward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                              float *y) {
    DDP_CHECK(ddp_backend_act_forward(ddp_model_backend(m), ((activation *)l)->act, x, y,
                                      p->n * p->t * l->out_per_pos));
    return DDP_OK;
}

static ddp_status act_backward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                               const float *y, const float *dy, float *dx) {
    if (dx)
        DDP_CHECK(ddp_backend_act_backward(ddp_model_backend(m), ((activation *)l)->act, x, dy, dx,
                                           p->n * p->t * l->out_per_pos));
    return DDP_OK;
}

static const ddp_layer_ops act_ops = {"activation", act_forward, act_backward, NULL, NULL};

ddp_status ddp_layer_activation_create(ddp_model *m, const char *name, ddp_act act, size_t dim,
                                       ddp_layer **out_l) {
    activation *a = calloc(1, sizeof *a);
    if (!a) return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
    a->base.ops = &act_ops;
    snprintf(a->base.name, sizeof a->base.name, "%s", name);
    a->base.in_per_pos = dim;
    a->base.out_per_pos = dim;
    a->act = act;
    if (out_l) *out_l = &a->base;
    DDP_CHECK(ddp_model_add_layer(m, &a->base));
    return DDP_OK;
}
