/*
 * The GPT model, end to end on the CPU: every parameter gradient of a tiny GPT (2 blocks,
 * width 8, 2 heads, context 5, vocabulary 11) against central finite differences of the
 * mean loss, also for sequences shorter than the context, with LayerNorm and RMSNorm; the tied
 * embedding's gradient holding both contributions and reported once, after the last; every tensor
 * reported exactly once per backward pass with its gradient final; accumulation; the layout, names,
 * shapes and weight-decay flags of the tensors; the initialization; the causal mask (a later token
 * never changes an earlier prediction); argument checks.
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

enum { L = 2, C = 8, NH = 2, T = 5, V = 11, B = 3 };

typedef struct {
    ddp_backend *b;
    ddp_model *m;
    int32_t tok[B * T], tgt[B * T];
    int32_t btok[B * T], btgt[B * T]; /* the batch of the last forward (read by backward) */
    size_t np;
} fixture;

static ddp_model_spec tiny_spec(void) {
    ddp_model_spec s;
    ddp_model_spec_defaults(&s, DDP_MODEL_GPT);
    s.layers = L;
    s.dim = C;
    s.heads = NH;
    s.ctx = T;
    s.num_classes = V;
    return s;
}

/* A tiny GPT with its GPT-2 initialization and the given norm, plus noise on the biases
 * and norm parameters (so that their gradients flow through non-trivial values), and a
 * batch. */
static void fixture_init_norm(fixture *f, ddp_backend *b, uint64_t seed, ddp_norm norm) {
    memset(f, 0, sizeof *f);
    f->b = b;
    ddp_model_spec spec = tiny_spec();
    spec.norm = norm;
    assert_int_equal(ddp_model_create(b, &spec, B, &f->m), DDP_OK);
    assert_int_equal(ddp_model_init_params(f->m, seed), DDP_OK);
    f->np = ddp_model_num_params(f->m);
    ddp_rng rng;
    ddp_rng_seed(&rng, seed, 1000);
    float *p = ddp_model_params(f->m);
    for (size_t i = 0; i < f->np; i++)
        p[i] += 0.1f * ddp_rng_normal(&rng);
    for (int i = 0; i < B * T; i++) {
        f->tok[i] = (int32_t)ddp_rng_below(&rng, V);
        f->tgt[i] = (int32_t)ddp_rng_below(&rng, V);
    }
}

static void fixture_init(fixture *f, ddp_backend *b, uint64_t seed) {
    fixture_init_norm(f, b, seed, DDP_NORM_LAYERNORM);
}

/* Train-mode forward over the first n sequences of length t; the mean loss over the
 * n * t predictions, with its gradient kept for backward. */
static double forward_loss(fixture *f, size_t n, size_t t) {
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < t; j++) {
            f->btok[i * t + j] = f->tok[i * T + j];
            f->btgt[i * t + j] = f->tgt[i * T + j];
        }
    ddp_batch batch = {.n = n, .t = t, .tokens = f->btok, .targets = f->btgt};
    float stats[2] = {0, 0};
    assert_int_equal(ddp_model_forward(f->m, &batch, DDP_MODE_TRAIN, 1.0f / (float)(n * t), stats),
                     DDP_OK);
    return (double)stats[0] / (double)(n * t);
}

