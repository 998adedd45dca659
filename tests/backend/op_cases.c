/*
 * The table of backend op tests (op_cases.h says what a case holds): for every op, its
 * shapes, its tensors, and the calls of its forward and backward.
 *
 * Shapes are chosen for the kernels' edge cases: sizes that are not multiples of a
 * vector or a block (odd, prime, one), shapes where a dimension is 1, and a few sizes
 * large enough for a GPU's multi-block paths.
 */
#include "op_cases.h"

#include <math.h>

#define ARRAY_LEN(a) ((int)(sizeof(a) / sizeof((a)[0])))
#define SHAPES(a)    a, ARRAY_LEN(a)

/* Finite-difference steps (test_ops_cpu.c says how they were chosen): ops that are
 * linear in every input take a large step, smooth ones a small one. */
#define STEP_LINEAR 1.0
#define STEP_SMOOTH 0x1p-6

/* The default bound of a CUDA result against the CPU's, relative to the largest value. */
#define GPU_FP32 1e-5

/* ---- element counts -------------------------------------------------------------------- */

static size_t count_d0(const op_shape *s) { return (size_t)s->d[0]; }
static size_t count_d1(const op_shape *s) { return (size_t)s->d[1]; }
static size_t count_d0d1(const op_shape *s) { return (size_t)s->d[0] * (size_t)s->d[1]; }
static size_t count_one(const op_shape *s) { return 1; }
static size_t count_two(const op_shape *s) { return 2; }

/* ---- activations ----------------------------------------------------------------------- */

/* dims "n act": act is a ddp_act, every one of DDP_ACTS */
#define ACT_SHAPES(act, name) {{1, act}}, {{7, act}}, {{33, act}}, {{10007, act}},
static const op_shape act_shapes[] = {DDP_ACTS(ACT_SHAPES)};

static ddp_status act_fwd(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_act_forward(b, s->d[1], t[0], t[1], count_d0(s));
}

static ddp_status act_bwd(ddp_backend *b, void *const *t, void *const *g, const op_shape *s) {
    return ddp_backend_act_backward(b, s->d[1], t[0], g[1], g[0], count_d0(s));
}

/* Values where activations have conventions or limits: ReLU'(0) = 0 (as PyTorch), the
 * sign of zero, a tiny positive value, and saturation both ways. */
static void plant_act_values(const op_shape *s, void *const *h) {
    const float v[5] = {0.0f, -0.0f, 1e-30f, -12.0f, 12.0f};
    for (int i = 0; i < 5 && i < s->d[0]; i++)
        ((float *)h[0])[i] = v[i];
}

/* in place: dims "n act" */
static ddp_status act_fwd_in_place(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_act_forward(b, s->d[1], t[0], t[0], count_d0(s));
}

/* the backward as an op of its own, at the planted values: dims "n act in_place" */
#define ACT_BWD_SHAPES(act, name) {{5, act, 0}}, {{10007, act, 0}}, {{10007, act, 1}},
static const op_shape act_bwd_shapes[] = {DDP_ACTS(ACT_BWD_SHAPES)};

static size_t count_dx(const op_shape *s) { return s->d[2] ? 0 : count_d0(s); }

static ddp_status act_bwd_op(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_act_backward(b, s->d[1], t[0], t[1], s->d[2] ? t[1] : t[2], count_d0(s));
}

/* ---- bias ------------------------------------------------------------------------------ */

/* dims "N C" */
static const op_shape bias_shapes[] = {{{37, 129}}, {{1000, 10}}, {{1, 33}}, {{513, 64}}, {{3, 1}}};

static ddp_status bias_fwd(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_bias_add(b, t[0], t[1], s->d[0], s->d[1]);
}

static ddp_status bias_bwd(ddp_backend *b, void *const *t, void *const *g, const op_shape *s) {
    return ddp_backend_bias_grad(b, g[1], g[0], s->d[0], s->d[1]);
}

/* ---- gemm ------------------------------------------------------------------------------ */

/* dims "ta tb M N K pad ab": every stored row is pad floats longer than needed (the
 * padding must stay untouched), ab picks alpha and beta of OP_GEMM_ALPHAS and _BETAS. */
static const float gemm_alpha[] = OP_GEMM_ALPHAS;
static const float gemm_beta[] = OP_GEMM_BETAS;

/* clang-format off */
#define GEMM_TRANSPOSES(M, N, K, pad, ab)                                                          \
    {{0, 0, M, N, K, pad, ab}}, {{0, 1, M, N, K, pad, ab}}, {{1, 0, M, N, K, pad, ab}},            \
    {{1, 1, M, N, K, pad, ab}}
/* clang-format on */
static const op_shape gemm_shapes[] = {
    GEMM_TRANSPOSES(37, 129, 65, 0, 0), GEMM_TRANSPOSES(37, 129, 65, 3, 1),
    GEMM_TRANSPOSES(1, 7, 300, 1, 2),   GEMM_TRANSPOSES(3, 4, 5, 2, 3),
    {{0, 0, 256, 384, 512, 0, 0}},      {{1, 0, 64, 96, 1000, 0, 2}},
    {{0, 1, 9, 11, 0, 2, 1}}, /* empty K: C = beta C */
    {{1, 1, 9, 11, 0, 1, 4}}, /* empty K, beta 0: C = 0 without reading it */
};

typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc, a_rows, b_rows;
    float alpha, beta;
} gemm_dims;

static gemm_dims gemm_of(const op_shape *s) {
    gemm_dims g = {.ta = s->d[0], .tb = s->d[1], .M = s->d[2], .N = s->d[3], .K = s->d[4]};
    int pad = s->d[5];
    g.a_rows = g.ta ? g.K : g.M;
    g.b_rows = g.tb ? g.N : g.K;
    g.lda = (g.ta ? g.M : g.K) + pad;
    g.ldb = (g.tb ? g.K : g.N) + pad;
    g.ldc = g.N + pad;
    if (g.lda < 1) g.lda = 1;
    if (g.ldb < 1) g.ldb = 1;
    g.alpha = gemm_alpha[s->d[6]];
    g.beta = gemm_beta[s->d[6]];
    return g;
}

static size_t gemm_count_a(const op_shape *s) {
    gemm_dims g = gemm_of(s);
    return (size_t)g.a_rows * g.lda;
}
static size_t gemm_count_b(const op_shape *s) {
    gemm_dims g = gemm_of(s);
    return (size_t)g.b_rows * g.ldb;
}
static size_t gemm_count_c(const op_shape *s) {
    gemm_dims g = gemm_of(s);
    return (size_t)g.M * g.ldc;
}

static ddp_status gemm_fwd(ddp_backend *b, void *const *t, const op_shape *s) {
    gemm_dims g = gemm_of(s);
    return ddp_backend_gemm(b, g.ta, g.tb, g.M, g.N, g.K, g.alpha, t[0], g.lda, t[1], g.ldb, g.beta,
                            t[2], g.ldc);
}

