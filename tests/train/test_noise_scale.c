/*
 * The gradient noise scale (src/train/noise_scale.c), under mpirun with 1, 2 and 4 ranks:
 *  - the estimator recovers |G|^2 and tr(Sigma) of synthetic per-sample gradients with a
 *    known mean and covariance, to within its own standard error;
 *  - the moving averages are linear, so each rank averaging its own estimates and the
 *    mean taken afterwards (what the trainer does) equals averaging the mean estimates;
 *  - the trainer measures the norms it says: the micro-batch's gradient before the
 *    all-reduce and the averaged one after, with the batch sizes b = B / (accum x ranks)
 *    and B, and nothing on one rank without accumulation;
 *  - one rank with K micro-batches and K ranks agree: both estimate from b = B / K and B;
 *    the one rank's micro-batch 0 is the K-rank run's rank 0 shard (the same samples), so
 *    its squared norm equals rank 0's, and both see the same averaged gradient;
 *  - the ranges measured as backward hands them to the reducer (overlap) add up to what
 *    one pass over the buffer measures (no overlap);
 *  - on logged steps every rank holds the same B_simple;
 *  - --gns-every N measures on every N-th step only.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_util.h"

#include "ddp/train.h"
#include "synthetic.h"
#include "train/noise_scale.h"
#include "train/trainer_impl.h" /* the progress line's noise-scale part */

#define STEPS 3

static ddp_backend *backend;
static ddp_comm *world_comm, *local_comm;
static ddp_dataset train_set, test_set;
static int rank, world;

/* ---- the estimator on synthetic gradients ------------------------------------------- */

/* Per-sample gradients g = G + diag(sigma) z, z standard normal, in D dimensions: the
 * truth is |G|^2 = sum G_j^2 and tr(Sigma) = sum sigma_j^2. Each of M steps draws a batch
 * of B, takes the mean of its first b samples (the small batch) and of all B, and
 * estimates; the mean of the M estimates must lie within 5 standard errors of the truth
 * (a deterministic draw, so the test cannot flake; a wrong formula, e.g. the batch sizes
 * swapped or the squares not rescaled, misses by many standard errors). */
static void estimator_recovers_a_known_covariance(void **state) {
    enum { D = 40, B = 32, b = 4, M = 4000 };
    double G[D], sigma[D], g2_true = 0.0, tr_true = 0.0;
    ddp_rng rng;
    ddp_rng_seed(&rng, 11, 0);
    for (int j = 0; j < D; j++) {
        G[j] = 0.05 * (double)ddp_rng_normal(&rng);
        sigma[j] = 0.2 + 0.1 * (double)(j % 5);
        g2_true += G[j] * G[j];
        tr_true += sigma[j] * sigma[j];
    }
    double sum_g2 = 0.0, sum_tr = 0.0, sq_g2 = 0.0, sq_tr = 0.0;
    ddp_gns_ema ema;
    ddp_gns_ema_init(&ema, 0.999);
    for (int m = 0; m < M; m++) {
        double small[D] = {0}, big[D] = {0};
        for (int i = 0; i < B; i++)
            for (int j = 0; j < D; j++) {
                double g = G[j] + sigma[j] * (double)ddp_rng_normal(&rng);
                big[j] += g / B;
                if (i < b) small[j] += g / b;
            }
        double small_sq = 0.0, big_sq = 0.0;
        for (int j = 0; j < D; j++) {
            small_sq += small[j] * small[j];
            big_sq += big[j] * big[j];
        }
        double g2, tr;
        ddp_gns_estimate(b, small_sq, B, big_sq, &g2, &tr);
        sum_g2 += g2;
        sum_tr += tr;
        sq_g2 += g2 * g2;
        sq_tr += tr * tr;
        ddp_gns_ema_add(&ema, g2, tr);
    }
    double mean_g2 = sum_g2 / M, mean_tr = sum_tr / M;
    double se_g2 = sqrt((sq_g2 / M - mean_g2 * mean_g2) / M);
    double se_tr = sqrt((sq_tr / M - mean_tr * mean_tr) / M);
    print_message("|G|^2 %.4f +- %.4f (true %.4f), tr(Sigma) %.4f +- %.4f (true %.4f), "
                  "B_simple true %.1f\n",
                  mean_g2, se_g2, g2_true, mean_tr, se_tr, tr_true, tr_true / g2_true);
    assert_true(fabs(mean_g2 - g2_true) < 5.0 * se_g2);
    assert_true(fabs(mean_tr - tr_true) < 5.0 * se_tr);
    /* The test can tell: its standard errors are small against the truths. */
    assert_true(se_g2 < 0.1 * g2_true && se_tr < 0.02 * tr_true);
    /* The moving average lands near the truth too: its spread is the estimates' times
     * sqrt((1 - beta) / (1 + beta)), about sqrt(M / 2000) standard errors of the mean. */
    double g2, tr;
    ddp_gns_ema_read(&ema, &g2, &tr);
    assert_true(fabs(g2 - g2_true) < 5.0 * se_g2 * sqrt(M / 2000.0));
    assert_true(fabs(tr - tr_true) < 5.0 * se_tr * sqrt(M / 2000.0));
    assert_true(fabs(ddp_gns_b_simple(&ema) - tr / g2) <= 1e-12 * fabs(tr / g2));
}