static void check_gradients(size_t t, uint64_t seed, ddp_backend *b, ddp_norm kind) {
    fixture f;
    fixture_init_norm(&f, b, seed, kind);
    forward_loss(&f, B, t);
    assert_int_equal(ddp_model_backward(f.m, 1, NULL, NULL), DDP_OK);
    float *grad = malloc(f.np * sizeof *grad);
    assert_non_null(grad);
    memcpy(grad, ddp_model_grads(f.m), f.np * sizeof *grad);
    float *p = ddp_model_params(f.m);
    /* RMSNorm does not remove the mean, so a step moves the small rows it normalizes
     * (root mean square ~0.15 here) by more of their size: the truncation error of the
     * step that suits LayerNorm is 1.5e-3 there, 1.3e-4 at a quarter of it (measured). */
    const float h = kind == DDP_NORM_RMSNORM ? 2.5e-3f : 1e-2f;
    double worst = 0.0, norm = 0.0;
    for (size_t i = 0; i < f.np; i++) {
        const float saved = p[i], up = saved + h, down = saved - h;
        p[i] = up;
        double lp = forward_loss(&f, B, t);
        p[i] = down;
        double lm = forward_loss(&f, B, t);
        p[i] = saved;
        double fd = (lp - lm) / ((double)up - (double)down);
        /* The loss is a float sum of 15 terms near 2.4 (rounding ~3e-7 absolute, over a
         * step of 2e-2: ~2e-5 of noise), and the truncation error of a central difference
         * is h^2/6 times the third derivative (~1e-5 here). A wrong transpose, a missing
         * residual or a lost tied contribution is off by 1e-2 or more. */
        double err = fabs((double)grad[i] - fd);
        if (!(err <= 2e-4 + 1e-2 * fabs(fd))) {
            const char *name = "?";
            for (int v = 0; v < ddp_model_num_views(f.m); v++) {
                const ddp_param_view *pv = ddp_model_view(f.m, v);
                if (i >= pv->offset && i < pv->offset + pv->count) name = pv->name;
            }
            fail_msg("%s, t=%zu: d loss / d param %zu (%s) = %.6g, finite difference %.6g",
                     ddp_norm_names[kind], t, i, name, grad[i], fd);
        }
        if (err > worst) worst = err;
        norm += (double)grad[i] * grad[i];
    }
    assert_true(sqrt(norm) > 0.1); /* not vacuous */
    print_message("%s, t=%zu: %zu parameters, largest gradient error %.2g\n", ddp_norm_names[kind],
                  t, f.np, worst);
    free(grad);
    ddp_model_free(f.m);
}

static void test_every_gradient_matches_finite_difference(void **state) {
    check_gradients(T, 1, *state, DDP_NORM_LAYERNORM);
}

static void test_every_gradient_matches_finite_difference_shorter_sequences(void **state) {
    /* Positions beyond t get no gradient: their position embeddings must come out 0. */
    check_gradients(3, 2, *state, DDP_NORM_LAYERNORM);
}

/* --norm rmsnorm: the blocks' and the final norm are RMSNorm. */
static void test_rmsnorm_gradients_match_finite_difference(void **state) {
    check_gradients(T, 3, *state, DDP_NORM_RMSNORM);
    check_gradients(3, 4, *state, DDP_NORM_RMSNORM);
}

/* RMSNorm has a weight and no bias, and its description names it; LayerNorm's, the
 * default, is written as before --norm existed. */
static void test_rmsnorm_tensors_and_description(void **state) {
    fixture f;
    fixture_init_norm(&f, *state, 7, DDP_NORM_RMSNORM);
    assert_string_equal(ddp_model_describe(f.m), "gpt L2 C8 H2 T5 V11 rmsnorm");
    /* wte, wpe, 10 per block, ln_f weight. */
    assert_int_equal(ddp_model_num_views(f.m), 2 + 10 * L + 1);
    assert_string_equal(ddp_model_view(f.m, 2)->name, "transformer.h.0.ln_1.weight");
    assert_string_equal(ddp_model_view(f.m, 3)->name, "transformer.h.0.attn.c_attn.weight");
    assert_string_equal(ddp_model_view(f.m, 2 + 10 * L)->name, "transformer.ln_f.weight");
    const size_t want_params = V * C + T * C + L * (12 * C * C + 11 * C) + C;
    assert_int_equal(ddp_model_num_params(f.m), want_params);
    ddp_model_spec back;
    OK(ddp_model_spec_parse(ddp_model_describe(f.m), &back));
    assert_int_equal(back.norm, DDP_NORM_RMSNORM);
    assert_int_equal(back.layers, L);
    OK(ddp_model_spec_parse("gpt L2 C8 H2 T5 V11", &back));
    assert_int_equal(back.norm, DDP_NORM_LAYERNORM);
    assert_int_equal(ddp_model_spec_parse("gpt L2 C8 H2 T5 V11 layernorm", &back), DDP_ERR_FORMAT);
    assert_int_equal(ddp_model_spec_parse("gpt L2 C8 H2 T5 V11 rms", &back), DDP_ERR_FORMAT);
    ddp_model_free(f.m);
}