/* C = alpha op(A) op(B) + beta C: the gradient of op(A) is alpha dC op(B)^T and that of
 * op(B) is alpha op(A)^T dC, each added to the stored (possibly transposed) matrix. */
static ddp_status gemm_bwd(ddp_backend *b, void *const *t, void *const *g, const op_shape *s) {
    gemm_dims m = gemm_of(s);
    const float *A = t[0], *B = t[1], *dC = g[2];
    if (!m.ta)
        DDP_CHECK(ddp_backend_gemm(b, 0, !m.tb, m.M, m.K, m.N, m.alpha, dC, m.ldc, B, m.ldb, 1.0f,
                                   g[0], m.lda));
    else
        DDP_CHECK(ddp_backend_gemm(b, m.tb, 1, m.K, m.M, m.N, m.alpha, B, m.ldb, dC, m.ldc, 1.0f,
                                   g[0], m.lda));
    if (!m.tb)
        return ddp_backend_gemm(b, !m.ta, 0, m.K, m.N, m.M, m.alpha, A, m.lda, dC, m.ldc, 1.0f,
                                g[1], m.ldb);
    return ddp_backend_gemm(b, 1, m.ta, m.N, m.K, m.M, m.alpha, dC, m.ldc, A, m.lda, 1.0f, g[1],
                            m.ldb);
}

/* NaN in the inputs' padding must not reach C; with beta 0, C is never read, so its
 * values start as NaN too (the padding of C keeps its random values). */
static void gemm_prepare(const op_shape *s, void *const *h) {
    gemm_dims g = gemm_of(s);
    float *A = h[0], *B = h[1], *C = h[2];
    int a_cols = g.ta ? g.M : g.K, b_cols = g.tb ? g.K : g.N;
    for (int i = 0; i < g.a_rows; i++)
        for (int j = a_cols; j < g.lda; j++)
            A[(size_t)i * g.lda + j] = NAN;
    for (int i = 0; i < g.b_rows; i++)
        for (int j = b_cols; j < g.ldb; j++)
            B[(size_t)i * g.ldb + j] = NAN;
    if (g.beta == 0.0f)
        for (int i = 0; i < g.M; i++)
            for (int j = 0; j < g.N; j++)
                C[(size_t)i * g.ldc + j] = NAN;
}

/* ---- softmax cross-entropy -------------------------------------------------------------- */

/* dims "N C" */
static const op_shape xent_shapes[] = {{{37, 10}},   {{37, 129}}, {{5, 3000}}, {{64, 1}},
                                       {{3, 50257}}, {{1, 1}},    {{7, 5}}};

/* Some rows predict their label (so that the count of correct rows is tested), and the
 * statistics start nonzero (they accumulate). */
static void xent_plant_hits(const op_shape *s, float *z, const int32_t *label, float *stats) {
    int N = s->d[0], C = s->d[1];
    for (int i = 0; i < N; i += 3)
        z[(size_t)i * C + label[i]] += 8.0f;
    stats[0] = 1.5f;
    stats[1] = 2.0f;
}

static void xent_prepare(const op_shape *s, void *const *h) {
    xent_plant_hits(s, h[0], h[1], h[2]);
}

/* The loss only: dlogits NULL. */
static ddp_status xent_fwd(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_softmax_xent(b, t[0], t[1], s->d[0], s->d[1], 1.0f, NULL, t[2]);
}

/* The loss is stats[0], so dL/dlogits = r[0] (softmax - onehot): grad_scale r[0]. */
static ddp_status xent_bwd(ddp_backend *b, void *const *t, void *const *g, const op_shape *s) {
    float r0;
    DDP_CHECK(ddp_backend_copy(b, &r0, g[2], sizeof r0, DDP_COPY_D2H));
    return ddp_backend_softmax_xent(b, t[0], t[1], s->d[0], s->d[1], r0, g[0], t[3]);
}

/* with the gradient, as one op: dims "N C in_place" (in place: dlogits == logits) */
static const op_shape xent_grad_shapes[] = {{{37, 10, 0}}, {{37, 129, 0}},  {{5, 3000, 0}},
                                            {{64, 1, 0}},  {{3, 50257, 0}}, {{37, 129, 1}},
                                            {{2, 3, 0}}};

static size_t xent_count_dlogits(const op_shape *s) { return s->d[2] ? 0 : count_d0d1(s); }

/* Ties: the first maximum is the prediction. Row 0 (label 0) is then correct, row 1
 * (label 1, when there are two classes or more) is not. */
static void xent_grad_prepare(const op_shape *s, void *const *h) {
    int N = s->d[0], C = s->d[1];
    float *z = h[0];
    int32_t *label = h[1];
    xent_plant_hits(s, z, label, h[3]);
    for (int i = 0; i < 2 && i < N; i++) {
        for (int j = 0; j < C; j++)
            z[(size_t)i * C + j] = 0.25f;
        label[i] = C > 1 ? i : 0;
    }
}

static ddp_status xent_grad_op(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_softmax_xent(b, t[0], t[1], s->d[0], s->d[1], OP_XENT_GRAD_SCALE,
                                    s->d[2] ? t[0] : t[2], t[3]);
}

/* ---- add, scale ------------------------------------------------------------------------ */

/* dims "n" */
static const op_shape n_shapes[] = {{{1}}, {{7}}, {{10007}}};

static ddp_status add_fwd(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_add(b, t[2], t[0], t[1], count_d0(s));
}

/* y = a + c passes dy to both, added with the op itself (in place). */
static ddp_status add_bwd(ddp_backend *b, void *const *t, void *const *g, const op_shape *s) {
    DDP_CHECK(ddp_backend_add(b, g[0], g[0], g[2], count_d0(s)));
    return ddp_backend_add(b, g[1], g[1], g[2], count_d0(s));
}

/* dims "n which": the result replaces a (which 1) or c (which 2) */
static const op_shape add_in_place_shapes[] = {{{7, 1}}, {{10007, 1}}, {{10007, 2}}};

static ddp_status add_in_place_op(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_add(b, s->d[1] == 1 ? t[0] : t[1], t[0], t[1], count_d0(s));
}

static ddp_status scale_op(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_scale(b, t[0], count_d0(s), OP_SCALE_ALPHA);
}

/* ---- gather ----------------------------------------------------------------------------- */

/* dims "rows n row_bytes dst_off": row_bytes picks a GPU's 16-byte, 4-byte or byte path,
 * dst_off misaligns the destination (the bytes before it must stay untouched). */
static const op_shape gather_shapes[] = {
    {{100, 53, 64, 0}}, {{100, 53, 3136, 0}}, {{100, 53, 12, 0}}, {{100, 53, 64, 4}},
    {{100, 53, 37, 0}}, {{100, 53, 64, 1}},   {{4, 4, 1, 0}},
};

