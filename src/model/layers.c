/*
 * The layer kinds of the MLP: Linear (y = x W^T + b) and elementwise activations.
 * Shapes are row-major: x (n, in), W (out, in), y (n, out).
 */
#include "model/layer.h"

static ddp_status linear_forward(ddp_layer *l, ddp_backend *b, const float *x, float *y, size_t n) {
    int N = (int)n, in = (int)l->in_dim, out = (int)l->out_dim;
    /* y (n, out) = x (n, in) . W^T (in, out) */
    DDP_CHECK(ddp_backend_gemm(b, 0, 1, N, out, in, 1.0f, x, in, l->w, in, 0.0f, y, out));
    DDP_CHECK(ddp_backend_bias_add(b, y, l->bias, N, out));
    return DDP_OK;
}

/* dW rows [r0, r1) (r1 - r0, in) += dy[:, r0:r1]^T (r1 - r0, n) . x (n, in) */
static ddp_status weight_grad_rows(ddp_layer *l, ddp_backend *b, const float *x, const float *dy,
                                   int N, float beta, size_t r0, size_t r1) {
    int in = (int)l->in_dim, out = (int)l->out_dim;
    DDP_CHECK(ddp_backend_gemm(b, 1, 0, (int)(r1 - r0), in, N, 1.0f, dy + r0, out, x, in, beta,
                               l->dw + r0 * l->in_dim, in));
    return DDP_OK;
}

static ddp_status linear_backward(ddp_layer *l, ddp_backend *b, const float *x, const float *y,
                                  const float *dy, float *dx, size_t n, int overwrite,
                                  ddp_grad_ready_fn ready, void *ctx) {
    int N = (int)n, in = (int)l->in_dim, out = (int)l->out_dim;
    /* beta 0: the product is written, and the stale buffer is never read (BLAS). */
    float beta = overwrite ? 0.0f : 1.0f;
    if (overwrite) DDP_CHECK(ddp_backend_zero(b, l->dbias, l->out_dim * sizeof(float)));
    DDP_CHECK(ddp_backend_bias_grad(b, l->dbias, dy, N, out));
    if (l->slice_rows == 0 || l->slice_rows >= l->out_dim) {
        /* dW (out, in) += dy^T (out, n) . x (n, in); accumulation across micro-batches */
        DDP_CHECK(weight_grad_rows(l, b, x, dy, N, beta, 0, l->out_dim));
        if (ready) DDP_CHECK(ready(ctx, l->param_offset, l->param_count));
    } else {
        /* Slices from the last rows down: each report extends the final tail of the flat
         * buffer (the bias, after the weight, goes with the first slice). */
        for (size_t r1 = l->out_dim; r1 > 0;) {
            size_t r0 = r1 > l->slice_rows ? r1 - l->slice_rows : 0;
            DDP_CHECK(weight_grad_rows(l, b, x, dy, N, beta, r0, r1));
            size_t begin = l->param_offset + r0 * l->in_dim;
            size_t end = r1 == l->out_dim ? l->param_offset + l->param_count
                                          : l->param_offset + r1 * l->in_dim;
            if (ready) DDP_CHECK(ready(ctx, begin, end - begin));
            r1 = r0;
        }
    }
    if (dx) {
        /* dx (n, in) = dy (n, out) . W (out, in) */
        DDP_CHECK(ddp_backend_gemm(b, 0, 0, N, in, out, 1.0f, dy, out, l->w, in, 0.0f, dx, in));
    }
    return DDP_OK;
}

static const ddp_layer_ops linear_ops = {"linear", linear_forward, linear_backward};

static ddp_status act_forward(ddp_layer *l, ddp_backend *b, const float *x, float *y, size_t n) {
    DDP_CHECK(ddp_backend_act_forward(b, l->act, x, y, n * l->out_dim));
    return DDP_OK;
}

static ddp_status act_backward(ddp_layer *l, ddp_backend *b, const float *x, const float *y,
                               const float *dy, float *dx, size_t n, int overwrite,
                               ddp_grad_ready_fn ready, void *ctx) {
    if (dx) DDP_CHECK(ddp_backend_act_backward(b, l->act, x, dy, dx, n * l->out_dim));
    return DDP_OK;
}

static const ddp_layer_ops act_ops = {"activation", act_forward, act_backward};

void ddp_layer_linear(ddp_layer *l, size_t in_dim, size_t out_dim) {
    *l = (ddp_layer){.ops = &linear_ops, .in_dim = in_dim, .out_dim = out_dim};
    l->param_count = out_dim * in_dim + out_dim;
}

void ddp_layer_activation(ddp_layer *l, ddp_act act, size_t dim) {
    *l = (ddp_layer){.ops = &act_ops, .in_dim = dim, .out_dim = dim, .act = act};
}
