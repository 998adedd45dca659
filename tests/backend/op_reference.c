/*
 * What each op of the test table (op_cases.c) should compute, in double precision and
 * plain loops, written from the op list's definitions (ddp/backend_ops.h) without looking
 * at how any backend computes it. x[i] holds tensor i of the case as doubles; outputs
 * start as the op's do, and each reference writes what the op must leave there.
 */
#include "op_cases.h"

#include <float.h>
#include <math.h>
#include <string.h>

double ref_gelu(double x) {
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

double ref_gelu_grad(double x) {
    double k = sqrt(2.0 / M_PI), t = tanh(k * (x + 0.044715 * x * x * x));
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
}

/* Every activation of DDP_ACTS (a value without a case here is a -Wswitch error, and NaN at
 * run time). ReLU'(0) is taken as 0, as PyTorch does. */
static double act_of(int act, double x) {
    switch ((ddp_act)act) {
    case DDP_ACT_RELU: return x > 0 ? x : 0;
    case DDP_ACT_GELU: return ref_gelu(x);
    case DDP_ACT_COUNT: break;
    }
    return NAN;
}
static double act_grad(int act, double x) {
    switch ((ddp_act)act) {
    case DDP_ACT_RELU: return x > 0;
    case DDP_ACT_GELU: return ref_gelu_grad(x);
    case DDP_ACT_COUNT: break;
    }
    return NAN;
}

/* act: x (n) -> y (n) */
void ref_act(const op_shape *s, double *const *x) {
    for (int i = 0; i < s->d[0]; i++)
        x[1][i] = act_of(s->d[1], x[0][i]);
}

void ref_act_in_place(const op_shape *s, double *const *x) {
    for (int i = 0; i < s->d[0]; i++)
        x[0][i] = act_of(s->d[1], x[0][i]);
}

/* act_backward: x, dy -> dx (into dy when in place) */
void ref_act_backward(const op_shape *s, double *const *x) {
    double *dx = s->d[2] ? x[1] : x[2];
    for (int i = 0; i < s->d[0]; i++)
        dx[i] = x[1][i] * act_grad(s->d[1], x[0][i]);
}

/* y (N, C) += bias (C) */
void ref_bias_add(const op_shape *s, double *const *x) {
    int N = s->d[0], C = s->d[1];
    for (int i = 0; i < N; i++)
        for (int j = 0; j < C; j++)
            x[0][(size_t)i * C + j] += x[1][j];
}

/* C = alpha op(A) op(B) + beta C over the stored strides; with beta 0, C is not read. */
void ref_gemm(const op_shape *s, double *const *x) {
    static const float alphas[] = OP_GEMM_ALPHAS, betas[] = OP_GEMM_BETAS;
    int ta = s->d[0], tb = s->d[1], M = s->d[2], N = s->d[3], K = s->d[4], pad = s->d[5];
    double alpha = alphas[s->d[6]], beta = betas[s->d[6]];
    int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++) {
                double a = ta ? x[0][(size_t)k * lda + i] : x[0][(size_t)i * lda + k];
                double b = tb ? x[1][(size_t)j * ldb + k] : x[1][(size_t)k * ldb + j];
                acc += a * b;
            }
            double *c = &x[2][(size_t)i * ldc + j];
            *c = alpha * acc + (beta != 0.0 ? beta * *c : 0.0);
        }
}

/* One row of softmax cross-entropy: adds the row's loss and whether its first maximum is
 * the label to stats; p (C) receives the softmax when not NULL. */
static void xent_row(const double *z, int C, int label, double *stats, double *p) {
    int arg = 0;
    for (int j = 1; j < C; j++)
        if (z[j] > z[arg]) arg = j;
    double zmax = z[arg], sum = 0.0; /* p may be z: kept before it is overwritten */
    for (int j = 0; j < C; j++)
        sum += exp(z[j] - zmax);
    stats[0] += log(sum) - (z[label] - zmax);
    stats[1] += arg == label;
    if (p)
        for (int j = 0; j < C; j++)
            p[j] = exp(z[j] - zmax) / sum;
}

