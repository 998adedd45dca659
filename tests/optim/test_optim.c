/*
 * Optimizers, schedules and clipping. The optimizer owns the step counter and state
 * buffers and hands the arithmetic to the backend, so the tests here check what it
 * adds: values after several steps worked out by hand, the counter driving SGD's first
 * step and AdamW's bias correction (also after a checkpoint restore), the number of
 * state buffers, config validation; then the learning-rate schedule at its corners and
 * gradient-norm clipping.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include <math.h>
#include <string.h>

#include "ddp/optim.h"

static const ddp_optim_config sgd_cfg = {.kind = DDP_OPTIM_SGD, .momentum = 0.5f};
static const ddp_optim_config adamw_cfg = {
    .kind = DDP_OPTIM_ADAMW, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f};

/* ---- SGD ------------------------------------------------------------------------------ */

static void test_sgd_steps_match_hand_computed_values(void **state) {
    ddp_optim *o = NULL;
    assert_int_equal(ddp_optim_create(*state, &sgd_cfg, 2, &o), DDP_OK);
    assert_int_equal(ddp_optim_num_states(o), 1);
    assert_int_equal(ddp_optim_size(o), 2);
    assert_null(ddp_optim_state(o, 1));
    const float *buf = ddp_optim_state(o, 0);
    assert_non_null(buf);
    assert_true(buf[0] == 0.0f && buf[1] == 0.0f);

    /* momentum 0.5, lr 0.1, g = (1, 2) every step:
     *   step 1: buf = g = (1, 2);              p = (1, -1) - 0.1 buf = (0.9, -1.2)
     *   step 2: buf = 0.5 buf + g = (1.5, 3);  p = (0.75, -1.5)
     *   step 3: buf = (1.75, 3.5);             p = (0.575, -1.85) */
    const float want_p[3][2] = {{0.9f, -1.2f}, {0.75f, -1.5f}, {0.575f, -1.85f}};
    const float want_buf[3][2] = {{1, 2}, {1.5f, 3}, {1.75f, 3.5f}};
    float p[2] = {1.0f, -1.0f};
    const float g[2] = {1.0f, 2.0f};
    for (int t = 0; t < 3; t++) {
        assert_int_equal(ddp_optim_step(o, p, g, 0.1f, 1.0f), DDP_OK);
        assert_int_equal(ddp_optim_steps(o), t + 1);
        for (int i = 0; i < 2; i++) {
            assert_near(p[i], want_p[t][i], 1e-6);
            assert_near(buf[i], want_buf[t][i], 1e-6);
        }
    }
    ddp_optim_free(o);
}

static void test_sgd_uses_the_learning_rate_of_each_step(void **state) {
    ddp_optim_config cfg = {.kind = DDP_OPTIM_SGD};
    ddp_optim *o = NULL;
    assert_int_equal(ddp_optim_create(*state, &cfg, 1, &o), DDP_OK);
    float p[1] = {1.0f};
    const float g[1] = {1.0f};
    assert_int_equal(ddp_optim_step(o, p, g, 0.25f, 1.0f), DDP_OK);
    assert_int_equal(ddp_optim_step(o, p, g, 0.5f, 1.0f), DDP_OK);
    assert_true(p[0] == 0.25f); /* 1 - 0.25 - 0.5 */
    ddp_optim_free(o);
}

static void test_sgd_momentum_resumes_from_restored_state(void **state) {
    /* A checkpoint restore copies the momentum buffer and the step count; the next step
     * must continue the momentum (buf = 0.5 buf + g), not restart it (buf = g). */
    ddp_optim *o = NULL;
    assert_int_equal(ddp_optim_create(*state, &sgd_cfg, 1, &o), DDP_OK);
    ddp_optim_state(o, 0)[0] = 4.0f;
    ddp_optim_set_steps(o, 5);
    float p[1] = {0.0f};
    const float g[1] = {1.0f};
    assert_int_equal(ddp_optim_step(o, p, g, 0.1f, 1.0f), DDP_OK);
    assert_near(ddp_optim_state(o, 0)[0], 3.0, 1e-7);
    assert_near(p[0], -0.3, 1e-7);
    assert_int_equal(ddp_optim_steps(o), 6);
    ddp_optim_free(o);
}

/* ---- AdamW ---------------------------------------------------------------------------- */

static const float adam_grads[3][2] = {{0.5f, -1.0f}, {0.25f, 0.5f}, {-0.5f, 0.0f}};

