/*
 * Optimizer updates as single fused elementwise passes over the flat parameter buffer
 * (or a shard of it): SGD with momentum (PyTorch semantics) and AdamW. The formulas are
 * the ones in include/ddp/backend.h, written in the same order as the CPU backend. Where
 * the parameters have a bf16 copy (mixed precision), the same pass writes it: p16, or
 * NULL.
 */
#include <math.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "backend/cuda/cuda_internal.h"

/* g = gscale grad + wd p; buf = first ? g : momentum buf + g;
 * p -= lr (nesterov ? g + momentum buf : buf). Without buf (no momentum state) p -= lr g. */
__global__ static void sgd_kernel(float *p, __nv_bfloat16 *p16, const float *grad, float *buf,
                                  size_t n, float lr, float momentum, float wd, int nesterov,
                                  int first, float gscale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float pi = p[i];
        float g = gscale * grad[i] + wd * pi;
        float step = g;
        if (buf) {
            float bi = first ? g : momentum * buf[i] + g;
            buf[i] = bi;
            step = nesterov ? g + momentum * bi : bi;
        }
        pi -= lr * step;
        p[i] = pi;
        if (p16) p16[i] = __float2bfloat16_rn(pi);
    }
}

/* AdamW with the bias corrections folded into the step size and the denominator, as
 * PyTorch and the CPU backend do: step = lr / (1 - b1^t), bc2_sqrt = sqrt(1 - b2^t),
 * lr_wd = lr * wd (all computed on the host the way the CPU backend computes them). */
__global__ static void adamw_kernel(float *p, __nv_bfloat16 *p16, const float *grad, float *m,
                                    float *v, size_t n, float b1, float b2, float eps, float lr_wd,
                                    float step, float bc2_sqrt, float gscale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float g = gscale * grad[i];
        float pi = p[i];
        pi -= lr_wd * pi;
        float mi = b1 * m[i] + (1.0f - b1) * g;
        float vi = b2 * v[i] + (1.0f - b2) * g * g;
        m[i] = mi;
        v[i] = vi;
        pi -= step * mi / (sqrtf(vi) / bc2_sqrt + eps);
        p[i] = pi;
        if (p16) p16[i] = __float2bfloat16_rn(pi);
    }
}

extern "C" ddp_status ddp_cuda_sgd_step(ddp_backend *b, float *p, const float *g, float *buf,
                                        size_t n, float lr, float momentum, float wd, int nesterov,
                                        int first, float gscale) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (n == 0) return DDP_OK;
    __nv_bfloat16 *p16 = (__nv_bfloat16 *)ddp_backend_w16_of(b, p, n);
    sgd_kernel<<<ddp_cuda_blocks(n, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0, cb->stream>>>(
        p, p16, g, buf, n, lr, momentum, wd, nesterov ? 1 : 0, first ? 1 : 0, gscale);
    DDP_CUDA_CHECK_LAUNCH("sgd_kernel");
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_adamw_step(ddp_backend *b, float *p, const float *g, float *m,
                                          float *v, size_t n, float lr, float b1, float b2,
                                          float eps, float wd, int64_t t, float gscale) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (t < 1)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "AdamW step number %lld: the step count starts at 1 (bias correction "
                        "divides by 1 - beta^t)",
                        (long long)t);
    if (n == 0) return DDP_OK;
    float bc1 = 1.0f - powf(b1, (float)t);
    float bc2_sqrt = sqrtf(1.0f - powf(b2, (float)t));
    __nv_bfloat16 *p16 = (__nv_bfloat16 *)ddp_backend_w16_of(b, p, n);
    adamw_kernel<<<ddp_cuda_blocks(n, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0, cb->stream>>>(
        p, p16, g, m, v, n, b1, b2, eps, lr * wd, lr / bc1, bc2_sqrt, gscale);
    DDP_CUDA_CHECK_LAUNCH("adamw_kernel");
    return DDP_OK;
}
