/*
 * The CPU backend where the op table (op_cases.c, run by test_ops_cpu.c against
 * double-precision references and finite differences) cannot reach: creation and memory,
 * error paths, and values worked out by hand or known from PyTorch: GELU at two points,
 * softmax cross-entropy on a 2x3 example with a tie and with logits of 1000, sums of squares
 * that only double precision gets right, bf16 rounding ties, the SGD and AdamW updates
 * over three steps, a convolution against PyTorch's on its layouts, batch norm's running
 * statistics against PyTorch's, and the synchronized batch norm's contract (sums added over
 * two halves of a batch give the whole batch's results).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "ddp/backend.h"

/* ---- creation and memory -------------------------------------------------------------- */

static void test_cpu_backend_reports_its_kind(void **state) {
    ddp_backend *b = *state;
    assert_string_equal(ddp_backend_name(b), "cpu");
    assert_int_equal(ddp_backend_device(b), DDP_DEVICE_CPU);
    assert_true(ddp_backend_is_host(b));
}

/* bf16 runs on the CPU (test_bf16_cpu); tf32 is a tensor-core format the CPU lacks. */
static void test_cpu_backend_refuses_tf32(void **state) {
    ddp_backend_options opt = {.device = DDP_DEVICE_CPU, .math = DDP_MATH_TF32};
    ddp_backend *b = (ddp_backend *)0x1;
    assert_int_equal(ddp_backend_create(&opt, &b), DDP_ERR_UNSUPPORTED);
    assert_null(b);
    assert_msg_has("--precision bf16 or fp32");
    ddp_error_clear();
    opt.math = DDP_MATH_BF16;
    assert_int_equal(ddp_backend_create(&opt, &b), DDP_OK);
    ddp_backend_free(b);
}

static void test_cuda_request_without_a_gpu_is_unsupported(void **state) {
    if (ddp_backend_cuda_device_count() > 0) skip();
    ddp_backend_options opt = {.device = DDP_DEVICE_CUDA};
    ddp_backend *b = NULL;
    assert_int_equal(ddp_backend_create(&opt, &b), DDP_ERR_UNSUPPORTED);
    assert_null(b);
}

static void test_alloc_copy_and_zero_round_trip(void **state) {
    ddp_backend *b = *state;
    float *d = NULL, *empty = NULL;
    assert_int_equal(ddp_backend_alloc(b, 4 * sizeof(float), (void **)&d), DDP_OK);
    assert_non_null(d);
    /* Empty buffers still get a valid pointer, so callers need no special case. */
    assert_int_equal(ddp_backend_alloc(b, 0, (void **)&empty), DDP_OK);
    assert_non_null(empty);
    const float src[4] = {1.0f, -2.0f, 3.5f, 4.0f};
    float back[4] = {0};
    assert_int_equal(ddp_backend_copy(b, d, src, sizeof src, DDP_COPY_H2D), DDP_OK);
    assert_int_equal(ddp_backend_copy(b, back, d, sizeof back, DDP_COPY_D2H), DDP_OK);
    assert_memory_equal(back, src, sizeof src);
    assert_int_equal(ddp_backend_zero(b, d + 1, 2 * sizeof(float)), DDP_OK);
    assert_int_equal(ddp_backend_copy(b, back, d, sizeof back, DDP_COPY_D2H), DDP_OK);
    const float want[4] = {1.0f, 0.0f, 0.0f, 4.0f};
    assert_memory_equal(back, want, sizeof want);
    assert_int_equal(ddp_backend_copy(b, NULL, src, sizeof src, DDP_COPY_H2D), DDP_ERR_INVALID_ARG);
    ddp_backend_dealloc(b, d);
    ddp_backend_dealloc(b, empty);
}

/* Page memory: read as zeros, given back by release (zeros again, no page resident), and
 * from a huge page up mapped on huge-page boundaries, released in whole huge pages (a
 * release of part of one would split it into small pages that fault back one per 4 KB). */
static void test_page_memory_is_released_in_whole_huge_pages(void **state) {
    ddp_backend *b = *state;
    size_t small = ddp_backend_page_bytes(b), big = 2 * DDP_HUGE_PAGE_BYTES + 12345;
    float *p = NULL, *q = NULL;
    assert_int_equal(ddp_backend_alloc_pages(b, big, (void **)&p), DDP_OK);
    assert_int_equal(ddp_backend_alloc_pages(b, 3 * small, (void **)&q), DDP_OK);
    assert_int_equal((uintptr_t)p % DDP_HUGE_PAGE_BYTES, 0);
    assert_int_equal(ddp_backend_release_granule(b, p, big), DDP_HUGE_PAGE_BYTES);
    assert_int_equal(ddp_backend_release_granule(b, q, 3 * small), small);
    size_t n = big / sizeof(float);
    assert_true(p[0] == 0.0f && p[n - 1] == 0.0f);
    for (size_t i = 0; i < n; i++)
        p[i] = 1.0f;
    size_t released = 0;
    assert_int_equal(ddp_backend_release_pages(b, p, DDP_HUGE_PAGE_BYTES, &released), DDP_OK);
    assert_int_equal(released, DDP_HUGE_PAGE_BYTES);
    unsigned char vec[DDP_HUGE_PAGE_BYTES / 4096];
    assert_true(DDP_HUGE_PAGE_BYTES / small <= sizeof vec);
    assert_int_equal(mincore(p, DDP_HUGE_PAGE_BYTES, vec), 0);
    for (size_t i = 0; i < DDP_HUGE_PAGE_BYTES / small; i++)
        assert_int_equal(vec[i] & 1, 0);
    assert_true(p[0] == 0.0f && p[DDP_HUGE_PAGE_BYTES / sizeof(float) - 1] == 0.0f);
    assert_true(p[DDP_HUGE_PAGE_BYTES / sizeof(float)] == 1.0f && p[n - 1] == 1.0f);
    /* The last huge page is mapped whole: its end can be given back too. */
    assert_int_equal(ddp_backend_release_pages(b, (char *)p + 2 * DDP_HUGE_PAGE_BYTES,
                                               DDP_HUGE_PAGE_BYTES, &released),
                     DDP_OK);
    assert_true(p[n - 1] == 0.0f);
    ddp_backend_free_pages(b, p, big);
    ddp_backend_free_pages(b, q, 3 * small);
}

