/*
 * The CUDA backend's convolutional-network ops: 2-D convolution, max pooling and batch
 * normalization (ddp/backend_ops.h says what each computes; the CPU backend is the
 * reference they are tested against, tests/backend/test_ops_cuda.c).
 *
 * Convolution is im2col into the caller's workspace plus the gemm op, so the products run
 * in the backend's math mode (FP32, TF32 or BF16). The patch matrix cols (M, K), M = N Ho
 * Wo output pixels, K = Cin KH KW, has its columns in (c, kh, kw) order, so the weights
 * (Cout, Cin, KH, KW) are the row-major matrix W (Cout, K) as they lie:
 *   forward   y (M, Cout) = cols W^T, then + bias
 *   backward  dbias += column sums of dy;  dW += dy^T cols;  dcols = dy W;  dx = col2im(dcols)
 *
 * Every result is the same bits on every call, without atomics: col2im and the pooling
 * backward gather (the thread that owns an element of dx adds what reaches it in a fixed
 * order), and per-channel sums (batch norm, the conv bias) add rows in double within fixed
 * chunks, then the chunks in order; the partition depends only on the shape. The pooling
 * backward adds in the CPU's order (output order) and the elementwise batch-norm formulas
 * round as the CPU's loops do (explicit _rn intrinsics where nvcc would otherwise fuse a
 * multiply and an add), so with the same inputs those give the CPU's bits.
 */
#include <math.h>

#include <cuda_runtime.h>

#include "backend/cuda/cuda_internal.h"

/* The coordinates of element i of a channels-last (N, H, W, C) array. */
struct nhwc {
    size_t n;
    int h, w, c;
};

__device__ static nhwc nhwc_of(size_t i, int H, int W, int C) {
    nhwc p;
    p.c = (int)(i % (size_t)C);
    i /= (size_t)C;
    p.w = (int)(i % (size_t)W);
    i /= (size_t)W;
    p.h = (int)(i % (size_t)H);
    p.n = i / (size_t)H;
    return p;
}

/* ---- 2-D convolution ---------------------------------------------------------------------- */

/* A convolution's sizes, for kernels (by value). */
struct conv_geom {
    int N, H, W, Cin, Cout, KH, KW, stride, pad;
    int Ho, Wo, K; /* output rows and columns; K = Cin KH KW */
};

static conv_geom geom_of(const ddp_conv_shape *s) {
    conv_geom g;
    g.N = s->N;
    g.H = s->H;
    g.W = s->W;
    g.Cin = s->Cin;
    g.Cout = s->Cout;
    g.KH = s->KH;
    g.KW = s->KW;
    g.stride = s->stride;
    g.pad = s->pad;
    g.Ho = ddp_conv_out(s->H, s->KH, s->stride, s->pad);
    g.Wo = ddp_conv_out(s->W, s->KW, s->stride, s->pad);
    g.K = s->Cin * s->KH * s->KW;
    return g;
}

/* cols (M, K): row (n, oh, ow), column (c, kh, kw) = x (N, H, W, Cin) [n, oh s - p + kh,
 * ow s - p + kw, c], 0 where that falls in the padding. One thread per element of cols,
 * so the writes are coalesced. */
__global__ static void im2col_kernel(float *cols, const float *x, conv_geom g, size_t total) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t m = i / (size_t)g.K;
        int k = (int)(i - m * (size_t)g.K);
        int kw = k % g.KW, t = k / g.KW, kh = t % g.KH, c = t / g.KH;
        nhwc o = nhwc_of(m, g.Ho, g.Wo, 1); /* the output pixel of row m */
        size_t n = o.n;
        int ih = o.h * g.stride - g.pad + kh, iw = o.w * g.stride - g.pad + kw;
        cols[i] = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W
                      ? x[((n * g.H + (size_t)ih) * g.W + (size_t)iw) * g.Cin + c]
                      : 0.0f;
    }
}

/* dx (N, H, W, Cin) = for each element, the sum of the entries of dcols (M, K) that
 * im2col copied it to, in (kh, kw) order. One thread per element of dx gathers them: an
 * input pixel (ih, iw) sits under kernel offset (kh, kw) of the output pixel (oh, ow) with
 * oh s = ih + p - kh (and likewise for columns), when that divides and is in range. Every
 * element is written, 0 where no patch covers it. */
