/*
 * The CNN on the CPU: every parameter gradient of a small CNN (two stages of conv, batch
 * norm, ReLU and max pooling on 6 x 8 images of 2 channels, then a dense head) against
 * central finite differences of the mean loss in training mode (batch statistics);
 * evaluation with the running statistics, which converge to the batch's under repeated
 * training forwards, and which each training forward moves by the momentum, once per
 * micro-batch; the buffers' names, shapes and initial values; the layout and decay
 * flags; the description read back; bad shapes refused with a message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/model.h"

enum { H = 6, W = 8, CH = 2, B = 4, CLASSES = 3 };

static ddp_model_spec small_spec(void) {
    ddp_model_spec s;
    ddp_model_spec_defaults(&s, DDP_MODEL_CNN);
    s.height = H;
    s.width = W;
    s.channels = CH;
    s.conv.n = 2;
    s.conv.v[0] = 3;
    s.conv.v[1] = 4;
    s.kernel = 3;
    s.hidden.n = 1;
    s.hidden.v[0] = 5;
    s.num_classes = CLASSES;
    return s;
}

typedef struct {
    ddp_model *m;
    float x[B * H * W * CH];
    int32_t y[B];
    size_t np;
} fixture;

static void fixture_init(fixture *f, ddp_backend *b, uint64_t seed) {
    memset(f, 0, sizeof *f);
    ddp_model_spec spec = small_spec();
    assert_int_equal(ddp_model_create(b, &spec, B, &f->m), DDP_OK);
    assert_int_equal(ddp_model_init_params(f->m, seed), DDP_OK);
    f->np = ddp_model_num_params(f->m);
    ddp_rng rng;
    ddp_rng_seed(&rng, seed, 77);
    float *p = ddp_model_params(f->m);
    for (size_t i = 0; i < f->np; i++)
        p[i] += 0.05f * ddp_rng_normal(&rng);
    for (int i = 0; i < B * H * W * CH; i++)
        f->x[i] = ddp_rng_normal(&rng);
    for (int i = 0; i < B; i++)
        f->y[i] = (int32_t)ddp_rng_below(&rng, CLASSES);
}

static double loss_of(fixture *f, ddp_mode mode, size_t n) {
    ddp_batch batch = {.n = n, .t = 1, .x = f->x, .targets = f->y};
    float stats[2] = {0, 0};
    assert_int_equal(ddp_model_forward(f->m, &batch, mode, 1.0f / (float)n, stats), DDP_OK);
    return (double)stats[0] / (double)n;
}

static void test_every_gradient_matches_finite_difference(void **state) {
    fixture f;
    fixture_init(&f, *state, 1);
    loss_of(&f, DDP_MODE_TRAIN, B);
    assert_int_equal(ddp_model_backward(f.m, 1, NULL, NULL), DDP_OK);
    float *grad = malloc(f.np * sizeof *grad);
    memcpy(grad, ddp_model_grads(f.m), f.np * sizeof *grad);
    float *p = ddp_model_params(f.m);
    const float h = 1e-3f;
    int kinks = 0;
    double worst = 0.0, norm = 0.0;
    for (size_t i = 0; i < f.np; i++) {
        const float saved = p[i];
        double l0 = loss_of(&f, DDP_MODE_TRAIN, B);
        p[i] = saved + h;
        double lp = loss_of(&f, DDP_MODE_TRAIN, B);
        p[i] = saved - h;
        double lm = loss_of(&f, DDP_MODE_TRAIN, B);
        p[i] = saved;
        double fd = (lp - lm) / (2.0 * h);
        /* A step across a ReLU kink or a change of a pooling window's maximum makes the
         * two one-sided differences disagree: such a parameter says nothing, skip it (and
         * count: there must be few). The loss is a float sum (rounding ~1e-7 over a step
         * of 1e-3: 1e-4 of noise in fd). */
        double right = (lp - l0) / h, left = (l0 - lm) / h;
        if (fabs(right - left) > 2e-2 + 0.05 * fabs(fd)) {
            kinks++;
            continue;
        }
        double err = fabs((double)grad[i] - fd);
        if (!(err <= 5e-4 + 1e-2 * fabs(fd)))
            fail_msg("d loss / d param %zu = %.6g, finite difference %.6g", i, grad[i], fd);
        if (err > worst) worst = err;
        norm += (double)grad[i] * grad[i];
    }
    print_message("%zu parameters, %d at a kink skipped, largest gradient error %.2g\n", f.np,
                  kinks, worst);
    assert_true(kinks <= (int)(f.np / 20));
    assert_true(sqrt(norm) > 0.05);
    free(grad);
    ddp_model_free(f.m);
}

/* The running statistics of batch norm layer i: (mean (C), variance (C)). */
static const float *running(ddp_model *m, int i) {
    const ddp_param_view *v = ddp_model_buffer_view(m, 2 * i);
    return ddp_model_buffers(m) + v->offset;
}

