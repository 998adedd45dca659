/*
 * The CPU backend's transformer ops: token and position embedding, layer and RMS
 * normalization and causal multi-head self-attention (ddp/backend_ops.h says what each computes).
 *
 * These run on every step of a GPT trained on the CPU, so they are written for speed as
 * well as clarity: the attention's products are BLAS calls on strided views of qkv (no
 * copies, and the upper triangle that the causal mask zeroes is skipped block by block);
 * everything else is single-threaded loops over the channels. Elementwise loops are plain
 * C that gcc -O3 vectorizes. Reductions are written with explicit 8-float vectors (GNU C
 * vector extensions, vec8): 16 independent float partial sums, added up in a fixed
 * order at the end, so every result is deterministic. Left to the compiler, a sum is not
 * vectorized at all (that would reorder it), and an array of partial sums is vectorized
 * or not, well or eight times slower, depending on what else the loop does.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend_impl.h"

/* The ops whose loops are bound by arithmetic rather than memory are compiled three times,
 * for AVX-512, for AVX2 and for any x86-64, and the dynamic loader picks the widest that
 * the CPU has (GNU ifunc): the default build targets the oldest x86-64, whose 4-float
 * vectors left layer norm slower than PyTorch's AVX2 kernels. None of the three enables
 * FMA and every reduction has a fixed order, so all three give the same bits. Helpers are
 * always inlined: a wide copy cannot inline a plain function by itself, and a call into
 * 4-float code from it costs more than the wide loops gain. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define WIDE_LOOPS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define WIDE_LOOPS
#endif
#define INLINE static inline __attribute__((always_inline))

/* ---- reductions and other building blocks ----------------------------------------------- */

/* Eight floats: one AVX register, two SSE ones. Reductions keep two of them, 16 lanes of
 * partial sums in every instruction set. Vectors are loaded with memcpy (unaligned) and
 * passed by pointer: by value their ABI would depend on the instruction set. */
typedef float vec8 __attribute__((vector_size(32)));
typedef int32_t vec8i __attribute__((vector_size(32)));
#define LOAD8(v, p) memcpy(&(v), (p), sizeof(vec8))

/* The total of 16 partial sums, as a fixed pairwise tree. */
INLINE float total16(const vec8 *a0, const vec8 *a1) {
    vec8 s = *a0 + *a1;
    return ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
}

/* Each reduction below: two vector accumulators over blocks of 16 floats, the last
 * n % 16 in a scalar tail added at the end. */

INLINE float sum_of(const float *restrict x, int n) {
    vec8 a0 = {0}, a1 = {0}, v0, v1;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        LOAD8(v0, x + i);
        LOAD8(v1, x + i + 8);
        a0 += v0;
        a1 += v1;
    }
    float tail = 0.0f;
    for (; i < n; i++)
        tail += x[i];
    return total16(&a0, &a1) + tail;
}

/* sum of (x - c)^2: the second pass of a two-pass variance. */
INLINE float sum_sq_dev(const float *restrict x, float c, int n) {
    vec8 a0 = {0}, a1 = {0}, v0, v1;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        LOAD8(v0, x + i);
        LOAD8(v1, x + i + 8);
        v0 -= c;
        v1 -= c;
        a0 += v0 * v0;
        a1 += v1 * v1;
    }
    float tail = 0.0f;
    for (; i < n; i++)
        tail += (x[i] - c) * (x[i] - c);
    return total16(&a0, &a1) + tail;
}

INLINE float dot_of(const float *restrict a, const float *restrict b, int n) {
    vec8 a0 = {0}, a1 = {0}, u0, u1, v0, v1;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        LOAD8(u0, a + i);
        LOAD8(u1, a + i + 8);
        LOAD8(v0, b + i);
        LOAD8(v1, b + i + 8);
        a0 += u0 * v0;
        a1 += u1 * v1;
    }
    float tail = 0.0f;
    for (; i < n; i++)
        tail += a[i] * b[i];
    return total16(&a0, &a1) + tail;
}

/* The two sums of a layer norm's backward in one pass over a row: with g = w dy,
 * sums[0] = sum of g and sums[1] = sum of g (x - m). */