static void test_adamw_steps_match_hand_computed_values(void **state) {
    ddp_optim *o = NULL;
    assert_int_equal(ddp_optim_create(*state, &adamw_cfg, 2, &o), DDP_OK);
    assert_int_equal(ddp_optim_num_states(o), 2);
    assert_non_null(ddp_optim_state(o, 0));
    assert_non_null(ddp_optim_state(o, 1));
    assert_ptr_not_equal(ddp_optim_state(o, 0), ddp_optim_state(o, 1));
    assert_null(ddp_optim_state(o, 2));

    /* lr 0.1, betas (0.9, 0.999), eps 1e-8, wd 0.01; t counts from 1.
     * Step 1, element 0: p = 1 - 0.1 * 0.01 = 0.999; m = 0.05; v = 0.00025;
     *   p -= 0.1 * (0.05 / 0.1) / (sqrt(0.00025 / 0.001) + 1e-8) -> 0.899.
     * Step 2, element 0: p = 0.899 (1 - 0.001) = 0.898101; m = 0.9 m + 0.1 * 0.25 = 0.07;
     *   v = 0.999 v + 0.001 * 0.0625 = 0.00031225;
     *   p -= 0.1 * (0.07 / 0.19) / sqrt(0.00031225 / 0.001999) -> 0.80488304.
     * The rest follow from the same formulas. */
    const float want_p[3][2] = {
        {0.899000002f, -1.898f}, {0.80488304f, -1.8694683f}, {0.792999851f, -1.8470109f}};
    float p[2] = {1.0f, -2.0f};
    for (int t = 0; t < 3; t++) {
        assert_int_equal(ddp_optim_step(o, p, adam_grads[t], 0.1f, 1.0f), DDP_OK);
        for (int i = 0; i < 2; i++)
            assert_near(p[i], want_p[t][i], 2e-6);
    }
    assert_near(ddp_optim_state(o, 0)[0], 0.013, 1e-7);
    assert_near(ddp_optim_state(o, 1)[0], 0.00056193775, 2e-5 * 0.00056193775);
    ddp_optim_free(o);
}

static void test_adamw_resumes_bias_correction_from_restored_steps(void **state) {
    /* Two steps, then a fresh optimizer given the saved m, v and step count takes the
     * third: bitwise the same as three steps in one go. A restart at t = 1 would apply a
     * ten-times larger bias correction to m. */
    ddp_optim *whole = NULL, *first = NULL, *resumed = NULL;
    assert_int_equal(ddp_optim_create(*state, &adamw_cfg, 2, &whole), DDP_OK);
    assert_int_equal(ddp_optim_create(*state, &adamw_cfg, 2, &first), DDP_OK);
    assert_int_equal(ddp_optim_create(*state, &adamw_cfg, 2, &resumed), DDP_OK);
    float pw[2] = {1.0f, -2.0f}, pr[2] = {1.0f, -2.0f};
    for (int t = 0; t < 3; t++)
        assert_int_equal(ddp_optim_step(whole, pw, adam_grads[t], 0.1f, 1.0f), DDP_OK);
    for (int t = 0; t < 2; t++)
        assert_int_equal(ddp_optim_step(first, pr, adam_grads[t], 0.1f, 1.0f), DDP_OK);
    for (int s = 0; s < 2; s++)
        memcpy(ddp_optim_state(resumed, s), ddp_optim_state(first, s), 2 * sizeof(float));
    ddp_optim_set_steps(resumed, ddp_optim_steps(first));
    assert_int_equal(ddp_optim_step(resumed, pr, adam_grads[2], 0.1f, 1.0f), DDP_OK);
    assert_memory_equal(pr, pw, sizeof pw);
    for (int s = 0; s < 2; s++)
        assert_memory_equal(ddp_optim_state(resumed, s), ddp_optim_state(whole, s),
                            2 * sizeof(float));
    ddp_optim_free(whole);
    ddp_optim_free(first);
    ddp_optim_free(resumed);
}

/* ---- validation ----------------------------------------------------------------------- */

static void expect_rejected(ddp_backend *b, ddp_optim_config cfg, const char *msg) {
    ddp_optim *o = (ddp_optim *)0x1;
    assert_int_equal(ddp_optim_create(b, &cfg, 4, &o), DDP_ERR_INVALID_ARG);
    assert_null(o);
    assert_msg_has(msg);
}

