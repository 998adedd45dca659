/*
 * What the CUDA backend shares with the rest of src/ (the NCCL comm): its compute
 * stream, its device ordinal, and the conversion of a cudaError_t into a ddp_status.
 * Private to src/; compiled both as C and as CUDA C++.
 */
#ifndef DDP_CUDA_BACKEND_H
#define DDP_CUDA_BACKEND_H

#include <cuda_runtime_api.h>

#include "ddp/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The stream every op of a CUDA backend is queued on. b must be a CUDA backend
 * (ddp_backend_device(b) == DDP_DEVICE_CUDA). */
cudaStream_t ddp_cuda_stream(ddp_backend *b);
/* The CUDA device ordinal the backend runs on. */
int ddp_cuda_device(ddp_backend *b);

/* Fault injection (cuda_fault.cu): queues on `stream` a kernel that spins until the
 * flag *release (page-locked host memory, allocated on the first call and kept for the
 * next ones) is set nonzero: work that never completes, as a collective with a stopped
 * peer. Free the flag with cudaFreeHost once the stream has drained. */
ddp_status ddp_cuda_inject_hang(cudaStream_t stream, volatile int **release);

/* Records a failed CUDA runtime call (its text in `call`) as the current error, keeping
 * CUDA's own name and message, and returns DDP_ERR_NOMEM for allocation failures and
 * DDP_ERR_BACKEND otherwise. Use through DDP_CUDA_CHECK. */
ddp_status ddp_cuda_error(cudaError_t e, const char *call, const char *file, int line);

#define DDP_CUDA_CHECK(call)                                                                       \
    do {                                                                                           \
        cudaError_t ddp_cuda_e_ = (call);                                                          \
        if (ddp_cuda_e_ != cudaSuccess)                                                            \
            return ddp_cuda_error(ddp_cuda_e_, #call, __FILE__, __LINE__);                         \
    } while (0)

/* After a kernel launch: reports a bad launch configuration (or an earlier asynchronous
 * fault) under the kernel's name. */
#define DDP_CUDA_CHECK_LAUNCH(kernel_name)                                                         \
    do {                                                                                           \
        cudaError_t ddp_cuda_e_ = cudaGetLastError();                                              \
        if (ddp_cuda_e_ != cudaSuccess)                                                            \
            return ddp_cuda_error(ddp_cuda_e_, "launch of kernel " kernel_name, __FILE__,          \
                                  __LINE__);                                                       \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif
