/*
 * The convolutional network: images (N, H, W, C), channels last, through stages of
 * conv (kernel k, padding k / 2, stride 1) -> batch norm -> ReLU -> 2 x 2 max pooling,
 * flattened in PyTorch's channel-major order (so the dense weights mean the same there),
 * then the MLP head. Parameters and buffers carry PyTorch's names and layouts:
 * "conv0.weight" (Cout, Cin, k, k), "bn0.weight", "bn0.running_mean", ..., "fc0.weight".
 *
 * Batch norm normalizes each batch with its own statistics in training (per micro-batch
 * under accumulation) and with the running statistics in evaluation. With a communicator
 * (ddp_model_set_comm: --sync-bn) the statistics are those of the global batch: forward
 * all-reduces per channel (sum, sum of squares) in one call, backward the two sums it
 * needs, as PyTorch's SyncBatchNorm does. Every rank trains on micro-batches of the same
 * size (the global batch is micro-batch x accumulation x ranks), so the global count is
 * this rank's rows times the ranks, known without asking: nothing is read back from the
 * device in the middle of a pass.
 *
 * Its registry entry: --channels, --kernel, --sync-bn and the dense head's --hidden and
 * --act, the description "cnn 28x28x1 conv32,64 k3 fc 3136-128-10 relu", labelled images.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/layer.h"

#define BN_EPS      1e-5f
#define BN_MOMENTUM 0.1f

static const ddp_init init_zero = {DDP_INIT_ZERO, 0.0f};
static const ddp_init init_one = {DDP_INIT_ONE, 0.0f};

/* ---- convolution ----------------------------------------------------------------------- */

typedef struct {
    ddp_layer base;
    int w, b;         /* (Cout, Cin, k, k), (Cout) */
    ddp_conv_shape s; /* N set per pass */
} conv;

static ddp_status conv_forward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                               float *y) {
    conv *K = (conv *)l;
    ddp_conv_shape s = K->s;
    s.N = (int)p->n;
    DDP_CHECK(ddp_backend_conv2d_forward(ddp_model_backend(m), y, x, ddp_model_w(m, K->w),
                                         ddp_model_w(m, K->b), l->scratch, &s));
    return DDP_OK;
}

static ddp_status conv_backward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                                const float *y, const float *dy, float *dx) {
    conv *K = (conv *)l;
    ddp_conv_shape s = K->s;
    s.N = (int)p->n;
    DDP_CHECK(ddp_grad_prepare_add(m, K->w));
    DDP_CHECK(ddp_grad_prepare_add(m, K->b));
    DDP_CHECK(ddp_backend_conv2d_backward(ddp_model_backend(m), dx, ddp_model_dw(m, K->w),
                                          ddp_model_dw(m, K->b), dy, x, ddp_model_w(m, K->w),
                                          l->scratch, &s));
    DDP_CHECK(ddp_grad_done(m, K->b));
    DDP_CHECK(ddp_grad_done(m, K->w));
    return DDP_OK;
}

static const ddp_layer_ops conv_ops = {"conv2d", conv_forward, conv_backward, NULL, NULL};

/* ---- batch normalization --------------------------------------------------------------- */

typedef struct {
    ddp_layer base;
    ddp_backend *backend;
    int gamma, beta;    /* (C) parameters */
    int running;        /* buffer "running_mean" (C), followed by "running_var" (C) */
    int C, hw;          /* channels, positions per image */
    float *mean, *rstd; /* (C) device: this batch's statistics, kept for the backward */
    double *sums;       /* (2C) device: sums over rows */
    double count;       /* rows behind the statistics of the last training forward */
} batchnorm;

/* Adds sums (n doubles, device) up over the ranks of the model's communicator. All ranks
 * of the communicator reach this in every training forward and backward of the layer. */
static ddp_status sum_over_ranks(ddp_model *m, double *sums, size_t n) {
    DDP_CHECK(ddp_comm_allreduce(ddp_model_comm(m), sums, n, DDP_F64, DDP_SUM));
    return DDP_OK;
}