INLINE void ln_grad_sums(const float *restrict w, const float *restrict dy, const float *restrict x,
                         float m, int n, float sums[2]) {
    vec8 a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0}, g0, g1, v0, v1;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        LOAD8(g0, w + i);
        LOAD8(g1, w + i + 8);
        LOAD8(v0, dy + i);
        LOAD8(v1, dy + i + 8);
        g0 *= v0;
        g1 *= v1;
        a0 += g0;
        a1 += g1;
        LOAD8(v0, x + i);
        LOAD8(v1, x + i + 8);
        b0 += g0 * (v0 - m);
        b1 += g1 * (v1 - m);
    }
    float ta = 0.0f, tb = 0.0f;
    for (; i < n; i++) {
        ta += w[i] * dy[i];
        tb += w[i] * dy[i] * (x[i] - m);
    }
    sums[0] = total16(&a0, &a1) + ta;
    sums[1] = total16(&b0, &b1) + tb;
}

/* Lane by lane, *acc = *v where *v > *acc. */
INLINE void max8(vec8 *acc, const vec8 *v) {
    vec8i gt = *v > *acc; /* all ones where true */
    *acc = (vec8)((gt & (vec8i)*v) | (~gt & (vec8i)*acc));
}

/* The largest of x[0..n), n >= 1. A NaN is passed over here; it still reaches the
 * softmax through the exponentials and makes its row NaN. */
INLINE float max_of(const float *restrict x, int n) {
    vec8 a0 = (vec8){0} + x[0], a1 = a0, v0, v1; /* x[0] in every lane */
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        LOAD8(v0, x + i);
        LOAD8(v1, x + i + 8);
        max8(&a0, &v0);
        max8(&a1, &v1);
    }
    max8(&a0, &a1);
    float mx = a0[0];
    for (int k = 1; k < 8; k++)
        mx = a0[k] > mx ? a0[k] : mx;
    for (; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    return mx;
}

INLINE void add_into(float *restrict y, const float *restrict x, int n) {
    for (int i = 0; i < n; i++)
        y[i] += x[i];
}

/* e^x for x <= 0 (a softmax's x - max) within 1 ulp (measured over every float in
 * [-87, 0]), written so that the compiler vectorizes a loop of it: libm's expf is a call
 * per element, and one attention forward at our training shape takes a million of them,
 * as long as its matrix products. Cephes' method: x = n ln2 + r with |r| <= ln2 / 2, e^r
 * by a polynomial, 2^n put into the exponent bits. Below -87, e^x is under the smallest
 * normal float: 0. A NaN stays NaN. */
INLINE float exp_nonpositive(float x) {
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float xc = x < -87.0f ? -87.0f : x;
    float t = xc * 1.44269504088896341f + magic;
    float n = t - magic;
    float r = xc - n * 0.693359375f; /* ln2 in two parts, so that n ln2 is exact enough */
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    /* t holds magic + n exactly, so n is the difference of the bit patterns. */
    uint32_t tbits, bits;
    memcpy(&tbits, &t, sizeof tbits);
    bits = (tbits - 0x4b400000u + 127u) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    /* The two selects here become vector blends only because this file is built with
     * -fno-trapping-math (CMakeLists.txt); otherwise they stay branches and the loop
     * stays scalar. */
    float y = p * two_n;
    return x < -87.0f ? 0.0f : y;
}

/* ---- token and position embedding ------------------------------------------------------ */

ddp_status ddp_cpu_encoder_forward(ddp_backend *b, float *out, const int32_t *tokens,
                                   const float *wte, const float *wpe, int B, int T, int C) {
    for (int bt = 0; bt < B * T; bt++) {
        const float *restrict te = wte + (size_t)tokens[bt] * C; /* (C) */
        const float *restrict pe = wpe + (size_t)(bt % T) * C;   /* (C) */
        float *restrict o = out + (size_t)bt * C;                /* (C) */
        for (int i = 0; i < C; i++)
            o[i] = te[i] + pe[i];
    }
    return DDP_OK;
}

