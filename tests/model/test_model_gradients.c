/*
 * The MLP's forward and backward. Every parameter gradient of a small MLP (7-5-4-3,
 * batch 4, ReLU and GELU) is checked against a central finite difference of the mean
 * cross-entropy loss, which also checks the input gradients of the inner Linear and
 * activation layers (the earlier layers' gradients pass through them). Around that:
 * the forward against a naive host computation, backward adding into the gradient
 * buffer, the ready callback's order and ranges, the named views tiling the flat
 * buffer, the initialization, and argument checks.
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

enum { IN = 7, H0 = 5, H1 = 4, CLASSES = 3, BATCH = 4 };
/* 7*5+5 + 5*4+4 + 4*3+3 */
#define NUM_PARAMS 79

typedef struct {
    ddp_backend *b;
    ddp_model *m;
    float x[BATCH * IN]; /* (BATCH, IN) */
    int32_t y[BATCH];    /* (BATCH) */
} fixture;

static ddp_model_spec small_spec(ddp_act act) {
    ddp_model_spec spec = {.input_dim = IN, .num_classes = CLASSES, .hidden.n = 2, .act = act};
    spec.hidden.v[0] = H0;
    spec.hidden.v[1] = H1;
    return spec;
}

/* A model with He-initialized weights, small random biases (so that bias gradients
 * flow through non-trivial values), and a batch of random inputs and labels. */
static void fixture_init(fixture *f, ddp_backend *b, ddp_act act, uint64_t seed) {
    memset(f, 0, sizeof *f);
    f->b = b;
    ddp_model_spec spec = small_spec(act);
    assert_int_equal(ddp_model_create(b, &spec, BATCH, &f->m), DDP_OK);
    assert_int_equal(ddp_model_init_params(f->m, seed), DDP_OK);
    ddp_rng rng;
    ddp_rng_seed(&rng, seed, 1000);
    float *p = ddp_model_params(f->m);
    for (int v = 1; v < ddp_model_num_views(f->m); v += 2) {
        const ddp_param_view *bias = ddp_model_view(f->m, v);
        for (size_t k = 0; k < bias->count; k++)
            p[bias->offset + k] = 0.3f * ddp_rng_normal(&rng);
    }
    for (int i = 0; i < BATCH * IN; i++)
        f->x[i] = ddp_rng_normal(&rng);
    for (int i = 0; i < BATCH; i++)
        f->y[i] = (int32_t)ddp_rng_below(&rng, CLASSES);
}

static void fixture_free(fixture *f) { ddp_model_free(f->m); }

/* Train-mode forward over samples [first, first + n) with the loss gradient scaled by
 * grad_scale kept for backward; returns the mean loss of those samples. */
static double forward_loss(fixture *f, size_t first, size_t n, float grad_scale) {
    ddp_batch batch = {.n = n, .t = 1, .x = f->x + first * IN, .targets = f->y + first};
    float stats[2] = {0, 0};
    assert_int_equal(ddp_model_forward(f->m, &batch, DDP_MODE_TRAIN, grad_scale, stats), DDP_OK);
    return (double)stats[0] / (double)n;
}

static double batch_loss(fixture *f) { return forward_loss(f, 0, BATCH, 1.0f / BATCH); }

/* Gradient of the mean loss over the batch, written (a step's first micro-batch). */
static void analytic_grads(fixture *f, float *out) {
    batch_loss(f);
    assert_int_equal(ddp_model_backward(f->m, 1, NULL, NULL), DDP_OK);
    memcpy(out, ddp_model_grads(f->m), NUM_PARAMS * sizeof(float));
}

/* ---- a naive forward in double, as the reference ---------------------------------------- */

