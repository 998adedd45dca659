/*
 * The CPU backend's max pooling and batch normalization (ddp/backend_ops.h says what
 * each computes).
 *
 * Both are loops over the channels, the fastest index of every channels-last activation,
 * which gcc vectorizes. Batch-norm sums accumulate in double, each channel in row order,
 * so the result does not depend on the vector width; the file is compiled without fused
 * multiply-adds (CMakeLists.txt), so every instruction set that DDP_CPU_CLONES picks
 * gives the same bits.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend_impl.h"
#include "backend/cpu_math.h"

/* ---- max pooling ---------------------------------------------------------------------- */

DDP_CPU_CLONES ddp_status ddp_cpu_maxpool_forward(ddp_backend *b, float *y, int32_t *arg,
                                                  const float *x, const ddp_pool_shape *s) {
    const int H = s->H, W = s->W, C = s->C, K = s->K;
    const int Ho = ddp_conv_out(H, K, s->stride, 0), Wo = ddp_conv_out(W, K, s->stride, 0);
    for (int n = 0; n < s->N; n++)
        for (int oh = 0; oh < Ho; oh++)
            for (int ow = 0; ow < Wo; ow++) {
                size_t o = (((size_t)n * Ho + oh) * Wo + ow) * C;
                float *restrict best = y + o;   /* (C) */
                int32_t *restrict at = arg + o; /* (C) */
                /* The window in row-major order; a later element takes over only when it
                 * is strictly larger, so ties keep the first. A NaN counts as larger than
                 * any number (the first NaN wins), so that it reaches the output as it
                 * would through any other layer. */
                for (int kh = 0; kh < K; kh++)
                    for (int kw = 0; kw < K; kw++) {
                        size_t i = (((size_t)n * H + (size_t)oh * s->stride + kh) * W +
                                    (size_t)ow * s->stride + kw) *
                                   C;
                        const float *restrict v = x + i; /* (C) */
                        if (kh == 0 && kw == 0) {
                            for (int c = 0; c < C; c++) {
                                best[c] = v[c];
                                at[c] = (int32_t)(i + (size_t)c);
                            }
                            continue;
                        }
                        for (int c = 0; c < C; c++) {
                            int take = v[c] > best[c] || (v[c] != v[c] && best[c] == best[c]);
                            best[c] = take ? v[c] : best[c];
                            at[c] = take ? (int32_t)(i + (size_t)c) : at[c];
                        }
                    }
            }
    return DDP_OK;
}

ddp_status ddp_cpu_maxpool_backward(ddp_backend *b, float *dx, const float *dy, const int32_t *arg,
                                    const ddp_pool_shape *s) {
    /* Each gradient goes to its window's maximum, in output order: where windows overlap,
     * an element that is the maximum of several adds their gradients in that order. */
    const int Ho = ddp_conv_out(s->H, s->K, s->stride, 0);
    const int Wo = ddp_conv_out(s->W, s->K, s->stride, 0);
    size_t n_in = (size_t)s->N * s->H * s->W * s->C, n_out = (size_t)s->N * Ho * Wo * s->C;
    memset(dx, 0, n_in * sizeof *dx);
    for (size_t i = 0; i < n_out; i++)
        dx[arg[i]] += dy[i];
    return DDP_OK;
}

/* ---- batch normalization -------------------------------------------------------------- */

DDP_CPU_CLONES ddp_status ddp_cpu_bn_sums(ddp_backend *b, double *sums, const float *x, int rows,
                                          int C) {
    double *restrict s1 = sums, *restrict s2 = sums + C; /* (C), (C) */
    for (int c = 0; c < C; c++)
        s1[c] = s2[c] = 0.0;
    for (int r = 0; r < rows; r++) {
        const float *restrict row = x + (size_t)r * C; /* (C) */
        for (int c = 0; c < C; c++) {
            double v = (double)row[c];
            s1[c] += v;
            s2[c] += v * v; /* exact: a float's square fits a double's mantissa */
        }
    }
    return DDP_OK;
}