static void test_create_rejects_invalid_configs(void **state) {
    ddp_backend *b = *state;
    ddp_optim_config c = sgd_cfg;
    c.weight_decay = -1e-4f;
    expect_rejected(b, c, "weight decay");
    c = adamw_cfg;
    c.weight_decay = -0.1f;
    expect_rejected(b, c, "weight decay");
    c = sgd_cfg;
    c.momentum = 1.0f;
    expect_rejected(b, c, "momentum");
    c.momentum = -0.1f;
    expect_rejected(b, c, "momentum");
    c = adamw_cfg;
    c.beta1 = 1.0f;
    expect_rejected(b, c, "betas");
    c = adamw_cfg;
    c.beta2 = 1.5f;
    expect_rejected(b, c, "betas");
    c = adamw_cfg;
    c.beta1 = -0.5f;
    expect_rejected(b, c, "betas");
    c = adamw_cfg;
    c.eps = 0.0f;
    expect_rejected(b, c, "eps");
    c = sgd_cfg;
    c.kind = (ddp_optim_kind)9;
    expect_rejected(b, c, "optimizer");
}

static void test_create_accepts_boundary_values(void **state) {
    /* Momentum 0 and beta 0 are valid (plain SGD, RMSprop-like AdamW). */
    ddp_optim *o = NULL;
    ddp_optim_config c = sgd_cfg;
    c.momentum = 0.0f;
    assert_int_equal(ddp_optim_create(*state, &c, 4, &o), DDP_OK);
    ddp_optim_free(o);
    c = adamw_cfg;
    c.beta1 = 0.0f;
    c.weight_decay = 0.0f;
    assert_int_equal(ddp_optim_create(*state, &c, 4, &o), DDP_OK);
    ddp_optim_free(o);
}

/* ---- schedule ------------------------------------------------------------------------- */

static void test_constant_schedule_is_constant(void **state) {
    ddp_schedule s = {.kind = DDP_SCHED_CONSTANT, .base_lr = 0.05f, .total_steps = 100};
    const int64_t steps[] = {0, 1, 50, 99, 100, 10000};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++)
        assert_true(ddp_schedule_lr(&s, steps[i]) == 0.05f);
}

static void test_warmup_is_linear_up_to_base_lr(void **state) {
    ddp_schedule s = {
        .kind = DDP_SCHED_CONSTANT, .base_lr = 0.2f, .warmup_steps = 4, .total_steps = 100};
    /* (step + 1) / warmup * base: 0.05, 0.1, 0.15, 0.2, then 0.2. */
    for (int64_t t = 0; t < 4; t++)
        assert_near(ddp_schedule_lr(&s, t), 0.2 * (t + 1) / 4.0, 1e-7);
    assert_true(ddp_schedule_lr(&s, 4) == 0.2f);
    assert_true(ddp_schedule_lr(&s, 50) == 0.2f);
    /* A negative step counts as the first. */
    assert_near(ddp_schedule_lr(&s, -3), 0.05, 1e-7);
    /* Warm-up applies to cosine as well. */
    s.kind = DDP_SCHED_COSINE;
    assert_near(ddp_schedule_lr(&s, 0), 0.05, 1e-7);
    assert_near(ddp_schedule_lr(&s, 2), 0.15, 1e-7);
}

static void test_cosine_decays_from_base_to_min_after_warmup(void **state) {
    ddp_schedule s = {.kind = DDP_SCHED_COSINE,
                      .base_lr = 0.1f,
                      .min_lr = 0.01f,
                      .warmup_steps = 10,
                      .total_steps = 110};
    /* Right after warm-up: the peak. */
    assert_near(ddp_schedule_lr(&s, 10), 0.1, 1e-7);
    /* A quarter of the way: min + (base - min) (1 + cos(pi / 4)) / 2. */
    assert_near(ddp_schedule_lr(&s, 35), 0.01 + 0.09 * 0.5 * (1.0 + cos(M_PI / 4.0)), 1e-7);
    /* Half way: the mean of base and min. */
    assert_near(ddp_schedule_lr(&s, 60), 0.055, 1e-7);
    /* At total_steps: the floor; and it stays there. */
    assert_near(ddp_schedule_lr(&s, 110), 0.01, 1e-8);
    assert_near(ddp_schedule_lr(&s, 5000), 0.01, 1e-8);
    /* Monotonically non-increasing over the decay. */
    float prev = ddp_schedule_lr(&s, 10);
    for (int64_t t = 11; t <= 110; t++) {
        float lr = ddp_schedule_lr(&s, t);
        assert_true(lr <= prev);
        prev = lr;
    }
}