/* y (n, out) = act?(x (n, in) W^T + b); records the smallest |pre-activation|. */
static void ref_linear(const float *w, const float *bias, const double *x, double *y, int n, int in,
                       int out, int act, ddp_act kind, double *min_abs_pre) {
    for (int i = 0; i < n; i++)
        for (int o = 0; o < out; o++) {
            double z = bias[o];
            for (int k = 0; k < in; k++)
                z += (double)w[o * in + k] * x[i * in + k];
            if (act) {
                if (fabs(z) < *min_abs_pre) *min_abs_pre = fabs(z);
                if (kind == DDP_ACT_RELU)
                    z = z > 0.0 ? z : 0.0;
                else
                    z = 0.5 * z * (1.0 + tanh(sqrt(2.0 / M_PI) * (z + 0.044715 * z * z * z)));
            }
            y[i * out + o] = z;
        }
}

/* The parameters of view i in the flat buffer. */
static const float *view_data(fixture *f, int i) {
    return ddp_model_params(f->m) + ddp_model_view(f->m, i)->offset;
}

static double ref_forward(fixture *f, ddp_act act, double logits[BATCH * CLASSES]) {
    double x[BATCH * IN], h0[BATCH * H0], h1[BATCH * H1], min_abs_pre = INFINITY;
    for (int i = 0; i < BATCH * IN; i++)
        x[i] = f->x[i];
    ref_linear(view_data(f, 0), view_data(f, 1), x, h0, BATCH, IN, H0, 1, act, &min_abs_pre);
    ref_linear(view_data(f, 2), view_data(f, 3), h0, h1, BATCH, H0, H1, 1, act, &min_abs_pre);
    ref_linear(view_data(f, 4), view_data(f, 5), h1, logits, BATCH, H1, CLASSES, 0, act,
               &min_abs_pre);
    return min_abs_pre;
}

static void check_forward_matches_reference(ddp_backend *b, ddp_act act) {
    fixture f;
    fixture_init(&f, b, act, 7);
    ddp_batch batch = {.n = BATCH, .t = 1, .x = f.x};
    assert_int_equal(ddp_model_forward(f.m, &batch, DDP_MODE_EVAL, 0.0f, NULL), DDP_OK);
    const float *logits = ddp_model_logits(f.m);
    double want[BATCH * CLASSES];
    ref_forward(&f, act, want);
    for (int i = 0; i < BATCH * CLASSES; i++)
        if (!(fabs(logits[i] - want[i]) <= 1e-5 * (1.0 + fabs(want[i]))))
            fail_msg("logit %d = %.8g, reference %.8g", i, logits[i], want[i]);
    fixture_free(&f);
}

static void test_forward_matches_naive_reference(void **state) {
    check_forward_matches_reference(*state, DDP_ACT_RELU);
    check_forward_matches_reference(*state, DDP_ACT_GELU);
}

/* ---- gradients against finite differences ------------------------------------------------ */

static void check_gradients(ddp_backend *b, ddp_act act, uint64_t seed) {
    fixture f;
    fixture_init(&f, b, act, seed);
    assert_int_equal(ddp_model_num_params(f.m), NUM_PARAMS);
    const float h = 1e-3f;
    if (act == DDP_ACT_RELU) {
        /* A finite difference across a ReLU kink measures nothing; with this seed every
         * pre-activation is far enough from 0 that no perturbation below crosses one. */
        double logits[BATCH * CLASSES];
        double margin = ref_forward(&f, act, logits);
        assert_true(margin > 20.0 * h);
    }

    float grad[NUM_PARAMS];
    analytic_grads(&f, grad);
    float *p = ddp_model_params(f.m);
    double worst = 0.0;
    for (int i = 0; i < NUM_PARAMS; i++) {
        const float saved = p[i];
        const float up = saved + h, down = saved - h;
        p[i] = up;
        double lp = batch_loss(&f);
        p[i] = down;
        double lm = batch_loss(&f);
        p[i] = saved;
        /* Divide by the step as actually taken in float. */
        double fd = (lp - lm) / ((double)up - (double)down);
        /* The loss is float, so the difference carries about 1e-7 / 2e-3 = 5e-5 of noise;
         * truncation is O(h^2). A transposed weight or a missing bias term is off by
         * O(0.1). */
        double err = fabs((double)grad[i] - fd);
        if (!(err <= 1e-3 + 2e-2 * fabs(fd)))
            fail_msg("%s: d loss / d param %d = %.6g, finite difference %.6g",
                     act ? "gelu" : "relu", i, grad[i], fd);
        if (err > worst) worst = err;
    }
    /* The check above would pass for an all-zero gradient only if every difference were
     * tiny too: make sure the gradient is not vacuous. */
    double norm = 0.0;
    for (int i = 0; i < NUM_PARAMS; i++)
        norm += (double)grad[i] * grad[i];
    assert_true(sqrt(norm) > 0.1);
    print_message("%s: largest gradient error %.2g\n", act ? "gelu" : "relu", worst);
    fixture_free(&f);
}