ddp_status ddp_cpu_encoder_backward(ddp_backend *b, float *dwte, float *dwpe, const float *dout,
                                    const int32_t *tokens, int B, int T, int C) {
    /* One pass in (b, t) order for both gradients: each row of dout is read once, and a
     * token's rows are added in the order the op promises. */
    for (int bt = 0; bt < B * T; bt++) {
        const float *d = dout + (size_t)bt * C; /* (C) */
        if (dwte) add_into(dwte + (size_t)tokens[bt] * C, d, C);
        if (dwpe) add_into(dwpe + (size_t)(bt % T) * C, d, C);
    }
    return DDP_OK;
}

/* ---- layer normalization --------------------------------------------------------------- */

#define LN_EPS 1e-5f

WIDE_LOOPS ddp_status ddp_cpu_layernorm_forward(ddp_backend *b, float *out, float *mean,
                                                float *rstd, const float *inp, const float *weight,
                                                const float *bias, int N, int C) {
    /* Mean and variance in float, two passes: the variance as the mean of (x - mean)^2
     * does not cancel the way E[x^2] - mean^2 does, and a sum over one row of C channels
     * in 16 partial sums is short (C / 16 terms each), so double would buy little accuracy
     * at half the vector width. */
    for (int r = 0; r < N; r++) {
        const float *restrict x = inp + (size_t)r * C; /* (C) */
        float *restrict y = out + (size_t)r * C;       /* (C) */
        float m = sum_of(x, C) / (float)C;
        float s = 1.0f / sqrtf(sum_sq_dev(x, m, C) / (float)C + LN_EPS);
        for (int i = 0; i < C; i++)
            y[i] = (x[i] - m) * s * weight[i] + bias[i];
        mean[r] = m;
        rstd[r] = s;
    }
    return DDP_OK;
}

/* Rows per block of the weight and bias gradients (see below). */
enum { LN_ROWS = 64 };

WIDE_LOOPS ddp_status ddp_cpu_layernorm_backward(ddp_backend *b, float *dinp, float *dweight,
                                                 float *dbias, const float *dout, const float *inp,
                                                 const float *weight, const float *mean,
                                                 const float *rstd, int N, int C) {
    /* The weight and bias gradients are sums over all N = B * T rows (4096 at our training
     * shape). Adding each row straight into them would grow the rounding error with N;
     * summing blocks of LN_ROWS rows apart and then adding each block's sum bounds the
     * chain at LN_ROWS + N / LN_ROWS additions, at the cost of 2C floats of scratch. */
    float *part = malloc(2 * (size_t)C * sizeof *part);
    if (!part)
        return DDP_FAIL(DDP_ERR_NOMEM, "layernorm_backward: no memory for %d channels of scratch",
                        C);
    float *restrict pw = part, *restrict pb = part + C; /* (C), (C) */
    for (int r0 = 0; r0 < N; r0 += LN_ROWS) {
        int r1 = r0 + LN_ROWS < N ? r0 + LN_ROWS : N;
        memset(part, 0, 2 * (size_t)C * sizeof *part);
        for (int r = r0; r < r1; r++) {
            const float *restrict x = inp + (size_t)r * C;   /* (C) */
            const float *restrict dy = dout + (size_t)r * C; /* (C) */
            float *restrict dx = dinp + (size_t)r * C;       /* (C) */
            float m = mean[r], s = rstd[r];
            /* With n = (x - m) s and g = weight * dy, the input gradient is
             * s (g - mean(g) - n mean(g n)). */
            float sums[2];
            ln_grad_sums(weight, dy, x, m, C, sums);
            float g_mean = sums[0] / (float)C, gn_mean = sums[1] * s / (float)C;
            for (int i = 0; i < C; i++) {
                float n = (x[i] - m) * s;
                dx[i] += (weight[i] * dy[i] - g_mean - n * gn_mean) * s;
                pw[i] += n * dy[i];
                pb[i] += dy[i];
            }
        }
        add_into(dweight, pw, C);
        add_into(dbias, pb, C);
    }
    free(part);
    return DDP_OK;
}

/* ---- RMS normalization ------------------------------------------------------------------ */

WIDE_LOOPS ddp_status ddp_cpu_rmsnorm_forward(ddp_backend *b, float *out, float *rstd,
                                              const float *inp, const float *weight, int N, int C) {
    for (int r = 0; r < N; r++) {
        const float *restrict x = inp + (size_t)r * C; /* (C) */
        float *restrict y = out + (size_t)r * C;       /* (C) */
        float s = 1.0f / sqrtf(dot_of(x, x, C) / (float)C + LN_EPS);
        for (int i = 0; i < C; i++)
            y[i] = x[i] * s * weight[i];
        rstd[r] = s;
    }
    return DDP_OK;
}