ddp_status ddp_cpu_bn_stats(ddp_backend *b, float *mean, float *rstd, float *running,
                            const double *sums, double count, float eps, float momentum, int C) {
    float *run_mean = running, *run_var = running + C; /* (C), (C) */
    for (int c = 0; c < C; c++) {
        if (count == 0.0) {
            mean[c] = run_mean[c];
            rstd[c] = (float)(1.0 / sqrt((double)run_var[c] + (double)eps));
            continue;
        }
        double m = sums[c] / count;
        /* E[x^2] - m^2 in double: the cancellation costs digits only when the mean exceeds
         * the spread by many orders of magnitude. Never below zero. */
        double var = sums[C + c] / count - m * m;
        if (var < 0.0) var = 0.0;
        mean[c] = (float)m;
        rstd[c] = (float)(1.0 / sqrt(var + (double)eps));
        run_mean[c] = (float)((1.0 - momentum) * run_mean[c] + momentum * m);
        run_var[c] = (float)((1.0 - momentum) * run_var[c] + momentum * var * count / (count - 1));
    }
    return DDP_OK;
}

DDP_CPU_CLONES ddp_status ddp_cpu_bn_normalize(ddp_backend *b, float *y, const float *x,
                                               const float *mean, const float *rstd,
                                               const float *gamma, const float *beta, int rows,
                                               int C) {
    /* y may be x (no restrict): each element is read before it is written. */
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * C; /* (C) */
        float *yr = y + (size_t)r * C;       /* (C) */
        for (int c = 0; c < C; c++)
            yr[c] = (xr[c] - mean[c]) * rstd[c] * gamma[c] + beta[c];
    }
    return DDP_OK;
}

DDP_CPU_CLONES ddp_status ddp_cpu_bn_backward_sums(ddp_backend *b, double *sums, float *dgamma,
                                                   float *dbeta, const float *dy, const float *x,
                                                   const float *mean, const float *rstd, int rows,
                                                   int C) {
    /* The sum of dy xhat is rstd times the sum of dy (x - mean): rstd once per channel at
     * the end rather than once per element. */
    double *restrict s1 = sums, *restrict s2 = sums + C; /* (C), (C) */
    for (int c = 0; c < C; c++)
        s1[c] = s2[c] = 0.0;
    for (int r = 0; r < rows; r++) {
        const float *restrict g = dy + (size_t)r * C, *restrict xr = x + (size_t)r * C;
        for (int c = 0; c < C; c++) {
            s1[c] += (double)g[c];
            s2[c] += (double)g[c] * (double)(xr[c] - mean[c]);
        }
    }
    for (int c = 0; c < C; c++) {
        s2[c] *= (double)rstd[c];
        dgamma[c] = (float)((double)dgamma[c] + s2[c]);
        dbeta[c] = (float)((double)dbeta[c] + s1[c]);
    }
    return DDP_OK;
}

DDP_CPU_CLONES ddp_status ddp_cpu_bn_backward_input(ddp_backend *b, float *dx, const float *dy,
                                                    const float *x, const float *mean,
                                                    const float *rstd, const float *gamma,
                                                    const double *sums, double count, int rows,
                                                    int C) {
    /* Per channel: dx = a (dy - m0 - (x - mean) k) with a = gamma rstd, m0 = the mean of
     * dy and k = rstd times the mean of dy xhat. */
    float *coef = malloc(3 * (size_t)C * sizeof *coef);
    if (!coef)
        return DDP_FAIL(DDP_ERR_NOMEM, "bn_backward_input: no memory for %d channels of scratch",
                        C);
    float *restrict a = coef, *restrict m0 = coef + C, *restrict k = coef + 2 * C;
    for (int c = 0; c < C; c++) {
        a[c] = gamma[c] * rstd[c];
        m0[c] = (float)(sums[c] / count);
        k[c] = (float)((double)rstd[c] * (sums[C + c] / count));
    }
    /* dx may be dy (no restrict): each element is read before it is written. */
    for (int r = 0; r < rows; r++) {
        const float *g = dy + (size_t)r * C, *restrict xr = x + (size_t)r * C;
        float *o = dx + (size_t)r * C;
        for (int c = 0; c < C; c++)
            o[c] = a[c] * ((g[c] - m0[c]) - (xr[c] - mean[c]) * k[c]);
    }
    free(coef);
    return DDP_OK;
}