static void test_every_parameter_gradient_matches_finite_difference_gelu(void **state) {
    check_gradients(*state, DDP_ACT_GELU, 1);
    check_gradients(*state, DDP_ACT_GELU, 2);
}

static void test_every_parameter_gradient_matches_finite_difference_relu(void **state) {
    check_gradients(*state, DDP_ACT_RELU, 3);
}

static void test_last_bias_gradient_is_column_sum_of_dlogits(void **state) {
    /* The logits are x W^T + b, so d loss / d b is the column sum of dlogits =
     * (softmax - onehot) / BATCH, computed here from the logits. */
    fixture f;
    fixture_init(&f, *state, DDP_ACT_GELU, 5);
    float grad[NUM_PARAMS];
    analytic_grads(&f, grad);
    const float *logits = ddp_model_logits(f.m);
    double dlogits[BATCH * CLASSES];
    for (int i = 0; i < BATCH; i++) {
        double zmax = logits[i * CLASSES], sum = 0.0;
        for (int c = 1; c < CLASSES; c++)
            if (logits[i * CLASSES + c] > zmax) zmax = logits[i * CLASSES + c];
        for (int c = 0; c < CLASSES; c++)
            sum += exp(logits[i * CLASSES + c] - zmax);
        for (int c = 0; c < CLASSES; c++)
            dlogits[i * CLASSES + c] =
                (exp(logits[i * CLASSES + c] - zmax) / sum - (c == f.y[i])) / BATCH;
    }
    const ddp_param_view *last_bias = ddp_model_view(f.m, 5);
    for (int c = 0; c < CLASSES; c++) {
        double sum = 0.0;
        for (int i = 0; i < BATCH; i++)
            sum += dlogits[i * CLASSES + c];
        assert_true(fabs(grad[last_bias->offset + c] - sum) <= 1e-6);
    }
    fixture_free(&f);
}

/* ---- accumulation ---------------------------------------------------------------------------- */

static void test_backward_adds_into_gradients(void **state) {
    fixture f;
    fixture_init(&f, *state, DDP_ACT_GELU, 11);
    float once[NUM_PARAMS];
    analytic_grads(&f, once);
    /* A second backward of the same forward that adds (a later micro-batch) doubles every
     * gradient. */
    assert_int_equal(ddp_model_backward(f.m, 0, NULL, NULL), DDP_OK);
    const float *g = ddp_model_grads(f.m);
    for (int i = 0; i < NUM_PARAMS; i++)
        if (!(fabsf(g[i] - 2.0f * once[i]) <= 1e-6f * (1.0f + fabsf(once[i]))))
            fail_msg("grad %d after two backwards = %g, expected 2 x %g", i, g[i], once[i]);
    fixture_free(&f);
}

static void test_backward_first_writes_every_gradient_without_zeroing(void **state) {
    /* NaN everywhere beforehand: anything read from the old buffer would stay NaN. Run
     * sliced as well, the trainer's layout. */
    for (int sliced = 0; sliced < 2; sliced++) {
        fixture f;
        fixture_init(&f, *state, DDP_ACT_GELU, 13);
        if (sliced) ddp_model_set_grad_slices(f.m, 10);
        float want[NUM_PARAMS];
        analytic_grads(&f, want);
        float *g = ddp_model_grads(f.m);
        for (int i = 0; i < NUM_PARAMS; i++)
            g[i] = NAN;
        batch_loss(&f);
        assert_int_equal(ddp_model_backward(f.m, 1, NULL, NULL), DDP_OK);
        for (int i = 0; i < NUM_PARAMS; i++)
            if (!(g[i] == want[i]))
                fail_msg("sliced %d: grad %d = %g after a first backward, expected %g", sliced, i,
                         g[i], want[i]);
        /* A second micro-batch adds as usual. */
        assert_int_equal(ddp_model_backward(f.m, 0, NULL, NULL), DDP_OK);
        for (int i = 0; i < NUM_PARAMS; i++)
            assert_near(g[i], 2.0 * want[i], 1e-6 * (1.0 + fabs(want[i])));
        fixture_free(&f);
    }
}