/* logits (N, C), labels (N) -> stats (2) += */
void ref_softmax_xent(const op_shape *s, double *const *x) {
    int N = s->d[0], C = s->d[1];
    for (int i = 0; i < N; i++)
        xent_row(x[0] + (size_t)i * C, C, (int)x[1][i], x[2], NULL);
}

/* with dlogits = scale (softmax - onehot), into the logits when in place */
void ref_softmax_xent_grad(const op_shape *s, double *const *x) {
    int N = s->d[0], C = s->d[1];
    double *d = s->d[2] ? x[0] : x[2];
    for (int i = 0; i < N; i++) {
        int label = (int)x[1][i];
        double *row = d + (size_t)i * C;
        xent_row(x[0] + (size_t)i * C, C, label, x[3], row);
        for (int j = 0; j < C; j++)
            row[j] = OP_XENT_GRAD_SCALE * (row[j] - (j == label));
    }
}

/* y = a + c */
void ref_add(const op_shape *s, double *const *x) {
    for (int i = 0; i < s->d[0]; i++)
        x[2][i] = x[0][i] + x[1][i];
}

/* a = a + c (which 1) or c = a + c (which 2) */
void ref_add_in_place(const op_shape *s, double *const *x) {
    double *y = s->d[1] == 1 ? x[0] : x[1];
    for (int i = 0; i < s->d[0]; i++)
        y[i] = x[0][i] + x[1][i];
}

/* dst[dst_off + i row_bytes ...] = the bytes of row idx[i] of src */
void ref_gather_rows(const op_shape *s, double *const *x) {
    int n = s->d[1], row_bytes = s->d[2], off = s->d[3];
    for (int i = 0; i < n; i++)
        for (int k = 0; k < row_bytes; k++)
            x[2][off + (size_t)i * row_bytes + k] = x[0][(size_t)x[1][i] * row_bytes + k];
}

void ref_scale(const op_shape *s, double *const *x) {
    for (int i = 0; i < s->d[0]; i++)
        x[0][i] *= OP_SCALE_ALPHA;
}

/* The bf16 bit pattern of a float, rounded to the nearest (ties to even) with arithmetic
 * on its value: 8 significant bits for normal values, a fixed step of 2^-133 below the
 * smallest normal, infinity past the largest bf16. A NaN keeps its sign and top payload
 * bits and is made quiet. */
static double bf16_bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if (isnan(f)) return (double)((u >> 16) | 0x40);
    double a = fabs((double)f);
    if (a == 0.0 || isinf(a)) return (double)(u >> 16);
    int e;
    frexp(a, &e); /* a = m 2^e, m in [0.5, 1) */
    double step = a < FLT_MIN ? ldexp(1.0, -133) : ldexp(1.0, e - 8);
    double r = nearbyint(a / step) * step;
    float rounded = r >= ldexp(1.0, 128) ? INFINITY : (float)r;
    rounded = copysignf(rounded, f);
    memcpy(&u, &rounded, sizeof u);
    return (double)(u >> 16);
}

void ref_f32_to_bf16(const op_shape *s, double *const *x) {
    for (int i = 0; i < s->d[0]; i++)
        x[1][i] = bf16_bits_of((float)x[0][i]);
}

void ref_bf16_to_f32(const op_shape *s, double *const *x) {
    for (int i = 0; i < s->d[0]; i++) {
        uint32_t u = (uint32_t)x[0][i] << 16;
        float f;
        memcpy(&f, &u, sizeof f);
        x[1][i] = f;
    }
}

void ref_sumsq(const op_shape *s, double *const *x) {
    double sum = 0.0;
    for (int i = 0; i < s->d[0]; i++)
        sum += x[0][i] * x[0][i];
    x[1][0] = sum;
}

void ref_sumsq_add(const op_shape *s, double *const *x) {
    double sum = 0.0;
    for (int i = 0; i < s->d[0]; i++)
        sum += x[0][i] * x[0][i];
    x[1][0] += sum;
}

