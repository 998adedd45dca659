/*
 * Distributed semantics, under mpirun with 1, 2 and 4 ranks: after 1 step and after T,
 *  - N ranks with B/N samples each reach the parameters of one process with all B
 *    samples, for SGD and AdamW, with clipping;
 *  - K-step gradient accumulation reaches the same parameters as no accumulation;
 *  - parameters are bitwise identical on every rank, and check_sync agrees;
 *  - a rank whose parameters are corrupted is named by check_sync;
 *  - bucketed all-reduce overlapped with backward (thread or test progress) reaches the
 *    parameters of the unbucketed path, and bf16 gradient communication stays close.
 *
 * Tolerances. Two correct runs that sum the same gradients in another order differ by
 * rounding, which training amplifies step by step, by how much depends on the CPU's BLAS
 * kernels. So no comparison uses a fixed threshold: each measures how far one-ulp changes
 * of the initial parameters move the single-process run on this machine (rounding_spread
 * in test_util.h) and allows SPREAD_MARGIN times that. A wrong averaging factor or a bucket
 * left out of the all-reduce moves the parameters 100 to 10000 times further, also after
 * one step.
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

#define STEPS 25

static ddp_backend *backend;
static ddp_comm *world_comm, *local_comm;
static ddp_dataset train_set, test_set;
static ddp_text text;                   /* for the GPT: bytes from a small Markov chain */
static ddp_dataset img_train, img_test; /* for the CNN: 6 x 6 images */
static int rank, world;

static ddp_train_config base_config(void) { return small_mlp_config(STEPS, 5); }

/* Trains cfg over `comm` and returns the final parameters (malloc'd). */
static float *train(ddp_train_config cfg, ddp_comm *comm, size_t *n) {
    train_extra x = {.text = &text};
    return train_params_ex(cfg, backend, comm, comm, &train_set, &test_set, &x, n);
}

/* The tolerance for comparing a run of `reference`'s configuration with that one-process
 * run's parameters `single`: SPREAD_MARGIN times the measured rounding spread. The spread
 * itself must be small, or the reference run is too unstable for a comparison to mean
 * anything. */
static double tolerance_for(ddp_train_config reference, const float *single) {
    double spread =
        rounding_spread(reference, backend, local_comm, &train_set, &test_set, &text, single);
    assert_true(spread > 0.0 && spread < 1e-3);
    return SPREAD_MARGIN * spread;
}

static void compare_distributed_with_single(ddp_train_config cfg, ddp_train_config reference) {
    size_t n1, n2;
    float *dist = train(cfg, world_comm, &n1);
    float *single = train(reference, local_comm, &n2);
    assert_int_equal(n1, n2);
    double err = rel_error(dist, single, n1);
    double tol = tolerance_for(reference, single);
    if (rank == 0)
        print_message("world %d accum %d, %lld step(s): relative error %.3g vs one process "
                      "(tolerance %.3g)\n",
                      world, cfg.accum, (long long)cfg.max_steps, err, tol);
    assert_true(err <= tol);
    /* The runs must actually have moved the parameters, and by far more than the
     * tolerance: compare with the initial ones. */
    ddp_train_config init = reference;
    init.max_steps = 1;
    init.sched.base_lr = 1e-12f;
    init.sched.min_lr = 0.0f;
    size_t n3;
    float *start = train(init, local_comm, &n3);
    assert_true(rel_error(start, single, n1) > 100.0 * tol);
    assert_same_on_all_ranks(world_comm, dist, n1);
    free(dist);
    free(single);
    free(start);
}

static void n_ranks_equal_one_rank_sgd(void **state) {
    ddp_train_config c = base_config();
    compare_distributed_with_single(c, c);
}

static void n_ranks_equal_one_rank_adamw_with_clipping(void **state) {
    ddp_train_config c = base_config();
    c.optim.kind = DDP_OPTIM_ADAMW;
    c.sched.base_lr = 3e-3f;
    c.optim.weight_decay = 0.01f;
    c.clip_norm = 0.5f;
    c.model.act = DDP_ACT_GELU;
    compare_distributed_with_single(c, c);
}