static size_t gather_count_src(const op_shape *s) { return (size_t)s->d[0] * s->d[2]; }
static size_t gather_count_dst(const op_shape *s) { return (size_t)s->d[1] * s->d[2] + s->d[3]; }

static void gather_prepare(const op_shape *s, void *const *h) {
    ((int32_t *)h[1])[s->d[1] - 1] = s->d[0] - 1; /* the last row of src is gathered */
}

static ddp_status gather_op(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_gather_rows(b, (char *)t[2] + s->d[3], t[0], t[1], count_d1(s),
                                   (size_t)s->d[2]);
}

/* ---- bf16, sum of squares ---------------------------------------------------------------- */

static const op_shape to_bf16_shapes[] = {{{70000}}, {{16}}, {{5}}};
static const op_shape from_bf16_shapes[] = {{{65536}}, {{3}}};

static ddp_status to_bf16_op(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_f32_to_bf16(b, t[0], t[1], count_d0(s));
}

static ddp_status from_bf16_op(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_bf16_to_f32(b, t[0], t[1], count_d0(s));
}

/* dims "n planted": planted 1 puts an infinity in x, 2 an infinity and a NaN */
static const op_shape sumsq_shapes[] = {{{1, 0}},       {{31, 0}},   {{1000, 0}}, {{100003, 0}},
                                        {{3000017, 0}}, {{1000, 1}}, {{1000, 2}}};

static void sumsq_prepare(const op_shape *s, void *const *h) {
    float *x = h[0];
    int n = s->d[0];
    if (s->d[1] >= 1) x[n / 2] = INFINITY;
    if (s->d[1] >= 2) x[n / 2 + 1] = NAN;
}

/* The result is a host double; it is copied into the output tensor. */
static ddp_status sumsq_op(ddp_backend *b, void *const *t, const op_shape *s) {
    double out = 0.0;
    DDP_CHECK(ddp_backend_sumsq(b, t[0], count_d0(s), &out));
    return ddp_backend_copy(b, t[1], &out, sizeof out, DDP_COPY_H2D);
}

/* The same sums, added on the device to the sum's starting value. */
static ddp_status sumsq_add_op(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_sumsq_add(b, t[0], count_d0(s), t[1]);
}

/* ---- optimizer steps --------------------------------------------------------------------- */

/* dims "n nesterov first clip": clip scales the gradient by 0.25 */
static const op_shape sgd_shapes[] = {
    {{1001, 0, 0, 0}}, {{1001, 1, 0, 0}}, {{1001, 0, 1, 0}}, {{1001, 1, 1, 1}}, {{3, 0, 1, 0}}};

/* On the first step the momentum buffer is output only: it starts as NaN. */
static void sgd_prepare(const op_shape *s, void *const *h) {
    if (!s->d[2]) return;
    for (int i = 0; i < s->d[0]; i++)
        ((float *)h[2])[i] = NAN;
}

static ddp_status sgd_op(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_sgd_step(b, t[0], t[1], t[2], count_d0(s), OP_SGD_LR, OP_SGD_MOMENTUM,
                                OP_SGD_WD, s->d[1], s->d[2], OP_CLIP_SCALE(s->d[3]));
}

/* dims "n t clip" */
static const op_shape adamw_shapes[] = {
    {{1001, 1, 0}}, {{1001, 7, 0}}, {{1001, 1000, 1}}, {{5, 2, 0}}};

static ddp_status adamw_op(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_adamw_step(b, t[0], t[1], t[2], t[3], count_d0(s), OP_ADAMW_LR,
                                  OP_ADAMW_BETA1, OP_ADAMW_BETA2, OP_ADAMW_EPS, OP_ADAMW_WD,
                                  s->d[1], OP_CLIP_SCALE(s->d[2]));
}

/* ---- token and position embedding ------------------------------------------------------- */

/* dims "B T C V which": which 1 passes no position gradient, 2 no token gradient. Small
 * vocabularies make tokens repeat, so that their gradients sum several rows. */
static const op_shape encoder_shapes[] = {{{2, 3, 5, 7, 0}},    {{1, 1, 1, 1, 0}},
                                          {{3, 17, 33, 11, 0}}, {{2, 5, 16, 4, 1}},
                                          {{2, 5, 16, 4, 2}},   {{4, 64, 48, 256, 0}}};

static size_t enc_count_tokens(const op_shape *s) { return (size_t)s->d[0] * s->d[1]; }
static size_t enc_count_wte(const op_shape *s) { return (size_t)s->d[3] * s->d[2]; }
/* wpe has rows for T + 2 positions: the two past T are never used, their gradient stays. */
static size_t enc_count_wpe(const op_shape *s) { return (size_t)(s->d[1] + 2) * s->d[2]; }
static size_t enc_count_out(const op_shape *s) { return (size_t)s->d[0] * s->d[1] * s->d[2]; }

static ddp_status encoder_fwd(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_encoder_forward(b, t[3], t[0], t[1], t[2], s->d[0], s->d[1], s->d[2]);
}

static int encoder_has_grad(const op_shape *s, int i) {
    return (i == 1 && s->d[4] != 2) || (i == 2 && s->d[4] != 1);
}

static ddp_status encoder_bwd(ddp_backend *b, void *const *t, void *const *g, const op_shape *s) {
    return ddp_backend_encoder_backward(b, encoder_has_grad(s, 1) ? g[1] : NULL,
                                        encoder_has_grad(s, 2) ? g[2] : NULL, g[3], t[0], s->d[0],
                                        s->d[1], s->d[2]);
}

/* ---- layer normalization ----------------------------------------------------------------- */

/* dims "N C": the CPU sums the weight and bias gradients in blocks of 64 rows, so one
 * shape has two blocks and part of a third. */
static const op_shape ln_shapes[] = {{{1, 1}},   {{3, 5}},    {{7, 16}},   {{5, 33}},
                                     {{17, 64}}, {{64, 256}}, {{130, 24}}, {{2, 1000}}};

/* Rows with a mean away from zero and different spreads, so that both are really
 * removed. */
static void ln_prepare(const op_shape *s, void *const *h) {
    int N = s->d[0], C = s->d[1];
    float *x = h[0];
    for (int r = 0; r < N; r++)
        for (int i = 0; i < C; i++)
            x[(size_t)r * C + i] =
                x[(size_t)r * C + i] * (float)(1 + r % 3) + 0.5f * (float)(r % 4);
}

static ddp_status ln_fwd(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_layernorm_forward(b, t[3], t[4], t[5], t[0], t[1], t[2], s->d[0], s->d[1]);
}

static ddp_status ln_bwd(ddp_backend *b, void *const *t, void *const *g, const op_shape *s) {
    return ddp_backend_layernorm_backward(b, g[0], g[1], g[2], g[3], t[0], t[1], t[4], t[5],
                                          s->d[0], s->d[1]);
}

