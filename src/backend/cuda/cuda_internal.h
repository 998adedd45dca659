/*
 * Inside the CUDA backend: the backend struct, the cuBLAS error check, the launch-size
 * helper, and the ops that cuda_backend.c puts into the table. Compiled both as C and as
 * CUDA C++.
 */
#ifndef DDP_CUDA_INTERNAL_H
#define DDP_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "backend/cuda/cuda_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

#include "backend/backend_impl.h"

/* Threads per block of the elementwise kernels. */
#define DDP_CUDA_THREADS 256
/* Blocks of the first pass of the sum-of-squares reduction (and doubles of scratch). */
#define DDP_CUDA_REDUCE_BLOCKS 1024

/* Slots of device scratch (ddp_cuda_workspace): the bf16 copies of gemm's A and B, and the
 * per-channel partial sums of the conv-net ops. Each is used by one op at a time. */
enum { DDP_CUDA_WS_GEMM_A, DDP_CUDA_WS_GEMM_B, DDP_CUDA_WS_SUMS, DDP_CUDA_WORKSPACES };

typedef struct {
    struct ddp_backend base;       /* first: the registry and wrappers see only this */
    int device;                    /* CUDA device ordinal */
    cudaStream_t stream;           /* every op is queued here, in call order */
    cublasHandle_t cublas;         /* bound to `stream` */
    int mem_pools;                 /* device supports stream-ordered allocation */
    double *partials;              /* (DDP_CUDA_REDUCE_BLOCKS + 1) device doubles for sumsq */
    double *host_result;           /* one pinned double: the sumsq result copied back */
    void *ws[DDP_CUDA_WORKSPACES]; /* device scratch by slot, grown on demand */
    size_t ws_bytes[DDP_CUDA_WORKSPACES];
    cudaEvent_t waited; /* recorded for host waits that poll (ddp_cuda_host_wait) */
} ddp_cuda_backend;

/* Makes the backend's GPU current in the calling thread. Every op calls it first, so
 * that any thread (a communication thread, say) may use the backend on any GPU. */
ddp_status ddp_cuda_use(ddp_cuda_backend *cb);

/* Waits on the host until everything queued on the backend's stream so far has run. With
 * wait checks added (a collective may hold the stream up: NCCL) it polls an event, runs
 * the checks and stays under the watchdog, so that a failed or stopped peer ends the wait
 * with an error instead of blocking in the driver forever; else cudaStreamSynchronize. */
ddp_status ddp_cuda_host_wait(ddp_cuda_backend *cb);

/* Records a failed cuBLAS call as the current error (DDP_ERR_BACKEND, or DDP_ERR_NOMEM
 * when cuBLAS could not allocate) with cuBLAS's own status string. */
ddp_status ddp_cublas_error(cublasStatus_t s, const char *call, const char *file, int line);

#define DDP_CUBLAS_CHECK(call)                                                                     \
    do {                                                                                           \
        cublasStatus_t ddp_cublas_s_ = (call);                                                     \
        if (ddp_cublas_s_ != CUBLAS_STATUS_SUCCESS)                                                \
            return ddp_cublas_error(ddp_cublas_s_, #call, __FILE__, __LINE__);                     \
    } while (0)

/* Blocks for a grid-stride loop over n items with `threads` threads per block: enough
 * to fill the device, never more than the items need. n > 0. */
unsigned int ddp_cuda_blocks(size_t n, unsigned int threads);

/* ---- ops, one family per file ------------------------------------------------------- */

/* ddp_cuda_<op> for every op of ddp/backend_ops.h, each defined in the file of its op
 * family: cuda_gemm.cu, cuda_elementwise.cu, cuda_loss.cu, cuda_gather.cu,
 * cuda_convert.cu, cuda_reduce.cu, cuda_optim.cu, cuda_transformer.cu, cuda_conv.cu. */
#define DDP_CUDA_DECLARE(name, params, args, check, noop) ddp_status ddp_cuda_##name params;
DDP_BACKEND_OPS(DDP_CUDA_DECLARE)
#undef DDP_CUDA_DECLARE

/* cuda_elementwise.cu: column sums of an (N, C) array run as blocks of 32 columns, each
 * over one chunk of rows, writing partial sums that a second pass adds in chunk order.
 * The number of chunks aims at about 256 blocks, at least 256 rows each; it depends only
 * on N and C, so the sums are the same on every call and every device. */
int ddp_cuda_col_chunks(int N, int C);
/* dst[c] += sum over k < chunks of part[k C + c], in order of k, for c < C. */
ddp_status ddp_cuda_col_chunks_add(ddp_cuda_backend *cb, float *dst, const float *part, int chunks,
                                   int C);

/* cuda_gemm.cu: *out = workspace slot `slot` (DDP_CUDA_WS_*), grown to at least `bytes`
 * first. Growing is ordered on the backend's stream, so earlier ops still using the old
 * buffer finish first. The caller has made the backend's GPU current. */
ddp_status ddp_cuda_workspace(ddp_cuda_backend *cb, int slot, size_t bytes, void **out);

/* cuda_gemm.cu: frees the workspaces. */
void ddp_cuda_gemm_release(ddp_cuda_backend *cb);

/* cuda_gemm.cu: C_i (M, N) = alpha op(A_i) op(B_i) + beta C_i for i < batch, in the
 * backend's math mode, queued on its stream. Row-major like the gemm op, but compact:
 * A_i is stored (M, K) (or (K, M) when ta), B_i (K, N) (or (N, K) when tb), each with
 * its column count as row stride, and A_i starts at A + i M K, B_i at B + i K N, C_i at
 * C + i M N. M, N, K and batch are positive. With beta 0, C is never read. The caller
 * has made the backend's GPU current (ddp_cuda_use). */
ddp_status ddp_cuda_gemm_batched(ddp_cuda_backend *cb, int ta, int tb, int M, int N, int K,
                                 float alpha, const float *A, const float *B, float beta, float *C,
                                 int batch);

#ifdef __cplusplus
}
#endif
#endif