/* After one step the parameters have barely moved, so these comparisons see the first
 * averaged gradient almost alone: a wrong scale or a missing sum shows at once. */
static void n_ranks_equal_one_rank_after_one_step(void **state) {
    ddp_train_config c = base_config();
    c.max_steps = 1;
    compare_distributed_with_single(c, c);
    c.optim.kind = DDP_OPTIM_ADAMW;
    c.sched.base_lr = 3e-3f;
    compare_distributed_with_single(c, c);
    ddp_train_config ref = c;
    c.accum = 2;
    compare_distributed_with_single(c, ref);
}

static void accumulation_equals_whole_batch(void **state) {
    ddp_train_config c = base_config();
    ddp_train_config ref = c;
    c.accum = 4; /* 32 / world / 4 samples per micro-batch */
    compare_distributed_with_single(c, ref);
}

static void micro_batch_of_one_equals_whole_batch(void **state) {
    ddp_train_config c = base_config();
    ddp_train_config ref = c;
    c.micro_batch = 1;
    compare_distributed_with_single(c, ref);
}

/* Trains cfg with the MPI comm and returns the parameters. */
static float *train_world(ddp_train_config cfg, size_t *n) { return train(cfg, world_comm, n); }

static void overlapped_buckets_equal_unbucketed(void **state) {
    /* Both with 2 micro-batches: only the last one communicates in the bucketed path. */
    ddp_train_config plain = base_config();
    plain.reducer.overlap = 0;
    plain.accum = 2;
    size_t n;
    float *ref = train_world(plain, &n);
    /* The same sums, cut into other messages, and the first layer's weight gradient
     * computed in row slices (a GEMM of other shape, which some BLAS kernels round
     * differently): within the rounding spread. */
    ddp_train_config one = base_config();
    size_t n1;
    float *single = train(one, local_comm, &n1);
    double tol = tolerance_for(one, single);
    free(single);
    const ddp_progress modes[] = {DDP_PROGRESS_THREAD, DDP_PROGRESS_TEST};
    for (int m = 0; m < 2; m++) {
        ddp_train_config c = plain;
        c.reducer.overlap = 1;
        c.reducer.progress = modes[m];
        c.reducer.bucket_bytes = 1024; /* several buckets even for this small model */
        c.reducer.first_bucket_bytes = 64;
        size_t n2;
        float *p = train_world(c, &n2);
        double err = rel_error(p, ref, n);
        if (rank == 0)
            print_message("progress %s: relative error %.3g vs unbucketed (tolerance %.3g)\n",
                          m == 0 ? "thread" : "test", err, tol);
        assert_true(err <= tol);
        assert_same_on_all_ranks(world_comm, p, n2);
        free(p);
    }
    free(ref);
}

static void shared_memory_gradients_equal_one_process(void **state) {
    /* Buckets of 64 KiB and more, on ranks of one node, are summed in node-shared
     * memory without MPI (a wider model than the others here, so that they are). The
     * result must match one process with the whole batch, and the MPI path. */
    ddp_train_config c = base_config();
    c.model.hidden.v[0] = 1024; /* 54436 parameters: 213 KB of gradients */
    c.model.hidden.v[1] = 32;
    c.reducer.first_bucket_bytes = 64 << 10; /* and the first layer in slices */
    compare_distributed_with_single(c, c);
    setenv("DDP_MPI_GATE", "0", 1);
    ddp_comm *plain = NULL;
    ddp_status s = ddp_comm_create(DDP_COMM_MPI, backend, &plain);
    unsetenv("DDP_MPI_GATE");
    assert_int_equal(s, DDP_OK);
    size_t n1, n2;
    train_extra xs = {0}, xm = {0};
    float *shared =
        train_params_ex(c, backend, world_comm, world_comm, &train_set, &test_set, &xs, &n1);
    float *mpi = train_params_ex(c, backend, plain, plain, &train_set, &test_set, &xm, &n2);
    /* The paths compared are the ones claimed: shared memory wherever there are several
     * ranks (all on this node), plain MPI with the gate off. */
    assert_int_equal(xs.grads_shared, world > 1);
    assert_int_equal(xm.grads_shared, 0);
    double err = rel_error(shared, mpi, n1);
    float *single = train(c, local_comm, &n2);
    double tol = tolerance_for(c, single);
    free(single);
    if (rank == 0)
        print_message("shared memory vs MPI all-reduce: relative error %.3g (tolerance %.3g)\n",
                      err, tol);
    /* The same sums in another order (rank order here, MPI's own algorithm there): equal
     * on 2 ranks, rounding apart on more. */
    assert_true(err <= tol);
    if (world == 2) assert_true(err == 0.0);
    assert_same_on_all_ranks(world_comm, shared, n1);
    free(shared);
    free(mpi);
    ddp_comm_free(plain);
}

