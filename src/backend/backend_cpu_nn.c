/*
 * The CPU backend's transformer ops: token and position embedding, layer normalization
 * and causal multi-head self-attention (ddp/backend_ops.h says what each computes).
 *
 * Inner loops run over the channels of one row with float accumulators, which the
 * compiler vectorizes; the attention's products are BLAS calls on strided views of qkv,
 * so no copy of q, k or v is made.
 */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "backend/backend_impl.h"
#include "backend/cpu_math.h"

#define LN_EPS 1e-5f

DDP_CPU_CLONES ddp_status ddp_cpu_encoder_forward(ddp_backend *b, float *out, const int32_t *tokens,
                                                  const float *wte, const float *wpe, int B, int T,
                                                  int C) {
    for (int i = 0; i < B; i++)
        for (int t = 0; t < T; t++) {
            float *o = out + ((size_t)i * T + t) * C;
            const float *e = wte + (size_t)tokens[(size_t)i * T + t] * C, *p = wpe + (size_t)t * C;
            for (int c = 0; c < C; c++)
                o[c] = e[c] + p[c];
        }
    return DDP_OK;
}

DDP_CPU_CLONES ddp_status ddp_cpu_encoder_backward(ddp_backend *b, float *dwte, float *dwpe,
                                                   const float *dout, const int32_t *tokens, int B,
                                                   int T, int C) {
    /* In (b, t) order, so a token that occurs twice sums its rows in a fixed order. */
    for (int i = 0; i < B; i++)
        for (int t = 0; t < T; t++) {
            const float *d = dout + ((size_t)i * T + t) * C;
            if (dwte) {
                float *g = dwte + (size_t)tokens[(size_t)i * T + t] * C;
                for (int c = 0; c < C; c++)
                    g[c] += d[c];
            }
            if (dwpe) {
                float *g = dwpe + (size_t)t * C;
                for (int c = 0; c < C; c++)
                    g[c] += d[c];
            }
        }
    return DDP_OK;
}

DDP_CPU_CLONES ddp_status ddp_cpu_layernorm_forward(ddp_backend *b, float *out, float *mean,
                                                    float *rstd, const float *inp,
                                                    const float *weight, const float *bias, int N,
                                                    int C) {
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        float *y = out + (size_t)i * C;
        /* Two passes (mean, then the squared deviations): no cancellation of a large
         * mean, and both are short vectorized sums over one row. */
        float m = 0.0f;
        for (int c = 0; c < C; c++)
            m += x[c];
        m /= (float)C;
        float v = 0.0f;
        for (int c = 0; c < C; c++) {
            float d = x[c] - m;
            v += d * d;
        }
        v /= (float)C;
        float s = 1.0f / sqrtf(v + LN_EPS);
        for (int c = 0; c < C; c++)
            y[c] = (x[c] - m) * s * weight[c] + bias[c];
        mean[i] = m;
        rstd[i] = s;
    }
    return DDP_OK;
}

DDP_CPU_CLONES ddp_status ddp_cpu_layernorm_backward(ddp_backend *b, float *dinp, float *dweight,
                                                     float *dbias, const float *dout,
                                                     const float *inp, const float *weight,
                                                     const float *mean, const float *rstd, int N,
                                                     int C) {
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C, *dy = dout + (size_t)i * C;
        float *dx = dinp + (size_t)i * C;
        float m = mean[i], s = rstd[i];
        /* With n = (x - mean) rstd and g = weight * dy:
         * dx = rstd (g - mean(g) - n mean(g n)). */
        float gsum = 0.0f, gnsum = 0.0f;
        for (int c = 0; c < C; c++) {
            float n = (x[c] - m) * s, g = weight[c] * dy[c];
            gsum += g;
            gnsum += g * n;
        }
        float gmean = gsum / (float)C, gnmean = gnsum / (float)C;
        for (int c = 0; c < C; c++) {
            float n = (x[c] - m) * s, g = weight[c] * dy[c];
            dbias[c] += dy[c];
            dweight[c] += n * dy[c];
            dx[c] += (g - gmean - n * gnmean) * s;
        }
    }
    return DDP_OK;
}

