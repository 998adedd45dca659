/*
 * Matrix products through cuBLAS, in the backend's math mode (FP32, TF32 or BF16): the
 * gemm op, and batches of compact products for the other ops (attention).
 *
 * The public API is row-major; cuBLAS is column-major. A row-major matrix with row
 * stride ld is, read column-major, its transpose with the same leading dimension. So
 * for C = op(A) op(B) we ask cuBLAS for C^T = op(B)^T op(A)^T: swap the operands, keep
 * each one's transpose flag, and swap M and N.
 *
 * BF16 reads an operand that lies inside the weights' array from its bf16 copy (written
 * by the optimizer in its own pass: ddp_backend_set_bf16_weights), and converts any other
 * operand into a bf16 copy in a workspace; accumulation and output are fp32, so
 * parameters, gradients and optimizer state stay fp32. The backend's workspaces, grown on
 * demand, live here too (ddp_cuda_workspace).
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "backend/cuda/cuda_internal.h"

/* dst (rows, cols), compact = src (rows, cols) with row stride ld, rounded to bf16. */
__global__ static void to_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t rows,
                                      size_t cols, size_t ld) {
    size_t total = rows * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / cols, c = i - r * cols;
        dst[i] = __float2bfloat16_rn(src[r * ld + c]);
    }
}

/* C (M, N) = beta C: the product of an empty K, computed as the CPU backend does. With
 * beta 0, C is not read (it may hold NaN, as cuBLAS allows) and becomes zeros. */
__global__ static void scale_matrix_kernel(float *C, size_t M, size_t N, size_t ldc, float beta) {
    size_t total = M * N;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / N, c = i - r * N;
        C[r * ldc + c] = beta == 0.0f ? 0.0f : beta * C[r * ldc + c];
    }
}

/* Growing is stream-ordered where the device has memory pools, so no host synchronization
 * happens even then (cudaFree, without pools, waits for the device). */
extern "C" ddp_status ddp_cuda_workspace(ddp_cuda_backend *cb, int slot, size_t bytes, void **out) {
    if (cb->ws_bytes[slot] < bytes) {
        /* Grow by half again so that slowly growing shapes do not reallocate each call. */
        size_t want = bytes + bytes / 2;
        if (cb->ws[slot]) {
            if (cb->mem_pools)
                DDP_CUDA_CHECK(cudaFreeAsync(cb->ws[slot], cb->stream));
            else
                DDP_CUDA_CHECK(cudaFree(cb->ws[slot]));
            cb->ws[slot] = NULL;
            cb->ws_bytes[slot] = 0;
        }
        if (cb->mem_pools)
            DDP_CUDA_CHECK(cudaMallocAsync(&cb->ws[slot], want, cb->stream));
        else
            DDP_CUDA_CHECK(cudaMalloc(&cb->ws[slot], want));
        cb->ws_bytes[slot] = want;
    }
    *out = cb->ws[slot];
    return DDP_OK;
}

extern "C" void ddp_cuda_gemm_release(ddp_cuda_backend *cb) {
    for (int i = 0; i < DDP_CUDA_WORKSPACES; i++) {
        /* The caller has synchronized the stream, so a plain free is safe for both kinds. */
        if (cb->ws[i]) cudaFree(cb->ws[i]);
        cb->ws[i] = NULL;
        cb->ws_bytes[i] = 0;
    }
}

/* Converts a stored row-major (rows, cols) matrix with row stride ld to compact bf16.
 * A batch of compact matrices is one matrix of all their rows. */