/* ---- ready reports -------------------------------------------------------------------- */

static void test_every_tensor_is_reported_once_and_final(void **state) {
    fixture f;
    fixture_init(&f, *state, 3);
    for (int first = 1; first >= 0; first--) {
        forward_loss(&f, B, T);
        ready_log r = {.np = f.np, .grads = ddp_model_grads(f.m)};
        r.snapshot = calloc(f.np, sizeof(float));
        r.seen = calloc(f.np, 1);
        assert_int_equal(ddp_model_backward(f.m, first, ready_log_record, &r), DDP_OK);
        assert_int_equal(r.calls, ddp_model_num_views(f.m));
        for (size_t i = 0; i < f.np; i++)
            assert_int_equal(r.seen[i], 1);
        /* Whatever a reducer sends at a report is the final gradient. */
        assert_memory_equal(r.snapshot, ddp_model_grads(f.m), f.np * sizeof(float));
        /* The tied token embedding sits first in the buffer and gets gradient from the
         * output projection (first in backward) and the embedding (last): it is the
         * very last report. */
        const ddp_param_view *wte = ddp_model_view(f.m, 0);
        assert_string_equal(wte->name, "transformer.wte.weight");
        assert_int_equal(r.offset[r.calls - 1], wte->offset);
        assert_int_equal(r.count[r.calls - 1], wte->count);
        free(r.snapshot);
        free(r.seen);
    }
    ddp_model_free(f.m);
}

static void test_tied_embedding_gradient_holds_both_contributions(void **state) {
    /* With targets that never occur as inputs, the embedding's own contribution goes to
     * the rows of the input tokens and the output projection's to every row: rows of
     * tokens that are never input get the projection's part only, and those of input
     * tokens the sum. Checked against finite differences on both kinds of rows. */
    fixture f;
    fixture_init(&f, *state, 4);
    for (int i = 0; i < B * T; i++)
        f.tok[i] = i % 3; /* inputs 0, 1, 2 only */
    forward_loss(&f, B, T);
    assert_int_equal(ddp_model_backward(f.m, 1, NULL, NULL), DDP_OK);
    const ddp_param_view *wte = ddp_model_view(f.m, 0);
    float *p = ddp_model_params(f.m);
    const float *g = ddp_model_grads(f.m);
    const int rows[2] = {1, 7}; /* an input token, and one never input */
    for (int k = 0; k < 2; k++)
        for (int c = 0; c < C; c++) {
            size_t i = wte->offset + (size_t)rows[k] * C + (size_t)c;
            float gi = g[i], saved = p[i];
            p[i] = saved + 1e-2f;
            double lp = forward_loss(&f, B, T);
            p[i] = saved - 1e-2f;
            double lm = forward_loss(&f, B, T);
            p[i] = saved;
            double fd = (lp - lm) / 2e-2;
            assert_near(gi, fd, 2e-4 + 1e-2 * fabs(fd));
        }
    ddp_model_free(f.m);
}

static void test_second_micro_batch_adds(void **state) {
    fixture f;
    fixture_init(&f, *state, 5);
    forward_loss(&f, B, T);
    assert_int_equal(ddp_model_backward(f.m, 1, NULL, NULL), DDP_OK);
    float *once = malloc(f.np * sizeof *once);
    memcpy(once, ddp_model_grads(f.m), f.np * sizeof *once);
    /* Poisoned buffer: a first pass writes every element (none read). */
    float *g = ddp_model_grads(f.m);
    for (size_t i = 0; i < f.np; i++)
        g[i] = NAN;
    forward_loss(&f, B, T);
    assert_int_equal(ddp_model_backward(f.m, 1, NULL, NULL), DDP_OK);
    for (size_t i = 0; i < f.np; i++)
        assert_true(g[i] == once[i]);
    forward_loss(&f, B, T);
    assert_int_equal(ddp_model_backward(f.m, 0, NULL, NULL), DDP_OK);
    for (size_t i = 0; i < f.np; i++)
        assert_near(g[i], 2.0 * once[i], 1e-6 * (1.0 + fabs(once[i])));
    free(once);
    ddp_model_free(f.m);
}