/* Bias correction: a constant fed in comes out unchanged from the first step; nothing in,
 * no value (NaN), and no positive |G|^2, no value. */
static void moving_average_is_debiased(void **state) {
    ddp_gns_ema e;
    ddp_gns_ema_init(&e, 0.99);
    assert_true(isnan(ddp_gns_b_simple(&e)));
    for (int i = 1; i <= 50; i++) {
        ddp_gns_ema_add(&e, 2.0, 300.0);
        double g2, tr;
        ddp_gns_ema_read(&e, &g2, &tr);
        assert_true(fabs(g2 - 2.0) < 1e-12 && fabs(tr - 300.0) < 1e-10);
        assert_true(fabs(ddp_gns_b_simple(&e) - 150.0) < 1e-10);
    }
    ddp_gns_ema_init(&e, 0.99);
    ddp_gns_ema_add(&e, -1.0, 5.0);
    assert_true(isnan(ddp_gns_b_simple(&e)));
}

/* The trainer keeps each rank's averages of its own estimates and averages them over the
 * ranks when it reads them: exact because the estimates and the averages are linear in
 * the small-batch norm (all ranks share b, B and the large-batch norm). */
static void rank_averages_average_exactly(void **state) {
    enum { R = 4, M = 200 };
    ddp_gns_ema per_rank[R], of_mean;
    for (int r = 0; r < R; r++)
        ddp_gns_ema_init(&per_rank[r], 0.95);
    ddp_gns_ema_init(&of_mean, 0.95);
    ddp_rng rng;
    ddp_rng_seed(&rng, 3, 0);
    for (int m = 0; m < M; m++) {
        double big = 1.0 + 0.1 * (double)ddp_rng_normal(&rng), mean_small = 0.0;
        for (int r = 0; r < R; r++) {
            double small = big + 2.0 + (double)ddp_rng_normal(&rng), g2, tr;
            mean_small += small / R;
            ddp_gns_estimate(8, small, 32, big, &g2, &tr);
            ddp_gns_ema_add(&per_rank[r], g2, tr);
        }
        double g2, tr;
        ddp_gns_estimate(8, mean_small, 32, big, &g2, &tr);
        ddp_gns_ema_add(&of_mean, g2, tr);
    }
    double g2 = 0.0, tr = 0.0;
    for (int r = 0; r < R; r++) {
        g2 += per_rank[r].g2 / R;
        tr += per_rank[r].tr / R;
    }
    assert_true(fabs(g2 - of_mean.g2) <= 1e-12 * fabs(of_mean.g2) + 1e-15);
    assert_true(fabs(tr - of_mean.tr) <= 1e-12 * fabs(of_mean.tr));
}

/* ---- the trainer's measurements ------------------------------------------------------ */

static ddp_train_config base_config(void) {
    ddp_train_config c = small_mlp_config(STEPS, 1);
    c.sched.warmup_steps = 0;
    return c;
}

/* Runs STEPS steps of cfg over comm and keeps each step's stats. */
static void run_steps(ddp_train_config cfg, ddp_comm *comm, ddp_step_stats st[STEPS]) {
    ddp_trainer *t = NULL;
    if (ddp_trainer_create(&cfg, backend, comm, comm, SAMPLES_DATA(&train_set, &test_set), &t) !=
        DDP_OK)
        fail_msg("trainer_create: %s", ddp_error_trace_str());
    for (int i = 0; i < STEPS; i++)
        if (ddp_trainer_step(t, &st[i]) != DDP_OK) fail_msg("step: %s", ddp_error_trace_str());
    ddp_trainer_free(t);
}

static double rel(double a, double b) { return fabs(a - b) / fabs(b); }

/* Tolerance of the comparisons between runs that sum the same gradients in another order
 * (K micro-batches accumulated in the buffer, or K ranks' shards all-reduced): each sum
 * differs by about K float roundings (K x 6e-8) per element, and the parameters of later
 * steps by the rounding that one update carries; 1e-4 of a squared norm is far above that
 * and far below what a wrong rescaling ((B / b)^2 = K^2) or a shard left out (a quarter
 * of the gradient or more) would move. */
#define RUN_TOL 1e-4