static ddp_status bn_forward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                             float *y) {
    batchnorm *N = (batchnorm *)l;
    ddp_backend *b = N->backend;
    int rows = (int)(p->n * (size_t)N->hw), C = N->C;
    float *running = ddp_model_buf(m, N->running);
    if (p->recompute) {
        /* Again in backward: the statistics of the first forward, kept in mean and rstd.
         * The running statistics were updated once, and no rank communicates again (the
         * ranks' recomputations need not even agree on whether they happen). */
    } else if (!p->train) {
        /* Evaluation: the running statistics, left as they are. */
        DDP_CHECK(ddp_backend_bn_stats(b, N->mean, N->rstd, running, N->sums, 0.0, BN_EPS,
                                       BN_MOMENTUM, C));
    } else {
        DDP_CHECK(ddp_backend_bn_sums(b, N->sums, x, rows, C));
        double count = (double)rows;
        if (ddp_model_comm(m)) {
            DDP_CHECK(sum_over_ranks(m, N->sums, 2 * (size_t)C));
            count *= (double)ddp_comm_size(ddp_model_comm(m));
        }
        N->count = count;
        DDP_CHECK(ddp_backend_bn_stats(b, N->mean, N->rstd, running, N->sums, count, BN_EPS,
                                       BN_MOMENTUM, C));
    }
    DDP_CHECK(ddp_backend_bn_normalize(b, y, x, N->mean, N->rstd, ddp_model_w(m, N->gamma),
                                       ddp_model_w(m, N->beta), rows, C));
    return DDP_OK;
}

static ddp_status bn_backward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                              const float *y, const float *dy, float *dx) {
    batchnorm *N = (batchnorm *)l;
    ddp_backend *b = N->backend;
    int rows = (int)(p->n * (size_t)N->hw), C = N->C;
    /* This rank's share of the parameter gradients (the gradient all-reduce adds the
     * others'), and the sums the input gradient needs, over all ranks when synchronized. */
    DDP_CHECK(ddp_grad_prepare_add(m, N->gamma));
    DDP_CHECK(ddp_grad_prepare_add(m, N->beta));
    DDP_CHECK(ddp_backend_bn_backward_sums(b, N->sums, ddp_model_dw(m, N->gamma),
                                           ddp_model_dw(m, N->beta), dy, x, N->mean, N->rstd, rows,
                                           C));
    DDP_CHECK(ddp_grad_done(m, N->beta));
    DDP_CHECK(ddp_grad_done(m, N->gamma));
    if (ddp_model_comm(m)) DDP_CHECK(sum_over_ranks(m, N->sums, 2 * (size_t)C));
    if (dx)
        DDP_CHECK(ddp_backend_bn_backward_input(
            b, dx, dy, x, N->mean, N->rstd, ddp_model_w(m, N->gamma), N->sums, N->count, rows, C));
    return DDP_OK;
}

static void bn_destroy(ddp_layer *l) {
    batchnorm *N = (batchnorm *)l;
    ddp_backend_dealloc(N->backend, N->mean);
    ddp_backend_dealloc(N->backend, N->rstd);
    ddp_backend_dealloc(N->backend, N->sums);
}

static const ddp_layer_ops bn_ops = {"batchnorm", bn_forward, bn_backward, bn_destroy, NULL};

/* ---- max pooling and flatten ----------------------------------------------------------- */

typedef struct {
    ddp_layer base;
    ddp_pool_shape s; /* N set per pass */
} pool;

static ddp_status pool_forward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                               float *y) {
    pool *P = (pool *)l;
    ddp_pool_shape s = P->s;
    s.N = (int)p->n;
    /* The window maxima's indices, kept in the layer's saved floats (same size). */
    DDP_CHECK(ddp_backend_maxpool_forward(ddp_model_backend(m), y, (int32_t *)l->saved, x, &s));
    return DDP_OK;
}

