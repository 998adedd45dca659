/*
 * The alternative to oneDNN that the CPU backend measured and did not take: 2-D
 * convolution as im2col plus one OpenBLAS product per direction, with the op list's
 * semantics (ddp/backend_ops.h, conv2d_forward and conv2d_backward). Kept here so that
 * bench_conv can measure the choice again (a newer oneDNN or OpenBLAS, another CPU).
 *
 * Rows of the patch matrix are output pixels and, unlike the weight layout (Cout, Cin,
 * KH, KW), their columns run in (kh, kw, c) order: images are channels-last, so the
 * KW Cin floats under one row of the kernel lie side by side in x and a patch is KH
 * contiguous copies (and col2im KH contiguous adds), not KH KW Cin gathers at a stride
 * of Cin. The weights are permuted to (Cout, KH, KW, Cin) on each call to match; where
 * Cin or KH KW is 1 the two orders coincide and nothing is permuted.
 */
#include "im2col_conv.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

/* As the library's loops are built: for AVX-512, AVX2 and any x86-64, chosen at load. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

typedef struct {
    int Ho, Wo;
    int M;   /* rows of the patch matrix: N Ho Wo output pixels */
    int K;   /* its columns: KH KW Cin */
    int seg; /* floats under one kernel row: KW Cin */
    int KHW; /* KH KW */
} conv_dims;

static conv_dims dims_of(const ddp_conv_shape *s) {
    conv_dims d;
    d.Ho = ddp_conv_out(s->H, s->KH, s->stride, s->pad);
    d.Wo = ddp_conv_out(s->W, s->KW, s->stride, s->pad);
    d.M = s->N * d.Ho * d.Wo;
    d.KHW = s->KH * s->KW;
    d.seg = s->KW * s->Cin;
    d.K = d.KHW * s->Cin;
    return d;
}

static int same_order(const ddp_conv_shape *s) { return s->Cin == 1 || s->KH * s->KW == 1; }

/* The kernel columns [lo, hi) inside the input for a patch starting at input column iw0;
 * lo == hi when none are. */
static void inside_columns(int iw0, int KW, int W, int *lo, int *hi) {
    int a = iw0 < 0 ? -iw0 : 0, z = W - iw0;
    *lo = a < KW ? a : KW;
    *hi = z < *lo ? *lo : z < KW ? z : KW;
}

/* cols (N Ho Wo, KH KW Cin): row (n, oh, ow) is the patch of x (N, H, W, Cin) under the
 * kernel at that output pixel, zeros where it hangs over the padding. */
CLONES static void im2col(float *restrict cols, const float *restrict x, const ddp_conv_shape *s,
                          const conv_dims *d) {
    const int H = s->H, W = s->W, Cin = s->Cin, seg = d->seg;
    float *restrict row = cols;
    for (int n = 0; n < s->N; n++)
        for (int oh = 0; oh < d->Ho; oh++)
            for (int ow = 0; ow < d->Wo; ow++, row += d->K) {
                int iw0 = ow * s->stride - s->pad, lo, hi;
                inside_columns(iw0, s->KW, W, &lo, &hi);
                for (int kh = 0; kh < s->KH; kh++) {
                    float *restrict dst = row + kh * seg;
                    int ih = oh * s->stride - s->pad + kh;
                    if (ih < 0 || ih >= H || lo == hi) {
                        memset(dst, 0, (size_t)seg * sizeof *dst);
                        continue;
                    }
                    const float *restrict src =
                        x + (((size_t)n * H + ih) * W + (size_t)(iw0 + lo)) * Cin;
                    int a = lo * Cin, z = hi * Cin;
                    for (int i = 0; i < a; i++)
                        dst[i] = 0.0f;
                    for (int i = a; i < z; i++)
                        dst[i] = src[i - a];
                    for (int i = z; i < seg; i++)
                        dst[i] = 0.0f;
                }
            }
}