/* ---- RMS normalization ------------------------------------------------------------------- */

/* dims "N C", as layer norm's (the same blocks of 64 rows for the weight gradient); rows of
 * different spreads and means, which RMS normalization keeps. */
static ddp_status rms_fwd(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_rmsnorm_forward(b, t[2], t[3], t[0], t[1], s->d[0], s->d[1]);
}

static ddp_status rms_bwd(ddp_backend *b, void *const *t, void *const *g, const op_shape *s) {
    return ddp_backend_rmsnorm_backward(b, g[0], g[1], g[2], t[0], t[1], t[3], s->d[0], s->d[1]);
}

/* ---- transpose --------------------------------------------------------------------------- */

/* dims "batch rows cols": tiles of 16 (CPU) and 32 (CUDA) with their tails, a row or a
 * column alone, the CNN's flatten (7 x 7 positions of 64 channels), and empty matrices,
 * which are nothing to do. */
static const op_shape transpose_shapes[] = {{{1, 1, 1}},   {{2, 3, 5}},   {{3, 7, 1}}, {{1, 1, 9}},
                                            {{1, 33, 17}}, {{4, 49, 64}}, {{2, 0, 4}}, {{2, 4, 0}}};

static size_t transpose_count(const op_shape *s) { return (size_t)s->d[0] * s->d[1] * s->d[2]; }

static ddp_status transpose_fwd(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_transpose(b, t[1], t[0], s->d[0], s->d[1], s->d[2]);
}

/* The gradient of a transpose is the transpose back. */
static ddp_status transpose_bwd(ddp_backend *b, void *const *t, void *const *g, const op_shape *s) {
    return ddp_backend_transpose(b, g[0], g[1], s->d[0], s->d[2], s->d[1]);
}

/* ---- causal self-attention --------------------------------------------------------------- */

/* dims "B T C NH": every T from 1 to 7 with 1 to 3 heads of 1 to 3 channels, then
 * sequences longer than the CPU's blocks of 32 rows and the training shape's T. */
#define ATT_HEADS(T)                                                                               \
    {{2, T, 1 * (1 + (T) % 3), 1}}, {{2, T, 2 * (1 + ((T) + 1) % 3), 2}}, {                        \
        { 2, T, 3 * (1 + ((T) + 2) % 3), 3 }                                                       \
    }
static const op_shape att_shapes[] = {
    ATT_HEADS(1),     ATT_HEADS(2),    ATT_HEADS(3),      ATT_HEADS(4),
    ATT_HEADS(5),     ATT_HEADS(6),    ATT_HEADS(7),      {{1, 33, 24, 3}},
    {{2, 64, 32, 4}}, {{1, 70, 8, 2}}, {{1, 128, 64, 4}},
};

static size_t att_count_qkv(const op_shape *s) { return (size_t)3 * s->d[0] * s->d[1] * s->d[2]; }
static size_t att_count_out(const op_shape *s) { return (size_t)s->d[0] * s->d[1] * s->d[2]; }
static size_t att_count_att(const op_shape *s) {
    return (size_t)s->d[0] * s->d[3] * s->d[1] * s->d[1];
}
static size_t att_count_work(const op_shape *s) {
    return DDP_ATTENTION_WORK(s->d[0], s->d[1], s->d[2], s->d[3]);
}

static ddp_status att_fwd(ddp_backend *b, void *const *t, const op_shape *s) {
    return ddp_backend_attention_forward(b, t[1], t[2], t[0], t[3], s->d[0], s->d[1], s->d[2],
                                         s->d[3]);
}

static ddp_status att_bwd(ddp_backend *b, void *const *t, void *const *g, const op_shape *s) {
    return ddp_backend_attention_backward(b, g[0], g[1], t[0], t[2], t[3], s->d[0], s->d[1],
                                          s->d[2], s->d[3]);
}

/* ---- 2-D convolution --------------------------------------------------------------------- */

/* dims "N H W Cin Cout KH KW stride pad nodx": nodx 1 asks the backward for no input
 * gradient, as for a network's first layer. Strides 1 to 3, padding 0 to 2 (also wider
 * than a 1x1 kernel, so that some outputs see only padding), 1x1 to 5x5 and non-square
 * kernels, a kernel as large as the padded input, a stride that leaves the last input row
 * unused (its gradient must still be written), and the small CNN's two layers at a
 * reduced width. */
static const op_shape conv_shapes[] = {
    {{2, 5, 7, 3, 4, 3, 3, 1, 1, 0}},    {{1, 6, 5, 2, 3, 3, 3, 2, 0, 0}},
    {{3, 4, 4, 1, 5, 1, 1, 1, 0, 0}},    {{2, 3, 5, 4, 2, 1, 1, 2, 2, 0}},
    {{1, 7, 6, 5, 5, 5, 5, 1, 2, 0}},    {{2, 9, 8, 2, 3, 5, 5, 2, 1, 0}},
    {{3, 5, 5, 1, 1, 3, 3, 1, 0, 1}},    {{2, 4, 6, 3, 2, 3, 1, 1, 1, 0}},
    {{1, 5, 5, 2, 2, 5, 5, 1, 0, 0}},    {{1, 3, 3, 2, 3, 3, 3, 3, 1, 0}},
    {{1, 6, 6, 2, 2, 3, 3, 2, 0, 0}},    {{2, 28, 28, 1, 8, 3, 3, 1, 1, 1}},
    {{2, 14, 14, 8, 16, 3, 3, 1, 1, 0}},
};

static ddp_conv_shape conv_of(const op_shape *s) {
    return (ddp_conv_shape){.N = s->d[0],
                            .H = s->d[1],
                            .W = s->d[2],
                            .Cin = s->d[3],
                            .Cout = s->d[4],
                            .KH = s->d[5],
                            .KW = s->d[6],
                            .stride = s->d[7],
                            .pad = s->d[8]};
}

static size_t conv_count_x(const op_shape *s) {
    return (size_t)s->d[0] * s->d[1] * s->d[2] * s->d[3];
}
static size_t conv_count_w(const op_shape *s) {
    return (size_t)s->d[4] * s->d[3] * s->d[5] * s->d[6];
}
static size_t conv_count_bias(const op_shape *s) { return (size_t)s->d[4]; }
static size_t conv_count_y(const op_shape *s) {
    ddp_conv_shape c = conv_of(s);
    return (size_t)c.N * ddp_conv_out(c.H, c.KH, c.stride, c.pad) *
           ddp_conv_out(c.W, c.KW, c.stride, c.pad) * c.Cout;
}
static size_t conv_count_work(const op_shape *s) {
    ddp_conv_shape c = conv_of(s);
    return DDP_CONV_WORK(&c);
}