/* ---- gemm ----------------------------------------------------------------------------- */

static void test_gemm_rejects_bad_sizes_and_leading_dimensions(void **state) {
    ddp_backend *b = *state;
    float A[16] = {0}, B[16] = {0}, C[16] = {0};
    assert_int_equal(ddp_backend_gemm(b, 0, 0, -1, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2),
                     DDP_ERR_INVALID_ARG);
    /* A (2, 3) stored with a stride of 2 < K. */
    assert_int_equal(ddp_backend_gemm(b, 0, 0, 2, 2, 3, 1.0f, A, 2, B, 2, 0.0f, C, 2),
                     DDP_ERR_INVALID_ARG);
    assert_msg_has("leading dimension");
    /* Transposed A is stored (K, M), so its stride must be at least M = 3. */
    assert_int_equal(ddp_backend_gemm(b, 1, 0, 3, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2),
                     DDP_ERR_INVALID_ARG);
    /* Transposed B is stored (N, K): stride at least K = 3. */
    assert_int_equal(ddp_backend_gemm(b, 0, 1, 2, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 2),
                     DDP_ERR_INVALID_ARG);
    assert_int_equal(ddp_backend_gemm(b, 0, 0, 2, 3, 2, 1.0f, A, 2, B, 3, 0.0f, C, 2),
                     DDP_ERR_INVALID_ARG);
}

/* ---- activations ---------------------------------------------------------------------- */

static void test_gelu_matches_known_values(void **state) {
    ddp_backend *b = *state;
    /* Two values known from PyTorch's gelu(approximate="tanh"), and gelu'(0) = 1/2. */
    const float x[3] = {1.0f, -1.0f, 0.0f}, dy[3] = {1.0f, 1.0f, 3.0f};
    float y[3], dx[3];
    assert_int_equal(ddp_backend_act_forward(b, DDP_ACT_GELU, x, y, 3), DDP_OK);
    assert_near(y[0], 0.841192, 1e-6);
    assert_near(y[1], -0.158808, 1e-6);
    assert_int_equal(ddp_backend_act_backward(b, DDP_ACT_GELU, x, dy, dx, 3), DDP_OK);
    assert_near(dx[2], 1.5, 1e-7);
}

static void test_activation_rejects_unknown_kind(void **state) {
    float x[1] = {1}, y[1];
    assert_int_equal(ddp_backend_act_forward(*state, (ddp_act)7, x, y, 1), DDP_ERR_INVALID_ARG);
    assert_int_equal(ddp_backend_act_backward(*state, (ddp_act)7, x, x, y, 1), DDP_ERR_INVALID_ARG);
}

/* ---- softmax cross-entropy ------------------------------------------------------------ */

static void test_softmax_xent_on_hand_computed_example(void **state) {
    /* Row 0: logits (1, 2, 3), label 2, arg-max 2: correct.
     * Row 1: logits (2, 0, 2), label 2: a tie between classes 0 and 2, which resolves to
     * the first maximum (0), so the row does not count as correct. */
    const float logits[2 * 3] = {1, 2, 3, 2, 0, 2};
    const int32_t labels[2] = {2, 2};
    float stats[2] = {10.0f, 5.0f};
    float d[6];
    const float scale = 0.5f;
    assert_int_equal(ddp_backend_softmax_xent(*state, logits, labels, 2, 3, scale, d, stats),
                     DDP_OK);

    /* loss_0 = log(e^1 + e^2 + e^3) - 3 = log(1 + e^-1 + e^-2);
     * loss_1 = log(2 e^2 + 1) - 2 = log(2 + e^-2). */
    double s0 = 1.0 + exp(-1.0) + exp(-2.0), s1 = 2.0 + exp(-2.0);
    double loss = log(s0) + log(s1);
    assert_near(stats[0], 10.0 + loss, 1e-5);
    assert_true(stats[1] == 6.0f); /* accumulates: 5 + 1 correct */

    /* dlogits = scale (softmax - onehot); softmax_0 = (e^-2, e^-1, 1) / s0. */
    const double p[6] = {exp(-2.0) / s0, exp(-1.0) / s0, 1.0 / s0,
                         1.0 / s1,       exp(-2.0) / s1, 1.0 / s1};
    const double onehot[6] = {0, 0, 1, 0, 0, 1};
    for (int i = 0; i < 6; i++)
        assert_near(d[i], scale * (p[i] - onehot[i]), 1e-7);
    /* Each row of the gradient sums to zero. */
    assert_near(d[0] + d[1] + d[2], 0.0, 1e-7);
    assert_near(d[3] + d[4] + d[5], 0.0, 1e-7);
}

