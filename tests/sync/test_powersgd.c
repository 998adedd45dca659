/*
 * PowerSGD (ddp/powersgd.h) under mpirun with 1, 2 and 3 ranks:
 *  - a gradient whose sum over ranks has rank <= R comes back at float level, with the
 *    vectors beside it summed exactly and (almost) nothing left in the error feedback;
 *  - error feedback carries what was dropped: over several steps of full-rank gradients,
 *    the results' sum plus the ranks' remaining errors equals the sum of every rank's
 *    gradients, while the errors themselves are far from zero (the test can fail);
 *  - the warm-up steps are the plain sum, bit for bit, with no error kept; once compression
 *    stops, the first uncompressed step sends what was left (nothing is lost);
 *  - in bf16 on the wire the low-rank sum comes back within bf16's rounding;
 *  - training: replicas bitwise equal under compression; --zero 1 takes the same bits as
 *    --zero 0 (both sum whole buckets); warm-up over the whole run trains the bits of
 *    no compression; a GPT compresses on every rank alike; --compress auto decides the
 *    same on every rank.
 *
 * Tolerances: a product of two factors of K terms each in fp32 carries a relative error of
 * a few K x 2^-24; the reconstructions here have K <= 64 terms and sums over <= 3 ranks,
 * so 1e-5 relative bounds them with a margin of ~10 (bf16: 2^-8 per value, so 2e-2).
 */
#include <math.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_util.h"

#include "ddp/powersgd.h"
#include "ddp/train.h"
#include "train/synthetic.h"
#include "train/trainer_impl.h"

static ddp_backend *backend;
static ddp_comm *world_comm;
static ddp_dataset train_set, test_set;
static ddp_text text;
static int rank, world;

static const char *const sites[2] = {"test P", "test Q"};

/* A bucket: a vector of 7, a 40 x 30 matrix, a vector of 5, a 16 x 12 matrix. */
#define N_BUCKET (7 + 40 * 30 + 5 + 16 * 12)
static const ddp_psgd_matrix bucket_mats[] = {{7, 40, 30}, {7 + 1200 + 5, 16, 12}};

static ddp_powersgd *make(int R, int64_t start, ddp_dtype wire) {
    ddp_powersgd_options o = {.rank = R, .start = start, .seed = 42, .wire = wire};
    ddp_powersgd *p = NULL;
    assert_int_equal(ddp_powersgd_create(&o, N_BUCKET, bucket_mats, 2, &p), DDP_OK);
    return p;
}

/* This rank's gradients of step `step`: the matrices (rank_of_sum > 0) (rank + 1) times a
 * fixed rank-`rank_of_sum` matrix, so that their sum over ranks has that rank; else
 * random on every rank and step (full rank). The vectors small integers (exact sums). */
static void fill(float *g, int step, int rank_of_sum) {
    ddp_rng rng;
    ddp_rng_seed(&rng, 7, (uint64_t)(rank * 1000 + step));
    for (size_t i = 0; i < N_BUCKET; i++)
        g[i] = (float)(int)(ddp_rng_below(&rng, 9)) - 4.0f;
    for (int k = 0; k < 2; k++) {
        const ddp_psgd_matrix *m = &bucket_mats[k];
        float *M = g + m->offset;
        if (rank_of_sum == 0) {
            for (size_t i = 0; i < m->rows * m->cols; i++)
                M[i] = ddp_rng_normal(&rng);
            continue;
        }
        ddp_rng fixed;
        ddp_rng_seed(&fixed, 99, (uint64_t)k);
        float A[64 * 4], B[64 * 4];
        for (size_t i = 0; i < m->rows * (size_t)rank_of_sum; i++)
            A[i] = ddp_rng_normal(&fixed);
        for (size_t i = 0; i < m->cols * (size_t)rank_of_sum; i++)
            B[i] = ddp_rng_normal(&fixed);
        for (size_t i = 0; i < m->rows; i++)
            for (size_t j = 0; j < m->cols; j++) {
                double s = 0.0;
                for (int r = 0; r < rank_of_sum; r++)
                    s += (double)A[i * rank_of_sum + r] * B[j * rank_of_sum + r];
                M[i * m->cols + j] = (float)((rank + 1) * s);
            }
    }
}

/* The plain sum of g over the ranks. */
static void plain_sum(const float *g, float *out) {
    memcpy(out, g, N_BUCKET * sizeof *out);
    assert_int_equal(ddp_comm_allreduce(world_comm, out, N_BUCKET, DDP_F32, DDP_SUM), DDP_OK);
}

static double norm_of(const float *x, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return sqrt(s);
}

