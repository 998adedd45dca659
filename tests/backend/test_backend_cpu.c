/*
 * The CPU backend where the op table (op_cases.c, run by test_ops_cpu.c against
 * double-precision references and finite differences) cannot reach: creation and memory,
 * error paths, and values worked out by hand or known from PyTorch: GELU at two points,
 * softmax cross-entropy on a 2x3 example with a tie and with logits of 1000, sums of squares
 * that only double precision gets right, bf16 rounding ties, and the SGD and AdamW updates
 * over three steps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ddp/backend.h"

/* ---- creation and memory -------------------------------------------------------------- */

static void test_cpu_backend_reports_its_kind(void **state) {
    ddp_backend *b = *state;
    assert_string_equal(ddp_backend_name(b), "cpu");
    assert_int_equal(ddp_backend_device(b), DDP_DEVICE_CPU);
    assert_true(ddp_backend_is_host(b));
}

static void test_cpu_backend_refuses_reduced_precision(void **state) {
    ddp_backend_options opt = {.device = DDP_DEVICE_CPU, .math = DDP_MATH_BF16};
    ddp_backend *b = (ddp_backend *)0x1;
    assert_int_equal(ddp_backend_create(&opt, &b), DDP_ERR_UNSUPPORTED);
    assert_null(b);
    assert_msg_has("fp32");
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu_backend_reports_its_kind),
        cmocka_unit_test(test_cpu_backend_refuses_reduced_precision),
        cmocka_unit_test(test_cuda_request_without_a_gpu_is_unsupported),
        cmocka_unit_test(test_alloc_copy_and_zero_round_trip),
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
    };
    return cmocka_run_group_tests(tests, cpu_backend_setup, cpu_backend_teardown);
}
