/*
 * Row gather: dst[i, :] = src[idx[i], :] for rows of any byte length (batch assembly
 * from a device-resident dataset, embedding lookups). Rows are copied in 16-byte or
 * 4-byte words when both pointers and the row length allow it, else byte by byte.
 */
#include <stdint.h>

#include <cuda_runtime.h>

#include "backend/cuda/cuda_internal.h"

/* W is the word type: uint4 (16 bytes), uint32_t or uint8_t. words = row length in W. */
template <typename W>
__global__ static void gather_kernel(W *dst, const W *src, const int32_t *idx, size_t n,
                                     size_t words) {
    size_t total = n * words;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < total;
         k += (size_t)gridDim.x * blockDim.x) {
        size_t i = k / words, w = k - i * words;
        dst[k] = src[(size_t)idx[i] * words + w];
    }
}

template <typename W>
static ddp_status launch(ddp_cuda_backend *cb, void *dst, const void *src, const int32_t *idx,
                         size_t n, size_t row_bytes) {
    size_t words = row_bytes / sizeof(W);
    size_t total = n * words;
    gather_kernel<W><<<ddp_cuda_blocks(total, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0, cb->stream>>>(
        (W *)dst, (const W *)src, idx, n, words);
    DDP_CUDA_CHECK_LAUNCH("gather_kernel");
    return DDP_OK;
}

static int aligned(const void *dst, const void *src, size_t row_bytes, size_t a) {
    return row_bytes % a == 0 && (uintptr_t)dst % a == 0 && (uintptr_t)src % a == 0;
}

extern "C" ddp_status ddp_cuda_gather_rows(ddp_backend *b, void *dst, const void *src,
                                           const int32_t *idx, size_t n, size_t row_bytes) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (n == 0 || row_bytes == 0) return DDP_OK;
    /* Indices are not checked on the device: the caller (sampler) keeps them in range. */
    if (aligned(dst, src, row_bytes, 16))
        DDP_CHECK(launch<uint4>(cb, dst, src, idx, n, row_bytes));
    else if (aligned(dst, src, row_bytes, 4))
        DDP_CHECK(launch<uint32_t>(cb, dst, src, idx, n, row_bytes));
    else
        DDP_CHECK(launch<uint8_t>(cb, dst, src, idx, n, row_bytes));
    return DDP_OK;
}