static void bf16_gradients_stay_close_and_identical(void **state) {
    ddp_train_config c = base_config();
    size_t n;
    float *ref = train_world(c, &n);
    ddp_train_config init = c;
    init.max_steps = 1;
    init.sched.base_lr = 1e-12f;
    init.sched.min_lr = 0.0f;
    float *start = train(init, local_comm, &n);
    c.reducer.grad_dtype = DDP_BF16;
    c.reducer.bucket_bytes = 2048;
    float *p = train_world(c, &n);
    double err = rel_error(p, ref, n);
    /* bf16 keeps 8 significant bits: each gradient element is rounded by at most 2^-9 of
     * itself on the way out and again after the sum. Each step's update is then off by
     * about 2^-8 of itself, so the parameters by about 2^-8 of how far training moved
     * them, give or take the dynamics' amplification (the margin). */
    double moved = rel_error(start, ref, n);
    double tol = SPREAD_MARGIN * ldexp(moved, -8);
    if (rank == 0)
        print_message("bf16 gradients: relative error %.3g vs fp32 (tolerance %.3g)\n", err, tol);
    assert_true(err <= tol);
    if (world > 1) assert_true(err > 0.0); /* really rounded to bf16 */
    assert_same_on_all_ranks(world_comm, p, n);
    free(p);
    free(ref);
    free(start);
}

static void check_sync_names_a_diverged_rank(void **state) {
    ddp_train_config c = base_config();
    ddp_trainer *t = NULL;
    assert_int_equal(ddp_trainer_create(&c, backend, world_comm, world_comm,
                                        SAMPLES_DATA(&train_set, &test_set), &t),
                     DDP_OK);
    ddp_step_stats st;
    assert_int_equal(ddp_trainer_step(t, &st), DDP_OK);
    assert_int_equal(ddp_trainer_check_sync(t), DDP_OK);
    if (world > 1) {
        /* Corrupt one parameter on the last rank only. */
        if (rank == world - 1) ddp_model_params(ddp_trainer_model(t))[3] += 1.0f;
        assert_int_equal(ddp_trainer_check_sync(t), DDP_ERR_MISMATCH);
        char want[32];
        snprintf(want, sizeof want, "rank %d", world - 1);
        assert_non_null(strstr(ddp_error_message(), want));
    }
    ddp_trainer_free(t);
}

/* ---- the GPT on a text ------------------------------------------------------------------ */

static ddp_train_config gpt_config(void) { return tiny_gpt_config(6, 3); }

static void gpt_n_ranks_equal_one_rank(void **state) {
    ddp_train_config c = gpt_config();
    compare_distributed_with_single(c, c);
    c.max_steps = 1;
    compare_distributed_with_single(c, c);
}

static void gpt_accumulation_equals_whole_batch(void **state) {
    ddp_train_config c = gpt_config();
    ddp_train_config ref = c;
    c.accum = 8 / world; /* one window per micro-batch */
    compare_distributed_with_single(c, ref);
}