static void k_ranks_agree_with_one_rank_of_k_micro_batches(void **state) {
    if (world == 1) skip();
    ddp_train_config one = base_config(), many = base_config();
    one.accum = world;
    ddp_step_stats a[STEPS], b[STEPS];
    run_steps(one, local_comm, a);
    run_steps(many, world_comm, b);
    for (int i = 0; i < STEPS; i++) {
        /* Both estimate from the same two batch sizes. */
        assert_true(a[i].gns_b_small == 32.0 / world && b[i].gns_b_small == a[i].gns_b_small);
        assert_true(a[i].gns_b_big == 32.0 && b[i].gns_b_big == 32.0);
        assert_true(rel(b[i].gns_big_sq, a[i].gns_big_sq) < RUN_TOL);
        /* Rank 0's shard is micro-batch 0 of the one rank's batch. */
        if (rank == 0) assert_true(rel(b[i].gns_small_sq, a[i].gns_small_sq) < RUN_TOL);
        assert_true(a[i].gns_valid && b[i].gns_valid);
    }
    /* The first step starts from the same parameters: the same floats in the same order,
     * to a few float roundings. */
    if (rank == 0) assert_true(rel(b[0].gns_small_sq, a[0].gns_small_sq) < 1e-6);
    /* And the small batch's norm is that of a smaller batch: larger (the noise adds
     * tr(Sigma) / b rather than / B). */
    assert_true(a[0].gns_small_sq > a[0].gns_big_sq);
}

/* With the optimizer state sharded the noise scale measures the same norms: the small
 * batch's before its gradients are sent (reduce-scattered; under --zero 2 as backward
 * reports them, since every micro-batch is sent and its pages given back), the large
 * batch's from the shards' norms. With and without accumulation; layers wide enough and
 * buckets small enough that --zero 2 has whole pages to give back. */
static void sharded_stages_measure_the_same_norms(void **state) {
    for (int accum = 1; accum <= 2; accum++) {
        ddp_train_config c = base_config();
        c.accum = accum;
        c.model.hidden.v[0] = c.model.hidden.v[1] = 256;
        c.reducer.bucket_bytes = 32 << 10;
        c.reducer.first_bucket_bytes = 8 << 10;
        ddp_step_stats ref[STEPS], z[STEPS];
        run_steps(c, world_comm, ref);
        for (int zero = 1; zero <= 2; zero++) {
            c.zero = zero;
            run_steps(c, world_comm, z);
            for (int i = 0; i < STEPS; i++) {
                assert_true(z[i].gns_b_small == ref[i].gns_b_small);
                assert_true(z[i].gns_valid == ref[i].gns_valid);
                if (!ref[i].gns_valid) continue;
                assert_true(rel(z[i].gns_small_sq, ref[i].gns_small_sq) < RUN_TOL);
                assert_true(rel(z[i].gns_big_sq, ref[i].gns_big_sq) < RUN_TOL);
                assert_true(rel(z[i].gns_b_simple, ref[i].gns_b_simple) < RUN_TOL);
            }
            /* The first step: the same gradients, up to the order of a few sums. */
            if (ref[0].gns_valid) assert_true(rel(z[0].gns_small_sq, ref[0].gns_small_sq) < 1e-6);
        }
    }
}

/* The squared norms the stats report are those of the gradients themselves: the
 * averaged one is grad_norm^2 and, on one rank with accumulation, the micro-batch's is
 * the norm of that micro-batch trained alone as a batch of b (the buffer holds it scaled
 * by b / B, which the trainer undoes). Nothing is estimated without a smaller batch. */
static void the_norms_are_the_gradients_norms(void **state) {
    ddp_train_config c = base_config();
    c.accum = 4;
    c.max_steps = 1;
    ddp_step_stats st[STEPS], alone[STEPS];
    run_steps(c, local_comm, st);
    assert_true(rel(st[0].gns_big_sq, st[0].grad_norm * st[0].grad_norm) < 1e-12);
    /* Micro-batch 0 of a batch of 32 in 4 is samples 0..7 of the epoch's order; without
     * shuffling, the same samples are the first batch of a run with batch 8. */
    ddp_train_config first = base_config();
    first.global_batch = 8;
    first.accum = 1;
    first.shuffle = 0;
    c.shuffle = 0;
    run_steps(c, local_comm, st);
    run_steps(first, local_comm, alone);
    assert_true(rel(st[0].gns_small_sq, alone[0].grad_norm * alone[0].grad_norm) < 1e-5);
    assert_true(alone[0].gns_b_small == 0.0 && !alone[0].gns_valid);
}

/* Without overlap the trainer measures the buffer in one pass before the all-reduce; with
 * it, range by range as backward hands them on. Both see the same gradient. */