WIDE_LOOPS ddp_status ddp_cpu_rmsnorm_backward(ddp_backend *b, float *dinp, float *dweight,
                                               const float *dout, const float *inp,
                                               const float *weight, const float *rstd, int N,
                                               int C) {
    /* The weight gradient in blocks of LN_ROWS rows, as layer norm's. */
    float *pw = malloc((size_t)C * sizeof *pw); /* (C) */
    if (!pw)
        return DDP_FAIL(DDP_ERR_NOMEM, "rmsnorm_backward: no memory for %d channels of scratch", C);
    for (int r0 = 0; r0 < N; r0 += LN_ROWS) {
        int r1 = r0 + LN_ROWS < N ? r0 + LN_ROWS : N;
        memset(pw, 0, (size_t)C * sizeof *pw);
        for (int r = r0; r < r1; r++) {
            const float *restrict x = inp + (size_t)r * C;   /* (C) */
            const float *restrict dy = dout + (size_t)r * C; /* (C) */
            float *restrict dx = dinp + (size_t)r * C;       /* (C) */
            float s = rstd[r];
            /* With n = x s and g = weight * dy, the input gradient is s (g - n mean(g n)):
             * layer norm's without the mean. ln_grad_sums with m = 0 gives sum(g x). */
            float sums[2];
            ln_grad_sums(weight, dy, x, 0.0f, C, sums);
            float gn_mean = sums[1] * s / (float)C;
            for (int i = 0; i < C; i++) {
                float n = x[i] * s;
                dx[i] += (weight[i] * dy[i] - n * gn_mean) * s;
                pw[i] += n * dy[i];
            }
        }
        add_into(dweight, pw, C);
    }
    free(pw);
    return DDP_OK;
}

/* ---- causal multi-head self-attention -------------------------------------------------- */

/* Rows of the (T, T) score matrix per matrix product. A block of rows [r0, r1) needs only
 * the columns t2 < r1, so the products skip the upper triangle a block at a time: with
 * T = 128, four blocks do 10/16 of the full work. Smaller blocks would skip more but make
 * calls too small for the BLAS to run at speed. */
enum { ATT_ROWS = 32 };

/* One row of the causal softmax in place: p (T) holds the scaled scores of a query at
 * position t in its first n = t + 1 entries and leaves with their softmax there and zeros
 * after them. */
INLINE void softmax_causal_row(float *restrict p, int n, int T) {
    float mx = max_of(p, n);
    for (int i = 0; i < n; i++)
        p[i] = exp_nonpositive(p[i] - mx);
    float inv = 1.0f / sum_of(p, n);
    for (int i = 0; i < n; i++)
        p[i] *= inv;
    for (int i = n; i < T; i++)
        p[i] = 0.0f;
}

/* ---- in bf16 (math BF16): the products of all heads at once --------------------------- */

/* A product over every (sequence, head): rows of T positions, head h's hs channels at
 * offset h hs of a row of `stride` floats, sequences T stride apart; or (T, T) matrices
 * (att, dP) packed per head. ta/tb as for gemm. */
typedef struct {
    const float *p;
    int ld;
    size_t s0, s1;
} att_operand;

static att_operand heads_of(const float *x, int T, int hs, int stride) {
    return (att_operand){x, stride, (size_t)T * stride, (size_t)hs};
}

static att_operand squares_of(const float *x, int T, int NH) {
    return (att_operand){x, T, (size_t)NH * T * T, (size_t)T * T};
}

static ddp_status att_product(ddp_backend *b, int B, int NH, int M, int N, int K, float alpha,
                              int ta, att_operand A, int tb, att_operand Bo, float *C,
                              att_operand Cv) {
    ddp_cpu_mm mm = {.b0 = B,
                     .b1 = NH,
                     .M = M,
                     .N = N,
                     .K = K,
                     .ta = ta,
                     .tb = tb,
                     .alpha = alpha,
                     .beta = 0.0f,
                     .A = A.p,
                     .lda = A.ld,
                     .sa0 = A.s0,
                     .sa1 = A.s1,
                     .B = Bo.p,
                     .ldb = Bo.ld,
                     .sb0 = Bo.s0,
                     .sb1 = Bo.s1,
                     .C = C,
                     .ldc = Cv.ld,
                     .sc0 = Cv.s0,
                     .sc1 = Cv.s1};
    DDP_CHECK(ddp_cpu_matmul_bf16(b, &mm));
    return DDP_OK;
}