static void gpt_validation_is_the_same_for_any_number_of_ranks(void **state) {
    /* Every byte of the validation split predicted once over all ranks: the mean loss and
     * the accuracy do not depend on how the windows are shared out. */
    ddp_train_config c = gpt_config();
    ddp_trainer *t = NULL, *t1 = NULL;
    assert_int_equal(ddp_trainer_create(&c, backend, world_comm, world_comm, TEXT_DATA(&text), &t),
                     DDP_OK);
    assert_int_equal(ddp_trainer_create(&c, backend, local_comm, local_comm, TEXT_DATA(&text), &t1),
                     DDP_OK);
    double acc, loss, acc1, loss1;
    assert_int_equal(ddp_trainer_evaluate(t, &acc, &loss), DDP_OK);
    assert_int_equal(ddp_trainer_evaluate(t1, &acc1, &loss1), DDP_OK);
    assert_true(acc == acc1);
    assert_near(loss, loss1, 1e-5 * loss1);
    /* Untrained: about log(256) nats per byte (the tiny init predicts nearly uniformly). */
    assert_true(fabs(loss1 - log(256.0)) < 0.5);
    ddp_trainer_free(t);
    ddp_trainer_free(t1);
}

/* ---- the CNN with batch norm ------------------------------------------------------------ */

static ddp_train_config cnn_config(void) { return tiny_cnn_config(6, 3); }

/* Trains a CNN and returns its parameters followed by its buffers (malloc'd), n in all,
 * np of them parameters (np may be NULL). */
static float *train_cnn(ddp_train_config cfg, ddp_comm *comm, size_t *n, size_t *np_out) {
    ddp_trainer *t = NULL;
    if (ddp_trainer_create(&cfg, backend, comm, comm, SAMPLES_DATA(&img_train, &img_test), &t) !=
        DDP_OK)
        fail_msg("trainer_create: %s", ddp_error_trace_str());
    if (ddp_trainer_run(t, NULL) != DDP_OK) fail_msg("run: %s", ddp_error_trace_str());
    ddp_model *m = ddp_trainer_model(t);
    size_t np = ddp_model_num_params(m), nb = ddp_model_num_buffer_elems(m);
    float *p = malloc((np + nb) * sizeof *p);
    assert_int_equal(ddp_trainer_get_params(t, p), DDP_OK);
    memcpy(p + np, ddp_model_buffers(m), nb * sizeof *p);
    *n = np + nb;
    if (np_out) *np_out = np;
    ddp_trainer_free(t);
    return p;
}

/* The tolerance of comparisons with the one-process run of `one`, whose parameters (then
 * buffers) are `single`: the rounding spread of its parameters (rounding_spread); the
 * running statistics follow the parameters. */
static double cnn_tolerance(ddp_train_config one, const float *single) {
    return SPREAD_MARGIN *
           rounding_spread(one, backend, local_comm, &img_train, &img_test, NULL, single);
}

static void cnn_sync_bn_on_n_ranks_equals_one_rank(void **state) {
    /* With --sync-bn every batch norm sees the global batch's statistics, so N ranks reach
     * the parameters and the running statistics of one rank with the whole batch; without
     * it each rank normalizes its own share and they differ (by how much is printed). */
    ddp_train_config c = cnn_config();
    size_t n1, n2, n3;
    float *single = train_cnn(c, local_comm, &n1, NULL);
    double tol = cnn_tolerance(c, single);
    c.model.sync_bn = 1;
    float *synced = train_cnn(c, world_comm, &n2, NULL);
    c.model.sync_bn = 0;
    float *local = train_cnn(c, world_comm, &n3, NULL);
    assert_int_equal(n1, n2);
    double err = rel_error(synced, single, n1), err_local = rel_error(local, single, n1);
    if (rank == 0)
        print_message("cnn world %d: --sync-bn relative error %.3g vs one process (tolerance "
                      "%.3g); without it %.3g\n",
                      world, err, tol, err_local);
    assert_true(err <= tol);
    if (world > 1) assert_true(err_local > 10.0 * tol);
    assert_same_on_all_ranks(world_comm, synced, n2);
    assert_same_on_all_ranks(world_comm, local, n3); /* running statistics averaged over ranks */
    free(single);
    free(synced);
    free(local);
}