static void test_softmax_xent_is_stable_for_large_logits(void **state) {
    /* The same row shifted by 1000: exp would overflow without subtracting the max. */
    const float logits[2 * 3] = {1000, 1001, 1002, -1000, -999, -998};
    const int32_t labels[2] = {0, 0};
    float stats[2] = {0, 0}, d[6];
    assert_int_equal(ddp_backend_softmax_xent(*state, logits, labels, 2, 3, 1.0f, d, stats),
                     DDP_OK);
    double s = 1.0 + exp(-1.0) + exp(-2.0);
    assert_near(stats[0], 2.0 * (log(s) + 2.0), 1e-4);
    for (int i = 0; i < 6; i++)
        assert_true(isfinite(d[i]));
    assert_near(d[0], 1.0 / (s * exp(2.0)) - 1.0, 1e-6);
    assert_near(d[3], d[0], 1e-6);
}

static void test_softmax_xent_rejects_label_out_of_range(void **state) {
    const float logits[2 * 3] = {0};
    float stats[2] = {0, 0};
    const int32_t too_big[2] = {0, 3}, negative[2] = {-1, 0};
    assert_int_equal(ddp_backend_softmax_xent(*state, logits, too_big, 2, 3, 1.0f, NULL, stats),
                     DDP_ERR_INVALID_ARG);
    assert_msg_has("label 3");
    assert_int_equal(ddp_backend_softmax_xent(*state, logits, negative, 2, 3, 1.0f, NULL, stats),
                     DDP_ERR_INVALID_ARG);
    assert_msg_has("label -1");
    assert_int_equal(ddp_backend_softmax_xent(*state, logits, too_big, 2, 0, 1.0f, NULL, stats),
                     DDP_ERR_INVALID_ARG);
}

/* ---- sum of squares ------------------------------------------------------------------- */

static void test_sumsq_accumulates_in_double(void **state) {
    ddp_backend *b = *state;
    double s = -1.0;
    const float x[4] = {1, 2, 3, -4};
    assert_int_equal(ddp_backend_sumsq(b, x, 4, &s), DDP_OK);
    assert_true(s == 30.0);
    /* 1e4^2 + 1 = 100000001 is exact in double but rounds to 1e8 in float. */
    const float big[2] = {1e4f, 1.0f};
    assert_int_equal(ddp_backend_sumsq(b, big, 2, &s), DDP_OK);
    assert_true(s == 100000001.0);
    assert_int_equal(ddp_backend_sumsq(b, x, 0, &s), DDP_OK);
    assert_true(s == 0.0);
    const float bad[3] = {1, NAN, 2};
    assert_int_equal(ddp_backend_sumsq(b, bad, 3, &s), DDP_OK);
    assert_true(isnan(s));
}

/* ---- bf16 conversion ------------------------------------------------------------------ */

static uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static void test_bf16_rounds_to_nearest_even(void **state) {
    ddp_backend *b = *state;
    /* bf16 keeps the top 16 bits of a float; 1 + 2^-7 is the next bf16 after 1.
     *   1 + 2^-8          is half way between 1 and 1 + 2^-7: ties to even, down to 1.
     *   1 + 3 * 2^-8      is half way between 1 + 2^-7 and 1 + 2^-6: up to the even one.
     *   1 + 2^-8 + 2^-20  is just above half way: up.
     *   FLT_MAX           rounds past the largest bf16: infinity. */
    const float x[9] = {1.0f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-20f, -2.5f,
                        0.0f, INFINITY,       -INFINITY,          3.4028234663852886e38f};
    const uint16_t want[9] = {0x3f80, 0x3f80, 0x3f82, 0x3f81, 0xc020,
                              0x0000, 0x7f80, 0xff80, 0x7f80};
    uint16_t y[9];
    assert_int_equal(ddp_backend_f32_to_bf16(b, x, y, 9), DDP_OK);
    for (int i = 0; i < 9; i++)
        if (y[i] != want[i]) fail_msg("bf16(%a) = 0x%04x, expected 0x%04x", x[i], y[i], want[i]);

    /* NaN stays NaN (rounding must not carry it into infinity), sign included. */
    const float nan_in[2] = {NAN, -NAN};
    uint16_t nan_out[2];
    float back[2];
    assert_int_equal(ddp_backend_f32_to_bf16(b, nan_in, nan_out, 2), DDP_OK);
    assert_int_equal(ddp_backend_bf16_to_f32(b, nan_out, back, 2), DDP_OK);
    assert_true(isnan(back[0]) && isnan(back[1]));
    assert_int_equal(f32_bits(back[1]) >> 31, 1);
    /* A NaN whose payload sits only in the low bits would become infinity if truncated. */
    uint32_t low_nan = 0x7f800001u;
    float ln;
    memcpy(&ln, &low_nan, sizeof ln);
    assert_int_equal(ddp_backend_f32_to_bf16(b, &ln, nan_out, 1), DDP_OK);
    assert_int_equal(ddp_backend_bf16_to_f32(b, nan_out, back, 1), DDP_OK);
    assert_true(isnan(back[0]));
}