static ddp_status conv_fwd(ddp_backend *b, void *const *t, const op_shape *s) {
    ddp_conv_shape c = conv_of(s);
    return ddp_backend_conv2d_forward(b, t[3], t[0], t[1], t[2], t[4], &c);
}

static int conv_has_grad(const op_shape *s, int i) { return i != 0 || !s->d[9]; }

static ddp_status conv_bwd(ddp_backend *b, void *const *t, void *const *g, const op_shape *s) {
    ddp_conv_shape c = conv_of(s);
    return ddp_backend_conv2d_backward(b, s->d[9] ? NULL : g[0], g[1], g[2], g[3], t[0], t[1], t[4],
                                       &c);
}

/* ---- max pooling ------------------------------------------------------------------------- */

/* dims "N H W C K stride": 2x2 windows at stride 2, overlapping 3x3 windows at stride 2,
 * odd sizes whose last row or column no window covers, a window as large as the input,
 * channel counts around a vector's width, and the small CNN's first pooling. */
static const op_shape pool_shapes[] = {
    {{2, 4, 4, 3, 2, 2}}, {{1, 7, 5, 2, 3, 2}},   {{2, 5, 5, 17, 2, 2}}, {{1, 3, 3, 1, 3, 1}},
    {{3, 6, 9, 4, 3, 3}}, {{2, 28, 28, 8, 2, 2}}, {{1, 9, 7, 33, 3, 2}},
};

static ddp_pool_shape pool_of(const op_shape *s) {
    return (ddp_pool_shape){
        .N = s->d[0], .H = s->d[1], .W = s->d[2], .C = s->d[3], .K = s->d[4], .stride = s->d[5]};
}

static size_t pool_count_x(const op_shape *s) {
    return (size_t)s->d[0] * s->d[1] * s->d[2] * s->d[3];
}
static size_t pool_count_y(const op_shape *s) {
    ddp_pool_shape p = pool_of(s);
    return (size_t)p.N * ddp_conv_out(p.H, p.K, p.stride, 0) * ddp_conv_out(p.W, p.K, p.stride, 0) *
           p.C;
}

static ddp_status pool_fwd(ddp_backend *b, void *const *t, const op_shape *s) {
    ddp_pool_shape p = pool_of(s);
    return ddp_backend_maxpool_forward(b, t[1], t[2], t[0], &p);
}

static ddp_status pool_bwd(ddp_backend *b, void *const *t, void *const *g, const op_shape *s) {
    ddp_pool_shape p = pool_of(s);
    return ddp_backend_maxpool_backward(b, g[0], g[1], t[2], &p);
}

/* Distinct inputs 1/16 apart (a permutation of a grid), so that the finite differences'
 * moves of up to 2^-5 never change which element of a window is its maximum. */
static void pool_distinct(const op_shape *s, void *const *h) {
    size_t n = pool_count_x(s), p = n + 1;
    for (;; p++) { /* the first prime above n: i -> 7919 i mod p is then one to one */
        size_t d = 2;
        while (d * d <= p && p % d)
            d++;
        if (d * d > p && p != 7919) break;
    }
    for (size_t i = 0; i < n; i++)
        ((float *)h[0])[i] = ((float)((i * 7919) % p) - (float)(p / 2)) / 16.0f;
}

/* Forward and backward as one op, on inputs full of ties (values -1, 0 and 1) and with
 * NaNs: the first maximum must win, a NaN over any number. dims as above. */
static const op_shape pool_tie_shapes[] = {
    {{2, 4, 4, 3, 2, 2}}, {{1, 7, 5, 2, 3, 2}}, {{2, 9, 7, 5, 3, 2}}, {{1, 5, 6, 17, 3, 1}}};

static void pool_ties(const op_shape *s, void *const *h) {
    float *x = h[0];
    size_t n = pool_count_x(s);
    for (size_t i = 0; i < n; i++)
        x[i] = x[i] > 0.5f ? 1.0f : x[i] < -0.5f ? -1.0f : 0.0f;
    x[n / 3] = NAN;
    x[n / 2] = NAN;
    x[n / 2 + 1] = NAN;
}

static ddp_status pool_both_op(ddp_backend *b, void *const *t, const op_shape *s) {
    ddp_pool_shape p = pool_of(s);
    DDP_CHECK(ddp_backend_maxpool_forward(b, t[1], t[2], t[0], &p));
    return ddp_backend_maxpool_backward(b, t[4], t[3], t[2], &p);
}

/* ---- batch normalization ------------------------------------------------------------------ */

/* dims "rows C": the whole training normalization, bn_sums -> bn_stats -> bn_normalize,
 * and its backward, bn_backward_sums -> bn_backward_input, over one batch of `rows` rows
 * (count = rows, as on one rank). */
static const op_shape bn_shapes[] = {{{2, 1}},    {{7, 3}},     {{64, 5}},
                                     {{300, 17}}, {{1000, 32}}, {{3, 64}}};

static size_t count_2d1(const op_shape *s) { return 2 * (size_t)s->d[1]; }

/* Channels with different means and spreads, so that both are really removed. */
static void bn_prepare(const op_shape *s, void *const *h) {
    int rows = s->d[0], C = s->d[1];
    float *x = h[0];
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < C; c++)
            x[(size_t)r * C + c] =
                x[(size_t)r * C + c] * (float)(1 + c % 3) + 0.5f * (float)(c % 4);
}

static ddp_status bn_fwd(ddp_backend *b, void *const *t, const op_shape *s) {
    int rows = s->d[0], C = s->d[1];
    DDP_CHECK(ddp_backend_bn_sums(b, t[7], t[0], rows, C));
    DDP_CHECK(ddp_backend_bn_stats(b, t[4], t[5], t[6], t[7], (double)rows, OP_BN_EPS,
                                   OP_BN_MOMENTUM, C));
    return ddp_backend_bn_normalize(b, t[3], t[0], t[4], t[5], t[1], t[2], rows, C);
}

/* The backward's sums replace the forward's in t[7], which nothing reads any more. */
static ddp_status bn_bwd(ddp_backend *b, void *const *t, void *const *g, const op_shape *s) {
    int rows = s->d[0], C = s->d[1];
    DDP_CHECK(ddp_backend_bn_backward_sums(b, t[7], g[1], g[2], g[3], t[0], t[4], t[5], rows, C));
    return ddp_backend_bn_backward_input(b, g[0], g[3], t[0], t[4], t[5], t[1], t[7], (double)rows,
                                         rows, C);
}

/* Evaluation (count 0), normalizing in place: dims "rows C". The sums are not read. */
static ddp_status bn_eval_op(ddp_backend *b, void *const *t, const op_shape *s) {
    int rows = s->d[0], C = s->d[1];
    DDP_CHECK(ddp_backend_bn_stats(b, t[3], t[4], t[5], NULL, 0.0, OP_BN_EPS, OP_BN_MOMENTUM, C));
    return ddp_backend_bn_normalize(b, t[0], t[0], t[3], t[4], t[1], t[2], rows, C);
}