/* The relative error of got against want over [lo, hi), and whether the rest is exact. */
static double matrices_error(const float *got, const float *want) {
    double num = 0.0, den = 0.0;
    for (int k = 0; k < 2; k++) {
        const ddp_psgd_matrix *m = &bucket_mats[k];
        for (size_t i = m->offset; i < m->offset + m->rows * m->cols; i++) {
            num += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
            den += (double)want[i] * want[i];
        }
    }
    return sqrt(num / den);
}

static void assert_vectors_exact(const float *got, const float *want) {
    size_t v[][2] = {{0, 7}, {1207, 1212}};
    for (int k = 0; k < 2; k++)
        for (size_t i = v[k][0]; i < v[k][1]; i++)
            if (got[i] != want[i])
                fail_msg("vector element %zu: %g, expected %g", i, got[i], want[i]);
}

static void low_rank_sum_is_reconstructed_at_float_level(void **state) {
    ddp_powersgd *p = make(4, 0, DDP_F32);
    ddp_powersgd_set_step(p, 0);
    assert_true(ddp_powersgd_compressing(p));
    float g[N_BUCKET], want[N_BUCKET];
    fill(g, 0, 3);
    plain_sum(g, want);
    assert_int_equal(ddp_powersgd_allreduce(p, world_comm, g, 0, N_BUCKET, sites), DDP_OK);
    double e = matrices_error(g, want);
    if (e > 1e-5) fail_msg("rank-3 sum reconstructed at relative error %g", e);
    assert_vectors_exact(g, want);
    /* What this rank's projection missed of its own rank-3 gradient: float level. */
    float own[N_BUCKET];
    fill(own, 0, 3);
    double left = norm_of(ddp_powersgd_errors(p), N_BUCKET) / norm_of(own, N_BUCKET);
    if (left > 1e-5) fail_msg("error feedback after a rank-3 gradient: %g of it", left);
    assert_same_on_all_ranks(world_comm, g, N_BUCKET);
    assert_true(ddp_powersgd_q_warm(p));
    ddp_powersgd_free(p);
}

static void error_feedback_carries_what_was_dropped(void **state) {
    ddp_powersgd *p = make(2, 0, DDP_F32);
    enum { STEPS = 6 };
    double sent[N_BUCKET] = {0}, truth[N_BUCKET] = {0};
    float g[N_BUCKET], sum[N_BUCKET];
    for (int s = 0; s < STEPS; s++) {
        ddp_powersgd_set_step(p, s);
        fill(g, s, 0);
        plain_sum(g, sum);
        for (size_t i = 0; i < N_BUCKET; i++)
            truth[i] += sum[i];
        assert_int_equal(ddp_powersgd_allreduce(p, world_comm, g, 0, N_BUCKET, sites), DDP_OK);
        assert_same_on_all_ranks(world_comm, g, N_BUCKET);
        for (size_t i = 0; i < N_BUCKET; i++)
            sent[i] += g[i];
    }
    /* The ranks' errors, summed. */
    float err[N_BUCKET];
    memcpy(err, ddp_powersgd_errors(p), sizeof err);
    assert_int_equal(ddp_comm_allreduce(world_comm, err, N_BUCKET, DDP_F32, DDP_SUM), DDP_OK);
    double num = 0.0, den = 0.0, dropped = 0.0;
    for (size_t i = 0; i < N_BUCKET; i++) {
        double d = sent[i] + err[i] - truth[i];
        num += d * d;
        den += truth[i] * truth[i];
        dropped += (double)err[i] * err[i];
    }
    double e = sqrt(num / den);
    if (e > 1e-5) fail_msg("sent + errors differ from the gradients' sum by %g (relative)", e);
    /* Rank 2 of random 40 x 30 and 16 x 12 matrices drops most of them. */
    if (sqrt(dropped / den) < 0.05)
        fail_msg("the errors hold only %g of the sum: nothing was compressed?",
                 sqrt(dropped / den));
    ddp_powersgd_free(p);
}

/* Compressed steps, then compression stopped (as --compress auto may decide): the first
 * uncompressed step sends what was left, so the results add up to the gradients' sum. */
static void stopping_sends_what_was_left(void **state) {
    ddp_powersgd *p = make(2, 0, DDP_F32);
    double sent[N_BUCKET] = {0}, truth[N_BUCKET] = {0};
    float g[N_BUCKET], sum[N_BUCKET];
    for (int s = 0; s < 5; s++) {
        if (s == 3) ddp_powersgd_set_start(p, INT64_MAX);
        ddp_powersgd_set_step(p, s);
        assert_int_equal(ddp_powersgd_compressing(p), s < 3);
        fill(g, s, 0);
        plain_sum(g, sum);
        for (size_t i = 0; i < N_BUCKET; i++)
            truth[i] += sum[i];
        assert_int_equal(ddp_powersgd_allreduce(p, world_comm, g, 0, N_BUCKET, sites), DDP_OK);
        for (size_t i = 0; i < N_BUCKET; i++)
            sent[i] += g[i];
    }
    assert_true(norm_of(ddp_powersgd_errors(p), N_BUCKET) == 0.0);
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < N_BUCKET; i++) {
        num += (sent[i] - truth[i]) * (sent[i] - truth[i]);
        den += truth[i] * truth[i];
    }
    if (sqrt(num / den) > 1e-5)
        fail_msg("after stopping, the results miss %g of the gradients' sum", sqrt(num / den));
    ddp_powersgd_free(p);
}