static void test_bf16_round_trip_is_exact_for_bf16_values(void **state) {
    ddp_backend *b = *state;
    const uint16_t h[6] = {0x3f80, 0x3f81, 0xc020, 0x0001, 0x7f7f, 0x8000};
    float f[6];
    uint16_t again[6];
    assert_int_equal(ddp_backend_bf16_to_f32(b, h, f, 6), DDP_OK);
    for (int i = 0; i < 6; i++)
        assert_int_equal(f32_bits(f[i]), (uint32_t)h[i] << 16);
    assert_true(f[0] == 1.0f && f[1] == 1.0f + 0x1p-7f && f[2] == -2.5f);
    assert_int_equal(ddp_backend_f32_to_bf16(b, f, again, 6), DDP_OK);
    assert_memory_equal(again, h, sizeof h);
}

/* ---- optimizer kernels ---------------------------------------------------------------- */

/* Three elements over three steps; the third has zero gradient, so only weight decay
 * moves it. */
static const float p0[3] = {1.0f, -2.0f, 0.5f};
static const float grads[3][3] = {{0.5f, -1.0f, 0.0f}, {0.25f, 0.5f, 0.0f}, {-0.5f, 0.0f, 0.0f}};

static void test_sgd_step_with_momentum_and_weight_decay(void **state) {
    /* lr 0.1, momentum 0.9, wd 0.01, buf starting as garbage (ignored on step 1).
     * Step 1, element 0: g = 0.5 + 0.01 * 1 = 0.51; buf = g = 0.51;
     *                    p = 1 - 0.1 * 0.51 = 0.949.
     * Step 2, element 0: g = 0.25 + 0.01 * 0.949 = 0.25949;
     *                    buf = 0.9 * 0.51 + 0.25949 = 0.71849; p = 0.949 - 0.071849.
     * Step 3 likewise; the values below follow from the same formulas. */
    const float want_p[3][3] = {{0.949f, -1.898f, 0.4995f},
                                {0.877151f, -1.854302f, 0.4985505f},
                                {0.861609749f, -1.8131195f, 0.4971974f}};
    const float want_buf[3][3] = {{0.51f, -1.02f, 0.005f},
                                  {0.71849f, -0.43698f, 0.009495f},
                                  {0.15541251f, -0.41182502f, 0.013531005f}};
    float p[3], buf[3] = {123.0f, NAN, -7.0f};
    memcpy(p, p0, sizeof p);
    for (int t = 0; t < 3; t++) {
        assert_int_equal(
            ddp_backend_sgd_step(*state, p, grads[t], buf, 3, 0.1f, 0.9f, 0.01f, 0, t == 0, 1.0f),
            DDP_OK);
        for (int i = 0; i < 3; i++) {
            assert_near(p[i], want_p[t][i], 1e-6);
            assert_near(buf[i], want_buf[t][i], 1e-6);
        }
    }
}

static void test_sgd_step_with_nesterov(void **state) {
    /* As above, but p -= lr (g + momentum * buf).
     * Step 1, element 0: g = 0.51, buf = 0.51, p = 1 - 0.1 (0.51 + 0.9 * 0.51) = 0.9031. */
    const float want_p[3][3] = {{0.9031f, -1.8062f, 0.49905f},
                                {0.81257411f, -1.81514822f, 0.497696805f},
                                {0.847869708f, -1.77637842f, 0.495982451f}};
    float p[3], buf[3] = {0, 0, 0};
    memcpy(p, p0, sizeof p);
    for (int t = 0; t < 3; t++) {
        assert_int_equal(
            ddp_backend_sgd_step(*state, p, grads[t], buf, 3, 0.1f, 0.9f, 0.01f, 1, t == 0, 1.0f),
            DDP_OK);
        for (int i = 0; i < 3; i++)
            assert_near(p[i], want_p[t][i], 1e-6);
    }
}

static void test_sgd_step_without_momentum_is_plain_gradient_descent(void **state) {
    /* p = 1, g = 0.5, lr 0.1: 0.95, 0.9, 0.85, whatever the buffer held. */
    float p[1] = {1.0f}, buf[1] = {50.0f};
    const float g[1] = {0.5f};
    for (int t = 0; t < 3; t++) {
        assert_int_equal(ddp_backend_sgd_step(*state, p, g, buf, 1, 0.1f, 0.0f, 0.0f, 0, 0, 1.0f),
                         DDP_OK);
        assert_near(p[0], 1.0 - 0.05 * (t + 1), 1e-7);
    }
}