static ddp_status convert(ddp_cuda_backend *cb, int slot, const float *src, size_t rows, int cols,
                          int ld, const __nv_bfloat16 **out) {
    size_t total = rows * (size_t)cols;
    void *ws = NULL;
    DDP_CHECK(ddp_cuda_workspace(cb, slot, (total > 0 ? total : 1) * sizeof(__nv_bfloat16), &ws));
    if (total > 0) {
        to_bf16_kernel<<<ddp_cuda_blocks(total, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0,
                         cb->stream>>>((__nv_bfloat16 *)ws, src, rows, (size_t)cols, (size_t)ld);
        DDP_CUDA_CHECK_LAUNCH("to_bf16_kernel");
    }
    *out = (const __nv_bfloat16 *)ws;
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_gemm(ddp_backend *b, int ta, int tb, int M, int N, int K,
                                    float alpha, const float *A, int lda, const float *B, int ldb,
                                    float beta, float *C, int ldc) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (M == 0 || N == 0) return DDP_OK;
    if (K == 0) {
        size_t total = (size_t)M * (size_t)N;
        scale_matrix_kernel<<<ddp_cuda_blocks(total, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0,
                              cb->stream>>>(C, (size_t)M, (size_t)N, (size_t)ldc, beta);
        DDP_CUDA_CHECK_LAUNCH("scale_matrix_kernel");
        return DDP_OK;
    }
    cublasOperation_t op_a = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_b = tb ? CUBLAS_OP_T : CUBLAS_OP_N;

    switch (b->opt.math) {
    case DDP_MATH_FP32:
    case DDP_MATH_TF32: {
        cublasComputeType_t ct =
            b->opt.math == DDP_MATH_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        DDP_CUBLAS_CHECK(cublasGemmEx(cb->cublas, op_b, op_a, N, M, K, &alpha, B, CUDA_R_32F, ldb,
                                      A, CUDA_R_32F, lda, &beta, C, CUDA_R_32F, ldc, ct,
                                      CUBLAS_GEMM_DEFAULT));
        return DDP_OK;
    }
    case DDP_MATH_BF16: {
        /* Stored shapes: A is (M, K) or, transposed, (K, M); B is (K, N) or (N, K). */
        int a_rows = ta ? K : M, a_cols = ta ? M : K;
        int b_rows = tb ? N : K, b_cols = tb ? K : N;
        const __nv_bfloat16 *A16 = NULL, *B16 = NULL;
        /* Weights from their bf16 copy, with their own row strides; other operands
         * converted into compact copies, whose leading dimension is the stored column
         * count (at least 1, as cuBLAS requires even for empty operands). */
        DDP_CHECK(ddp_backend_w16_operand(b, A, a_rows, a_cols, lda, (const uint16_t **)&A16));
        DDP_CHECK(ddp_backend_w16_operand(b, B, b_rows, b_cols, ldb, (const uint16_t **)&B16));
        int lda16 = A16 ? lda : (a_cols > 0 ? a_cols : 1);
        int ldb16 = B16 ? ldb : (b_cols > 0 ? b_cols : 1);
        if (!A16) DDP_CHECK(convert(cb, DDP_CUDA_WS_GEMM_A, A, a_rows, a_cols, lda, &A16));
        if (!B16) DDP_CHECK(convert(cb, DDP_CUDA_WS_GEMM_B, B, b_rows, b_cols, ldb, &B16));
        DDP_CUBLAS_CHECK(cublasGemmEx(cb->cublas, op_b, op_a, N, M, K, &alpha, B16, CUDA_R_16BF,
                                      ldb16, A16, CUDA_R_16BF, lda16, &beta, C, CUDA_R_32F, ldc,
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return DDP_OK;
    }
    case DDP_MATH_COUNT: break;
    }
    return DDP_FAIL(DDP_ERR_INVALID_ARG,
                    "unknown math mode %d in the CUDA gemm; use fp32, tf32 or bf16",
                    (int)b->opt.math);
}

extern "C" ddp_status ddp_cuda_gemm_batched(ddp_cuda_backend *cb, int ta, int tb, int M, int N,
                                            int K, float alpha, const float *A, const float *B,
                                            float beta, float *C, int batch) {
    if (M <= 0 || N <= 0 || K <= 0 || batch <= 0)
        return DDP_FAIL(DDP_ERR_INTERNAL,
                        "batched gemm of %d products (M=%d N=%d K=%d): every size must be "
                        "positive; this is a bug in the caller",
                        batch, M, N, K);
    cublasOperation_t op_a = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_b = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    /* Compact storage: A is stored (M, K), or transposed (K, M); B (K, N) or (N, K); each
     * leading dimension is the stored column count, and consecutive matrices of a batch
     * are one matrix apart. */
    int a_rows = ta ? K : M, a_cols = ta ? M : K;
    int b_rows = tb ? N : K, b_cols = tb ? K : N;
    long long stride_a = (long long)M * K, stride_b = (long long)K * N, stride_c = (long long)M * N;

    /* The swap of the file's opening comment, once per batch entry: cuBLAS computes
     * C_i^T (N, M) = op(B_i)^T op(A_i)^T, with B_i as its first operand. */
    switch (cb->base.opt.math) {
    case DDP_MATH_FP32:
    case DDP_MATH_TF32: {
        cublasComputeType_t ct =
            cb->base.opt.math == DDP_MATH_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        DDP_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
            cb->cublas, op_b, op_a, N, M, K, &alpha, B, CUDA_R_32F, b_cols, stride_b, A, CUDA_R_32F,
            a_cols, stride_a, &beta, C, CUDA_R_32F, N, stride_c, batch, ct, CUBLAS_GEMM_DEFAULT));
        return DDP_OK;
    }
    case DDP_MATH_BF16: {
        /* As for gemm: bf16 copies of A and B, fp32 accumulation and output. The copies
         * are compact like the originals, so the strides stay the same. */
        const __nv_bfloat16 *A16 = NULL, *B16 = NULL;
        DDP_CHECK(convert(cb, DDP_CUDA_WS_GEMM_A, A, (size_t)batch * (size_t)a_rows, a_cols, a_cols,
                          &A16));
        DDP_CHECK(convert(cb, DDP_CUDA_WS_GEMM_B, B, (size_t)batch * (size_t)b_rows, b_cols, b_cols,
                          &B16));
        DDP_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
            cb->cublas, op_b, op_a, N, M, K, &alpha, B16, CUDA_R_16BF, b_cols, stride_b, A16,
            CUDA_R_16BF, a_cols, stride_a, &beta, C, CUDA_R_32F, N, stride_c, batch,
            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return DDP_OK;
    }
    case DDP_MATH_COUNT: break;
    }
    return DDP_FAIL(DDP_ERR_INVALID_ARG,
                    "unknown math mode %d in the CUDA batched gemm; use fp32, tf32 or bf16",
                    (int)cb->base.opt.math);
}
