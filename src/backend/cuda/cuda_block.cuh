/* Block-level reductions shared by the CUDA kernels (device code, .cu files only). */
#ifndef DDP_CUDA_BLOCK_CUH
#define DDP_CUDA_BLOCK_CUH

/* Every thread gets the block's sum, added in a fixed order (so the result is the same
 * on every run). s holds 32 entries; blockDim.x is a multiple of 32. */
template <typename T> __device__ static T block_sum(T x, T *s) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    for (int off = 16; off > 0; off >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, off);
    if (lane == 0) s[warp] = x;
    __syncthreads();
    if (warp == 0) {
        x = lane < nwarps ? s[lane] : T(0);
        for (int off = 16; off > 0; off >>= 1)
            x += __shfl_xor_sync(0xffffffffu, x, off);
        if (lane == 0) s[0] = x;
    }
    __syncthreads();
    return s[0];
}

#endif
