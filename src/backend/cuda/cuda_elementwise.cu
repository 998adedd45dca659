/*
 * Elementwise and broadcast kernels: bias add and its gradient (column sums), the
 * activations (ReLU, tanh-approximated GELU) forward and backward, and scaling.
 *
 * The activation formulas are the CPU backend's, written the same way, so that the two
 * agree to float rounding: GELU(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))),
 * and ReLU passes x > 0 (its derivative at 0 is 0).
 */
#include <cuda_runtime.h>

#include "backend/cuda/cuda_internal.h"

#define GELU_K0 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_K1 0.044715f

/* ---- bias ----------------------------------------------------------------------------- */

/* y (N, C) += bias (C) broadcast over rows. */
__global__ static void bias_add_kernel(float *y, const float *bias, size_t total, size_t C) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += bias[i % C];
}

#define BG_COLS 32 /* columns per block: one warp reads 32 neighbours of a row, coalesced */
#define BG_ROWS 16 /* rows read at once per block */

int ddp_cuda_col_chunks(int N, int C) {
    int col_blocks = (C + BG_COLS - 1) / BG_COLS;
    int by_rows = (N + 255) / 256, by_blocks = (256 + col_blocks - 1) / col_blocks;
    int chunks = by_rows < by_blocks ? by_rows : by_blocks;
    return chunks > 0 ? chunks : 1;
}

/* part[chunk C + c] = the sum of dy (N, C) over the rows of chunk blockIdx.y for column c.
 * Each block owns BG_COLS columns of one chunk and sums them in a fixed order (no
 * atomics), so the result is the same on every run. */
__global__ static void bias_grad_partial_kernel(float *part, const float *dy, int N, int C,
                                                int rows_per_chunk) {
    __shared__ float sh[BG_ROWS][BG_COLS + 1];
    int c = blockIdx.x * BG_COLS + threadIdx.x;
    int r0 = blockIdx.y * rows_per_chunk, r1 = min(N, r0 + rows_per_chunk);
    float s = 0.0f;
    if (c < C)
        for (int r = r0 + threadIdx.y; r < r1; r += BG_ROWS)
            s += dy[(size_t)r * C + c];
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float t = 0.0f;
        for (int k = 0; k < BG_ROWS; k++)
            t += sh[k][threadIdx.x];
        part[(size_t)blockIdx.y * C + c] = t;
    }
}

__global__ static void col_chunks_add_kernel(float *dst, const float *part, int chunks, int C) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += gridDim.x * blockDim.x) {
        float t = 0.0f;
        for (int k = 0; k < chunks; k++)
            t += part[(size_t)k * C + c];
        dst[c] += t;
    }
}

extern "C" ddp_status ddp_cuda_col_chunks_add(ddp_cuda_backend *cb, float *dst, const float *part,
                                              int chunks, int C) {
    col_chunks_add_kernel<<<ddp_cuda_blocks((size_t)C, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0,
                            cb->stream>>>(dst, part, chunks, C);
    DDP_CUDA_CHECK_LAUNCH("col_chunks_add_kernel");
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_bias_add(ddp_backend *b, float *y, const float *bias, int N, int C) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    size_t total = (size_t)N * (size_t)C;
    if (total == 0) return DDP_OK;
    bias_add_kernel<<<ddp_cuda_blocks(total, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0, cb->stream>>>(
        y, bias, total, (size_t)C);
    DDP_CUDA_CHECK_LAUNCH("bias_add_kernel");
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_bias_grad(ddp_backend *b, float *dbias, const float *dy, int N,
                                         int C) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    /* N == 0 adds nothing; C == 0 has nothing to add to. */
    if (N <= 0 || C <= 0) return DDP_OK;
    int chunks = ddp_cuda_col_chunks(N, C), rows = (N + chunks - 1) / chunks;
    void *part = NULL;
    DDP_CHECK(ddp_cuda_workspace(cb, DDP_CUDA_WS_SUMS, (size_t)chunks * C * sizeof(float), &part));
    dim3 block(BG_COLS, BG_ROWS);
    dim3 grid((unsigned int)((C + BG_COLS - 1) / BG_COLS), (unsigned int)chunks);
    bias_grad_partial_kernel<<<grid, block, 0, cb->stream>>>((float *)part, dy, N, C, rows);
    DDP_CUDA_CHECK_LAUNCH("bias_grad_partial_kernel");
    DDP_CHECK(ddp_cuda_col_chunks_add(cb, dbias, (const float *)part, chunks, C));
    return DDP_OK;
}

/* ---- activations ---------------------------------------------------------------------- */

__device__ static float gelu(float x) {
    return 0.5f * x * (1.0f + tanhf(GELU_K0 * (x + GELU_K1 * x * x * x)));
}

/* d/dx of gelu: 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2),
 * with t = tanh(sqrt(2/pi) (x + 0.044715 x^3)). */
__device__ static float gelu_grad(float x) {
    float t = tanhf(GELU_K0 * (x + GELU_K1 * x * x * x));
    return 0.5f * (1.0f + t) +
           0.5f * x * (1.0f - t * t) * GELU_K0 * (1.0f + 3.0f * GELU_K1 * x * x);
}

/* The activations of DDP_ACTS: act_value<A>(x) = act(x), act_grad<A>(x, g) = g act'(x). */
template <int A> __device__ float act_value(float v);
template <int A> __device__ float act_grad(float v, float g);
template <> __device__ float act_value<DDP_ACT_RELU>(float v) { return v > 0.0f ? v : 0.0f; }
template <> __device__ float act_grad<DDP_ACT_RELU>(float v, float g) {
    return v > 0.0f ? g : 0.0f;
}
template <> __device__ float act_value<DDP_ACT_GELU>(float v) { return gelu(v); }
template <> __device__ float act_grad<DDP_ACT_GELU>(float v, float g) { return g * gelu_grad(v); }

/* y = act(x); y may equal x. */
template <int A> __global__ static void act_forward_kernel(const float *x, float *y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = act_value<A>(x[i]);
}

/* dx = dy * act'(x); dx may equal dy. */
template <int A>
__global__ static void act_backward_kernel(const float *x, const float *dy, float *dx, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dx[i] = act_grad<A>(x[i], dy[i]);
}

template <int A>
static ddp_status launch_act(ddp_cuda_backend *cb, int backward, const float *x, const float *dy,
                             float *out, size_t n) {
    unsigned int blocks = ddp_cuda_blocks(n, DDP_CUDA_THREADS);
    if (backward) {
        act_backward_kernel<A><<<blocks, DDP_CUDA_THREADS, 0, cb->stream>>>(x, dy, out, n);
        DDP_CUDA_CHECK_LAUNCH("act_backward_kernel");
    } else {
        act_forward_kernel<A><<<blocks, DDP_CUDA_THREADS, 0, cb->stream>>>(x, out, n);
        DDP_CUDA_CHECK_LAUNCH("act_forward_kernel");
    }
    return DDP_OK;
}

/* One kernel per activation, chosen here: a value of DDP_ACTS without its case is a
 * compiler warning (-Wswitch) and, at run time, an error rather than another activation. */
static ddp_status act(ddp_backend *b, ddp_act a, int backward, const float *x, const float *dy,
                      float *out, size_t n) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (n == 0) return DDP_OK;
    switch (a) {
    case DDP_ACT_RELU:
        DDP_CHECK(launch_act<DDP_ACT_RELU>(cb, backward, x, dy, out, n));
        return DDP_OK;
    case DDP_ACT_GELU:
        DDP_CHECK(launch_act<DDP_ACT_GELU>(cb, backward, x, dy, out, n));
        return DDP_OK;
    case DDP_ACT_COUNT: break;
    }
    return DDP_FAIL(DDP_ERR_INVALID_ARG, "the CUDA backend has no activation %d", (int)a);
}

extern "C" ddp_status ddp_cuda_act_forward(ddp_backend *b, ddp_act a, const float *x, float *y,
                                           size_t n) {
    DDP_CHECK(act(b, a, 0, x, NULL, y, n));
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_act_backward(ddp_backend *b, ddp_act a, const float *x,
                                            const float *dy, float *dx, size_t n) {
    DDP_CHECK(act(b, a, 1, x, dy, dx, n));
    return DDP_OK;
}

/* ---- scale ---------------------------------------------------------------------------- */

__global__ static void scale_kernel(float *x, size_t n, float alpha) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] *= alpha;
}