static void test_cosine_without_warmup_starts_at_base(void **state) {
    ddp_schedule s = {.kind = DDP_SCHED_COSINE, .base_lr = 1.0f, .min_lr = 0.0f, .total_steps = 4};
    /* progress t / 4: 1, (1 + cos(pi/4))/2, 1/2, (1 - cos(pi/4))/2, 0. */
    assert_near(ddp_schedule_lr(&s, 0), 1.0, 1e-7);
    assert_near(ddp_schedule_lr(&s, 1), 0.5 * (1.0 + cos(M_PI / 4.0)), 1e-7);
    assert_near(ddp_schedule_lr(&s, 2), 0.5, 1e-7);
    assert_near(ddp_schedule_lr(&s, 3), 0.5 * (1.0 - cos(M_PI / 4.0)), 1e-7);
    assert_near(ddp_schedule_lr(&s, 4), 0.0, 1e-7);
}

/* ---- weight decay per tensor ---------------------------------------------------------- */

static void test_no_decay_ranges_skip_weight_decay_only_there(void **state) {
    /* Zero gradients: only weight decay moves a parameter. Elements [2, 4) and [6, 7) are
     * left out of it (a bias, say); the rest shrink by lr * wd (AdamW) or lr * wd (SGD's
     * first step, where the momentum buffer is the decayed gradient). */
    const ddp_optim_kind kinds[] = {DDP_OPTIM_SGD, DDP_OPTIM_ADAMW};
    for (int k = 0; k < 2; k++) {
        ddp_optim_config cfg = {.kind = kinds[k],
                                .momentum = 0.9f,
                                .beta1 = 0.9f,
                                .beta2 = 0.999f,
                                .eps = 1e-8f,
                                .weight_decay = 0.5f};
        ddp_optim *o = NULL;
        assert_int_equal(ddp_optim_create(*state, &cfg, 8, &o), DDP_OK);
        const size_t ranges[2][2] = {{2, 2}, {6, 1}};
        assert_int_equal(ddp_optim_set_no_decay(o, ranges, 2), DDP_OK);
        float p[8], g[8] = {0};
        for (int i = 0; i < 8; i++)
            p[i] = 1.0f;
        assert_int_equal(ddp_optim_step(o, p, g, 0.1f, 1.0f), DDP_OK);
        for (int i = 0; i < 8; i++) {
            int nodecay = (i >= 2 && i < 4) || i == 6;
            if (nodecay) {
                if (p[i] != 1.0f) fail_msg("kind %d element %d: %g", k, i, p[i]);
            } else {
                assert_near(p[i], 1.0 - 0.1 * 0.5, 1e-6);
            }
        }
        /* Bad ranges: out of order, overlapping, past the end. */
        const size_t unordered[2][2] = {{4, 1}, {2, 1}};
        assert_int_equal(ddp_optim_set_no_decay(o, unordered, 2), DDP_ERR_INVALID_ARG);
        const size_t past[1][2] = {{6, 3}};
        assert_int_equal(ddp_optim_set_no_decay(o, past, 1), DDP_ERR_INVALID_ARG);
        /* No ranges: decay everywhere again. */
        assert_int_equal(ddp_optim_set_no_decay(o, NULL, 0), DDP_OK);
        float q[8] = {1, 1, 1, 1, 1, 1, 1, 1};
        assert_int_equal(ddp_optim_step(o, q, g, 0.1f, 1.0f), DDP_OK);
        if (kinds[k] == DDP_OPTIM_ADAMW)
            for (int i = 0; i < 8; i++)
                assert_near(q[i], 1.0 - 0.1 * 0.5, 1e-6);
        ddp_optim_free(o);
    }
    ddp_error_clear();
}

/* ---- gradient norm and clipping ------------------------------------------------------- */

static void test_clip_coef_scales_down_to_max_norm(void **state) {
    const float g[2] = {3.0f, 4.0f};
    double norm = 0.0;
    assert_int_equal(ddp_grad_norm(*state, g, 2, &norm), DDP_OK);
    assert_true(norm == 5.0);
    float coef = ddp_clip_coef(norm, 1.0f);
    assert_near(coef, 1.0 / (5.0 + 1e-6), 1e-7);
    /* The clipped gradient has norm at most max_norm. */
    double cn = sqrt((double)(coef * g[0]) * (coef * g[0]) + (double)(coef * g[1]) * (coef * g[1]));
    assert_true(cn <= 1.0);
}

static void test_clip_coef_is_one_for_smaller_gradients(void **state) {
    assert_true(ddp_clip_coef(5.0, 10.0f) == 1.0f);
    /* Exactly at the limit: nothing to do. */
    assert_true(ddp_clip_coef(5.0, 5.0f) == 1.0f);
    /* max_norm 0 turns clipping off. */
    assert_true(ddp_clip_coef(5.0, 0.0f) == 1.0f);
}