static void test_adamw_step_matches_hand_computed_values(void **state) {
    /* lr 0.1, betas (0.9, 0.999), eps 1e-8, wd 0.01.
     * Step 1, element 0: p = 1 - 0.1 * 0.01 * 1 = 0.999; m = 0.1 * 0.5 = 0.05;
     *   v = 0.001 * 0.25 = 0.00025; m^ = 0.05 / 0.1 = 0.5; v^ = 0.00025 / 0.001 = 0.25;
     *   p = 0.999 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.899.
     * Steps 2 and 3 follow from the same formulas with t = 2, 3. */
    const float want_p[3][3] = {{0.899000002f, -1.898f, 0.4995f},
                                {0.80488304f, -1.8694683f, 0.4990005f},
                                {0.792999851f, -1.8470109f, 0.4985015f}};
    const float want_m[3][3] = {{0.05f, -0.1f, 0}, {0.07f, -0.04f, 0}, {0.013f, -0.036f, 0}};
    const float want_v[3][3] = {
        {0.00025f, 0.001f, 0}, {0.00031225f, 0.001249f, 0}, {0.00056193775f, 0.001247751f, 0}};
    float p[3], m[3] = {0, 0, 0}, v[3] = {0, 0, 0};
    memcpy(p, p0, sizeof p);
    for (int t = 0; t < 3; t++) {
        assert_int_equal(ddp_backend_adamw_step(*state, p, grads[t], m, v, 3, 0.1f, 0.9f, 0.999f,
                                                1e-8f, 0.01f, t + 1, 1.0f),
                         DDP_OK);
        for (int i = 0; i < 3; i++) {
            assert_near(p[i], want_p[t][i], 2e-6);
            assert_near(m[i], want_m[t][i], 1e-7);
            /* 1 - 0.999f is 0.00099998713 in float: v is off by 1.3e-5 relative. */
            assert_near(v[i], want_v[t][i], 2e-5 * want_v[t][i]);
        }
    }
}

static void test_adamw_adds_eps_after_bias_corrected_root(void **state) {
    /* g = eps = 1e-6, step 1: m^ = 1e-6 and sqrt(v^) = 1e-6, so the update is
     * lr * 1e-6 / (1e-6 + 1e-6) = lr / 2. Adding eps before the bias correction, or
     * inside the square root, gives a very different step. */
    float p[1] = {0.0f}, m[1] = {0}, v[1] = {0};
    const float g[1] = {1e-6f};
    assert_int_equal(
        ddp_backend_adamw_step(*state, p, g, m, v, 1, 0.1f, 0.9f, 0.999f, 1e-6f, 0.0f, 1, 1.0f),
        DDP_OK);
    assert_near(p[0], -0.05, 1e-6);
}

static void test_adamw_rejects_step_zero(void **state) {
    float p[1] = {0}, m[1] = {0}, v[1] = {0};
    const float g[1] = {1};
    assert_int_equal(
        ddp_backend_adamw_step(*state, p, g, m, v, 1, 0.1f, 0.9f, 0.999f, 1e-8f, 0.0f, 0, 1.0f),
        DDP_ERR_INVALID_ARG);
    assert_true(p[0] == 0.0f);
}

/* ---- convolution, pooling, batch normalization ------------------------------------------ */

static void test_conv2d_matches_pytorch_on_its_layouts(void **state) {
    /* x (1, 3, 4, 2) channels-last = (i - 11) / 4 in storage order, w (2, 2, 2, 3) in
     * PyTorch's layout = (i - 12) / 8, bias (0.5, -1), a 2x3 kernel at padding 1: y (1, 4, 4,
     * 2) as PyTorch's conv2d gives it for the same tensors (x permuted to NCHW for it, its
     * result back to channels-last). Every value is a multiple of 1/32: exact in float. */
    const ddp_conv_shape s = {
        .N = 1, .H = 3, .W = 4, .Cin = 2, .Cout = 2, .KH = 2, .KW = 3, .stride = 1, .pad = 1};
    const float want[32] = {
        6.09375f,  -9.65625f, 9.0f,       -11.625f,  7.125f,     -9.0f,     4.53125f,   -5.21875f,
        10.75f,    -7.25f,    14.78125f,  -6.96875f, 9.90625f,   -2.84375f, 5.125f,     -0.875f,
        -1.25f,    4.75f,     -4.71875f,  9.53125f,  -9.59375f,  13.65625f, -8.875f,    9.125f,
        -5.34375f, 2.90625f,  -10.21875f, 5.15625f,  -13.21875f, 6.65625f,  -10.40625f, 3.84375f};
    float x[24], w[24], y[32];
    const float bias[2] = {0.5f, -1.0f};
    for (int i = 0; i < 24; i++) {
        x[i] = (float)(i - 11) / 4.0f;
        w[i] = (float)(i - 12) / 8.0f;
    }
    float *work = malloc(DDP_CONV_WORK(&s) * sizeof *work);
    assert_non_null(work);
    OK(ddp_backend_conv2d_forward(*state, y, x, w, bias, work, &s));
    for (int i = 0; i < 32; i++)
        assert_near(y[i], want[i], 1e-6);
    free(work);
}