/* ---- forward ---------------------------------------------------------------------------- */

static void test_causal_a_later_token_never_changes_an_earlier_prediction(void **state) {
    fixture f;
    fixture_init(&f, *state, 6);
    ddp_batch batch = {.n = 1, .t = T, .tokens = f.tok};
    assert_int_equal(ddp_model_forward(f.m, &batch, DDP_MODE_EVAL, 0.0f, NULL), DDP_OK);
    float before[T * V];
    memcpy(before, ddp_model_logits(f.m), sizeof before);
    f.tok[T - 1] = (f.tok[T - 1] + 1) % V;
    assert_int_equal(ddp_model_forward(f.m, &batch, DDP_MODE_EVAL, 0.0f, NULL), DDP_OK);
    const float *after = ddp_model_logits(f.m);
    assert_memory_equal(after, before, (T - 1) * V * sizeof(float));
    int changed = 0;
    for (int v = 0; v < V; v++)
        changed += after[(T - 1) * V + v] != before[(T - 1) * V + v];
    assert_true(changed > 0);
    /* A prefix alone gives the same predictions as inside the full sequence. */
    batch.t = 2;
    assert_int_equal(ddp_model_forward(f.m, &batch, DDP_MODE_EVAL, 0.0f, NULL), DDP_OK);
    for (int i = 0; i < 2 * V; i++)
        assert_near(ddp_model_logits(f.m)[i], before[i], 1e-5 * (1.0 + fabs(before[i])));
    ddp_model_free(f.m);
}

/* ---- layout, initialization, checks ---------------------------------------------------- */

static void test_tensors_are_named_shaped_and_flagged_for_decay(void **state) {
    fixture f;
    fixture_init(&f, *state, 7);
    assert_string_equal(ddp_model_describe(f.m), "gpt L2 C8 H2 T5 V11");
    assert_int_equal(ddp_model_num_classes(f.m), V);
    assert_int_equal(ddp_model_max_positions(f.m), T);
    /* wte, wpe, 12 per block, ln_f weight and bias; no separate output projection. */
    assert_int_equal(ddp_model_num_views(f.m), 2 + 12 * L + 2);
    size_t next = 0;
    for (int i = 0; i < ddp_model_num_views(f.m); i++) {
        const ddp_param_view *v = ddp_model_view(f.m, i);
        assert_int_equal(v->offset, next);
        next += v->count;
        /* Matrices and the token embedding decay; biases, norms, positions do not. */
        int matrix = v->ndim == 2 && strstr(v->name, "wpe") == NULL;
        assert_int_equal(v->decay, matrix);
    }
    assert_int_equal(next, ddp_model_num_params(f.m));
    const size_t want_params = V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C;
    assert_int_equal(ddp_model_num_params(f.m), want_params);
    const ddp_param_view *qkv = ddp_model_view(f.m, 4);
    assert_string_equal(qkv->name, "transformer.h.0.attn.c_attn.weight");
    assert_int_equal(qkv->shape[0], 3 * C); /* (out, in) */
    assert_int_equal(qkv->shape[1], C);
    assert_string_equal(ddp_model_view(f.m, 2 + 12 * L + 1)->name, "transformer.ln_f.bias");
    /* The description reads back. */
    ddp_model_spec back;
    assert_int_equal(ddp_model_spec_parse(ddp_model_describe(f.m), &back), DDP_OK);
    assert_int_equal(back.kind, DDP_MODEL_GPT);
    assert_int_equal(back.layers, L);
    assert_int_equal(back.dim, C);
    assert_int_equal(back.heads, NH);
    assert_int_equal(back.ctx, T);
    assert_int_equal(back.num_classes, V);
    ddp_model_free(f.m);
}