/* Softmax over each row t of scores (T, T) restricted to columns t2 <= t, in place; the
 * columns above the diagonal become 0. */
static inline void causal_softmax(float *s, int T) {
    for (int t = 0; t < T; t++) {
        float *row = s + (size_t)t * T;
        float mx = row[0];
        for (int u = 1; u <= t; u++)
            mx = row[u] > mx ? row[u] : mx;
        float sum = 0.0f;
        for (int u = 0; u <= t; u++) {
            row[u] = ddp_expf(row[u] - mx);
            sum += row[u];
        }
        float inv = 1.0f / sum;
        for (int u = 0; u <= t; u++)
            row[u] *= inv;
        for (int u = t + 1; u < T; u++)
            row[u] = 0.0f;
    }
}

DDP_CPU_CLONES ddp_status ddp_cpu_attention_forward(ddp_backend *b, float *out, float *att,
                                                    const float *qkv, float *work, int B, int T,
                                                    int C, int NH) {
    int hs = C / NH, ld = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    for (int i = 0; i < B; i++)
        for (int h = 0; h < NH; h++) {
            /* Head h's q, k, v: (T, hs) views of qkv with row stride 3C. */
            const float *q = qkv + (size_t)i * T * ld + (size_t)h * hs, *k = q + C, *v = q + 2 * C;
            float *p = att + ((size_t)i * NH + h) * T * T;
            /* scores (T, T) = q k^T / sqrt(hs), then the causal softmax */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, ld, k, ld,
                        0.0f, p, T);
            causal_softmax(p, T);
            /* out_h (T, hs) = att v, into head h's channels of out (row stride C) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, p, T, v, ld,
                        0.0f, out + (size_t)i * T * C + (size_t)h * hs, C);
        }
    return DDP_OK;
}

DDP_CPU_CLONES ddp_status ddp_cpu_attention_backward(ddp_backend *b, float *dqkv, const float *dout,
                                                     const float *qkv, const float *att,
                                                     float *work, int B, int T, int C, int NH) {
    int hs = C / NH, ld = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    float *ds = work; /* (T, T): d att, then d scores */
    for (int i = 0; i < B; i++)
        for (int h = 0; h < NH; h++) {
            size_t head = (size_t)i * T * ld + (size_t)h * hs;
            const float *q = qkv + head, *k = q + C, *v = q + 2 * C;
            float *dq = dqkv + head, *dk = dq + C, *dv = dq + 2 * C;
            const float *p = att + ((size_t)i * NH + h) * T * T;
            const float *dy = dout + (size_t)i * T * C + (size_t)h * hs;
            /* d att (T, T) = dy v^T;  dv (T, hs) = att^T dy */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, dy, C, v, ld, 0.0f,
                        ds, T);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, p, T, dy, C, 0.0f,
                        dv, ld);
            /* Softmax backward per row, over the columns the softmax saw:
             * d scores = att (d att - sum(att d att)) / sqrt(hs); 0 above the diagonal. */
            for (int t = 0; t < T; t++) {
                const float *pr = p + (size_t)t * T;
                float *dr = ds + (size_t)t * T;
                float dot = 0.0f;
                for (int u = 0; u <= t; u++)
                    dot += pr[u] * dr[u];
                for (int u = 0; u <= t; u++)
                    dr[u] = pr[u] * (dr[u] - dot) * scale;
                for (int u = t + 1; u < T; u++)
                    dr[u] = 0.0f;
            }
            /* dq (T, hs) = d scores k;  dk (T, hs) = d scores^T q */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, ds, T, k, ld,
                        0.0f, dq, ld);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, ds, T, q, ld, 0.0f,
                        dk, ld);
        }
    return DDP_OK;
}