static void ready_ranges_add_up_to_the_whole_buffer(void **state) {
    if (world == 1) skip();
    ddp_train_config over = base_config(), plain = base_config();
    over.reducer.first_bucket_bytes = 256; /* many buckets and slices */
    over.reducer.bucket_bytes = 1024;
    plain.reducer.overlap = 0;
    ddp_step_stats a[STEPS], b[STEPS];
    run_steps(over, world_comm, a);
    run_steps(plain, world_comm, b);
    /* The same gradient summed in other chunks, except that with overlap the first layer's
     * gradient is computed in row slices, whose products some BLAS kernels (OpenBLAS's
     * Haswell ones) block differently: a few float roundings per element, 1e-6 of the
     * squared norm, far below a range measured twice or left out (its share of the norm,
     * 1e-2 and more here). */
    double first = rel(a[0].gns_small_sq, b[0].gns_small_sq);
    if (rank == 0) print_message("first step: relative difference %.3g\n", first);
    assert_true(first < 1e-6);
    for (int i = 0; i < STEPS; i++)
        assert_true(rel(a[i].gns_small_sq, b[i].gns_small_sq) < RUN_TOL);
}

/* On logged steps every rank reads the same averages (the adaptive schedule's decisions
 * depend on it). */
static void every_rank_reads_the_same_noise_scale(void **state) {
    if (world == 1) skip();
    ddp_step_stats st[STEPS];
    run_steps(base_config(), world_comm, st);
    for (int i = 0; i < STEPS; i++) {
        assert_true(st[i].gns_valid);
        double v[2] = {st[i].gns_b_simple, st[i].gns_g2}, all[8];
        assert_int_equal(ddp_comm_allgather(world_comm, v, all, 2, DDP_F64), DDP_OK);
        for (int r = 1; r < world; r++)
            assert_memory_equal(&all[2 * r], &all[0], 2 * sizeof(double));
    }
}

/* --gns-every 2 measures on steps 1 and 3 (indices 0 and 2), not on step 2; the values
 * measured are those of the run that measures every step (the parameters do not depend
 * on the estimate). */
/* The progress line shows B_simple where it is resolved and nothing where the estimate of
 * |G|^2 is not positive (B_simple NaN), or where nothing was measured. */
static void progress_line_shows_b_simple_only_when_resolved(void **state) {
    char buf[48];
    ddp_step_stats st = {.gns_valid = 1, .gns_b_simple = 183.2, .gns_g2 = 0.5};
    ddp_trainer_gns_text(&st, buf, sizeof buf);
    assert_string_equal(buf, " | B_simple 183.2");
    st.gns_b_simple = NAN;
    st.gns_g2 = -0.0083;
    ddp_trainer_gns_text(&st, buf, sizeof buf);
    assert_string_equal(buf, "");
    st = (ddp_step_stats){.gns_valid = 0, .gns_b_simple = 183.2};
    ddp_trainer_gns_text(&st, buf, sizeof buf);
    assert_string_equal(buf, "");
}

static void gns_every_skips_the_steps_between(void **state) {
    ddp_train_config c = base_config(), every = base_config();
    c.accum = 2;
    every.accum = 2;
    every.gns_every = 2;
    ddp_step_stats a[STEPS], b[STEPS];
    run_steps(c, world_comm, a);
    run_steps(every, world_comm, b);
    assert_true(b[0].gns_b_small > 0.0 && b[1].gns_b_small == 0.0 && b[2].gns_b_small > 0.0);
    assert_true(b[0].gns_small_sq == a[0].gns_small_sq && b[2].gns_small_sq == a[2].gns_small_sq);
    assert_true(b[1].gns_valid); /* the averages are still read on logged steps */
}

int main(int argc, char **argv) {
    mpi_test_init(&argc, &argv, &backend, &world_comm, &rank, &world);
    assert_int_equal(ddp_comm_create(DDP_COMM_LOCAL, backend, &local_comm), DDP_OK);
    synthetic_dataset(&train_set, 640, 20, 4, 7);
    synthetic_dataset(&test_set, 100, 20, 4, 8);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(estimator_recovers_a_known_covariance),
        cmocka_unit_test(moving_average_is_debiased),
        cmocka_unit_test(rank_averages_average_exactly),
        cmocka_unit_test(k_ranks_agree_with_one_rank_of_k_micro_batches),
        cmocka_unit_test(the_norms_are_the_gradients_norms),
        cmocka_unit_test(sharded_stages_measure_the_same_norms),
        cmocka_unit_test(ready_ranges_add_up_to_the_whole_buffer),
        cmocka_unit_test(every_rank_reads_the_same_noise_scale),
        cmocka_unit_test(gns_every_skips_the_steps_between),
        cmocka_unit_test(progress_line_shows_b_simple_only_when_resolved),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    ddp_dataset_free(&train_set);
    ddp_dataset_free(&test_set);
    ddp_comm_free(local_comm);
    return mpi_test_finish(failed, backend, world_comm);
}