static void test_init_follows_gpt2(void **state) {
    ddp_model_spec spec = tiny_spec();
    spec.dim = 64;
    spec.heads = 4;
    spec.layers = 4;
    ddp_model *m = NULL;
    assert_int_equal(ddp_model_create(*state, &spec, 1, &m), DDP_OK);
    assert_int_equal(ddp_model_init_params(m, 9), DDP_OK);
    const float *p = ddp_model_params(m);
    for (int i = 0; i < ddp_model_num_views(m); i++) {
        const ddp_param_view *v = ddp_model_view(m, i);
        double sum = 0.0, sumsq = 0.0;
        for (size_t k = 0; k < v->count; k++) {
            sum += p[v->offset + k];
            sumsq += (double)p[v->offset + k] * p[v->offset + k];
        }
        double mean = sum / (double)v->count, rms = sqrt(sumsq / (double)v->count);
        if (strstr(v->name, "ln_") && strstr(v->name, ".weight")) {
            assert_true(mean == 1.0 && rms == 1.0);
        } else if (v->ndim == 1) {
            assert_true(rms == 0.0);
        } else {
            /* 0.02, and 0.02 / sqrt(2 L) for the projections into the residual stream.
             * At least 704 samples: the sample rms is within ~8% at 3 sigma. */
            double want = strstr(v->name, "c_proj") ? 0.02 / sqrt(8.0) : 0.02;
            if (!(fabs(rms - want) < 0.1 * want))
                fail_msg("%s: rms %g, expected %g", v->name, rms, want);
        }
    }
    ddp_model_free(m);
}

static void test_bad_specs_and_batches_are_refused(void **state) {
    ddp_model *m = (ddp_model *)0x1;
    ddp_model_spec spec = tiny_spec();
    spec.heads = 3; /* does not divide 8 */
    assert_int_equal(ddp_model_create(*state, &spec, 1, &m), DDP_ERR_INVALID_ARG);
    assert_null(m);
    assert_msg_has("heads");
    spec = tiny_spec();
    spec.layers = 0;
    assert_int_equal(ddp_model_create(*state, &spec, 1, &m), DDP_ERR_INVALID_ARG);
    spec = tiny_spec();
    spec.num_classes = 1;
    assert_int_equal(ddp_model_create(*state, &spec, 1, &m), DDP_ERR_INVALID_ARG);

    fixture f;
    fixture_init(&f, *state, 8);
    ddp_batch batch = {.n = 1, .t = T + 1, .tokens = f.tok};
    assert_int_equal(ddp_model_forward(f.m, &batch, DDP_MODE_EVAL, 0.0f, NULL),
                     DDP_ERR_INVALID_ARG);
    assert_msg_has("positions");
    float x[C] = {0};
    batch = (ddp_batch){.n = 1, .t = 1, .x = x}; /* features, not tokens */
    assert_int_equal(ddp_model_forward(f.m, &batch, DDP_MODE_EVAL, 0.0f, NULL),
                     DDP_ERR_INVALID_ARG);
    assert_msg_has("tokens");
    ddp_error_clear();
    ddp_model_free(f.m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_gradient_matches_finite_difference),
        cmocka_unit_test(test_every_gradient_matches_finite_difference_shorter_sequences),
        cmocka_unit_test(test_rmsnorm_gradients_match_finite_difference),
        cmocka_unit_test(test_rmsnorm_tensors_and_description),
        cmocka_unit_test(test_every_tensor_is_reported_once_and_final),
        cmocka_unit_test(test_tied_embedding_gradient_holds_both_contributions),
        cmocka_unit_test(test_second_micro_batch_adds),
        cmocka_unit_test(test_causal_a_later_token_never_changes_an_earlier_prediction),
        cmocka_unit_test(test_tensors_are_named_shaped_and_flagged_for_decay),
        cmocka_unit_test(test_init_follows_gpt2),
        cmocka_unit_test(test_bad_specs_and_batches_are_refused),
    };
    return cmocka_run_group_tests(tests, cpu_backend_setup, cpu_backend_teardown);
}