/* The bf16 forward: S = scale Q K^T over all T x T, the causal softmax by rows, out = P V.
 * The full squares cost 1.6 times the causal blocks' products of the fp32 path, in one
 * call per product instead of one per head and block. */
static ddp_status attention_forward_bf16(ddp_backend *b, float *out, float *att, const float *qkv,
                                         int B, int T, int C, int NH) {
    const int hs = C / NH, C3 = 3 * C;
    const att_operand q = heads_of(qkv, T, hs, C3), k = heads_of(qkv + C, T, hs, C3);
    const att_operand v = heads_of(qkv + 2 * C, T, hs, C3), p = squares_of(att, T, NH);
    DDP_CHECK(att_product(b, B, NH, T, T, hs, 1.0f / sqrtf((float)hs), 0, q, 1, k, att, p));
    for (size_t r = 0; r < (size_t)B * NH * T; r++)
        softmax_causal_row(att + r * T, (int)(r % (size_t)T) + 1, T);
    DDP_CHECK(att_product(b, B, NH, T, hs, T, 1.0f, 0, p, 0, v, out, heads_of(out, T, hs, C)));
    return DDP_OK;
}

/* The bf16 backward, as the fp32 one computes it but over all T x T at once, with dP and
 * then dS in work. */
static ddp_status attention_backward_bf16(ddp_backend *b, float *dqkv, const float *dout,
                                          const float *qkv, const float *att, float *work, int B,
                                          int T, int C, int NH) {
    const int hs = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)hs);
    const att_operand q = heads_of(qkv, T, hs, C3), k = heads_of(qkv + C, T, hs, C3);
    const att_operand v = heads_of(qkv + 2 * C, T, hs, C3), p = squares_of(att, T, NH);
    const att_operand dy = heads_of(dout, T, hs, C), d = squares_of(work, T, NH);
    DDP_CHECK(att_product(b, B, NH, T, T, hs, 1.0f, 0, dy, 1, v, work, d)); /* dP = dout V^T */
    for (size_t r = 0; r < (size_t)B * NH * T; r++) {
        int t = (int)(r % (size_t)T);
        const float *restrict pr = att + r * T;
        float *restrict ds = work + r * T;
        float s = dot_of(pr, ds, t + 1);
        for (int i = 0; i <= t; i++)
            ds[i] = pr[i] * (ds[i] - s) * scale;
        for (int i = t + 1; i < T; i++)
            ds[i] = 0.0f;
    }
    float *dq = dqkv, *dk = dqkv + C, *dv = dqkv + 2 * C;
    DDP_CHECK(att_product(b, B, NH, T, hs, T, 1.0f, 0, d, 0, k, dq, heads_of(dq, T, hs, C3)));
    DDP_CHECK(att_product(b, B, NH, T, hs, T, 1.0f, 1, d, 0, q, dk, heads_of(dk, T, hs, C3)));
    DDP_CHECK(att_product(b, B, NH, T, hs, T, 1.0f, 1, p, 0, dy, dv, heads_of(dv, T, hs, C3)));
    return DDP_OK;
}

