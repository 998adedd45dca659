/*
 * Faults for tests: a kernel that never finishes until the host releases it, standing in
 * for a collective whose peer stopped (DDP_INJECT_FAULT=nccl_hang, comm_nccl.c).
 */
#include <cuda_runtime.h>

#include "backend/cuda/cuda_internal.h"

__global__ static void hang_kernel(volatile int *release) {
    while (*release == 0)
        __nanosleep(10000);
}

extern "C" ddp_status ddp_cuda_inject_hang(cudaStream_t stream, volatile int **release) {
    if (!*release) {
        int *flag = NULL;
        DDP_CUDA_CHECK(cudaHostAlloc((void **)&flag, sizeof *flag, cudaHostAllocMapped));
        *flag = 0;
        *release = flag;
    }
    int *dev = NULL;
    DDP_CUDA_CHECK(cudaHostGetDevicePointer((void **)&dev, (void *)*release, 0));
    hang_kernel<<<1, 1, 0, stream>>>(dev);
    DDP_CUDA_CHECK_LAUNCH("hang_kernel");
    return DDP_OK;
}