static void warm_up_steps_are_the_plain_sum(void **state) {
    ddp_powersgd *p = make(2, 2, DDP_F32);
    float g[N_BUCKET], want[N_BUCKET];
    for (int s = 0; s < 3; s++) {
        ddp_powersgd_set_step(p, s);
        fill(g, s, 0);
        plain_sum(g, want);
        assert_int_equal(ddp_powersgd_allreduce(p, world_comm, g, 0, N_BUCKET, sites), DDP_OK);
        int same = memcmp(g, want, sizeof g) == 0;
        if (s < 2) {
            assert_false(ddp_powersgd_compressing(p));
            if (!same) fail_msg("warm-up step %d is not the plain sum", s);
            assert_true(norm_of(ddp_powersgd_errors(p), N_BUCKET) == 0.0);
        } else {
            assert_true(ddp_powersgd_compressing(p));
            assert_false(same);
        }
    }
    ddp_powersgd_free(p);
}

static void bf16_wire_reconstructs_within_bf16_rounding(void **state) {
    ddp_powersgd *p = make(4, 0, DDP_BF16);
    ddp_powersgd_set_step(p, 0);
    float g[N_BUCKET], want[N_BUCKET];
    fill(g, 0, 3);
    plain_sum(g, want);
    assert_int_equal(ddp_powersgd_allreduce(p, world_comm, g, 0, N_BUCKET, sites), DDP_OK);
    double e = matrices_error(g, want);
    if (e > 2e-2 || e == 0.0) fail_msg("bf16 wire: relative error %g", e);
    assert_same_on_all_ranks(world_comm, g, N_BUCKET);
    ddp_powersgd_free(p);
}

static void reset_forgets_the_errors(void **state) {
    ddp_powersgd *p = make(2, 0, DDP_F32);
    ddp_powersgd_set_step(p, 0);
    float g[N_BUCKET];
    fill(g, 0, 0);
    assert_int_equal(ddp_powersgd_allreduce(p, world_comm, g, 0, N_BUCKET, sites), DDP_OK);
    assert_true(norm_of(ddp_powersgd_errors(p), N_BUCKET) > 0.0);
    ddp_powersgd_reset(p);
    assert_true(norm_of(ddp_powersgd_errors(p), N_BUCKET) == 0.0);
    assert_false(ddp_powersgd_q_warm(p));
    ddp_powersgd_free(p);
}

static void bad_settings_are_refused(void **state) {
    ddp_powersgd *p = NULL;
    ddp_powersgd_options o = {.rank = 0, .seed = 1, .wire = DDP_F32};
    assert_int_equal(ddp_powersgd_create(&o, N_BUCKET, bucket_mats, 2, &p), DDP_ERR_INVALID_ARG);
    assert_msg_has("--compress-rank 0");
    o.rank = 2;
    ddp_psgd_matrix outside = {N_BUCKET - 10, 4, 4};
    assert_int_equal(ddp_powersgd_create(&o, N_BUCKET, &outside, 1, &p), DDP_ERR_INVALID_ARG);
    assert_null(p);
}

/* ---- training ------------------------------------------------------------------------ */

static ddp_train_config compressed_mlp(void) {
    ddp_train_config c = small_mlp_config(12, 4);
    c.model.hidden.v[0] = 48;
    c.model.hidden.v[1] = 32;
    c.global_batch = 48;
    c.accum = 2;
    c.reducer.compress = DDP_COMPRESS_POWERSGD;
    c.reducer.compress_rank = 2;
    c.check_sync = 4;
    return c;
}

static void training_compresses_alike_under_zero_0_and_1(void **state) {
    ddp_train_config c = compressed_mlp();
    size_t n;
    float *p0 = train_params(c, backend, world_comm, world_comm, &train_set, &test_set, &n);
    c.zero = 1;
    float *p1 = train_params(c, backend, world_comm, world_comm, &train_set, &test_set, &n);
    assert_same_on_all_ranks(world_comm, p0, n);
    if (memcmp(p0, p1, n * sizeof *p0) != 0)
        fail_msg("--zero 1 under compression differs from --zero 0 (relative %g)",
                 rel_error(p1, p0, n));
    /* And compression changed the result (it is not the uncompressed run). */
    c.zero = 0;
    c.reducer.compress = DDP_COMPRESS_NONE;
    float *plain = train_params(c, backend, world_comm, world_comm, &train_set, &test_set, &n);
    assert_true(memcmp(p0, plain, n * sizeof *p0) != 0);
    free(p0);
    free(p1);
    free(plain);
}