static void test_conv2d_stays_right_past_its_cache_of_shapes(void **state) {
    /* The backend keeps oneDNN's primitives for 16 shapes. Batches of 1 to 20 copies of one
     * image are 20 shapes: the first ones are dropped on the way and made again at the end,
     * and every image's output is the first call's. */
    enum { MAX_N = 20, HW = 5, CIN = 3, COUT = 4 };
    float img[HW * HW * CIN], w[COUT * CIN * 9], bias[COUT];
    for (int i = 0; i < HW * HW * CIN; i++)
        img[i] = (float)((i * 7) % 11) - 5.0f;
    for (int i = 0; i < COUT * CIN * 9; i++)
        w[i] = (float)((i * 5) % 9) / 8.0f - 0.5f;
    for (int i = 0; i < COUT; i++)
        bias[i] = (float)i;
    const size_t per_in = HW * HW * CIN, per_out = HW * HW * COUT;
    float *x = malloc(MAX_N * per_in * sizeof *x), *y = malloc(MAX_N * per_out * sizeof *y);
    float *work = malloc(MAX_N * HW * HW * CIN * 9 * sizeof *work), first[HW * HW * COUT];
    assert_true(x && y && work);
    for (int n = 0; n < MAX_N; n++)
        memcpy(x + n * per_in, img, sizeof img);
    for (int pass = 0; pass < 2; pass++)
        for (int N = 1; N <= (pass ? 3 : MAX_N); N++) {
            ddp_conv_shape s = {.N = N,
                                .H = HW,
                                .W = HW,
                                .Cin = CIN,
                                .Cout = COUT,
                                .KH = 3,
                                .KW = 3,
                                .stride = 1,
                                .pad = 1};
            OK(ddp_backend_conv2d_forward(*state, y, x, w, bias, work, &s));
            if (pass == 0 && N == 1) memcpy(first, y, sizeof first);
            for (int n = 0; n < N; n++)
                for (size_t i = 0; i < per_out; i++)
                    assert_near(y[n * per_out + i], first[i], 1e-5);
        }
    free(x);
    free(y);
    free(work);
}

static void test_conv2d_refuses_a_kernel_larger_than_the_padded_input(void **state) {
    /* 2 rows + 2 of padding cannot hold a kernel 5 rows high. */
    const ddp_conv_shape s = {
        .N = 1, .H = 2, .W = 6, .Cin = 1, .Cout = 1, .KH = 5, .KW = 3, .stride = 1, .pad = 1};
    float x[12] = {0}, w[15] = {0}, bias[1] = {0}, y[6], work[90];
    assert_int_equal(ddp_backend_conv2d_forward(*state, y, x, w, bias, work, &s),
                     DDP_ERR_INVALID_ARG);
    assert_msg_has("a 5x3 kernel does not fit an input of 2x6 with padding 1");
    assert_int_equal(ddp_backend_conv2d_backward(*state, x, w, bias, y, x, w, work, &s),
                     DDP_ERR_INVALID_ARG);
    assert_msg_has("does not fit");
}

static void test_maxpool_refuses_a_window_larger_than_the_input(void **state) {
    const ddp_pool_shape s = {.N = 1, .H = 2, .W = 5, .C = 1, .K = 3, .stride = 2};
    float x[10] = {0}, y[2];
    int32_t arg[2];
    assert_int_equal(ddp_backend_maxpool_forward(*state, y, arg, x, &s), DDP_ERR_INVALID_ARG);
    assert_msg_has("a 3x3 window (stride 2) does not fit an input of 2x5");
    assert_int_equal(ddp_backend_maxpool_backward(*state, x, y, arg, &s), DDP_ERR_INVALID_ARG);
}

static void test_bn_stats_move_running_statistics_as_pytorch_does(void **state) {
    /* Two channels over four rows; running (mean, var) starts at (0, 1) and (1, 2). PyTorch's
     * BatchNorm2d (momentum 0.1, eps 1e-5) in training mode on the same values leaves
     * running means (0.25, 1.1875) and variances (1.0666667, 4.20625): momentum times the
     * unbiased variances 5/3 and 24.0625, while rstd uses the biased ones, 1.25 and
     * 18.046875. */
    ddp_backend *b = *state;
    const float x[8] = {1, -1, 2, 0.5f, 3, 2, 4, 10}; /* (4, 2) */
    const float gamma[2] = {1, 1}, beta[2] = {0, 0};
    const float want_y[8] = {-1.3416354f, -0.91215907f, -0.44721181f, -0.55906524f,
                             0.44721181f, -0.20597140f, 1.3416354f,   1.6771957f};
    float mean[2], rstd[2], running[4] = {0, 1, 1, 2}, y[8];
    double sums[4];
    OK(ddp_backend_bn_sums(b, sums, x, 4, 2));
    assert_true(sums[0] == 10.0 && sums[1] == 11.5 && sums[2] == 30.0 && sums[3] == 105.25);
    OK(ddp_backend_bn_stats(b, mean, rstd, running, sums, 4.0, 1e-5f, 0.1f, 2));
    assert_near(mean[0], 2.5, 1e-7);
    assert_near(mean[1], 2.875, 1e-7);
    assert_near(rstd[0], 0.894423613, 1e-7);
    assert_near(rstd[1], 0.235395889, 1e-7);
    assert_near(running[0], 0.25, 1e-7);
    assert_near(running[1], 1.1875, 1e-7);
    assert_near(running[2], 1.0666667, 1e-7);
    assert_near(running[3], 4.20625, 1e-6);
    OK(ddp_backend_bn_normalize(b, y, x, mean, rstd, gamma, beta, 4, 2));
    for (int i = 0; i < 8; i++)
        assert_near(y[i], want_y[i], 1e-6);
}