static ddp_status pool_backward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                                const float *y, const float *dy, float *dx) {
    pool *P = (pool *)l;
    ddp_pool_shape s = P->s;
    s.N = (int)p->n;
    if (dx)
        DDP_CHECK(ddp_backend_maxpool_backward(ddp_model_backend(m), dx, dy,
                                               (const int32_t *)l->saved, &s));
    return DDP_OK;
}

static const ddp_layer_ops pool_ops = {"maxpool", pool_forward, pool_backward, NULL, NULL};

typedef struct {
    ddp_layer base;
    int hw, C;
} flatten;

static ddp_status flatten_forward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                                  float *y) {
    flatten *F = (flatten *)l;
    /* (N, H W, C) -> (N, C, H W): PyTorch's order of the flattened features. */
    DDP_CHECK(ddp_backend_transpose(ddp_model_backend(m), y, x, (int)p->n, F->hw, F->C));
    return DDP_OK;
}

static ddp_status flatten_backward(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                                   const float *y, const float *dy, float *dx) {
    flatten *F = (flatten *)l;
    if (dx) DDP_CHECK(ddp_backend_transpose(ddp_model_backend(m), dx, dy, (int)p->n, F->C, F->hw));
    return DDP_OK;
}

static const ddp_layer_ops flatten_ops = {"flatten", flatten_forward, flatten_backward, NULL, NULL};

/* ---- the model ------------------------------------------------------------------------- */

/* Allocates a layer struct of `size` bytes with its header filled in. */
static void *new_layer(size_t size, const ddp_layer_ops *ops, const char *name, size_t in,
                       size_t out) {
    ddp_layer *l = calloc(1, size);
    if (!l) return NULL;
    l->ops = ops;
    snprintf(l->name, sizeof l->name, "%s", name);
    l->in_per_pos = in;
    l->out_per_pos = out;
    return l;
}

/* One stage: conv -> batch norm -> ReLU -> max pool, from (H, W, Cin) to (H/2, W/2, Cout);
 * sync: the batch norm's statistics over all ranks. */