/* The input gradient in place (dx = dy) from any statistics: dims "rows C". */
static ddp_status bn_dx_in_place_op(ddp_backend *b, void *const *t, const op_shape *s) {
    int rows = s->d[0], C = s->d[1];
    float *dgamma = t[6], *dbeta = dgamma + C;
    DDP_CHECK(
        ddp_backend_bn_backward_sums(b, t[5], dgamma, dbeta, t[1], t[0], t[2], t[3], rows, C));
    return ddp_backend_bn_backward_input(b, t[1], t[1], t[0], t[2], t[3], t[4], t[5], (double)rows,
                                         rows, C);
}

/* ---- the table ----------------------------------------------------------------------------- */

#define IN(name, kind, scale, count)                                                               \
    { name, OP_F32, OP_IN, kind, scale, 0, count, OP_NO_GRAD, 0, 0 }
#define IN_GRAD(name, kind, scale, count, grad)                                                    \
    { name, OP_F32, OP_IN, kind, scale, 0, count, grad, 0, 0 }
#define INDEX(name, bound, count)                                                                  \
    { name, OP_I32, OP_IN, OP_INDEX, 0, bound, count, OP_NO_GRAD, 0, 0 }
#define OUT(name, count)                                                                           \
    { name, OP_F32, OP_OUT, OP_NORMAL, 0, 0, count, OP_NO_GRAD, 0, 0 }
#define OUT_LOSS(name, count)                                                                      \
    { name, OP_F32, OP_OUT, OP_NORMAL, 0, 0, count, OP_NO_GRAD, 1, 0 }
#define INOUT(name, kind, scale, count)                                                            \
    { name, OP_F32, OP_INOUT, kind, scale, 0, count, OP_NO_GRAD, 0, 0 }
#define INOUT_LOSS(name, kind, scale, count)                                                       \
    { name, OP_F32, OP_INOUT, kind, scale, 0, count, OP_NO_GRAD, 1, 0 }
#define SCRATCH(name, count)                                                                       \
    { name, OP_F32, OP_SCRATCH, OP_NORMAL, 0, 0, count, OP_NO_GRAD, 0, 0 }