static void test_bn_stats_in_evaluation_use_the_running_statistics(void **state) {
    /* count 0: mean and rstd from running (means 0.5, -2; variances 4, 0.25), which stays;
     * the sums are not read. */
    float running[4] = {0.5f, -2.0f, 4.0f, 0.25f}, mean[2], rstd[2];
    const float before[4] = {0.5f, -2.0f, 4.0f, 0.25f};
    OK(ddp_backend_bn_stats(*state, mean, rstd, running, NULL, 0.0, 1e-5f, 0.1f, 2));
    assert_true(mean[0] == 0.5f && mean[1] == -2.0f);
    assert_near(rstd[0], 1.0 / sqrt(4.0 + 1e-5), 1e-7);
    assert_near(rstd[1], 1.0 / sqrt(0.25 + 1e-5), 1e-6);
    assert_memory_equal(running, before, sizeof before);
}

static void test_bn_stats_refuse_a_batch_of_one_row(void **state) {
    float running[2] = {0, 1}, mean[1], rstd[1];
    const double sums[2] = {3.0, 9.0};
    assert_int_equal(ddp_backend_bn_stats(*state, mean, rstd, running, sums, 1.0, 1e-5f, 0.1f, 1),
                     DDP_ERR_INVALID_ARG);
    assert_msg_has("at least 2 rows");
}

static void test_bn_sums_added_over_two_halves_give_the_whole_batch(void **state) {
    /* What a synchronized batch norm does on two ranks, here in one process: each half of
     * the batch makes its sums, the sums are added (the all-reduce), and the statistics,
     * the output and the input gradient of each half then are those of the whole batch. */
    ddp_backend *b = *state;
    enum { ROWS = 10, HALF = 5, C = 3 };
    float x[ROWS * C], dy[ROWS * C], gamma[C] = {1.5f, -0.5f, 2.0f}, beta[C] = {0.1f, 0, -1};
    ddp_rng rng;
    ddp_rng_seed(&rng, 7, 0);
    for (int i = 0; i < ROWS * C; i++) {
        x[i] = 2.0f * ddp_rng_normal(&rng) + (float)(i % C);
        dy[i] = ddp_rng_normal(&rng);
    }
    double whole[2 * C], parts[2][2 * C], added[2 * C];
    float mean[C], rstd[C], run[2 * C] = {0, 0, 0, 1, 1, 1}, y[ROWS * C], dx[ROWS * C];
    float dg[C] = {0}, db[C] = {0};
    OK(ddp_backend_bn_sums(b, whole, x, ROWS, C));
    OK(ddp_backend_bn_stats(b, mean, rstd, run, whole, ROWS, 1e-5f, 0.1f, C));
    OK(ddp_backend_bn_normalize(b, y, x, mean, rstd, gamma, beta, ROWS, C));
    OK(ddp_backend_bn_backward_sums(b, whole, dg, db, dy, x, mean, rstd, ROWS, C));
    OK(ddp_backend_bn_backward_input(b, dx, dy, x, mean, rstd, gamma, whole, ROWS, ROWS, C));

    float mean2[C], rstd2[C], run2[2 * C] = {0, 0, 0, 1, 1, 1}, y2[ROWS * C], dx2[ROWS * C];
    float dg2[C] = {0}, db2[C] = {0};
    for (int h = 0; h < 2; h++)
        OK(ddp_backend_bn_sums(b, parts[h], x + h * HALF * C, HALF, C));
    for (int i = 0; i < 2 * C; i++)
        added[i] = parts[0][i] + parts[1][i];
    OK(ddp_backend_bn_stats(b, mean2, rstd2, run2, added, ROWS, 1e-5f, 0.1f, C));
    for (int h = 0; h < 2; h++) {
        OK(ddp_backend_bn_normalize(b, y2 + h * HALF * C, x + h * HALF * C, mean2, rstd2, gamma,
                                    beta, HALF, C));
        OK(ddp_backend_bn_backward_sums(b, parts[h], dg2, db2, dy + h * HALF * C, x + h * HALF * C,
                                        mean2, rstd2, HALF, C));
    }
    for (int i = 0; i < 2 * C; i++)
        added[i] = parts[0][i] + parts[1][i];
    for (int h = 0; h < 2; h++)
        OK(ddp_backend_bn_backward_input(b, dx2 + h * HALF * C, dy + h * HALF * C, x + h * HALF * C,
                                         mean2, rstd2, gamma, added, ROWS, HALF, C));
    for (int c = 0; c < C; c++) {
        assert_near(mean2[c], mean[c], 1e-6);
        assert_near(rstd2[c], rstd[c], 1e-6);
        assert_near(run2[c], run[c], 1e-6);
        assert_near(run2[C + c], run[C + c], 1e-6);
        /* Each rank's own parameter gradients add up to the whole batch's. */
        assert_near(dg2[c], dg[c], 1e-5);
        assert_near(db2[c], db[c], 1e-5);
    }
    for (int i = 0; i < ROWS * C; i++) {
        assert_near(y2[i], y[i], 1e-5);
        assert_near(dx2[i], dx[i], 1e-5);
    }
}