__global__ static void col2im_kernel(float *dx, const float *dcols, conv_geom g, size_t total) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        nhwc p = nhwc_of(i, g.H, g.W, g.Cin);
        size_t n = p.n;
        int ih = p.h, iw = p.w, c = p.c;
        float acc = 0.0f;
        for (int kh = 0; kh < g.KH; kh++) {
            int th = ih + g.pad - kh;
            if (th < 0 || th % g.stride) continue;
            int oh = th / g.stride;
            if (oh >= g.Ho) continue;
            for (int kw = 0; kw < g.KW; kw++) {
                int tw = iw + g.pad - kw;
                if (tw < 0 || tw % g.stride) continue;
                int ow = tw / g.stride;
                if (ow >= g.Wo) continue;
                size_t m = (n * g.Ho + (size_t)oh) * g.Wo + (size_t)ow;
                acc += dcols[m * g.K + ((size_t)c * g.KH + kh) * g.KW + kw];
            }
        }
        dx[i] = acc;
    }
}

static ddp_status im2col(ddp_cuda_backend *cb, float *cols, const float *x, const conv_geom &g) {
    size_t total = (size_t)g.N * g.Ho * g.Wo * (size_t)g.K; /* > 0: the checks allow no empty */
    im2col_kernel<<<ddp_cuda_blocks(total, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0, cb->stream>>>(
        cols, x, g, total);
    DDP_CUDA_CHECK_LAUNCH("im2col_kernel");
    return DDP_OK;
}

/* ---- per-channel sums ----------------------------------------------------------------------- */

/* What channel_sums adds up over the rows of a (rows, C), per channel c, in double:
 * SUM_X_SQ     s1 = sum a, s2 = sum a^2                         (bn_sums)
 * SUM_DY_XC    s1 = sum a, s2 = rstd sum a (x - mean), a = dy   (bn_backward_sums)
 * SUM_ONLY     s1 = sum a                                       (the conv bias gradient) */
enum sum_kind { SUM_X_SQ, SUM_DY_XC, SUM_ONLY };

#define CS_COLS  32  /* channels per block: a warp reads 32 neighbours of a row, coalesced */
#define CS_LANES 8   /* rows read at once per block */
#define CS_ROWS  256 /* rows per chunk: one block's partial sums */

/* part (chunks, 2, C): the two sums of each chunk of CS_ROWS rows. Thread (x, y) of a
 * block adds rows y, y + CS_LANES, ... of the chunk for channel x, then one thread per
 * channel adds the CS_LANES lanes in order. */
__global__ static void channel_partials_kernel(double *part, const float *a, const float *x,
                                               const float *mean, int kind, int rows, int C,
                                               int chunks) {
    __shared__ double lane1[CS_LANES][CS_COLS + 1], lane2[CS_LANES][CS_COLS + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c = blockIdx.x * CS_COLS + tx;
    for (int chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
        double s1 = 0.0, s2 = 0.0;
        if (c < C) {
            const float m = kind == SUM_DY_XC ? mean[c] : 0.0f;
            const int r1 = min(rows, (chunk + 1) * CS_ROWS);
            for (int r = chunk * CS_ROWS + ty; r < r1; r += CS_LANES) {
                size_t i = (size_t)r * C + c;
                double v = (double)a[i];
                s1 += v;
                /* Products of two floats are exact in double, so a fused multiply-add
                 * rounds the same as the CPU's multiply, then add. */
                if (kind == SUM_X_SQ)
                    s2 += v * v;
                else if (kind == SUM_DY_XC)
                    s2 += v * (double)(x[i] - m);
            }
        }
        lane1[ty][tx] = s1;
        lane2[ty][tx] = s2;
        __syncthreads();
        if (ty == 0 && c < C) {
            double t1 = 0.0, t2 = 0.0;
            for (int k = 0; k < CS_LANES; k++) {
                t1 += lane1[k][tx];
                t2 += lane2[k][tx];
            }
            part[(size_t)chunk * 2 * C + c] = t1;
            part[((size_t)chunk * 2 + 1) * C + c] = t2;
        }
        __syncthreads(); /* the next chunk rewrites the lanes */
    }
}

/* The chunks' sums added in chunk order, one thread per channel, and delivered:
 * SUM_X_SQ   sums (2, C) = (s1, s2)
 * SUM_DY_XC  s2 *= rstd; sums (2, C) = (s1, s2); f1 (dgamma) += s2; f2 (dbeta) += s1
 * SUM_ONLY   f1 (dbias) += s1
 * Each "+=" adds in double and rounds once, as the CPU does. */
__global__ static void channel_finish_kernel(const double *part, int chunks, int kind, int C,
                                             double *sums, float *f1, float *f2,
                                             const float *rstd) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += gridDim.x * blockDim.x) {
        double t1 = 0.0, t2 = 0.0;
        for (int k = 0; k < chunks; k++) {
            t1 += part[(size_t)k * 2 * C + c];
            t2 += part[((size_t)k * 2 + 1) * C + c];
        }
        if (kind == SUM_X_SQ) {
            sums[c] = t1;
            sums[C + c] = t2;
        } else if (kind == SUM_DY_XC) {
            t2 *= (double)rstd[c];
            sums[c] = t1;
            sums[C + c] = t2;
            f1[c] = (float)((double)f1[c] + t2);
            f2[c] = (float)((double)f2[c] + t1);
        } else {
            f1[c] = (float)((double)f1[c] + t1);
        }
    }
}

