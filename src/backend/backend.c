/*
 * Public backend wrappers: argument checks, then dispatch through the ops table.
 * Keeping checks here means every implementation sees only valid calls.
 */
#include <stdlib.h>

#include "backend/backend_impl.h"

const char *ddp_backend_name(const ddp_backend *b) { return b->ops->name; }
ddp_device_kind ddp_backend_device(const ddp_backend *b) { return b->ops->device; }
int ddp_backend_is_host(const ddp_backend *b) { return b->ops->is_host; }
int ddp_backend_threads(const ddp_backend *b) { return b->opt.threads; }

void ddp_backend_free(ddp_backend *b) {
    if (b) b->ops->destroy(b);
}

ddp_status ddp_backend_alloc(ddp_backend *b, size_t bytes, void **ptr) {
    *ptr = NULL;
    if (bytes == 0) bytes = 1; /* a valid, unique pointer even for empty buffers */
    return b->ops->alloc(b, bytes, ptr);
}

void ddp_backend_dealloc(ddp_backend *b, void *ptr) {
    if (ptr) b->ops->dealloc(b, ptr);
}

ddp_status ddp_backend_host_alloc(ddp_backend *b, size_t bytes, void **ptr) {
    *ptr = NULL;
    if (bytes == 0) bytes = 1;
    return b->ops->host_alloc(b, bytes, ptr);
}

void ddp_backend_host_dealloc(ddp_backend *b, void *ptr) {
    if (ptr) b->ops->host_dealloc(b, ptr);
}

ddp_status ddp_backend_copy(ddp_backend *b, void *dst, const void *src, size_t bytes,
                            ddp_copy_kind kind) {
    if (bytes == 0) return DDP_OK;
    if (!dst || !src) return DDP_FAIL(DDP_ERR_INVALID_ARG, "backend copy: NULL pointer");
    return b->ops->copy(b, dst, src, bytes, kind);
}

ddp_status ddp_backend_zero(ddp_backend *b, void *ptr, size_t bytes) {
    if (bytes == 0) return DDP_OK;
    return b->ops->zero(b, ptr, bytes);
}

ddp_status ddp_backend_sync(ddp_backend *b) { return b->ops->sync(b); }

ddp_status ddp_backend_gemm(ddp_backend *b, int trans_a, int trans_b, int M, int N, int K,
                            float alpha, const float *A, int lda, const float *B, int ldb,
                            float beta, float *C, int ldc) {
    if (M < 0 || N < 0 || K < 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "gemm: negative size M=%d N=%d K=%d", M, N, K);
    if (M == 0 || N == 0) return DDP_OK;
    int min_lda = trans_a ? M : K, min_ldb = trans_b ? K : N;
    if (lda < (min_lda > 1 ? min_lda : 1) || ldb < (min_ldb > 1 ? min_ldb : 1) || ldc < N)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "gemm: leading dimension too small (lda=%d ldb=%d ldc=%d for M=%d N=%d "
                        "K=%d, trans_a=%d trans_b=%d)",
                        lda, ldb, ldc, M, N, K, trans_a, trans_b);
    return b->ops->gemm(b, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

ddp_status ddp_backend_bias_add(ddp_backend *b, float *y, const float *bias, int N, int C) {
    if (N <= 0 || C <= 0) return DDP_OK;
    return b->ops->bias_add(b, y, bias, N, C);
}

ddp_status ddp_backend_bias_grad(ddp_backend *b, float *dbias, const float *dy, int N, int C) {
    if (N <= 0 || C <= 0) return DDP_OK;
    return b->ops->bias_grad(b, dbias, dy, N, C);
}

static ddp_status check_act(ddp_act act) {
    if (act != DDP_ACT_RELU && act != DDP_ACT_GELU)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "unknown activation %d", (int)act);
    return DDP_OK;
}

ddp_status ddp_backend_act_forward(ddp_backend *b, ddp_act act, const float *x, float *y,
                                   size_t n) {
    DDP_CHECK(check_act(act));
    if (n == 0) return DDP_OK;
    return b->ops->act_forward(b, act, x, y, n);
}

ddp_status ddp_backend_act_backward(ddp_backend *b, ddp_act act, const float *x, const float *dy,
                                    float *dx, size_t n) {
    DDP_CHECK(check_act(act));
    if (n == 0) return DDP_OK;
    return b->ops->act_backward(b, act, x, dy, dx, n);
}

ddp_status ddp_backend_softmax_xent(ddp_backend *b, const float *logits, const int32_t *labels,
                                    int N, int C, float grad_scale, float *dlogits, float *stats) {
    if (C <= 0) return DDP_FAIL(DDP_ERR_INVALID_ARG, "softmax_xent: %d classes", C);
    if (N <= 0) return DDP_OK;
    return b->ops->softmax_xent(b, logits, labels, N, C, grad_scale, dlogits, stats);
}

ddp_status ddp_backend_gather_rows(ddp_backend *b, void *dst, const void *src, const int32_t *idx,
                                   size_t n, size_t row_bytes) {
    if (n == 0 || row_bytes == 0) return DDP_OK;
    return b->ops->gather_rows(b, dst, src, idx, n, row_bytes);
}

ddp_status ddp_backend_scale(ddp_backend *b, float *x, size_t n, float alpha) {
    if (n == 0) return DDP_OK;
    return b->ops->scale(b, x, n, alpha);
}

ddp_status ddp_backend_f32_to_bf16(ddp_backend *b, const float *x, uint16_t *y, size_t n) {
    if (n == 0) return DDP_OK;
    return b->ops->f32_to_bf16(b, x, y, n);
}

ddp_status ddp_backend_bf16_to_f32(ddp_backend *b, const uint16_t *x, float *y, size_t n) {
    if (n == 0) return DDP_OK;
    return b->ops->bf16_to_f32(b, x, y, n);
}

ddp_status ddp_backend_sumsq(ddp_backend *b, const float *x, size_t n, double *out) {
    *out = 0.0;
    if (n == 0) return DDP_OK;
    return b->ops->sumsq(b, x, n, out);
}

ddp_status ddp_backend_sgd_step(ddp_backend *b, float *p, const float *grad, float *buf, size_t n,
                                float lr, float momentum, float wd, int nesterov, int first_step) {
    if (n == 0) return DDP_OK;
    return b->ops->sgd_step(b, p, grad, buf, n, lr, momentum, wd, nesterov, first_step);
}

ddp_status ddp_backend_adamw_step(ddp_backend *b, float *p, const float *grad, float *m, float *v,
                                  size_t n, float lr, float beta1, float beta2, float eps, float wd,
                                  int64_t t) {
    if (t < 1) return DDP_FAIL(DDP_ERR_INVALID_ARG, "adamw: step %lld must be >= 1", (long long)t);
    if (n == 0) return DDP_OK;
    return b->ops->adamw_step(b, p, grad, m, v, n, lr, beta1, beta2, eps, wd, t);
}