static void test_zero_grads_clears_every_gradient(void **state) {
    fixture f;
    fixture_init(&f, *state, DDP_ACT_RELU, 12);
    float grad[NUM_PARAMS];
    analytic_grads(&f, grad);
    assert_int_equal(ddp_model_zero_grads(f.m), DDP_OK);
    const float *g = ddp_model_grads(f.m);
    for (int i = 0; i < NUM_PARAMS; i++)
        assert_true(g[i] == 0.0f);
    fixture_free(&f);
}

static void test_micro_batches_accumulate_to_full_batch_gradient(void **state) {
    /* Two halves, each scaled by 1/BATCH, add up to the gradient of the whole batch: the
     * property gradient accumulation relies on. */
    fixture f;
    fixture_init(&f, *state, DDP_ACT_GELU, 13);
    float full[NUM_PARAMS];
    analytic_grads(&f, full);
    for (size_t first = 0; first < BATCH; first += BATCH / 2) {
        forward_loss(&f, first, BATCH / 2, 1.0f / BATCH);
        assert_int_equal(ddp_model_backward(f.m, first == 0, NULL, NULL), DDP_OK);
    }
    const float *g = ddp_model_grads(f.m);
    for (int i = 0; i < NUM_PARAMS; i++)
        if (!(fabsf(g[i] - full[i]) <= 1e-6f * (1.0f + fabsf(full[i]))))
            fail_msg("grad %d from two halves = %g, full batch %g", i, g[i], full[i]);
    fixture_free(&f);
}

/* ---- the ready callback ---------------------------------------------------------------------- */

static void test_ready_is_called_once_per_tensor_last_first(void **state) {
    fixture f;
    fixture_init(&f, *state, DDP_ACT_GELU, 21);
    batch_loss(&f);
    float snapshot[NUM_PARAMS];
    ready_log r = {.grads = ddp_model_grads(f.m), .np = NUM_PARAMS, .snapshot = snapshot};
    assert_int_equal(ddp_model_backward(f.m, 1, ready_log_record, &r), DDP_OK);
    assert_int_equal(r.calls, 6);
    for (int c = 0; c < 6; c++) {
        /* Layer 2 - c/2: its bias (computed first), then its weight. */
        int layer = 2 - c / 2;
        const ddp_param_view *v = ddp_model_view(f.m, 2 * layer + (c % 2 == 0 ? 1 : 0));
        assert_int_equal(r.offset[c], v->offset);
        assert_int_equal(r.count[c], v->count);
    }
    /* What a reducer would have sent at each call is the final gradient. */
    assert_memory_equal(snapshot, ddp_model_grads(f.m), NUM_PARAMS * sizeof(float));
    fixture_free(&f);
}

