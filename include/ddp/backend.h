/*
 * backend: where the numbers are computed. One opaque handle per device; every call
 * goes through a table of function pointers chosen at run time (src/backend/), so one
 * binary runs on the CPU (CBLAS) or on a GPU (cuBLAS and our kernels), and the CUDA
 * backend can be checked against the CPU backend in the same process.
 *
 * Pointers named "device" below are in the backend's memory (plain host memory for the
 * CPU backend). Calls are asynchronous on the backend's compute stream unless they
 * say otherwise; ddp_backend_sync waits for all of them. Matrices are row-major.
 */
#ifndef DDP_BACKEND_H
#define DDP_BACKEND_H

#include "ddp/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DDP_DEVICE_AUTO = 0, DDP_DEVICE_CPU, DDP_DEVICE_CUDA } ddp_device_kind;

/* Matrix-product precision. FP32 everywhere; TF32 and BF16 only on CUDA (BF16 keeps
 * fp32 master weights, optimizer state and gradient reduction). */
typedef enum { DDP_MATH_FP32 = 0, DDP_MATH_TF32, DDP_MATH_BF16 } ddp_math;

typedef enum { DDP_ACT_RELU = 0, DDP_ACT_GELU } ddp_act;

typedef enum { DDP_COPY_H2D, DDP_COPY_D2H, DDP_COPY_D2D } ddp_copy_kind;

typedef struct ddp_backend ddp_backend;

typedef struct {
    ddp_device_kind device; /* AUTO: CUDA when built and a GPU is present, else CPU */
    int device_index;       /* CUDA device ordinal (local rank modulo visible GPUs) */
    int threads;            /* CPU BLAS threads; 0 = leave the library's default */
    ddp_math math;
} ddp_backend_options;

/* Creates a backend. With DDP_DEVICE_AUTO and no GPU, returns the CPU backend and
 * logs a one-line notice. DDP_DEVICE_CUDA without a GPU (or without CUDA built in)
 * fails with DDP_ERR_UNSUPPORTED. Not collective. */
ddp_status ddp_backend_create(const ddp_backend_options *opt, ddp_backend **out);
void ddp_backend_free(ddp_backend *b);

/* "cpu" or "cuda". */
const char *ddp_backend_name(const ddp_backend *b);
ddp_device_kind ddp_backend_device(const ddp_backend *b);
/* Nonzero when device pointers are ordinary host memory (the CPU backend). */
int ddp_backend_is_host(const ddp_backend *b);
/* BLAS threads the CPU backend computes with (the options' threads, or the library's own
 * setting when they were 0); the options' value on other backends. */
int ddp_backend_threads(const ddp_backend *b);
/* Number of visible CUDA devices (0 when CUDA is not built in or there is none). */
int ddp_backend_cuda_device_count(void);

/* ---- memory (synchronous unless stated) --------------------------------------------- */
ddp_status ddp_backend_alloc(ddp_backend *b, size_t bytes, void **ptr);
void ddp_backend_dealloc(ddp_backend *b, void *ptr);
/* Page-locked host memory for staging (plain malloc on the CPU backend). */
ddp_status ddp_backend_host_alloc(ddp_backend *b, size_t bytes, void **ptr);
void ddp_backend_host_dealloc(ddp_backend *b, void *ptr);
/* Ordered on the compute stream; D2H copies are complete when the call returns. */
ddp_status ddp_backend_copy(ddp_backend *b, void *dst, const void *src, size_t bytes,
                            ddp_copy_kind kind);
ddp_status ddp_backend_zero(ddp_backend *b, void *ptr, size_t bytes);
/* Waits for all work queued on the backend. */
ddp_status ddp_backend_sync(ddp_backend *b);

/* ---- compute ------------------------------------------------------------------------ */

/* C (M, N) = alpha * op(A) op(B) + beta * C, row-major; op(A) is (M, K), op(B) (K, N).
 * lda, ldb, ldc are the row strides of A, B, C as stored. */
ddp_status ddp_backend_gemm(ddp_backend *b, int trans_a, int trans_b, int M, int N, int K,
                            float alpha, const float *A, int lda, const float *B, int ldb,
                            float beta, float *C, int ldc);
/* y (N, C) += bias (C) broadcast over rows. */
ddp_status ddp_backend_bias_add(ddp_backend *b, float *y, const float *bias, int N, int C);
/* dbias (C) += sum over rows of dy (N, C). */
ddp_status ddp_backend_bias_grad(ddp_backend *b, float *dbias, const float *dy, int N, int C);
/* y = act(x), n elements; y may equal x. */
ddp_status ddp_backend_act_forward(ddp_backend *b, ddp_act act, const float *x, float *y, size_t n);
/* dx = dy * act'(x), n elements; dx may equal dy. */
ddp_status ddp_backend_act_backward(ddp_backend *b, ddp_act act, const float *x, const float *dy,
                                    float *dx, size_t n);
/* Softmax cross-entropy over logits (N, C) with integer labels (N).
 * stats (device, 2 floats): stats[0] += sum of per-sample losses, stats[1] += number of
 * samples whose arg-max equals the label. When dlogits is not NULL it receives
 * grad_scale * (softmax - onehot), so grad_scale = 1/global_batch gives the gradient of
 * the mean loss over the global batch. */
ddp_status ddp_backend_softmax_xent(ddp_backend *b, const float *logits, const int32_t *labels,
                                    int N, int C, float grad_scale, float *dlogits, float *stats);
/* dst[i, :] = src[idx[i], :] for i < n, rows of row_bytes bytes; idx is device memory. */
ddp_status ddp_backend_gather_rows(ddp_backend *b, void *dst, const void *src, const int32_t *idx,
                                   size_t n, size_t row_bytes);
/* x *= alpha. */
ddp_status ddp_backend_scale(ddp_backend *b, float *x, size_t n, float alpha);
/* Round fp32 to bf16 (nearest even; NaN stays NaN) and back, n elements. For
 * reduced-precision gradient communication. */
ddp_status ddp_backend_f32_to_bf16(ddp_backend *b, const float *x, uint16_t *y, size_t n);
ddp_status ddp_backend_bf16_to_f32(ddp_backend *b, const uint16_t *x, float *y, size_t n);
/* Sum of squares of x into a host double (synchronizes). Non-finite values propagate. */
ddp_status ddp_backend_sumsq(ddp_backend *b, const float *x, size_t n, double *out);

/* SGD with momentum over n elements (PyTorch semantics):
 *   g = grad + wd * p;  buf = momentum * buf + g (buf = g on the first step);
 *   p -= lr * (nesterov ? g + momentum * buf : buf). */
ddp_status ddp_backend_sgd_step(ddp_backend *b, float *p, const float *grad, float *buf, size_t n,
                                float lr, float momentum, float wd, int nesterov, int first_step);
/* AdamW (decoupled weight decay) over n elements; t is the 1-based step:
 *   p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 *   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps). */
ddp_status ddp_backend_adamw_step(ddp_backend *b, float *p, const float *grad, float *m, float *v,
                                  size_t n, float lr, float beta1, float beta2, float eps, float wd,
                                  int64_t t);

#ifdef __cplusplus
}
#endif
#endif