const op_case op_cases[] = {
    {.name = "act",
     .dims = "n act",
     SHAPES(act_shapes),
     .t = {IN_GRAD("x", OP_AWAY_FROM_ZERO, 3.0f, count_d0, OP_GRAD_SET), OUT_LOSS("y", count_d0)},
     .n_tensors = 2,
     .forward = act_fwd,
     .backward = act_bwd,
     .reference = ref_act,
     .fwd_tol = 1e-6,
     .fd_step = STEP_SMOOTH,
     .fd_units = 4,
     .gpu_tol = GPU_FP32},
    {.name = "act_in_place",
     .dims = "n act",
     SHAPES(act_shapes),
     .t = {INOUT("x", OP_NORMAL, 3.0f, count_d0)},
     .n_tensors = 1,
     .forward = act_fwd_in_place,
     .reference = ref_act_in_place,
     .prepare = plant_act_values,
     .fwd_tol = 1e-6,
     .gpu_tol = GPU_FP32},
    {.name = "act_backward",
     .dims = "n act in_place",
     SHAPES(act_bwd_shapes),
     .t = {IN("x", OP_NORMAL, 3.0f, count_d0), INOUT("dy", OP_NORMAL, 1.0f, count_d0),
           OUT("dx", count_dx)},
     .n_tensors = 3,
     .forward = act_bwd_op,
     .reference = ref_act_backward,
     .prepare = plant_act_values,
     .fwd_tol = 1e-6,
     .gpu_tol = GPU_FP32},
    {.name = "bias",
     .dims = "N C",
     SHAPES(bias_shapes),
     .t = {INOUT_LOSS("y", OP_NORMAL, 1.0f, count_d0d1),
           IN_GRAD("bias", OP_NORMAL, 1.0f, count_d1, OP_GRAD_ADD)},
     .n_tensors = 2,
     .forward = bias_fwd,
     .backward = bias_bwd,
     .reference = ref_bias_add,
     .fwd_tol = 0,
     .fd_step = STEP_LINEAR,
     .fd_units = 2,
     .gpu_tol = GPU_FP32},
    {.name = "gemm",
     .dims = "ta tb M N K pad ab",
     SHAPES(gemm_shapes),
     .t = {IN_GRAD("A", OP_NORMAL, 1.0f, gemm_count_a, OP_GRAD_ADD),
           IN_GRAD("B", OP_NORMAL, 1.0f, gemm_count_b, OP_GRAD_ADD),
           INOUT_LOSS("C", OP_NORMAL, 1.0f, gemm_count_c)},
     .n_tensors = 3,
     .forward = gemm_fwd,
     .backward = gemm_bwd,
     .reference = ref_gemm,
     .prepare = gemm_prepare,
     .fwd_tol = 1e-5,
     .fd_step = STEP_LINEAR,
     .fd_units = 16,
     .gpu_tol = GPU_FP32,
     .uses_math = 1},
    {.name = "softmax_xent",
     .dims = "N C",
     SHAPES(xent_shapes),
     .t = {IN_GRAD("logits", OP_NORMAL, 3.0f, count_d0d1, OP_GRAD_SET),
           INDEX("labels", 1, count_d0),
           {"stats", OP_F32, OP_INOUT, OP_NORMAL, 1.0f, 0, count_two, OP_NO_GRAD, 1, count_one},
           SCRATCH("stats_bwd", count_two)},
     .n_tensors = 4,
     .forward = xent_fwd,
     .backward = xent_bwd,
     .reference = ref_softmax_xent,
     .prepare = xent_prepare,
     .fwd_tol = 1e-6,
     .fd_step = STEP_SMOOTH,
     .fd_units = 4,
     .gpu_tol = GPU_FP32},
    {.name = "softmax_xent_grad",
     .dims = "N C in_place",
     SHAPES(xent_grad_shapes),
     .t = {INOUT("logits", OP_NORMAL, 3.0f, count_d0d1), INDEX("labels", 1, count_d0),
           OUT("dlogits", xent_count_dlogits), INOUT("stats", OP_NORMAL, 1.0f, count_two)},
     .n_tensors = 4,
     .forward = xent_grad_op,
     .reference = ref_softmax_xent_grad,
     .prepare = xent_grad_prepare,
     .fwd_tol = 1e-6,
     .gpu_tol = GPU_FP32},
    {.name = "add",
     .dims = "n",
     SHAPES(n_shapes),
     .t = {IN_GRAD("a", OP_NORMAL, 1.0f, count_d0, OP_GRAD_ADD),
           IN_GRAD("c", OP_NORMAL, 1.0f, count_d0, OP_GRAD_ADD), OUT_LOSS("y", count_d0)},
     .n_tensors = 3,
     .forward = add_fwd,
     .backward = add_bwd,
     .reference = ref_add,
     .fwd_tol = 0,
     .fd_step = STEP_LINEAR,
     .fd_units = 2,
     .gpu_tol = GPU_FP32},
    {.name = "add_in_place",
     .dims = "n which",
     SHAPES(add_in_place_shapes),
     .t = {INOUT("a", OP_NORMAL, 1.0f, count_d0), INOUT("c", OP_NORMAL, 1.0f, count_d0)},
     .n_tensors = 2,
     .forward = add_in_place_op,
     .reference = ref_add_in_place,
     .fwd_tol = 0,
     .gpu_tol = GPU_FP32},
    {.name = "gather_rows",
     .dims = "rows n row_bytes dst_off",
     SHAPES(gather_shapes),
     .t = {{"src", OP_U8, OP_IN, OP_BYTES, 0, 0, gather_count_src, OP_NO_GRAD, 0, 0},
           INDEX("idx", 0, count_d1),
           {"dst", OP_U8, OP_INOUT, OP_BYTES, 0, 0, gather_count_dst, OP_NO_GRAD, 0, 0}},
     .n_tensors = 3,
     .forward = gather_op,
     .reference = ref_gather_rows,
     .prepare = gather_prepare},
    {.name = "scale",
     .dims = "n",
     SHAPES(n_shapes),
     .t = {INOUT("x", OP_NORMAL, 2.0f, count_d0)},
     .n_tensors = 1,
     .forward = scale_op,
     .reference = ref_scale,
     .fwd_tol = 0,
     .gpu_tol = GPU_FP32},
    {.name = "f32_to_bf16",
     .dims = "n",
     SHAPES(to_bf16_shapes),
     .t = {IN("x", OP_F32_SPECIAL, 100.0f, count_d0),
           {"y", OP_U16, OP_OUT, OP_NORMAL, 0, 0, count_d0, OP_NO_GRAD, 0, 0}},
     .n_tensors = 2,
     .forward = to_bf16_op,
     .reference = ref_f32_to_bf16},
    {.name = "bf16_to_f32",
     .dims = "n",
     SHAPES(from_bf16_shapes),
     .t = {{"x", OP_U16, OP_IN, OP_U16_ALL, 0, 0, count_d0, OP_NO_GRAD, 0, 0}, OUT("y", count_d0)},
     .n_tensors = 2,
     .forward = from_bf16_op,
     .reference = ref_bf16_to_f32},
    {.name = "sumsq",
     .dims = "n planted",
     SHAPES(sumsq_shapes),
     .t = {IN("x", OP_NORMAL, 1.5f, count_d0),
           {"sum", OP_F64, OP_OUT, OP_NORMAL, 0, 0, count_one, OP_NO_GRAD, 0, 0}},
     .n_tensors = 2,
     .forward = sumsq_op,
     .reference = ref_sumsq,
     .prepare = sumsq_prepare,
     /* Exact products, double sums: far below float (dsdot's kernels that round each
      * product to float miss this by up to 2^-24). */
     .fwd_tol = 1e-12,
     .gpu_tol = 1e-7},
    {.name = "sumsq_add",
     .dims = "n planted",
     SHAPES(sumsq_shapes),
     .t = {IN("x", OP_NORMAL, 1.5f, count_d0),
           {"sum", OP_F64, OP_INOUT, OP_NORMAL, 10.0f, 0, count_one, OP_NO_GRAD, 0, 0}},
     .n_tensors = 2,
     .forward = sumsq_add_op,
     .reference = ref_sumsq_add,
     .prepare = sumsq_prepare,
     .fwd_tol = 1e-12,
     .gpu_tol = 1e-7},
    {.name = "sgd_step",
     .dims = "n nesterov first clip",
     SHAPES(sgd_shapes),
     .t = {INOUT("p", OP_NORMAL, 1.0f, count_d0), IN("grad", OP_NORMAL, 1.0f, count_d0),
           INOUT("buf", OP_NORMAL, 1.0f, count_d0)},
     .n_tensors = 3,
     .forward = sgd_op,
     .reference = ref_sgd_step,
     .prepare = sgd_prepare,
     .fwd_tol = 1e-6,
     .gpu_tol = GPU_FP32},
    {.name = "adamw_step",
     .dims = "n t clip",
     SHAPES(adamw_shapes),
     .t = {INOUT("p", OP_NORMAL, 1.0f, count_d0), IN("grad", OP_NORMAL, 1.0f, count_d0),
           INOUT("m", OP_NORMAL, 0.1f, count_d0), INOUT("v", OP_POSITIVE, 0.01f, count_d0)},
     .n_tensors = 4,
     .forward = adamw_op,
     .reference = ref_adamw_step,
     .fwd_tol = 2e-6,
     .gpu_tol = GPU_FP32},
    {.name = "encoder",
     .dims = "B T C V which",
     SHAPES(encoder_shapes),
     .t = {INDEX("tokens", 3, enc_count_tokens),
           IN_GRAD("wte", OP_NORMAL, 1.0f, enc_count_wte, OP_GRAD_ADD),
           IN_GRAD("wpe", OP_NORMAL, 1.0f, enc_count_wpe, OP_GRAD_ADD),
           OUT_LOSS("out", enc_count_out)},
     .n_tensors = 4,
     .forward = encoder_fwd,
     .backward = encoder_bwd,
     .reference = ref_encoder,
     .has_grad = encoder_has_grad,
     .fwd_tol = 0,
     .fd_step = STEP_LINEAR,
     .fd_units = 2,
     .gpu_tol = GPU_FP32},
    {.name = "layernorm",
     .dims = "N C",
     SHAPES(ln_shapes),
     .t = {IN_GRAD("inp", OP_NORMAL, 1.0f, count_d0d1, OP_GRAD_ADD),
           IN_GRAD("weight", OP_NORMAL, 1.0f, count_d1, OP_GRAD_ADD),
           IN_GRAD("bias", OP_NORMAL, 1.0f, count_d1, OP_GRAD_ADD), OUT_LOSS("out", count_d0d1),
           OUT("mean", count_d0), OUT("rstd", count_d0)},
     .n_tensors = 6,
     .forward = ln_fwd,
     .backward = ln_bwd,
     .reference = ref_layernorm,
     .prepare = ln_prepare,
     .fwd_tol = 1e-5,
     .fd_step = STEP_SMOOTH,
     .fd_units = 4,
     .gpu_tol = GPU_FP32},
    {.name = "rmsnorm",
     .dims = "N C",
     SHAPES(ln_shapes),
     .t = {IN_GRAD("inp", OP_NORMAL, 1.0f, count_d0d1, OP_GRAD_ADD),
           IN_GRAD("weight", OP_NORMAL, 1.0f, count_d1, OP_GRAD_ADD), OUT_LOSS("out", count_d0d1),
           OUT("rstd", count_d0)},
     .n_tensors = 4,
     .forward = rms_fwd,
     .backward = rms_bwd,
     .reference = ref_rmsnorm,
     .prepare = ln_prepare,
     .fwd_tol = 1e-5,
     .fd_step = STEP_SMOOTH,
     .fd_units = 4,
     .gpu_tol = GPU_FP32},
    {.name = "transpose",
     .dims = "batch rows cols",
     SHAPES(transpose_shapes),
     .t = {IN_GRAD("x", OP_NORMAL, 1.0f, transpose_count, OP_GRAD_SET),
           OUT_LOSS("y", transpose_count)},
     .n_tensors = 2,
     .forward = transpose_fwd,
     .backward = transpose_bwd,
     .reference = ref_transpose,
     .fwd_tol = 0,
     .fd_step = STEP_LINEAR,
     .fd_units = 2,
     .gpu_tol = 0},
    {.name = "attention",
     .dims = "B T C NH",
     SHAPES(att_shapes),
     .t = {IN_GRAD("qkv", OP_NORMAL, 1.0f, att_count_qkv, OP_GRAD_SET),
           OUT_LOSS("out", att_count_out), OUT("att", att_count_att),
           SCRATCH("work", att_count_work)},
     .n_tensors = 4,
     .forward = att_fwd,
     .backward = att_bwd,
     .reference = ref_attention,
     .fwd_tol = 1e-5,
     .fd_step = STEP_SMOOTH,
     .fd_units = 8,
     .gpu_tol = GPU_FP32,
     /* Its batched products run in the backend's math mode too. */
     .uses_math = 1},
    {.name = "conv2d",
     .dims = "N H W Cin Cout KH KW stride pad nodx",
     SHAPES(conv_shapes),
     .t = {IN_GRAD("x", OP_NORMAL, 1.0f, conv_count_x, OP_GRAD_SET),
           IN_GRAD("w", OP_NORMAL, 0.5f, conv_count_w, OP_GRAD_ADD),
           IN_GRAD("bias", OP_NORMAL, 1.0f, conv_count_bias, OP_GRAD_ADD),
           OUT_LOSS("y", conv_count_y), SCRATCH("work", conv_count_work)},
     .n_tensors = 5,
     .forward = conv_fwd,
     .backward = conv_bwd,
     .reference = ref_conv2d,
     .has_grad = conv_has_grad,
     .fwd_tol = 1e-5,
     .fd_step = STEP_LINEAR,
     .fd_units = 16,
     .gpu_tol = GPU_FP32,
     .uses_math = 1},
    {.name = "maxpool",
     .dims = "N H W C K stride",
     SHAPES(pool_shapes),
     .t = {IN_GRAD("x", OP_NORMAL, 1.0f, pool_count_x, OP_GRAD_SET),
           OUT_LOSS("y", pool_count_y),
           {"arg", OP_I32, OP_OUT, OP_NORMAL, 0, 0, pool_count_y, OP_NO_GRAD, 0, 0}},
     .n_tensors = 3,
     .forward = pool_fwd,
     .backward = pool_bwd,
     .reference = ref_maxpool,
     .prepare = pool_distinct,
     .fwd_tol = 0,
     .fd_step = STEP_SMOOTH,
     .fd_units = 2,
     .gpu_tol = 0},
    {.name = "maxpool_ties",
     .dims = "N H W C K stride",
     SHAPES(pool_tie_shapes),
     .t = {IN("x", OP_NORMAL, 1.0f, pool_count_x),
           OUT("y", pool_count_y),
           {"arg", OP_I32, OP_OUT, OP_NORMAL, 0, 0, pool_count_y, OP_NO_GRAD, 0, 0},
           IN("dy", OP_NORMAL, 1.0f, pool_count_y),
           OUT("dx", pool_count_x)},
     .n_tensors = 5,
     .forward = pool_both_op,
     .reference = ref_maxpool_both,
     .prepare = pool_ties,
     .fwd_tol = 1e-6,
     .gpu_tol = 0},
    {.name = "batchnorm",
     .dims = "rows C",
     SHAPES(bn_shapes),
     .t = {IN_GRAD("x", OP_NORMAL, 1.0f, count_d0d1, OP_GRAD_SET),
           IN_GRAD("gamma", OP_NORMAL, 1.0f, count_d1, OP_GRAD_ADD),
           IN_GRAD("beta", OP_NORMAL, 1.0f, count_d1, OP_GRAD_ADD),
           OUT_LOSS("y", count_d0d1),
           OUT("mean", count_d1),
           OUT("rstd", count_d1),
           INOUT("running", OP_POSITIVE, 1.0f, count_2d1),
           {"sums", OP_F64, OP_OUT, OP_NORMAL, 0, 0, count_2d1, OP_NO_GRAD, 0, 0}},
     .n_tensors = 8,
     .forward = bn_fwd,
     .backward = bn_bwd,
     .reference = ref_batchnorm,
     .prepare = bn_prepare,
     .fwd_tol = 1e-5,
     .fd_step = STEP_SMOOTH,
     .fd_units = 8,
     .gpu_tol = GPU_FP32},
    {.name = "batchnorm_eval",
     .dims = "rows C",
     SHAPES(bn_shapes),
     .t = {INOUT("x", OP_NORMAL, 1.0f, count_d0d1), IN("gamma", OP_NORMAL, 1.0f, count_d1),
           IN("beta", OP_NORMAL, 1.0f, count_d1), OUT("mean", count_d1), OUT("rstd", count_d1),
           INOUT("running", OP_POSITIVE, 1.0f, count_2d1)},
     .n_tensors = 6,
     .forward = bn_eval_op,
     .reference = ref_batchnorm_eval,
     .fwd_tol = 1e-6,
     .gpu_tol = GPU_FP32},
    {.name = "batchnorm_dx_in_place",
     .dims = "rows C",
     SHAPES(bn_shapes),
     .t = {IN("x", OP_NORMAL, 1.0f, count_d0d1),
           INOUT("dy", OP_NORMAL, 1.0f, count_d0d1),
           IN("mean", OP_NORMAL, 0.5f, count_d1),
           IN("rstd", OP_POSITIVE, 1.0f, count_d1),
           IN("gamma", OP_NORMAL, 1.0f, count_d1),
           {"sums", OP_F64, OP_SCRATCH, OP_NORMAL, 0, 0, count_2d1, OP_NO_GRAD, 0, 0},
           SCRATCH("dgamma_dbeta", count_2d1)},
     .n_tensors = 7,
     .forward = bn_dx_in_place_op,
     .reference = ref_batchnorm_dx,
     .fwd_tol = 1e-5,
     .gpu_tol = GPU_FP32},
};
const int op_case_count = ARRAY_LEN(op_cases);
