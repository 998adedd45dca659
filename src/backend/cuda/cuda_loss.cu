/*
 * Softmax cross-entropy: one block per row of logits. The block finds the row's maximum
 * (and the first index holding it, the prediction), sums exp(x - max), adds the row's
 * loss and hit to the device stats with one atomic each, and writes
 * grad_scale * (softmax - onehot) when asked. Subtracting the maximum keeps exp() from
 * overflowing for any logits.
 *
 * The stats sums use float atomics, so their last bits depend on the order in which
 * rows finish; they are metrics only and never feed back into the parameters.
 */
#include <climits>
#include <cuda_runtime.h>
#include <math.h>

#include "backend/cuda/cuda_block.cuh"
#include "backend/cuda/cuda_internal.h"

/* Keeps (v, i) or takes (ov, oi): the larger value wins, ties go to the lower index. */
__device__ static void take_better(float &v, int &i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

/* Every thread gets the block's best (value, index). s_v and s_i hold 32 entries. */
__device__ static void block_argmax(float &v, int &i, float *s_v, int *s_i) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    for (int off = 16; off > 0; off >>= 1)
        take_better(v, i, __shfl_xor_sync(0xffffffffu, v, off),
                    __shfl_xor_sync(0xffffffffu, i, off));
    if (lane == 0) {
        s_v[warp] = v;
        s_i[warp] = i;
    }
    __syncthreads();
    if (warp == 0) {
        v = lane < nwarps ? s_v[lane] : -INFINITY;
        i = lane < nwarps ? s_i[lane] : INT_MAX;
        for (int off = 16; off > 0; off >>= 1)
            take_better(v, i, __shfl_xor_sync(0xffffffffu, v, off),
                        __shfl_xor_sync(0xffffffffu, i, off));
        if (lane == 0) {
            s_v[0] = v;
            s_i[0] = i;
        }
    }
    __syncthreads();
    v = s_v[0];
    i = s_i[0];
}

/* logits (N, C), labels (N), stats (2), dlogits (N, C) or NULL; one block per row.
 * blockDim.x is a multiple of 32. dlogits may equal logits: every read of the row
 * happens before the barrier that precedes the writes. */
__global__ static void softmax_xent_kernel(const float *logits, const int32_t *labels, int C,
                                           float grad_scale, float *dlogits, float *stats) {
    __shared__ float s_v[32];
    __shared__ int s_i[32];
    __shared__ float s_sum[32];
    size_t row = blockIdx.x;
    const float *x = logits + row * (size_t)C;
    int label = labels[row];
    int valid = label >= 0 && label < C;
    float x_label = 0.0f;
    if (threadIdx.x == 0 && valid) x_label = x[label];

    float best = -INFINITY;
    int arg = INT_MAX;
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        take_better(best, arg, x[j], j);
    block_argmax(best, arg, s_v, s_i);

    float sum = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        sum += expf(x[j] - best);
    sum = block_sum(sum, s_sum);

    if (threadIdx.x == 0) {
        /* -log softmax[label] = log(sum) - (x[label] - max). A label outside [0, C)
         * makes the loss NaN, so the bad data shows up as a non-finite loss. */
        float loss = valid ? logf(sum) - (x_label - best) : NAN;
        atomicAdd(&stats[0], loss);
        if (valid && arg == label) atomicAdd(&stats[1], 1.0f);
    }
    if (dlogits) {
        float *d = dlogits + row * (size_t)C;
        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            float p = expf(x[j] - best) / sum;
            d[j] = grad_scale * (p - (j == label ? 1.0f : 0.0f));
        }
    }
}

extern "C" ddp_status ddp_cuda_softmax_xent(ddp_backend *b, const float *logits,
                                            const int32_t *labels, int N, int C, float grad_scale,
                                            float *dlogits, float *stats) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (N <= 0) return DDP_OK;
    if (C <= 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "softmax cross-entropy over %d classes: need at least one class", C);
    /* One warp for small class counts, up to 256 threads for large vocabularies. */
    int threads = ((C + 31) / 32) * 32;
    if (threads > 256) threads = 256;
    softmax_xent_kernel<<<(unsigned int)N, threads, 0, cb->stream>>>(logits, labels, C, grad_scale,
                                                                     dlogits, stats);
    DDP_CUDA_CHECK_LAUNCH("softmax_xent_kernel");
    return DDP_OK;
}