/* p, grad, buf: SGD with momentum (PyTorch's), the gradient scaled by the clip factor. */
void ref_sgd_step(const op_shape *s, double *const *x) {
    double lr = OP_SGD_LR, mom = OP_SGD_MOMENTUM, wd = OP_SGD_WD;
    double gscale = OP_CLIP_SCALE(s->d[3]);
    int nesterov = s->d[1], first = s->d[2];
    for (int i = 0; i < s->d[0]; i++) {
        double *p = &x[0][i], *buf = &x[2][i];
        double g = gscale * x[1][i] + wd * *p;
        *buf = first ? g : mom * *buf + g;
        *p -= lr * (nesterov ? g + mom * *buf : *buf);
    }
}

/* p, grad, m, v: AdamW at step t, decoupled weight decay, bias-corrected moments. */
void ref_adamw_step(const op_shape *s, double *const *x) {
    double lr = OP_ADAMW_LR, b1 = OP_ADAMW_BETA1, b2 = OP_ADAMW_BETA2, eps = OP_ADAMW_EPS;
    double wd = OP_ADAMW_WD, gscale = OP_CLIP_SCALE(s->d[2]);
    int t = s->d[1];
    for (int i = 0; i < s->d[0]; i++) {
        double *p = &x[0][i], *m = &x[2][i], *v = &x[3][i], g = gscale * x[1][i];
        *p -= lr * wd * *p;
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        double m_hat = *m / (1.0 - pow(b1, t)), v_hat = *v / (1.0 - pow(b2, t));
        *p -= lr * m_hat / (sqrt(v_hat) + eps);
    }
}

/* tokens (B, T), wte (V, C), wpe (>= T, C) -> out (B, T, C) */
void ref_encoder(const op_shape *s, double *const *x) {
    int B = s->d[0], T = s->d[1], C = s->d[2];
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int tok = (int)x[0][b * T + t];
            for (int i = 0; i < C; i++)
                x[3][((size_t)b * T + t) * C + i] =
                    x[1][(size_t)tok * C + i] + x[2][(size_t)t * C + i];
        }
}

/* inp (N, C), weight (C), bias (C) -> out (N, C), mean (N), rstd (N) */
void ref_layernorm(const op_shape *s, double *const *x) {
    int N = s->d[0], C = s->d[1];
    for (int r = 0; r < N; r++) {
        const double *in = x[0] + (size_t)r * C;
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < C; i++)
            mean += in[i];
        mean /= C;
        for (int i = 0; i < C; i++)
            var += (in[i] - mean) * (in[i] - mean);
        var /= C;
        double rstd = 1.0 / sqrt(var + 1e-5);
        for (int i = 0; i < C; i++)
            x[3][(size_t)r * C + i] = (in[i] - mean) * rstd * x[1][i] + x[2][i];
        x[4][r] = mean;
        x[5][r] = rstd;
    }
}

/* inp (N, C), weight (C) -> out (N, C), rstd (N): x / sqrt(mean(x^2) + 1e-5) weight. */
void ref_rmsnorm(const op_shape *s, double *const *x) {
    int N = s->d[0], C = s->d[1];
    for (int r = 0; r < N; r++) {
        const double *in = x[0] + (size_t)r * C;
        double ms = 0.0;
        for (int i = 0; i < C; i++)
            ms += in[i] * in[i];
        double rstd = 1.0 / sqrt(ms / C + 1e-5);
        for (int i = 0; i < C; i++)
            x[2][(size_t)r * C + i] = in[i] * rstd * x[1][i];
        x[3][r] = rstd;
    }
}

/* x (batch, rows, cols) -> y (batch, cols, rows) */
void ref_transpose(const op_shape *s, double *const *x) {
    int batch = s->d[0], rows = s->d[1], cols = s->d[2];
    for (int n = 0; n < batch; n++)
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                x[1][((size_t)n * cols + c) * rows + r] = x[0][((size_t)n * rows + r) * cols + c];
}