/* dx (N, H, W, Cin) = the rows of dcols added back where im2col took them from. */
CLONES static void col2im(float *restrict dx, const float *restrict dcols, const ddp_conv_shape *s,
                          const conv_dims *d) {
    const int H = s->H, W = s->W, Cin = s->Cin, seg = d->seg;
    memset(dx, 0, (size_t)s->N * H * W * Cin * sizeof *dx);
    const float *restrict row = dcols;
    for (int n = 0; n < s->N; n++)
        for (int oh = 0; oh < d->Ho; oh++)
            for (int ow = 0; ow < d->Wo; ow++, row += d->K) {
                int iw0 = ow * s->stride - s->pad, lo, hi;
                inside_columns(iw0, s->KW, W, &lo, &hi);
                if (lo == hi) continue;
                for (int kh = 0; kh < s->KH; kh++) {
                    int ih = oh * s->stride - s->pad + kh;
                    if (ih < 0 || ih >= H) continue;
                    const float *restrict src = row + kh * seg + lo * Cin;
                    float *restrict dst =
                        dx + (((size_t)n * H + ih) * W + (size_t)(iw0 + lo)) * Cin;
                    for (int i = 0; i < (hi - lo) * Cin; i++)
                        dst[i] += src[i];
                }
            }
}

/* wp (Cout, KH KW, Cin) = w (Cout, Cin, KH KW). */
static void permute_weights(float *restrict wp, const float *restrict w, int Cout, int Cin,
                            int KHW) {
    for (int o = 0; o < Cout; o++)
        for (int c = 0; c < Cin; c++)
            for (int k = 0; k < KHW; k++)
                wp[((size_t)o * KHW + k) * Cin + c] = w[((size_t)o * Cin + c) * KHW + k];
}

CLONES static void add_bias_rows(float *restrict y, const float *restrict bias, int rows, int C) {
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < C; j++)
            y[(size_t)r * C + j] += bias[j];
}

int im2col_conv_forward(float *y, const float *x, const float *w, const float *bias, float *work,
                        const ddp_conv_shape *s) {
    conv_dims d = dims_of(s);
    float *wp_mem = NULL;
    const float *wp = w;
    if (!same_order(s)) {
        wp_mem = malloc((size_t)s->Cout * d.K * sizeof *wp_mem);
        if (!wp_mem) return -1;
        permute_weights(wp_mem, w, s->Cout, s->Cin, d.KHW);
        wp = wp_mem;
    }
    im2col(work, x, s, &d);
    /* y (M, Cout) = cols (M, K) wp^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d.M, s->Cout, d.K, 1.0f, work, d.K, wp,
                d.K, 0.0f, y, s->Cout);
    add_bias_rows(y, bias, d.M, s->Cout);
    free(wp_mem);
    return 0;
}

/* dbias (C) += the column sums of dy (rows, C), each in double in row order. */
CLONES static void add_column_sums(float *restrict dbias, const float *restrict dy, int rows, int C,
                                   double *restrict acc) {
    for (int j = 0; j < C; j++)
        acc[j] = 0.0;
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < C; j++)
            acc[j] += (double)dy[(size_t)r * C + j];
    for (int j = 0; j < C; j++)
        dbias[j] = (float)((double)dbias[j] + acc[j]);
}

int im2col_conv_backward(float *dx, float *dw, float *dbias, const float *dy, const float *x,
                         const float *w, float *work, const ddp_conv_shape *s) {
    conv_dims d = dims_of(s);
    const int Cout = s->Cout;
    /* Scratch: the bias sums (Cout doubles), then the weight gradient in patch order. */
    double *acc = malloc((size_t)Cout * sizeof(double) + (size_t)Cout * d.K * sizeof(float));
    if (!acc) return -1;
    float *dwp = (float *)(void *)(acc + Cout);
    add_column_sums(dbias, dy, d.M, Cout, acc);
    /* dwp (Cout, K) = dy^T (Cout, M) cols (M, K), then added into dw in its own order. */
    im2col(work, x, s, &d);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Cout, d.K, d.M, 1.0f, dy, Cout, work, d.K,
                0.0f, dwp, d.K);
    for (int o = 0; o < Cout; o++)
        for (int c = 0; c < s->Cin; c++)
            for (int k = 0; k < d.KHW; k++)
                dw[((size_t)o * s->Cin + c) * d.KHW + k] +=
                    dwp[((size_t)o * d.KHW + k) * s->Cin + c];
    if (dx) {
        /* dcols (M, K) = dy (M, Cout) wp (Cout, K) over the patches, then into the image;
         * the permuted weights reuse dwp's memory. */
        const float *wp = w;
        if (!same_order(s)) {
            permute_weights(dwp, w, Cout, s->Cin, d.KHW);
            wp = dwp;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d.M, d.K, Cout, 1.0f, dy, Cout, wp,
                    d.K, 0.0f, work, d.K);
        col2im(dx, work, s, &d);
    }
    free(acc);
    return 0;
}
