/*
 * Distributed semantics, under mpirun with 1, 2 and 4 ranks: after T steps,
 *  - N ranks with B/N samples each reach the parameters of one process with all B
 *    samples (relative error under 1e-5), for SGD and AdamW, with clipping;
 *  - K-step gradient accumulation reaches the same parameters as no accumulation;
 *  - parameters are bitwise identical on every rank, and check_sync agrees;
 *  - a rank whose parameters are corrupted is named by check_sync;
 *  - bucketed all-reduce overlapped with backward (thread or test progress) reaches the
 *    parameters of the unbucketed path, and bf16 gradient communication stays close.
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
static int rank, world;

static ddp_train_config base_config(void) {
    ddp_train_config c;
    ddp_train_config_defaults(&c);
    c.model.n_hidden = 2;
    c.model.hidden[0] = 24;
    c.model.hidden[1] = 12;
    c.global_batch = 32;
    c.max_steps = STEPS;
    c.sched.warmup_steps = 5;
    c.sched.base_lr = 0.1f;
    c.log_every = 5;
    c.quiet = 1;
    return c;
}

/* Trains cfg over `comm` and returns the final parameters (malloc'd). */
static float *train(ddp_train_config cfg, ddp_comm *comm, size_t *n) {
    return train_params(cfg, backend, comm, comm, &train_set, &test_set, n);
}

/* The parameters of every rank hash to the same CRC. */
static void assert_identical_on_all_ranks(const float *p, size_t n) {
    uint32_t crc = ddp_crc32(0, p, n * sizeof(float));
    uint32_t *all = calloc((size_t)world, sizeof *all);
    assert_int_equal(ddp_comm_allgather(world_comm, &crc, all, 1, DDP_U32), DDP_OK);
    for (int r = 1; r < world; r++)
        assert_int_equal(all[r], all[0]);
    free(all);
}

static void compare_distributed_with_single(ddp_train_config cfg, ddp_train_config reference) {
    size_t n1, n2;
    float *dist = train(cfg, world_comm, &n1);
    float *single = train(reference, local_comm, &n2);
    assert_int_equal(n1, n2);
    double err = rel_error(dist, single, n1);
    if (rank == 0)
        print_message("world %d accum %d: relative error %.3g vs one process\n", world, cfg.accum,
                      err);
    assert_true(err < 1e-5);
    /* The runs must actually have moved the parameters: compare with the initial ones. */
    ddp_train_config init = reference;
    init.max_steps = 1;
    init.sched.base_lr = 1e-12f;
    size_t n3;
    float *start = train(init, local_comm, &n3);
    assert_true(rel_error(start, single, n1) > 1e-2);
    assert_identical_on_all_ranks(dist, n1);
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
    ddp_train_config plain = base_config();
    plain.reducer.overlap = 0;
    size_t n;
    float *ref = train_world(plain, &n);
    const ddp_progress modes[] = {DDP_PROGRESS_THREAD, DDP_PROGRESS_TEST};
    for (int m = 0; m < 2; m++) {
        ddp_train_config c = base_config();
        c.reducer.overlap = 1;
        c.reducer.progress = modes[m];
        c.reducer.bucket_bytes = 1024; /* several buckets even for this small model */
        c.reducer.first_bucket_bytes = 64;
        c.accum = 2; /* only the last micro-batch communicates */
        size_t n2;
        float *p = train_world(c, &n2);
        double err = rel_error(p, ref, n);
        if (rank == 0)
            print_message("progress %s: relative error %.3g vs unbucketed\n",
                          m == 0 ? "thread" : "test", err);
        /* Same sums per element; only accumulation splitting changes the rounding. */
        assert_true(err < 1e-6);
        assert_identical_on_all_ranks(p, n2);
        free(p);
    }
    free(ref);
}

static void shared_memory_gradients_equal_one_process(void **state) {
    /* Buckets of 64 KiB and more, on ranks of one node, are summed in node-shared
     * memory without MPI (a wider model than the others here, so that they are). The
     * result must match one process with the whole batch, and the MPI path. */
    ddp_train_config c = base_config();
    c.model.hidden[0] = 1024; /* 54436 parameters: 213 KB of gradients */
    c.model.hidden[1] = 32;
    c.reducer.first_bucket_bytes = 64 << 10; /* and the first layer in slices */
    compare_distributed_with_single(c, c);
    setenv("DDP_MPI_GATE", "0", 1);
    ddp_comm *plain = NULL;
    ddp_status s = ddp_comm_create(DDP_COMM_MPI, backend, &plain);
    unsetenv("DDP_MPI_GATE");
    assert_int_equal(s, DDP_OK);
    size_t n1, n2;
    float *shared = train(c, world_comm, &n1);
    float *mpi = train(c, plain, &n2);
    double err = rel_error(shared, mpi, n1);
    if (rank == 0) print_message("shared memory vs MPI all-reduce: relative error %.3g\n", err);
    /* The same sums in another order (rank order here, MPI's own algorithm there): equal
     * on 2 ranks, rounding apart on more, grown a little over the training steps. */
    assert_true(err < 1e-5);
    if (world == 2) assert_true(err == 0.0);
    assert_identical_on_all_ranks(shared, n1);
    free(shared);
    free(mpi);
    ddp_comm_free(plain);
}

static void bf16_gradients_stay_close_and_identical(void **state) {
    ddp_train_config c = base_config();
    size_t n;
    float *ref = train_world(c, &n);
    c.reducer.grad_dtype = DDP_BF16;
    c.reducer.bucket_bytes = 2048;
    float *p = train_world(c, &n);
    double err = rel_error(p, ref, n);
    if (rank == 0) print_message("bf16 gradients: relative error %.3g vs fp32\n", err);
    assert_true(err < 2e-2);
    if (world > 1) assert_true(err > 0.0); /* really rounded to bf16 */
    assert_identical_on_all_ranks(p, n);
    free(p);
    free(ref);
}

static void check_sync_names_a_diverged_rank(void **state) {
    ddp_train_config c = base_config();
    ddp_trainer *t = NULL;
    assert_int_equal(
        ddp_trainer_create(&c, backend, world_comm, world_comm, &train_set, &test_set, &t), DDP_OK);
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

static void evaluation_counts_every_sample_once(void **state) {
    /* The accuracy is a count over the test set divided by its size: with every sample
     * counted exactly once the result is the same for any number of ranks. */
    ddp_train_config c = base_config();
    ddp_trainer *t = NULL, *t1 = NULL;
    assert_int_equal(
        ddp_trainer_create(&c, backend, world_comm, world_comm, &train_set, &test_set, &t), DDP_OK);
    assert_int_equal(
        ddp_trainer_create(&c, backend, local_comm, local_comm, &train_set, &test_set, &t1),
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

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(n_ranks_equal_one_rank_sgd),
        cmocka_unit_test(n_ranks_equal_one_rank_adamw_with_clipping),
        cmocka_unit_test(accumulation_equals_whole_batch),
        cmocka_unit_test(micro_batch_of_one_equals_whole_batch),
        cmocka_unit_test(overlapped_buckets_equal_unbucketed),
        cmocka_unit_test(shared_memory_gradients_equal_one_process),
        cmocka_unit_test(bf16_gradients_stay_close_and_identical),
        cmocka_unit_test(check_sync_names_a_diverged_rank),
        cmocka_unit_test(evaluation_counts_every_sample_once),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    ddp_dataset_free(&train_set);
    ddp_dataset_free(&test_set);
    ddp_comm_free(local_comm);
    return mpi_test_finish(failed, backend, world_comm);
}