/* qkv (B, T, 3C) -> out (B, T, C), att (B, NH, T, T): causal softmax attention per head. */
void ref_attention(const op_shape *s, double *const *x) {
    int B = s->d[0], T = s->d[1], C = s->d[2], NH = s->d[3], hs = C / NH;
    const double *qkv = x[0];
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const double *q = qkv + ((size_t)b * T + t) * 3 * C + h * hs;
                double *a = x[2] + (((size_t)b * NH + h) * T + t) * T;
                double mx = -INFINITY, sum = 0.0;
                for (int t2 = 0; t2 < T; t2++) {
                    a[t2] = 0.0;
                    if (t2 > t) continue;
                    const double *k = qkv + ((size_t)b * T + t2) * 3 * C + C + h * hs;
                    for (int i = 0; i < hs; i++)
                        a[t2] += q[i] * k[i];
                    a[t2] /= sqrt((double)hs);
                    if (a[t2] > mx) mx = a[t2];
                }
                for (int t2 = 0; t2 <= t; t2++)
                    sum += exp(a[t2] - mx);
                for (int t2 = 0; t2 <= t; t2++)
                    a[t2] = exp(a[t2] - mx) / sum;
                double *o = x[1] + ((size_t)b * T + t) * C + h * hs;
                for (int i = 0; i < hs; i++) {
                    o[i] = 0.0;
                    for (int t2 = 0; t2 <= t; t2++)
                        o[i] += a[t2] * qkv[((size_t)b * T + t2) * 3 * C + 2 * C + h * hs + i];
                }
            }
}

/* x (N, H, W, Cin), w (Cout, Cin, KH, KW), bias (Cout) -> y (N, Ho, Wo, Cout): each output
 * the bias plus the kernel's products with the input under it, the padding being zeros. */
void ref_conv2d(const op_shape *s, double *const *x) {
    int N = s->d[0], H = s->d[1], W = s->d[2], Cin = s->d[3], Cout = s->d[4], KH = s->d[5];
    int KW = s->d[6], st = s->d[7], pad = s->d[8];
    int Ho = (H + 2 * pad - KH) / st + 1, Wo = (W + 2 * pad - KW) / st + 1;
    for (int n = 0; n < N; n++)
        for (int oh = 0; oh < Ho; oh++)
            for (int ow = 0; ow < Wo; ow++)
                for (int o = 0; o < Cout; o++) {
                    double acc = x[2][o];
                    for (int c = 0; c < Cin; c++)
                        for (int kh = 0; kh < KH; kh++)
                            for (int kw = 0; kw < KW; kw++) {
                                int ih = oh * st - pad + kh, iw = ow * st - pad + kw;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                acc += x[0][(((size_t)n * H + ih) * W + iw) * Cin + c] *
                                       x[1][(((size_t)o * Cin + c) * KH + kh) * KW + kw];
                            }
                    x[3][(((size_t)n * Ho + oh) * Wo + ow) * Cout + o] = acc;
                }
}

/* x (N, H, W, C) -> y, arg (N, Ho, Wo, C): each window's maximum and its index in x, the
 * first on ties; a NaN is larger than any number. */
static void pool_ref(const op_shape *s, const double *xin, double *y, double *arg) {
    int N = s->d[0], H = s->d[1], W = s->d[2], C = s->d[3], K = s->d[4], st = s->d[5];
    int Ho = (H - K) / st + 1, Wo = (W - K) / st + 1;
    for (int n = 0; n < N; n++)
        for (int oh = 0; oh < Ho; oh++)
            for (int ow = 0; ow < Wo; ow++)
                for (int c = 0; c < C; c++) {
                    double best = 0.0;
                    size_t at = 0;
                    for (int kh = 0; kh < K; kh++)
                        for (int kw = 0; kw < K; kw++) {
                            size_t i = (((size_t)n * H + oh * st + kh) * W + ow * st + kw) * C + c;
                            double v = xin[i];
                            int first = kh == 0 && kw == 0;
                            if (first || v > best || (isnan(v) && !isnan(best))) {
                                best = v;
                                at = i;
                            }
                        }
                    size_t o = (((size_t)n * Ho + oh) * Wo + ow) * C + c;
                    y[o] = best;
                    arg[o] = (double)at;
                }
}

void ref_maxpool(const op_shape *s, double *const *x) { pool_ref(s, x[0], x[1], x[2]); }

/* x -> y, arg; then dy (N, Ho, Wo, C) -> dx (N, H, W, C): the sum of the gradients of the
 * windows whose maximum each element is. */
