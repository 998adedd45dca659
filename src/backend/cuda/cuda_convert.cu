/*
 * fp32 <-> bf16 conversion of whole buffers (reduced-precision gradient communication).
 * The rounding is written out bit by bit, exactly as the CPU backend does it (nearest
 * even; a NaN stays a quiet NaN with its sign and upper payload), so that both backends
 * produce the same bits for the same input.
 */
#include <stdint.h>

#include <cuda_runtime.h>

#include "backend/cuda/cuda_internal.h"

__global__ static void f32_to_bf16_kernel(const float *x, uint16_t *y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t u = __float_as_uint(x[i]);
        if ((u & 0x7fffffffu) > 0x7f800000u)
            y[i] = (uint16_t)((u >> 16) | 0x40u);
        else
            y[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
}

__global__ static void bf16_to_f32_kernel(const uint16_t *x, float *y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = __uint_as_float((uint32_t)x[i] << 16);
}

extern "C" ddp_status ddp_cuda_f32_to_bf16(ddp_backend *b, const float *x, uint16_t *y, size_t n) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (n == 0) return DDP_OK;
    f32_to_bf16_kernel<<<ddp_cuda_blocks(n, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0, cb->stream>>>(
        x, y, n);
    DDP_CUDA_CHECK_LAUNCH("f32_to_bf16_kernel");
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_bf16_to_f32(ddp_backend *b, const uint16_t *x, float *y, size_t n) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (n == 0) return DDP_OK;
    bf16_to_f32_kernel<<<ddp_cuda_blocks(n, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0, cb->stream>>>(
        x, y, n);
    DDP_CUDA_CHECK_LAUNCH("bf16_to_f32_kernel");
    return DDP_OK;
}