static void warm_up_over_the_whole_run_trains_the_uncompressed_bits(void **state) {
    ddp_train_config c = compressed_mlp();
    c.reducer.compress_start = 1000;
    size_t n;
    float *warm = train_params(c, backend, world_comm, world_comm, &train_set, &test_set, &n);
    c.reducer.compress = DDP_COMPRESS_NONE;
    float *plain = train_params(c, backend, world_comm, world_comm, &train_set, &test_set, &n);
    if (memcmp(warm, plain, n * sizeof *warm) != 0)
        fail_msg("warm-up differs from no compression (relative %g)", rel_error(warm, plain, n));
    free(warm);
    free(plain);
}

static void gpt_compresses_alike_on_every_rank(void **state) {
    ddp_train_config c = tiny_gpt_config(6, 3);
    c.global_batch = 12;
    c.reducer.compress = DDP_COMPRESS_POWERSGD;
    c.reducer.compress_rank = 1;
    c.reducer.grad_dtype = DDP_BF16;
    c.zero = 1;
    size_t n;
    train_extra x = {.text = &text};
    float *p = train_params_ex(c, backend, world_comm, world_comm, NULL, NULL, &x, &n);
    for (size_t i = 0; i < n; i++)
        assert_true(isfinite(p[i]));
    assert_same_on_all_ranks(world_comm, p, n);
    free(p);
}

/* --compress auto: measures, tries compressed steps, decides; every rank the same way
 * (whatever it decides here: the timings are this machine's), the replicas equal. */
static void auto_decides_alike_on_every_rank(void **state) {
    ddp_train_config c = compressed_mlp();
    c.reducer.compress = DDP_COMPRESS_AUTO;
    c.max_steps = 14;
    ddp_trainer *t = NULL;
    assert_int_equal(ddp_trainer_create(&c, backend, world_comm, world_comm,
                                        SAMPLES_DATA(&train_set, &test_set), &t),
                     DDP_OK);
    if (ddp_trainer_run(t, NULL) != DDP_OK) fail_msg("run: %s", ddp_error_trace_str());
    assert_true(t->autoc.decided);
    int32_t verdict[2] = {t->autoc.compressing, -t->autoc.compressing};
    assert_int_equal(ddp_comm_allreduce(world_comm, verdict, 2, DDP_I32, DDP_MAX), DDP_OK);
    assert_int_equal(verdict[0], -verdict[1]); /* the same verdict on every rank */
    size_t n = t->num_params;
    float *p = malloc(n * sizeof *p);
    assert_int_equal(ddp_trainer_get_params(t, p), DDP_OK);
    assert_same_on_all_ranks(world_comm, p, n);
    free(p);
    ddp_trainer_free(t);
}

static void stage_2_is_refused_with_a_reason(void **state) {
    ddp_train_config c = compressed_mlp();
    c.zero = 2;
    ddp_trainer *t = NULL;
    ddp_status s = ddp_trainer_create(&c, backend, world_comm, world_comm,
                                      SAMPLES_DATA(&train_set, &test_set), &t);
    assert_int_not_equal(s, DDP_OK);
    assert_null(t);
    assert_msg_has("--zero 0 or 1");
}

int main(int argc, char **argv) {
    mpi_test_init(&argc, &argv, &backend, &world_comm, &rank, &world);
    synthetic_dataset(&train_set, 960, 20, 4, 7);
    synthetic_dataset(&test_set, 333, 20, 4, 8);
    synthetic_text(&text, 6000, 9);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(low_rank_sum_is_reconstructed_at_float_level),
        cmocka_unit_test(error_feedback_carries_what_was_dropped),
        cmocka_unit_test(stopping_sends_what_was_left),
        cmocka_unit_test(warm_up_steps_are_the_plain_sum),
        cmocka_unit_test(bf16_wire_reconstructs_within_bf16_rounding),
        cmocka_unit_test(reset_forgets_the_errors),
        cmocka_unit_test(bad_settings_are_refused),
        cmocka_unit_test(training_compresses_alike_under_zero_0_and_1),
        cmocka_unit_test(warm_up_over_the_whole_run_trains_the_uncompressed_bits),
        cmocka_unit_test(gpt_compresses_alike_on_every_rank),
        cmocka_unit_test(auto_decides_alike_on_every_rank),
        cmocka_unit_test(stage_2_is_refused_with_a_reason),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    ddp_dataset_free(&train_set);
    ddp_dataset_free(&test_set);
    ddp_text_free(&text);
    return mpi_test_finish(failed, backend, world_comm);
}