static ddp_status add_stage(ddp_model *m, int i, int *H, int *W, int Cin, int Cout, int k,
                            int sync) {
    char name[32];
    size_t hw = (size_t)*H * (size_t)*W;
    snprintf(name, sizeof name, "conv%d", i);
    conv *K = new_layer(sizeof *K, &conv_ops, name, hw * (size_t)Cin, hw * (size_t)Cout);
    if (!K) return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
    K->s = (ddp_conv_shape){
        .H = *H, .W = *W, .Cin = Cin, .Cout = Cout, .KH = k, .KW = k, .stride = 1, .pad = k / 2};
    ddp_conv_shape one = K->s;
    one.N = 1;
    K->base.scratch_per_pos = DDP_CONV_WORK(&one);
    char pname[48];
    size_t wshape[4] = {(size_t)Cout, (size_t)Cin, (size_t)k, (size_t)k},
           bshape[1] = {(size_t)Cout};
    snprintf(pname, sizeof pname, "conv%d.weight", i);
    ddp_status s =
        ddp_model_add_param(m, pname, 4, wshape, (ddp_init){DDP_INIT_HE_NORMAL, 0.0f}, 1, &K->w);
    snprintf(pname, sizeof pname, "conv%d.bias", i);
    if (s == DDP_OK) s = ddp_model_add_param(m, pname, 1, bshape, init_zero, 0, &K->b);
    if (s != DDP_OK) {
        free(K);
        DDP_CHECK(s);
    }
    ddp_model_add_product(m, (int)hw, Cout, Cin * k * k); /* as im2col's product */
    DDP_CHECK(ddp_model_add_layer(m, &K->base));

    snprintf(name, sizeof name, "bn%d", i);
    batchnorm *N = new_layer(sizeof *N, &bn_ops, name, hw * (size_t)Cout, hw * (size_t)Cout);
    if (!N) return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
    N->backend = ddp_model_backend(m);
    N->base.communicates = sync;
    N->C = Cout;
    N->hw = (int)hw;
    snprintf(pname, sizeof pname, "bn%d.weight", i);
    s = ddp_model_add_param(m, pname, 1, bshape, init_one, 0, &N->gamma);
    snprintf(pname, sizeof pname, "bn%d.bias", i);
    if (s == DDP_OK) s = ddp_model_add_param(m, pname, 1, bshape, init_zero, 0, &N->beta);
    int var;
    snprintf(pname, sizeof pname, "bn%d.running_mean", i);
    if (s == DDP_OK) s = ddp_model_add_buffer(m, pname, 1, bshape, init_zero, &N->running);
    snprintf(pname, sizeof pname, "bn%d.running_var", i);
    if (s == DDP_OK) s = ddp_model_add_buffer(m, pname, 1, bshape, init_one, &var);
    if (s == DDP_OK)
        s = ddp_backend_alloc(N->backend, (size_t)Cout * sizeof(float), (void **)&N->mean);
    if (s == DDP_OK)
        s = ddp_backend_alloc(N->backend, (size_t)Cout * sizeof(float), (void **)&N->rstd);
    if (s == DDP_OK)
        s = ddp_backend_alloc(N->backend, 2 * (size_t)Cout * sizeof(double), (void **)&N->sums);
    if (s != DDP_OK) {
        bn_destroy(&N->base);
        free(N);
        DDP_CHECK(s);
    }
    DDP_CHECK(ddp_model_add_layer(m, &N->base));

    snprintf(name, sizeof name, "relu%d", i);
    DDP_CHECK(ddp_layer_activation_create(m, name, DDP_ACT_RELU, hw * (size_t)Cout, NULL));

    snprintf(name, sizeof name, "pool%d", i);
    int Ho = ddp_conv_out(*H, 2, 2, 0), Wo = ddp_conv_out(*W, 2, 2, 0);
    size_t out = (size_t)Ho * (size_t)Wo * (size_t)Cout;
    pool *P = new_layer(sizeof *P, &pool_ops, name, hw * (size_t)Cout, out);
    if (!P) return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
    P->s = (ddp_pool_shape){.H = *H, .W = *W, .C = Cout, .K = 2, .stride = 2};
    P->base.saved_per_pos = out; /* int32 indices of the maxima */
    /* With recomputation a stage is one block: the pooled output is kept; the conv, batch
     * norm and ReLU outputs and the pooling indices are recomputed. */
    P->base.segment_end = 1;
    DDP_CHECK(ddp_model_add_layer(m, &P->base));
    *H = Ho;
    *W = Wo;
    return DDP_OK;
}

static ddp_status build(ddp_model *m, const ddp_model_spec *spec, char *describe, size_t cap) {
    int H = spec->height, W = spec->width, C = spec->channels, k = spec->kernel;
    if (H < 1 || W < 1 || C < 1)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "cnn: images of %dx%d with %d channels: the data must be images (IDX "
                        "files of rows x columns)",
                        H, W, C);
    const ddp_size_list *stages = &spec->conv;
    if (stages->n < 1 || stages->n > DDP_MAX_CONV || k < 1 || k % 2 == 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "cnn: %d convolution stages with kernel %d: need 1 to %d stages and an "
                        "odd kernel (so that padding k / 2 keeps the size)",
                        stages->n, k, DDP_MAX_CONV);
    int off = snprintf(describe, cap, "cnn %dx%dx%d conv", H, W, C);
    int Cin = C;
    for (int i = 0; i < stages->n; i++) {
        int Cout = (int)stages->v[i];
        if (stages->v[i] < 1 || stages->v[i] > 65536)
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "cnn: stage %d has %zu channels", i, stages->v[i]);
        if (H < 2 || W < 2 || H < k / 2 + 1 || W < k / 2 + 1)
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "cnn: stage %d gets images of %dx%d, too small for a %dx%d kernel "
                            "and 2 x 2 pooling: use fewer --channels stages",
                            i, H, W, k, k);
        DDP_CHECK(add_stage(m, i, &H, &W, Cin, Cout, k, spec->sync_bn));
        off += snprintf(describe + off, cap - (size_t)off, "%s%d", i ? "," : "", Cout);
        Cin = Cout;
    }
    size_t hw = (size_t)H * (size_t)W, features = hw * (size_t)Cin;
    flatten *F = new_layer(sizeof *F, &flatten_ops, "flatten", features, features);
    if (!F) return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
    F->hw = (int)hw;
    F->C = Cin;
    DDP_CHECK(ddp_model_add_layer(m, &F->base));
    off += snprintf(describe + off, cap - (size_t)off, " k%d fc ", k);
    DDP_CHECK(ddp_model_add_mlp_head(m, spec, features, describe + off, cap - (size_t)off));
    return DDP_OK;
}