/* ---- wait checks ---------------------------------------------------------------- */

static int check_calls[3];
static ddp_status check_ok(void *ctx) {
    check_calls[*(int *)ctx]++;
    return DDP_OK;
}
static ddp_status check_fails(void *ctx) {
    check_calls[*(int *)ctx]++;
    return DDP_FAIL(DDP_ERR_COMM, "check %d failed", *(int *)ctx);
}

static void test_wait_checks_run_in_order_until_one_fails(void **state) {
    ddp_backend *b = *state;
    int ids[3] = {0, 1, 2};
    memset(check_calls, 0, sizeof check_calls);
    assert_false(ddp_backend_has_wait_checks(b));
    OK(ddp_backend_run_wait_checks(b)); /* none: nothing to run */
    OK(ddp_backend_add_wait_check(b, check_ok, &ids[0]));
    OK(ddp_backend_add_wait_check(b, check_fails, &ids[1]));
    OK(ddp_backend_add_wait_check(b, check_ok, &ids[2]));
    assert_true(ddp_backend_has_wait_checks(b));
    assert_int_equal(ddp_backend_run_wait_checks(b), DDP_ERR_COMM);
    assert_msg_has("check 1 failed");
    ddp_error_clear();
    assert_int_equal(check_calls[0], 1);
    assert_int_equal(check_calls[1], 1);
    assert_int_equal(check_calls[2], 0); /* after the failing one: not run */
    ddp_backend_remove_wait_check(b, &ids[1]);
    OK(ddp_backend_run_wait_checks(b));
    assert_int_equal(check_calls[0], 2);
    assert_int_equal(check_calls[2], 1);
    /* The table is bounded: one more than it holds is refused, not written past. */
    OK(ddp_backend_add_wait_check(b, check_ok, &ids[1]));
    OK(ddp_backend_add_wait_check(b, check_ok, &ids[1]));
    assert_int_equal(ddp_backend_add_wait_check(b, check_ok, &ids[1]), DDP_ERR_INTERNAL);
    ddp_error_clear();
    for (int i = 0; i < 3; i++)
        ddp_backend_remove_wait_check(b, &ids[i]);
    assert_false(ddp_backend_has_wait_checks(b));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wait_checks_run_in_order_until_one_fails),
        cmocka_unit_test(test_cpu_backend_reports_its_kind),
        cmocka_unit_test(test_cpu_backend_refuses_tf32),
        cmocka_unit_test(test_cuda_request_without_a_gpu_is_unsupported),
        cmocka_unit_test(test_alloc_copy_and_zero_round_trip),
        cmocka_unit_test(test_page_memory_is_released_in_whole_huge_pages),
        cmocka_unit_test(test_gemm_rejects_bad_sizes_and_leading_dimensions),
        cmocka_unit_test(test_gelu_matches_known_values),
        cmocka_unit_test(test_activation_rejects_unknown_kind),
        cmocka_unit_test(test_softmax_xent_on_hand_computed_example),
        cmocka_unit_test(test_softmax_xent_is_stable_for_large_logits),
        cmocka_unit_test(test_softmax_xent_rejects_label_out_of_range),
        cmocka_unit_test(test_sumsq_accumulates_in_double),
        cmocka_unit_test(test_bf16_rounds_to_nearest_even),
        cmocka_unit_test(test_bf16_round_trip_is_exact_for_bf16_values),
        cmocka_unit_test(test_sgd_step_with_momentum_and_weight_decay),
        cmocka_unit_test(test_sgd_step_with_nesterov),
        cmocka_unit_test(test_sgd_step_without_momentum_is_plain_gradient_descent),
        cmocka_unit_test(test_adamw_step_matches_hand_computed_values),
        cmocka_unit_test(test_adamw_adds_eps_after_bias_corrected_root),
        cmocka_unit_test(test_adamw_rejects_step_zero),
        cmocka_unit_test(test_conv2d_matches_pytorch_on_its_layouts),
        cmocka_unit_test(test_conv2d_stays_right_past_its_cache_of_shapes),
        cmocka_unit_test(test_conv2d_refuses_a_kernel_larger_than_the_padded_input),
        cmocka_unit_test(test_maxpool_refuses_a_window_larger_than_the_input),
        cmocka_unit_test(test_bn_stats_move_running_statistics_as_pytorch_does),
        cmocka_unit_test(test_bn_stats_in_evaluation_use_the_running_statistics),
        cmocka_unit_test(test_bn_stats_refuse_a_batch_of_one_row),
        cmocka_unit_test(test_bn_sums_added_over_two_halves_give_the_whole_batch),
    };
    return cmocka_run_group_tests(tests, cpu_backend_setup, cpu_backend_teardown);
}