static void test_eval_uses_running_statistics_that_follow_the_batches(void **state) {
    fixture f;
    fixture_init(&f, *state, 2);
    /* At the start (mean 0, variance 1) evaluation differs from training. */
    double train = loss_of(&f, DDP_MODE_TRAIN, B);
    double eval = loss_of(&f, DDP_MODE_EVAL, B);
    assert_true(fabs(train - eval) > 1e-3);
    /* Each training forward moves the running statistics by 10% towards the batch's:
     * after 200 forwards of the same batch they are the batch's (up to the unbiased
     * variance's n / (n - 1)), and evaluation gives almost the training loss. */
    float before = running(f.m, 0)[0];
    loss_of(&f, DDP_MODE_TRAIN, B);
    float after1 = running(f.m, 0)[0];
    for (int k = 0; k < 200; k++)
        loss_of(&f, DDP_MODE_TRAIN, B);
    float conv = running(f.m, 0)[0];
    /* mean_{k+1} = 0.9 mean_k + 0.1 batch: after one more forward a tenth of the way. */
    assert_near(after1 - before, 0.1 * (conv - before), 1e-4 * (1.0 + fabs(conv)));
    double eval2 = loss_of(&f, DDP_MODE_EVAL, B);
    train = loss_of(&f, DDP_MODE_TRAIN, B);
    assert_near(eval2, train, 0.05 * fabs(train));
    /* Evaluation leaves the running statistics alone. */
    float kept[8];
    memcpy(kept, running(f.m, 1), sizeof kept);
    loss_of(&f, DDP_MODE_EVAL, B);
    assert_memory_equal(kept, running(f.m, 1), sizeof kept);
    ddp_model_free(f.m);
}

static void test_tensors_and_buffers_are_named_like_pytorch(void **state) {
    ddp_model_spec spec = small_spec();
    ddp_model *m = NULL;
    assert_int_equal(ddp_model_create(*state, &spec, B, &m), DDP_OK);
    assert_int_equal(ddp_model_init_params(m, 3), DDP_OK);
    const ddp_param_view *w = ddp_model_view(m, 0);
    assert_string_equal(w->name, "conv0.weight");
    assert_int_equal(w->ndim, 4);
    assert_int_equal(w->shape[0], 3);  /* Cout */
    assert_int_equal(w->shape[1], CH); /* Cin */
    assert_int_equal(w->shape[2], 3);
    assert_int_equal(w->shape[3], 3);
    assert_int_equal(w->decay, 1);
    for (int i = 1; i < ddp_model_num_views(m); i++) {
        const ddp_param_view *v = ddp_model_view(m, i);
        /* Batch-norm parameters and biases do not decay. */
        if (strstr(v->name, "bn") || strstr(v->name, "bias")) assert_int_equal(v->decay, 0);
    }
    assert_string_equal(ddp_model_view(m, 2)->name, "bn0.weight");
    assert_int_equal(ddp_model_num_buffer_views(m), 4);
    const char *names[4] = {"bn0.running_mean", "bn0.running_var", "bn1.running_mean",
                            "bn1.running_var"};
    size_t next = 0;
    for (int i = 0; i < 4; i++) {
        const ddp_param_view *v = ddp_model_buffer_view(m, i);
        assert_string_equal(v->name, names[i]);
        assert_int_equal(v->offset, next);
        next += v->count;
        for (size_t k = 0; k < v->count; k++)
            assert_true(ddp_model_buffers(m)[v->offset + k] == (i % 2 ? 1.0f : 0.0f));
    }
    assert_int_equal(next, ddp_model_num_buffer_elems(m));
    /* 6x8 -> pool 3x4 -> pool 1x2: the head sees 4 channels x 2 positions. */
    assert_string_equal(ddp_model_describe(m), "cnn 6x8x2 conv3,4 k3 fc 8-5-3 relu");
    ddp_model_spec back;
    assert_int_equal(ddp_model_spec_parse(ddp_model_describe(m), &back), DDP_OK);
    ddp_model *m2 = NULL;
    assert_int_equal(ddp_model_create(*state, &back, 1, &m2), DDP_OK);
    assert_string_equal(ddp_model_describe(m2), ddp_model_describe(m));
    ddp_model_free(m2);
    ddp_model_free(m);
}

static void test_bad_shapes_are_refused(void **state) {
    ddp_model *m = (ddp_model *)0x1;
    ddp_model_spec spec = small_spec();
    spec.kernel = 4; /* even: padding k / 2 would change the size */
    assert_int_equal(ddp_model_create(*state, &spec, 1, &m), DDP_ERR_INVALID_ARG);
    assert_null(m);
    assert_msg_has("odd kernel");
    spec = small_spec();
    spec.conv.n = 4; /* 6x8 -> 3x4 -> 1x2 -> too small */
    spec.conv.v[2] = spec.conv.v[3] = 4;
    assert_int_equal(ddp_model_create(*state, &spec, 1, &m), DDP_ERR_INVALID_ARG);
    assert_msg_has("too small");
    spec = small_spec();
    spec.height = 0;
    assert_int_equal(ddp_model_create(*state, &spec, 1, &m), DDP_ERR_INVALID_ARG);
    assert_msg_has("images");
    ddp_error_clear();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_gradient_matches_finite_difference),
        cmocka_unit_test(test_eval_uses_running_statistics_that_follow_the_batches),
        cmocka_unit_test(test_tensors_and_buffers_are_named_like_pytorch),
        cmocka_unit_test(test_bad_shapes_are_refused),
    };
    return cmocka_run_group_tests(tests, cpu_backend_setup, cpu_backend_teardown);
}