static void test_sliced_first_layer_reports_slices_last_rows_first(void **state) {
    /* fc0 is 5 x 7: slices of at least 14 elements are 2 rows, cut from the last row
     * down: rows 3-4, rows 1-2, then row 0 alone, sent last. */
    fixture f;
    fixture_init(&f, *state, DDP_ACT_RELU, 23);
    float whole[NUM_PARAMS];
    analytic_grads(&f, whole);
    assert_int_equal(ddp_model_set_grad_slices(f.m, 14), (size_t)(IN * H0 + H0));
    size_t points[12];
    const size_t fc1 = IN * H0 + H0, fc2 = fc1 + H0 * H1 + H1;
    const size_t want_points[8] = {
        0, IN, 3 * IN, IN * H0, fc1, fc1 + H0 * H1, fc2, fc2 + H1 * CLASSES};
    assert_int_equal(ddp_model_ready_points(f.m, points, 12), 8);
    for (int i = 0; i < 8; i++)
        assert_int_equal(points[i], want_points[i]);
    batch_loss(&f);
    float snapshot[NUM_PARAMS];
    ready_log r = {.grads = ddp_model_grads(f.m), .np = NUM_PARAMS, .snapshot = snapshot};
    assert_int_equal(ddp_model_backward(f.m, 1, ready_log_record, &r), DDP_OK);
    assert_int_equal(r.calls, 8);
    /* fc2 and fc1 bias then weight; fc0's bias, then its weight in three slices, each
     * ending where the previous began. */
    const size_t want_off[8] = {
        fc2 + H1 * CLASSES, fc2, fc1 + H0 * H1, fc1, IN * H0, 3 * IN, IN, 0};
    const size_t want_cnt[8] = {CLASSES, H1 * CLASSES, H1, H0 * H1, H0, 2 * IN, 2 * IN, IN};
    for (int c = 0; c < 8; c++) {
        assert_int_equal(r.offset[c], want_off[c]);
        assert_int_equal(r.count[c], want_cnt[c]);
    }
    /* Final when reported, and the same gradients as in one piece. */
    assert_memory_equal(snapshot, ddp_model_grads(f.m), NUM_PARAMS * sizeof(float));
    for (int i = 0; i < NUM_PARAMS; i++)
        assert_near(ddp_model_grads(f.m)[i], whole[i], 1e-6 * (1.0 + fabs(whole[i])));
    /* 0 puts the layer back in one piece. */
    ddp_model_set_grad_slices(f.m, 0);
    assert_int_equal(ddp_model_ready_points(f.m, NULL, 0), 6);
    fixture_free(&f);
}

static void test_ready_failure_stops_backward(void **state) {
    fixture f;
    fixture_init(&f, *state, DDP_ACT_RELU, 22);
    assert_int_equal(ddp_model_zero_grads(f.m), DDP_OK);
    batch_loss(&f);
    ready_log r = {.fail_at = 1};
    assert_int_equal(ddp_model_backward(f.m, 0, ready_log_record, &r), DDP_ERR_COMM);
    assert_int_equal(r.calls, 1);
    assert_msg_has("injected failure");
    /* Nothing below the last bias was computed: its weight and the earlier layers. */
    const ddp_param_view *last_bias = ddp_model_view(f.m, 5);
    const float *g = ddp_model_grads(f.m);
    for (size_t i = 0; i < last_bias->offset; i++)
        assert_true(g[i] == 0.0f);
    fixture_free(&f);
}

/* ---- views and shapes --------------------------------------------------------------------------
 */