/* The sums of `kind` over a (rows, C), rows >= 0, C > 0; see channel_finish_kernel for
 * where they go. The partial sums live in the backend's DDP_CUDA_WS_SUMS workspace. */
static ddp_status channel_sums(ddp_cuda_backend *cb, int kind, double *sums, float *f1, float *f2,
                               const float *a, const float *x, const float *mean, const float *rstd,
                               int rows, int C) {
    const int chunks = (rows + CS_ROWS - 1) / CS_ROWS;
    double *part = NULL;
    if (chunks > 0) {
        void *ws = NULL;
        DDP_CHECK(ddp_cuda_workspace(cb, DDP_CUDA_WS_SUMS,
                                     (size_t)chunks * 2 * (size_t)C * sizeof(double), &ws));
        part = (double *)ws;
        dim3 block(CS_COLS, CS_LANES);
        dim3 grid((unsigned int)((C + CS_COLS - 1) / CS_COLS),
                  (unsigned int)(chunks < 65535 ? chunks : 65535));
        channel_partials_kernel<<<grid, block, 0, cb->stream>>>(part, a, x, mean, kind, rows, C,
                                                                chunks);
        DDP_CUDA_CHECK_LAUNCH("channel_partials_kernel");
    }
    /* With no rows the sums are zeros, and nothing is added to the gradients. */
    channel_finish_kernel<<<ddp_cuda_blocks((size_t)C, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0,
                            cb->stream>>>(part, chunks, kind, C, sums, f1, f2, rstd);
    DDP_CUDA_CHECK_LAUNCH("channel_finish_kernel");
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_conv2d_forward(ddp_backend *b, float *y, const float *x,
                                              const float *w, const float *bias, float *work,
                                              const ddp_conv_shape *s) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    const conv_geom g = geom_of(s);
    const int M = g.N * g.Ho * g.Wo;
    DDP_CHECK(im2col(cb, work, x, g));
    /* y (M, Cout) = cols (M, K) W^T */
    DDP_CHECK(ddp_cuda_gemm(b, 0, 1, M, g.Cout, g.K, 1.0f, work, g.K, w, g.K, 0.0f, y, g.Cout));
    DDP_CHECK(ddp_cuda_bias_add(b, y, bias, M, g.Cout));
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_conv2d_backward(ddp_backend *b, float *dx, float *dw, float *dbias,
                                               const float *dy, const float *x, const float *w,
                                               float *work, const ddp_conv_shape *s) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    const conv_geom g = geom_of(s);
    const int M = g.N * g.Ho * g.Wo;
    /* dbias (Cout) += the column sums of dy (M, Cout), in double. */
    DDP_CHECK(channel_sums(cb, SUM_ONLY, NULL, dbias, NULL, dy, NULL, NULL, NULL, M, g.Cout));
    /* dW (Cout, K) += dy^T (Cout, M) cols (M, K) */
    DDP_CHECK(im2col(cb, work, x, g));
    DDP_CHECK(ddp_cuda_gemm(b, 1, 0, g.Cout, g.K, M, 1.0f, dy, g.Cout, work, g.K, 1.0f, dw, g.K));
    if (dx) {
        /* dcols (M, K) = dy (M, Cout) W (Cout, K) over the patches (their last use is the
         * product above, earlier on the stream), then gathered back into the image. */
        DDP_CHECK(
            ddp_cuda_gemm(b, 0, 0, M, g.K, g.Cout, 1.0f, dy, g.Cout, w, g.K, 0.0f, work, g.K));
        size_t total = (size_t)g.N * g.H * g.W * (size_t)g.Cin;
        col2im_kernel<<<ddp_cuda_blocks(total, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0,
                        cb->stream>>>(dx, work, g, total);
        DDP_CUDA_CHECK_LAUNCH("col2im_kernel");
    }
    return DDP_OK;
}

/* ---- max pooling ---------------------------------------------------------------------------- */

/* y, arg (N, Ho, Wo, C): each window's maximum and its index in x (N, H, W, C), one thread
 * per output. The window is walked in row-major order and a later element takes over only
 * when strictly larger, or when it is a NaN and the maximum so far is not: the first
 * maximum on ties, the first NaN over any number, as on the CPU. */
__global__ static void maxpool_forward_kernel(float *y, int32_t *arg, const float *x,
                                              ddp_pool_shape s, int Ho, int Wo, size_t total) {
    for (size_t o = blockIdx.x * (size_t)blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        nhwc q = nhwc_of(o, Ho, Wo, s.C);
        size_t n = q.n;
        int oh = q.h, ow = q.w, c = q.c;
        float best = 0.0f;
        size_t at = 0;
        for (int kh = 0; kh < s.K; kh++)
            for (int kw = 0; kw < s.K; kw++) {
                size_t i =
                    ((n * s.H + (size_t)oh * s.stride + kh) * s.W + (size_t)ow * s.stride + kw) *
                        s.C +
                    c;
                float v = x[i];
                if ((kh == 0 && kw == 0) || v > best || (isnan(v) && !isnan(best))) {
                    best = v;
                    at = i;
                }
            }
        y[o] = best;
        arg[o] = (int32_t)at;
    }
}

/* dx (N, H, W, C) = for each element, the sum of dy over the windows whose maximum it is
 * (arg), one thread per element: the windows that contain row ih are oh in
 * [ceil((ih - K + 1) / stride), ih / stride] (likewise columns), visited in output order,
 * which is the order the CPU adds them in. */
__global__ static void maxpool_backward_kernel(float *dx, const float *dy, const int32_t *arg,
                                               ddp_pool_shape s, int Ho, int Wo, size_t total) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        nhwc p = nhwc_of(i, s.H, s.W, s.C);
        size_t n = p.n;
        int ih = p.h, iw = p.w, c = p.c;
        int oh0 = ih >= s.K ? (ih - s.K) / s.stride + 1 : 0, oh1 = min(ih / s.stride, Ho - 1);
        int ow0 = iw >= s.K ? (iw - s.K) / s.stride + 1 : 0, ow1 = min(iw / s.stride, Wo - 1);
        float acc = 0.0f;
        for (int oh = oh0; oh <= oh1; oh++)
            for (int ow = ow0; ow <= ow1; ow++) {
                size_t o = ((n * Ho + (size_t)oh) * Wo + (size_t)ow) * s.C + c;
                if ((size_t)arg[o] == i) acc += dy[o];
            }
        dx[i] = acc;
    }
}