/* "28x28x1 conv32,64 k3 fc 3136-128-10 relu": the image, the stages, the kernel, then the
 * dense head as the MLP describes its layers. */
static ddp_status parse(const char *rest, ddp_model_spec *spec) {
    int n = 0, k = 0, head = 0;
    if (sscanf(rest, "%dx%dx%d conv%n", &spec->height, &spec->width, &spec->channels, &n) != 3 ||
        n == 0)
        return DDP_FAIL(DDP_ERR_FORMAT, "a CNN's description starts with HxWxC conv");
    const char *p = rest + n;
    spec->conv.n = 0;
    while (spec->conv.n < DDP_MAX_CONV) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1) break;
        spec->conv.v[spec->conv.n++] = (size_t)v;
        p = end;
        if (*p != ',') break;
        p++;
    }
    if (spec->conv.n == 0 || sscanf(p, " k%d fc %n", &k, &head) != 1 || head == 0)
        return DDP_FAIL(DDP_ERR_FORMAT, "a CNN is described as \"cnn 28x28x1 conv32,64 k3 fc "
                                        "3136-128-10 relu\"");
    spec->kernel = k;
    DDP_CHECK(ddp_model_parse_mlp_head(p + head, spec));
    return DDP_OK;
}

/* --channels 32,64: 1 to DDP_MAX_CONV stages. */
static ddp_status parse_channels(const char *name, const char *arg, void *field) {
    DDP_CHECK(ddp_model_parse_list(name, arg, field, DDP_MAX_CONV, 65536, "32,64"));
    return DDP_OK;
}

static const ddp_opt options[] = {
    {.kind = DDP_OPT_HEADING, .help = "The CNN (--model cnn)"},
    {.name = "channels",
     .kind = DDP_OPT_CUSTOM,
     DDP_OPT_FIELD(ddp_model_spec, conv),
     .arg = "LIST",
     .help = "channels of the convolution stages; each: conv, batch\n"
             "norm, ReLU, 2x2 max pooling",
     .parse = parse_channels,
     .format = ddp_model_format_sizes,
     .def = "32,64"},
    {.name = "kernel",
     .kind = DDP_OPT_INT,
     DDP_OPT_FIELD(ddp_model_spec, kernel),
     .arg = "K",
     .help = "odd convolution kernel size",
     .lo = 1,
     .hi = 31,
     .def = "3"},
    {.name = "sync-bn",
     .kind = DDP_OPT_FLAG,
     DDP_OPT_FIELD(ddp_model_spec, sync_bn),
     .help = "batch-norm statistics over the global batch (all\n"
             "ranks), not each rank's share",
     .lo = 1,
     .def = "0"},
    DDP_MODEL_HEAD_OPTIONS("128"),
};

const ddp_model_type ddp_model_type_cnn = {
    .summary = "a convolutional network with batch norm on labelled\nimages (--data)",
    .options = options,
    .n_options = sizeof options / sizeof *options,
    .data = DDP_DATA_SAMPLES,
    /* Its activations are some 500 times larger per sample than the MLP's. */
    .eval_batch = 256,
    .build = build,
    .parse = parse,
};