static void test_views_are_named_and_tile_the_flat_buffer(void **state) {
    ddp_model_spec spec = small_spec(DDP_ACT_RELU);
    ddp_model *m = NULL;
    assert_int_equal(ddp_model_create(*state, &spec, BATCH, &m), DDP_OK);
    const size_t dims[4] = {IN, H0, H1, CLASSES};
    assert_int_equal(ddp_model_num_views(m), 6);
    size_t next = 0;
    for (int i = 0; i < 3; i++) {
        char name[48];
        const ddp_param_view *w = ddp_model_view(m, 2 * i), *bias = ddp_model_view(m, 2 * i + 1);
        snprintf(name, sizeof name, "fc%d.weight", i);
        assert_string_equal(w->name, name);
        assert_int_equal(w->ndim, 2);
        assert_int_equal(w->shape[0], dims[i + 1]); /* (out, in) */
        assert_int_equal(w->shape[1], dims[i]);
        assert_int_equal(w->count, dims[i + 1] * dims[i]);
        assert_int_equal(w->offset, next);
        assert_int_equal(w->decay, 1); /* weight decay on the matrices only */
        next += w->count;
        snprintf(name, sizeof name, "fc%d.bias", i);
        assert_string_equal(bias->name, name);
        assert_int_equal(bias->ndim, 1);
        assert_int_equal(bias->shape[0], dims[i + 1]);
        assert_int_equal(bias->count, dims[i + 1]);
        assert_int_equal(bias->offset, next);
        assert_int_equal(bias->decay, 0);
        next += bias->count;
    }
    assert_int_equal(next, ddp_model_num_params(m));
    assert_int_equal(next, NUM_PARAMS);
    assert_null(ddp_model_view(m, 6));
    assert_null(ddp_model_view(m, -1));
    assert_int_equal(ddp_model_spec_of(m)->input_dim, IN);
    assert_int_equal(ddp_model_num_classes(m), CLASSES);
    assert_string_equal(ddp_model_describe(m), "mlp 7-5-4-3 relu");
    assert_true(ddp_model_flops_per_sample(m) == 2.0 * (7 * 5 + 5 * 4 + 4 * 3));
    /* The description reads back into the same model. */
    ddp_model_spec back;
    assert_int_equal(ddp_model_spec_parse(ddp_model_describe(m), &back), DDP_OK);
    ddp_model *m2 = NULL;
    assert_int_equal(ddp_model_create(*state, &back, 1, &m2), DDP_OK);
    assert_string_equal(ddp_model_describe(m2), ddp_model_describe(m));
    ddp_model_free(m2);
    assert_int_equal(ddp_model_spec_parse("mlp 7-5 tanh", &back), DDP_ERR_FORMAT);
    assert_int_equal(ddp_model_spec_parse("gpt L4 C256", &back), DDP_ERR_FORMAT);
    ddp_model_free(m);
    /* Asked for, weight decay applies to every tensor. */
    spec.decay_all = 1;
    assert_int_equal(ddp_model_create(*state, &spec, BATCH, &m), DDP_OK);
    for (int i = 0; i < ddp_model_num_views(m); i++)
        assert_int_equal(ddp_model_view(m, i)->decay, 1);
    ddp_model_free(m);
}

static void test_model_without_hidden_layers_is_one_linear_layer(void **state) {
    ddp_model_spec spec = {.input_dim = 3, .num_classes = 2, .hidden.n = 0};
    ddp_model *m = NULL;
    assert_int_equal(ddp_model_create(*state, &spec, 2, &m), DDP_OK);
    assert_int_equal(ddp_model_num_params(m), 3 * 2 + 2);
    /* W = [[1, 2, 3], [-1, 0, 1]], b = (0.5, -0.5): x (1, 1, 1) -> (6.5, -0.5). */
    const float p[8] = {1, 2, 3, -1, 0, 1, 0.5f, -0.5f};
    memcpy(ddp_model_params(m), p, sizeof p);
    const float x[3] = {1, 1, 1};
    const int32_t y[1] = {1};
    ddp_batch batch = {.n = 1, .t = 1, .x = x, .targets = y};
    float stats[2] = {0, 0};
    assert_int_equal(ddp_model_forward(m, &batch, DDP_MODE_TRAIN, 1.0f, stats), DDP_OK);
    const float *logits = ddp_model_logits(m);
    assert_true(logits[0] == 6.5f);
    assert_true(logits[1] == -0.5f);
    /* The loss of label 1 is log(e^6.5 + e^-0.5) + 0.5 = log(1 + e^7); arg-max is 0. */
    assert_near(stats[0], log1p(exp(7.0)), 1e-5);
    assert_true(stats[1] == 0.0f);
    /* dlogits = softmax - onehot = (s, -s) with s = 1 / (1 + e^-7); dW = dy^T x, db = dy. */
    assert_int_equal(ddp_model_backward(m, 1, NULL, NULL), DDP_OK);
    double sg = 1.0 / (1.0 + exp(-7.0));
    const double want[8] = {sg, sg, sg, -sg, -sg, -sg, sg, -sg};
    for (int i = 0; i < 8; i++)
        assert_near(ddp_model_grads(m)[i], want[i], 1e-6);
    ddp_model_free(m);
}

