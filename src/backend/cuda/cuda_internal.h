/*
 * Inside the CUDA backend: the backend struct, the cuBLAS error check, the launch-size
 * helper, and the ops that cuda_backend.c puts into the table (each defined in the file
 * of its op family: cuda_gemm.cu, cuda_elementwise.cu, cuda_loss.cu, cuda_gather.cu,
 * cuda_convert.cu, cuda_reduce.cu, cuda_optim.cu). Compiled both as C and as CUDA C++.
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

typedef struct {
    struct ddp_backend base; /* first: the registry and wrappers see only this */
    int device;              /* CUDA device ordinal */
    cudaStream_t stream;     /* every op is queued here, in call order */
    cublasHandle_t cublas;   /* bound to `stream` */
    int mem_pools;           /* device supports stream-ordered allocation */
    double *partials;        /* (DDP_CUDA_REDUCE_BLOCKS + 1) device doubles for sumsq */
    double *host_result;     /* one pinned double: the sumsq result copied back */
    void *ws[2];             /* bf16 copies of gemm's A and B, grown on demand */
    size_t ws_bytes[2];
} ddp_cuda_backend;

/* Makes the backend's GPU current in the calling thread. Every op calls it first, so
 * that any thread (a communication thread, say) may use the backend on any GPU. */
ddp_status ddp_cuda_use(ddp_cuda_backend *cb);

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

/* ---- ops, one family per file --------------------------------------------------------- */

/* cuda_gemm.cu */
ddp_status ddp_cuda_gemm(ddp_backend *b, int ta, int tb, int M, int N, int K, float alpha,
                         const float *A, int lda, const float *B, int ldb, float beta, float *C,
                         int ldc);
void ddp_cuda_gemm_release(ddp_cuda_backend *cb);

/* cuda_elementwise.cu */
ddp_status ddp_cuda_bias_add(ddp_backend *b, float *y, const float *bias, int N, int C);
ddp_status ddp_cuda_bias_grad(ddp_backend *b, float *dbias, const float *dy, int N, int C);
ddp_status ddp_cuda_act_forward(ddp_backend *b, ddp_act act, const float *x, float *y, size_t n);
ddp_status ddp_cuda_act_backward(ddp_backend *b, ddp_act act, const float *x, const float *dy,
                                 float *dx, size_t n);
ddp_status ddp_cuda_scale(ddp_backend *b, float *x, size_t n, float alpha);

/* cuda_loss.cu */
ddp_status ddp_cuda_softmax_xent(ddp_backend *b, const float *logits, const int32_t *labels, int N,
                                 int C, float grad_scale, float *dlogits, float *stats);

/* cuda_gather.cu */
ddp_status ddp_cuda_gather_rows(ddp_backend *b, void *dst, const void *src, const int32_t *idx,
                                size_t n, size_t row_bytes);

/* cuda_convert.cu */
ddp_status ddp_cuda_f32_to_bf16(ddp_backend *b, const float *x, uint16_t *y, size_t n);
ddp_status ddp_cuda_bf16_to_f32(ddp_backend *b, const uint16_t *x, float *y, size_t n);

/* cuda_reduce.cu */
ddp_status ddp_cuda_sumsq(ddp_backend *b, const float *x, size_t n, double *out);

/* cuda_optim.cu */
ddp_status ddp_cuda_sgd_step(ddp_backend *b, float *p, const float *g, float *buf, size_t n,
                             float lr, float momentum, float wd, int nesterov, int first,
                             float gscale);
ddp_status ddp_cuda_adamw_step(ddp_backend *b, float *p, const float *g, float *m, float *v,
                               size_t n, float lr, float b1, float b2, float eps, float wd,
                               int64_t t, float gscale);

#ifdef __cplusplus
}
#endif
#endif
