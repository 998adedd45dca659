/* Warp- and block-level reductions shared by the CUDA kernels (device code, .cu files
 * only). Each adds or compares in a fixed butterfly order, so the result is the same on
 * every run, and every participating thread gets it. */
#ifndef DDP_CUDA_BLOCK_CUH
#define DDP_CUDA_BLOCK_CUH

/* The sum over the 32 lanes of a warp; all 32 lanes must call it. */
template <typename T> __device__ static T warp_sum(T x) {
    for (int off = 16; off > 0; off >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

/* The maximum over the 32 lanes of a warp; all 32 lanes must call it. */
__device__ static inline float warp_max(float x) {
    for (int off = 16; off > 0; off >>= 1)
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
    return x;
}

/* The block's sum. s holds 32 entries; blockDim.x is a multiple of 32. */
template <typename T> __device__ static T block_sum(T x, T *s) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    x = warp_sum(x);
    if (lane == 0) s[warp] = x;
    __syncthreads();
    if (warp == 0) {
        x = lane < nwarps ? s[lane] : T(0);
        x = warp_sum(x);
        if (lane == 0) s[0] = x;
    }
    __syncthreads();
    return s[0];
}

#endif