/* ---- initialization ----------------------------------------------------------------------------
 */

static void test_init_is_reproducible_from_the_seed(void **state) {
    ddp_model_spec spec = small_spec(DDP_ACT_RELU);
    ddp_model *a = NULL, *b = NULL;
    assert_int_equal(ddp_model_create(*state, &spec, BATCH, &a), DDP_OK);
    assert_int_equal(ddp_model_create(*state, &spec, BATCH, &b), DDP_OK);
    assert_int_equal(ddp_model_init_params(a, 42), DDP_OK);
    assert_int_equal(ddp_model_init_params(b, 42), DDP_OK);
    assert_memory_equal(ddp_model_params(a), ddp_model_params(b), NUM_PARAMS * sizeof(float));
    assert_int_equal(ddp_model_init_params(b, 43), DDP_OK);
    const ddp_param_view *w0 = ddp_model_view(a, 0);
    int differ = 0;
    for (size_t i = 0; i < w0->count; i++)
        differ += ddp_model_params(a)[i] != ddp_model_params(b)[i];
    assert_int_equal(differ, (int)w0->count);
    ddp_model_free(a);
    ddp_model_free(b);
}

static void test_init_is_kaiming_normal_with_zero_biases(void **state) {
    ddp_model_spec spec = {.input_dim = 784, .num_classes = 10, .hidden.n = 1};
    spec.hidden.v[0] = 256;
    ddp_model *m = NULL;
    assert_int_equal(ddp_model_create(*state, &spec, 1, &m), DDP_OK);
    /* Poison the buffer: init must write every element. */
    memset(ddp_model_params(m), 0xff, ddp_model_num_params(m) * sizeof(float));
    assert_int_equal(ddp_model_init_params(m, 7), DDP_OK);
    const float *p = ddp_model_params(m);
    for (int i = 0; i < 2; i++) {
        const ddp_param_view *w = ddp_model_view(m, 2 * i), *bias = ddp_model_view(m, 2 * i + 1);
        double sum = 0.0, sumsq = 0.0;
        for (size_t k = 0; k < w->count; k++) {
            sum += p[w->offset + k];
            sumsq += (double)p[w->offset + k] * p[w->offset + k];
        }
        double n = (double)w->count, mean = sum / n, std = sqrt(sumsq / n - mean * mean);
        double want = sqrt(2.0 / (double)w->shape[1]); /* fan_in */
        /* 200704 and 2560 samples: the sample std is within 0.2% and 1.4% (one sigma). */
        if (!(fabs(std - want) <= 0.1 * want))
            fail_msg("%s: std %g, expected sqrt(2/%zu) = %g", w->name, std, w->shape[1], want);
        assert_true(fabs(mean) <= 0.1 * want);
        for (size_t k = 0; k < bias->count; k++)
            assert_true(p[bias->offset + k] == 0.0f);
    }
    /* Tighter on the large layer, where sampling noise is small. */
    const ddp_param_view *w0 = ddp_model_view(m, 0);
    double sumsq = 0.0;
    for (size_t k = 0; k < w0->count; k++)
        sumsq += (double)p[k] * p[k];
    assert_true(fabs(sqrt(sumsq / (double)w0->count) / sqrt(2.0 / 784.0) - 1.0) < 0.02);
    ddp_model_free(m);
}

/* ---- argument checks
 * ----------------------------------------------------------------------------- */