static void test_clip_coef_leaves_nonfinite_norms_to_the_caller(void **state) {
    float g[2] = {INFINITY, 1.0f};
    double norm = 0.0;
    assert_int_equal(ddp_grad_norm(*state, g, 2, &norm), DDP_OK);
    assert_true(isinf(norm));
    assert_true(ddp_clip_coef(norm, 1.0f) == 1.0f);
    g[0] = NAN;
    assert_int_equal(ddp_grad_norm(*state, g, 2, &norm), DDP_OK);
    assert_true(isnan(norm));
    assert_true(ddp_clip_coef(norm, 1.0f) == 1.0f);
}

/* Clipping inside the update (gscale) equals scaling the gradients first and updating
 * with gscale 1, for both optimizers, to the last bit: the product gscale * g is the same
 * float either way. */
static void test_update_with_gscale_equals_update_of_scaled_gradients(void **state) {
    const ddp_optim_kind kinds[] = {DDP_OPTIM_SGD, DDP_OPTIM_ADAMW};
    for (int k = 0; k < 2; k++) {
        ddp_optim_config cfg = {.kind = kinds[k],
                                .momentum = 0.9f,
                                .beta1 = 0.9f,
                                .beta2 = 0.999f,
                                .eps = 1e-8f,
                                .weight_decay = 0.01f};
        ddp_optim *a = NULL, *b = NULL;
        assert_int_equal(ddp_optim_create(*state, &cfg, 4, &a), DDP_OK);
        assert_int_equal(ddp_optim_create(*state, &cfg, 4, &b), DDP_OK);
        float pa[4] = {1.0f, -2.0f, 0.5f, 3.0f}, pb[4];
        memcpy(pb, pa, sizeof pa);
        for (int t = 0; t < 3; t++) {
            float g[4] = {0.3f * (float)(t + 1), -1.5f, 2.25f, -0.125f}, scaled[4];
            float coef = 0.37f;
            for (int i = 0; i < 4; i++)
                scaled[i] = coef * g[i];
            assert_int_equal(ddp_optim_step(a, pa, g, 0.1f, coef), DDP_OK);
            assert_int_equal(ddp_optim_step(b, pb, scaled, 0.1f, 1.0f), DDP_OK);
        }
        assert_memory_equal(pa, pb, sizeof pa);
        /* And the coefficient really acted: without it the parameters differ. */
        float pc[4] = {1.0f, -2.0f, 0.5f, 3.0f};
        ddp_optim *c = NULL;
        assert_int_equal(ddp_optim_create(*state, &cfg, 4, &c), DDP_OK);
        float g[4] = {0.3f, -1.5f, 2.25f, -0.125f};
        assert_int_equal(ddp_optim_step(c, pc, g, 0.1f, 1.0f), DDP_OK);
        float pd[4] = {1.0f, -2.0f, 0.5f, 3.0f};
        ddp_optim *d = NULL;
        assert_int_equal(ddp_optim_create(*state, &cfg, 4, &d), DDP_OK);
        assert_int_equal(ddp_optim_step(d, pd, g, 0.1f, 0.37f), DDP_OK);
        assert_true(memcmp(pc, pd, sizeof pc) != 0);
        ddp_optim_free(a);
        ddp_optim_free(b);
        ddp_optim_free(c);
        ddp_optim_free(d);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sgd_steps_match_hand_computed_values),
        cmocka_unit_test(test_sgd_uses_the_learning_rate_of_each_step),
        cmocka_unit_test(test_sgd_momentum_resumes_from_restored_state),
        cmocka_unit_test(test_adamw_steps_match_hand_computed_values),
        cmocka_unit_test(test_adamw_resumes_bias_correction_from_restored_steps),
        cmocka_unit_test(test_create_rejects_invalid_configs),
        cmocka_unit_test(test_create_accepts_boundary_values),
        cmocka_unit_test(test_constant_schedule_is_constant),
        cmocka_unit_test(test_warmup_is_linear_up_to_base_lr),
        cmocka_unit_test(test_cosine_decays_from_base_to_min_after_warmup),
        cmocka_unit_test(test_cosine_without_warmup_starts_at_base),
        cmocka_unit_test(test_no_decay_ranges_skip_weight_decay_only_there),
        cmocka_unit_test(test_clip_coef_scales_down_to_max_norm),
        cmocka_unit_test(test_clip_coef_is_one_for_smaller_gradients),
        cmocka_unit_test(test_clip_coef_leaves_nonfinite_norms_to_the_caller),
        cmocka_unit_test(test_update_with_gscale_equals_update_of_scaled_gradients),
    };
    return cmocka_run_group_tests(tests, cpu_backend_setup, cpu_backend_teardown);
}