static void cnn_accumulation_normalizes_per_micro_batch(void **state) {
    /* Batch norm under accumulation normalizes each micro-batch on its own (README). What
     * holds: one process accumulating 2 W micro-batches trains the parameters that W ranks
     * accumulating 2 each do (the same samples in each micro-batch, the gradients averaged
     * the same way); what does not: that equals the whole batch at once, whose statistics
     * cover all the samples. The running statistics are left out of the first comparison:
     * one process applies the momentum 2 W times in a row, W ranks twice and average. */
    ddp_train_config c = cnn_config();
    c.accum = 2 * world;
    size_t n, np;
    float *accum_one = train_cnn(c, local_comm, &n, &np);
    double tol = cnn_tolerance(c, accum_one);
    c.accum = 2;
    float *ranks = train_cnn(c, world_comm, &n, NULL);
    c.accum = 1;
    float *whole = train_cnn(c, local_comm, &n, NULL);
    double err = rel_error(ranks, accum_one, np), err_whole = rel_error(accum_one, whole, np);
    if (rank == 0)
        print_message("cnn world %d: %d ranks x accumulation 2 vs one process x %d: relative "
                      "error %.3g (tolerance %.3g); vs the whole batch at once %.3g\n",
                      world, world, 2 * world, err, tol, err_whole);
    assert_true(err <= tol);
    assert_true(err_whole > 10.0 * tol);
    free(accum_one);
    free(ranks);
    free(whole);
}

static void evaluation_counts_every_sample_once(void **state) {
    /* The accuracy is a count over the test set divided by its size: with every sample
     * counted exactly once the result is the same for any number of ranks. */
    ddp_train_config c = base_config();
    ddp_trainer *t = NULL, *t1 = NULL;
    assert_int_equal(ddp_trainer_create(&c, backend, world_comm, world_comm,
                                        SAMPLES_DATA(&train_set, &test_set), &t),
                     DDP_OK);
    assert_int_equal(ddp_trainer_create(&c, backend, local_comm, local_comm,
                                        SAMPLES_DATA(&train_set, &test_set), &t1),
                     DDP_OK);
    double acc, loss, acc1, loss1;
    assert_int_equal(ddp_trainer_evaluate(t, &acc, &loss), DDP_OK);
    assert_int_equal(ddp_trainer_evaluate(t1, &acc1, &loss1), DDP_OK);
    assert_true(acc == acc1);
    assert_true(fabs(loss - loss1) < 1e-5 * fabs(loss1));
    ddp_trainer_free(t);
    ddp_trainer_free(t1);
}

int main(int argc, char **argv) {
    mpi_test_init(&argc, &argv, &backend, &world_comm, &rank, &world);
    assert_int_equal(ddp_comm_create(DDP_COMM_LOCAL, backend, &local_comm), DDP_OK);
    /* 333 test samples: not divisible by 2 or 4, so shards differ in size. */
    synthetic_dataset(&train_set, 640, 20, 4, 7);
    synthetic_dataset(&test_set, 333, 20, 4, 8);
    synthetic_text(&text, 6000, 9);
    synthetic_images(&img_train, &img_test);

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(n_ranks_equal_one_rank_after_one_step),
        cmocka_unit_test(n_ranks_equal_one_rank_sgd),
        cmocka_unit_test(n_ranks_equal_one_rank_adamw_with_clipping),
        cmocka_unit_test(accumulation_equals_whole_batch),
        cmocka_unit_test(micro_batch_of_one_equals_whole_batch),
        cmocka_unit_test(overlapped_buckets_equal_unbucketed),
        cmocka_unit_test(shared_memory_gradients_equal_one_process),
        cmocka_unit_test(bf16_gradients_stay_close_and_identical),
        cmocka_unit_test(check_sync_names_a_diverged_rank),
        cmocka_unit_test(evaluation_counts_every_sample_once),
        cmocka_unit_test(gpt_n_ranks_equal_one_rank),
        cmocka_unit_test(gpt_accumulation_equals_whole_batch),
        cmocka_unit_test(gpt_validation_is_the_same_for_any_number_of_ranks),
        cmocka_unit_test(cnn_sync_bn_on_n_ranks_equals_one_rank),
        cmocka_unit_test(cnn_accumulation_normalizes_per_micro_batch),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    ddp_dataset_free(&train_set);
    ddp_dataset_free(&test_set);
    ddp_text_free(&text);
    ddp_dataset_free(&img_train);
    ddp_dataset_free(&img_test);
    ddp_comm_free(local_comm);
    return mpi_test_finish(failed, backend, world_comm);
}