static void test_create_rejects_bad_specs(void **state) {
    ddp_backend *b = *state;
    ddp_model *m = (ddp_model *)0x1;
    ddp_model_spec spec = small_spec(DDP_ACT_RELU);
    spec.hidden.v[1] = 0;
    assert_int_equal(ddp_model_create(b, &spec, BATCH, &m), DDP_ERR_INVALID_ARG);
    assert_null(m);
    assert_msg_has("hidden layer 1");

    spec = small_spec(DDP_ACT_RELU);
    spec.hidden.n = DDP_MAX_HIDDEN + 1;
    assert_int_equal(ddp_model_create(b, &spec, BATCH, &m), DDP_ERR_INVALID_ARG);
    spec = small_spec(DDP_ACT_RELU);
    spec.hidden.n = -1;
    assert_int_equal(ddp_model_create(b, &spec, BATCH, &m), DDP_ERR_INVALID_ARG);
    spec = small_spec(DDP_ACT_RELU);
    spec.input_dim = 0;
    assert_int_equal(ddp_model_create(b, &spec, BATCH, &m), DDP_ERR_INVALID_ARG);
    spec = small_spec(DDP_ACT_RELU);
    spec.num_classes = 1;
    assert_int_equal(ddp_model_create(b, &spec, BATCH, &m), DDP_ERR_INVALID_ARG);
    spec = small_spec(DDP_ACT_RELU);
    assert_int_equal(ddp_model_create(b, &spec, 0, &m), DDP_ERR_INVALID_ARG);
    assert_msg_has("max_batch");
}

static void test_forward_and_backward_reject_batches_outside_max_batch(void **state) {
    fixture f;
    fixture_init(&f, *state, DDP_ACT_RELU, 31);
    float x[(BATCH + 1) * IN] = {0};
    ddp_batch batch = {.n = BATCH + 1, .t = 1, .x = x};
    assert_int_equal(ddp_model_forward(f.m, &batch, DDP_MODE_EVAL, 0.0f, NULL),
                     DDP_ERR_INVALID_ARG);
    assert_msg_has("1..4");
    batch.n = 0;
    assert_int_equal(ddp_model_forward(f.m, &batch, DDP_MODE_EVAL, 0.0f, NULL),
                     DDP_ERR_INVALID_ARG);
    batch.n = 1;
    batch.t = 2; /* a per-sample model has one position */
    assert_int_equal(ddp_model_forward(f.m, &batch, DDP_MODE_EVAL, 0.0f, NULL),
                     DDP_ERR_INVALID_ARG);
    batch = (ddp_batch){.n = 1, .t = 1, .tokens = f.y}; /* features, not tokens */
    assert_int_equal(ddp_model_forward(f.m, &batch, DDP_MODE_EVAL, 0.0f, NULL),
                     DDP_ERR_INVALID_ARG);
    /* Backward needs a train-mode forward with targets just before. */
    batch = (ddp_batch){.n = BATCH, .t = 1, .x = f.x};
    assert_int_equal(ddp_model_forward(f.m, &batch, DDP_MODE_EVAL, 0.0f, NULL), DDP_OK);
    assert_int_equal(ddp_model_backward(f.m, 1, NULL, NULL), DDP_ERR_INVALID_ARG);
    fixture_free(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_matches_naive_reference),
        cmocka_unit_test(test_every_parameter_gradient_matches_finite_difference_gelu),
        cmocka_unit_test(test_every_parameter_gradient_matches_finite_difference_relu),
        cmocka_unit_test(test_last_bias_gradient_is_column_sum_of_dlogits),
        cmocka_unit_test(test_sliced_first_layer_reports_slices_last_rows_first),
        cmocka_unit_test(test_backward_adds_into_gradients),
        cmocka_unit_test(test_backward_first_writes_every_gradient_without_zeroing),
        cmocka_unit_test(test_zero_grads_clears_every_gradient),
        cmocka_unit_test(test_micro_batches_accumulate_to_full_batch_gradient),
        cmocka_unit_test(test_ready_is_called_once_per_tensor_last_first),
        cmocka_unit_test(test_ready_failure_stops_backward),
        cmocka_unit_test(test_views_are_named_and_tile_the_flat_buffer),
        cmocka_unit_test(test_model_without_hidden_layers_is_one_linear_layer),
        cmocka_unit_test(test_init_is_reproducible_from_the_seed),
        cmocka_unit_test(test_init_is_kaiming_normal_with_zero_biases),
        cmocka_unit_test(test_create_rejects_bad_specs),
        cmocka_unit_test(test_forward_and_backward_reject_batches_outside_max_batch),
    };
    return cmocka_run_group_tests(tests, cpu_backend_setup, cpu_backend_teardown);
}