extern "C" ddp_status ddp_cuda_maxpool_forward(ddp_backend *b, float *y, int32_t *arg,
                                               const float *x, const ddp_pool_shape *s) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    const int Ho = ddp_conv_out(s->H, s->K, s->stride, 0),
              Wo = ddp_conv_out(s->W, s->K, s->stride, 0);
    size_t total = (size_t)s->N * Ho * Wo * (size_t)s->C;
    if (total == 0) return DDP_OK;
    maxpool_forward_kernel<<<ddp_cuda_blocks(total, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0,
                             cb->stream>>>(y, arg, x, *s, Ho, Wo, total);
    DDP_CUDA_CHECK_LAUNCH("maxpool_forward_kernel");
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_maxpool_backward(ddp_backend *b, float *dx, const float *dy,
                                                const int32_t *arg, const ddp_pool_shape *s) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    const int Ho = ddp_conv_out(s->H, s->K, s->stride, 0),
              Wo = ddp_conv_out(s->W, s->K, s->stride, 0);
    size_t total = (size_t)s->N * s->H * s->W * (size_t)s->C;
    if (total == 0) return DDP_OK;
    maxpool_backward_kernel<<<ddp_cuda_blocks(total, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0,
                              cb->stream>>>(dx, dy, arg, *s, Ho, Wo, total);
    DDP_CUDA_CHECK_LAUNCH("maxpool_backward_kernel");
    return DDP_OK;
}

/* ---- batch normalization ---------------------------------------------------------------- */

/* mean, rstd (C) and running (2, C) from sums (2, C) over `count` rows, or from running
 * alone when count is 0 (sums then is not read). The CPU's formulas in double, one thread
 * per channel; _rn keeps each product its own rounding, as on the CPU. */
__global__ static void bn_stats_kernel(float *mean, float *rstd, float *running, const double *sums,
                                       double count, float eps, float momentum, int C) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += gridDim.x * blockDim.x) {
        float *run_mean = running, *run_var = running + C;
        if (count == 0.0) {
            mean[c] = run_mean[c];
            rstd[c] = (float)(1.0 / sqrt((double)run_var[c] + (double)eps));
            continue;
        }
        double m = sums[c] / count;
        double var = sums[C + c] / count - __dmul_rn(m, m);
        if (var < 0.0) var = 0.0;
        double keep = 1.0 - (double)momentum;
        double unbiased = __dmul_rn((double)momentum, var) * count / (count - 1.0);
        mean[c] = (float)m;
        rstd[c] = (float)(1.0 / sqrt(var + (double)eps));
        run_mean[c] =
            (float)(__dmul_rn(keep, (double)run_mean[c]) + __dmul_rn((double)momentum, m));
        run_var[c] = (float)(__dmul_rn(keep, (double)run_var[c]) + unbiased);
    }
}