WIDE_LOOPS ddp_status ddp_cpu_attention_forward(ddp_backend *b, float *out, float *att,
                                                const float *qkv, float *work, int B, int T, int C,
                                                int NH) {
    if (b->opt.math == DDP_MATH_BF16) return attention_forward_bf16(b, out, att, qkv, B, T, C, NH);
    const int hs = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)hs);
    for (int bb = 0; bb < B; bb++)
        for (int h = 0; h < NH; h++) {
            /* Head h's queries, keys and values: (T, hs) views with row stride 3C. */
            const float *q = qkv + (size_t)bb * T * C3 + (size_t)h * hs;
            const float *k = q + C, *v = q + 2 * C;
            float *a = att + ((size_t)bb * NH + h) * T * T;       /* (T, T) */
            float *o = out + (size_t)bb * T * C + (size_t)h * hs; /* (T, hs), row stride C */
            for (int r0 = 0; r0 < T; r0 += ATT_ROWS) {
                int r1 = r0 + ATT_ROWS < T ? r0 + ATT_ROWS : T, rows = r1 - r0;
                /* scores of rows [r0, r1) against keys [0, r1): scale q k^T */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, r1, hs, scale,
                            q + (size_t)r0 * C3, C3, k, C3, 0.0f, a + (size_t)r0 * T, T);
                for (int t = r0; t < r1; t++)
                    softmax_causal_row(a + (size_t)t * T, t + 1, T);
                /* out rows [r0, r1) = P v over the keys [0, r1) (P is 0 beyond t) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hs, r1, 1.0f,
                            a + (size_t)r0 * T, T, v, C3, 0.0f, o + (size_t)r0 * C, C);
            }
        }
    return DDP_OK;
}

WIDE_LOOPS ddp_status ddp_cpu_attention_backward(ddp_backend *b, float *dqkv, const float *dout,
                                                 const float *qkv, const float *att, float *work,
                                                 int B, int T, int C, int NH) {
    if (b->opt.math == DDP_MATH_BF16)
        return attention_backward_bf16(b, dqkv, dout, qkv, att, work, B, T, C, NH);
    const int hs = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)hs);
    float *d = work; /* (T, T): dP, then in place the scores' gradient dS, one head at a time */
    for (int bb = 0; bb < B; bb++)
        for (int h = 0; h < NH; h++) {
            size_t qoff = (size_t)bb * T * C3 + (size_t)h * hs;
            const float *q = qkv + qoff, *k = q + C, *v = q + 2 * C;
            float *dq = dqkv + qoff, *dk = dq + C, *dv = dq + 2 * C; /* (T, hs), stride 3C */
            const float *a = att + ((size_t)bb * NH + h) * T * T;    /* (T, T) */
            const float *dout_h = dout + (size_t)bb * T * C + (size_t)h * hs; /* stride C */
            for (int r0 = 0; r0 < T; r0 += ATT_ROWS) {
                int r1 = r0 + ATT_ROWS < T ? r0 + ATT_ROWS : T, rows = r1 - r0;
                /* dP rows [r0, r1) over the keys [0, r1) = dout v^T */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, r1, hs, 1.0f,
                            dout_h + (size_t)r0 * C, C, v, C3, 0.0f, d + (size_t)r0 * T, T);
                /* Softmax backward: dS = P (dP - sum(P dP)), times the scores' scale so that
                 * the products below need none. Past the diagonal dS is 0; the products read
                 * it up to column r1, so those entries are written as zeros. */
                for (int t = r0; t < r1; t++) {
                    const float *restrict p = a + (size_t)t * T;
                    float *restrict ds = d + (size_t)t * T;
                    float s = dot_of(p, ds, t + 1);
                    for (int i = 0; i <= t; i++)
                        ds[i] = p[i] * (ds[i] - s) * scale;
                    for (int i = t + 1; i < r1; i++)
                        ds[i] = 0.0f;
                }
                /* dq rows [r0, r1) = dS k over the keys [0, r1) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hs, r1, 1.0f,
                            d + (size_t)r0 * T, T, k, C3, 0.0f, dq + (size_t)r0 * C3, C3);
            }
            /* dk and dv rows [c0, c1) (keys) take the queries [c0, T): dS^T q and P^T dout. */
            for (int c0 = 0; c0 < T; c0 += ATT_ROWS) {
                int c1 = c0 + ATT_ROWS < T ? c0 + ATT_ROWS : T, rows = c1 - c0;
                size_t sub = (size_t)c0 * T + c0; /* rows [c0, T), columns [c0, c1) */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, hs, T - c0, 1.0f,
                            d + sub, T, q + (size_t)c0 * C3, C3, 0.0f, dk + (size_t)c0 * C3, C3);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, hs, T - c0, 1.0f,
                            a + sub, T, dout_h + (size_t)c0 * C, C, 0.0f, dv + (size_t)c0 * C3, C3);
            }
        }
    return DDP_OK;
}