extern "C" ddp_status ddp_cuda_scale(ddp_backend *b, float *x, size_t n, float alpha) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (n == 0) return DDP_OK;
    scale_kernel<<<ddp_cuda_blocks(n, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0, cb->stream>>>(x, n,
                                                                                            alpha);
    DDP_CUDA_CHECK_LAUNCH("scale_kernel");
    return DDP_OK;
}

/* ---- add ------------------------------------------------------------------------------ */

__global__ static void add_kernel(float *y, const float *a, const float *c, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = a[i] + c[i];
}

extern "C" ddp_status ddp_cuda_add(ddp_backend *b, float *y, const float *a, const float *c,
                                   size_t n) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (n == 0) return DDP_OK;
    add_kernel<<<ddp_cuda_blocks(n, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0, cb->stream>>>(y, a, c,
                                                                                          n);
    DDP_CUDA_CHECK_LAUNCH("add_kernel");
    return DDP_OK;
}

/* ---- transpose ------------------------------------------------------------------------ */

/* One 32 x 32 tile per block through shared memory (padded against bank conflicts), so
 * that both the reads of x and the writes of y are coalesced. */
__global__ static void transpose_kernel(float *y, const float *x, int rows, int cols) {
    __shared__ float tile[32][33];
    const float *xs = x + (size_t)blockIdx.z * rows * cols;
    float *ys = y + (size_t)blockIdx.z * rows * cols;
    int c = blockIdx.x * 32 + threadIdx.x, r0 = blockIdx.y * 32;
    for (int i = threadIdx.y; i < 32; i += blockDim.y) {
        int r = r0 + i;
        if (r < rows && c < cols) tile[i][threadIdx.x] = xs[(size_t)r * cols + c];
    }
    __syncthreads();
    int r = blockIdx.y * 32 + threadIdx.x, c0 = blockIdx.x * 32;
    for (int i = threadIdx.y; i < 32; i += blockDim.y) {
        int cc = c0 + i;
        if (cc < cols && r < rows) ys[(size_t)cc * rows + r] = tile[threadIdx.x][i];
    }
}

extern "C" ddp_status ddp_cuda_transpose(ddp_backend *b, float *y, const float *x, int batch,
                                         int rows, int cols) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    if (batch <= 0 || rows <= 0 || cols <= 0) return DDP_OK; /* empty: a grid of 0 is invalid */
    if (batch > 65535)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "transpose: %d matrices (at most 65535 per call)",
                        batch);
    dim3 grid((unsigned)((cols + 31) / 32), (unsigned)((rows + 31) / 32), (unsigned)batch);
    transpose_kernel<<<grid, dim3(32, 8), 0, cb->stream>>>(y, x, rows, cols);
    DDP_CUDA_CHECK_LAUNCH("transpose_kernel");
    return DDP_OK;
}