/* y (rows, C) = (x - mean) rstd gamma + beta; y may be x. */
__global__ static void bn_normalize_kernel(float *y, const float *x, const float *mean,
                                           const float *rstd, const float *gamma, const float *beta,
                                           size_t total, int C) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(i % (size_t)C);
        y[i] = __fadd_rn(__fmul_rn(__fmul_rn(x[i] - mean[c], rstd[c]), gamma[c]), beta[c]);
    }
}

/* dx (rows, C) = a (dy - m0 - (x - mean) k), a = gamma rstd, m0 = sums[0] / count,
 * k = rstd sums[1] / count: the CPU's coefficients, computed per element (cheaper than a
 * pass to store them; the kernel is bound by memory). dx may be dy. */
__global__ static void bn_backward_input_kernel(float *dx, const float *dy, const float *x,
                                                const float *mean, const float *rstd,
                                                const float *gamma, const double *sums,
                                                double count, size_t total, int C) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(i % (size_t)C);
        float a = __fmul_rn(gamma[c], rstd[c]);
        float m0 = (float)(sums[c] / count);
        float k = (float)__dmul_rn((double)rstd[c], sums[C + c] / count);
        dx[i] = __fmul_rn(a, (dy[i] - m0) - __fmul_rn(x[i] - mean[c], k));
    }
}

extern "C" ddp_status ddp_cuda_bn_sums(ddp_backend *b, double *sums, const float *x, int rows,
                                       int C) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    return channel_sums(cb, SUM_X_SQ, sums, NULL, NULL, x, NULL, NULL, NULL, rows, C);
}

extern "C" ddp_status ddp_cuda_bn_stats(ddp_backend *b, float *mean, float *rstd, float *running,
                                        const double *sums, double count, float eps, float momentum,
                                        int C) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    bn_stats_kernel<<<ddp_cuda_blocks((size_t)C, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0,
                      cb->stream>>>(mean, rstd, running, sums, count, eps, momentum, C);
    DDP_CUDA_CHECK_LAUNCH("bn_stats_kernel");
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_bn_normalize(ddp_backend *b, float *y, const float *x,
                                            const float *mean, const float *rstd,
                                            const float *gamma, const float *beta, int rows,
                                            int C) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    size_t total = (size_t)rows * (size_t)C;
    if (total == 0) return DDP_OK;
    bn_normalize_kernel<<<ddp_cuda_blocks(total, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0,
                          cb->stream>>>(y, x, mean, rstd, gamma, beta, total, C);
    DDP_CUDA_CHECK_LAUNCH("bn_normalize_kernel");
    return DDP_OK;
}

extern "C" ddp_status ddp_cuda_bn_backward_sums(ddp_backend *b, double *sums, float *dgamma,
                                                float *dbeta, const float *dy, const float *x,
                                                const float *mean, const float *rstd, int rows,
                                                int C) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    return channel_sums(cb, SUM_DY_XC, sums, dgamma, dbeta, dy, x, mean, rstd, rows, C);
}

extern "C" ddp_status ddp_cuda_bn_backward_input(ddp_backend *b, float *dx, const float *dy,
                                                 const float *x, const float *mean,
                                                 const float *rstd, const float *gamma,
                                                 const double *sums, double count, int rows,
                                                 int C) {
    ddp_cuda_backend *cb = (ddp_cuda_backend *)b;
    DDP_CHECK(ddp_cuda_use(cb));
    size_t total = (size_t)rows * (size_t)C;
    if (total == 0) return DDP_OK;
    bn_backward_input_kernel<<<ddp_cuda_blocks(total, DDP_CUDA_THREADS), DDP_CUDA_THREADS, 0,
                               cb->stream>>>(dx, dy, x, mean, rstd, gamma, sums, count, total, C);
    DDP_CUDA_CHECK_LAUNCH("bn_backward_input_kernel");
    return DDP_OK;
}
