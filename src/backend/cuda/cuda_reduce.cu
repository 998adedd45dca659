/*
 * Sum of squares (gradient-norm clipping, checks) in double precision, in two passes
 * without atomics: each block of the first pass writes one partial sum, and a single
 * block adds the partials in a fixed order. The grid depends only on n, so the result
 * is the same on every run and on every rank with the same data.
 */
#include <cuda_runtime.h>

#include "backend/cuda/cuda_block.cuh"
#include "backend/cuda/cuda_internal.h"

#define SUMSQ_THREADS 256

/* partials[blockIdx.x] = sum over this block's grid-stride share of x[i]^2. */
__global__ static void sumsq_partial_kernel(const float *x, size_t n, double *partials) {
    __shared__ double s[32];
    double acc = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        double v = (double)x[i];
        acc += v * v;
    }
    acc = block_sum(acc, s);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

/* partials[count] = sum of partials[0 .. count); one block. */
__global__ static void sumsq_final_kernel(double *partials, unsigned int count) {
    __shared__ double s[32];
    double acc = 0.0;
    for (unsigned int i = threadIdx.x; i < count; i += blockDim.x)
        acc += partials[i];
    acc = block_sum(acc, s);
    if (threadIdx.x == 0) partials[count] = acc;
}

/* *acc += partials[0] + ... + partials[count - 1], added in the order of
 * sumsq_final_kernel. */
__global__ static void sumsq_add_kernel(const double *partials, unsigned int count, double *acc) {
    __shared__ double s[32];
    double v = 0.0;
    for (unsigned int i = threadIdx.x; i < count; i += blockDim.x)
        v += partials[i];
    v = block_sum(v, s);
    if (threadIdx.x == 0) *acc += v;
}

/* The first pass over x into cb->partials: returns the number of partial sums. */
static ddp_status sumsq_partials(ddp_cuda_backend *cb, const float *x, size_t n,
                                 unsigned int *blocks) {
    *blocks = ddp_cuda_blocks(n, SUMSQ_THREADS);
    if (*blocks > DDP_CUDA_REDUCE_BLOCKS) *blocks = DDP_CUDA_REDUCE_BLOCKS;
    sumsq_partial_kernel<<<*blocks, SUMSQ_THREADS, 0, cb->stream>>>(x, n, cb->partials);
    DDP_CUDA_CHECK_LAUNCH("sumsq_partial_kernel");
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_sumsq_add(ddp_backend *b, const float *x, size_t n, double *acc) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    unsigned int blocks = 0;
    DDP_CHECK(sumsq_partials(cb, x, n, &blocks));
    sumsq_add_kernel<<<1, SUMSQ_THREADS, 0, cb->stream>>>(cb->partials, blocks, acc);
    DDP_CUDA_CHECK_LAUNCH("sumsq_add_kernel");
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_sumsq(ddp_backend *b, const float *x, size_t n, double *out) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (n == 0) {
        *out = 0.0;
        return DDP_OK;
    }
    unsigned int blocks = 0;
    DDP_CHECK(sumsq_partials(cb, x, n, &blocks));
    sumsq_final_kernel<<<1, SUMSQ_THREADS, 0, cb->stream>>>(cb->partials, blocks);
    DDP_CUDA_CHECK_LAUNCH("sumsq_final_kernel");
    DDP_CUDA_CHECK(cudaMemcpyAsync(cb->host_result, cb->partials + blocks, sizeof(double),
                                   cudaMemcpyDeviceToHost, cb->stream));
    /* The API returns the value on the host, so this call waits for the stream. */
    DDP_CHECK(ddp_cuda_host_wait(cb));
    *out = *cb->host_result;
    return DDP_OK;
}