void ref_maxpool_both(const op_shape *s, double *const *x) {
    int N = s->d[0], H = s->d[1], W = s->d[2], C = s->d[3], K = s->d[4], st = s->d[5];
    size_t n_in = (size_t)N * H * W * C;
    size_t n_out = (size_t)N * ((H - K) / st + 1) * ((W - K) / st + 1) * C;
    pool_ref(s, x[0], x[1], x[2]);
    for (size_t i = 0; i < n_in; i++)
        x[4][i] = 0.0;
    for (size_t o = 0; o < n_out; o++)
        x[4][(size_t)x[2][o]] += x[3][o];
}

/* Per channel over the rows of x (rows, C): the mean, the biased variance (two passes)
 * and rstd = 1 / sqrt(var + eps). */
static void bn_moments(const double *xin, int rows, int C, int c, double *mean, double *var) {
    double m = 0.0, v = 0.0;
    for (int r = 0; r < rows; r++)
        m += xin[(size_t)r * C + c];
    m /= rows;
    for (int r = 0; r < rows; r++)
        v += (xin[(size_t)r * C + c] - m) * (xin[(size_t)r * C + c] - m);
    *mean = m;
    *var = v / rows;
}

/* x (rows, C), gamma, beta (C) -> y (rows, C), mean, rstd (C), running (2, C) moved
 * towards (mean, unbiased variance) by the momentum, sums (2, C) = (sum x, sum x^2). The
 * op takes eps and momentum as floats: the same values here. */
void ref_batchnorm(const op_shape *s, double *const *x) {
    int rows = s->d[0], C = s->d[1];
    double eps = OP_BN_EPS, mom = OP_BN_MOMENTUM;
    for (int c = 0; c < C; c++) {
        double mean, var, s1 = 0.0, s2 = 0.0;
        bn_moments(x[0], rows, C, c, &mean, &var);
        double rstd = 1.0 / sqrt(var + eps);
        for (int r = 0; r < rows; r++) {
            double v = x[0][(size_t)r * C + c];
            s1 += v;
            s2 += v * v;
            x[3][(size_t)r * C + c] = (v - mean) * rstd * x[1][c] + x[2][c];
        }
        x[4][c] = mean;
        x[5][c] = rstd;
        x[6][c] = (1.0 - mom) * x[6][c] + mom * mean;
        x[6][C + c] = (1.0 - mom) * x[6][C + c] + mom * var * rows / (rows - 1);
        x[7][c] = s1;
        x[7][C + c] = s2;
    }
}

/* Evaluation: x (rows, C) normalized in place with the running statistics (2, C), which
 * stay; mean and rstd (C) are theirs. gamma x[1], beta x[2]. */
void ref_batchnorm_eval(const op_shape *s, double *const *x) {
    int rows = s->d[0], C = s->d[1];
    for (int c = 0; c < C; c++) {
        double mean = x[5][c], rstd = 1.0 / sqrt(x[5][C + c] + (double)OP_BN_EPS);
        for (int r = 0; r < rows; r++)
            x[0][(size_t)r * C + c] = (x[0][(size_t)r * C + c] - mean) * rstd * x[1][c] + x[2][c];
        x[3][c] = mean;
        x[4][c] = rstd;
    }
}

/* x, dy (rows, C), mean, rstd, gamma (C) -> dy replaced by the input gradient of a
 * training-mode normalization with these statistics over the rows:
 * dx = gamma rstd (dy - mean(dy) - xhat mean(dy xhat)), xhat = (x - mean) rstd. */
void ref_batchnorm_dx(const op_shape *s, double *const *x) {
    int rows = s->d[0], C = s->d[1];
    for (int c = 0; c < C; c++) {
        double m = x[2][c], rs = x[3][c], s1 = 0.0, s2 = 0.0;
        for (int r = 0; r < rows; r++) {
            s1 += x[1][(size_t)r * C + c];
            s2 += x[1][(size_t)r * C + c] * (x[0][(size_t)r * C + c] - m) * rs;
        }
        for (int r = 0; r < rows; r++) {
            double xhat = (x[0][(size_t)r * C + c] - m) * rs, *d = &x[1][(size_t)r * C + c];
            *d = x[4][c] * rs * (*d - s1 / rows - xhat * s2 / rows);
        }
    }
}
