/*
 * Sharded optimizer state and gradients (--zero 1 and 2), under mpirun with 1, 2, 3 and 4
 * ranks (3: a parameter count that the ranks do not divide, so the last shard is short):
 *  - both stages reach the parameters of the replicated update (--zero 0) and of one
 *    process with the whole batch, with AdamW, weight decay, clipping and accumulation,
 *    for the MLP and the GPT; parameters stay bitwise identical on every rank;
 *  - optimizer state per rank is one shard: 1/N of the replicated state plus at most the
 *    padding, and the shards add up to the whole (stage 3 too; its own tests are in
 *    test_zero3.c);
 *  - stage 2 gives the pages of sent gradient buckets back to the system: after a step
 *    only the pages at bucket edges are resident, where stage 1 keeps the whole buffer;
 *  - a non-finite gradient is seen by every rank alike from the shards: the update is
 *    skipped everywhere (--on-nonfinite skip) and the parameters stay identical.
 *
 * Tolerances as in test_equivalence.c: SPREAD_MARGIN times the rounding spread of the
 * one-process run (rounding_spread in test_util.h).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_util.h"

#include "ddp/train.h"
#include "synthetic.h"

static ddp_backend *backend;
static ddp_comm *world_comm, *local_comm;
static ddp_dataset train_set, test_set;
static ddp_text text;
static int rank, world;

/* AdamW with weight decay (not on biases), clipping that binds, 2 micro-batches, and a
 * batch that 1 to 4 ranks divide. */
static ddp_train_config mlp_config(void) {
    ddp_train_config c = small_mlp_config(25, 5);
    c.global_batch = 48;
    c.accum = 2;
    c.optim.kind = DDP_OPTIM_ADAMW;
    c.sched.base_lr = 3e-3f;
    c.optim.weight_decay = 0.01f;
    c.clip_norm = 0.5f;
    return c;
}

static ddp_train_config gpt_config(void) {
    ddp_train_config c = tiny_gpt_config(6, 3);
    c.global_batch = 24; /* 1 to 4 ranks, 2 micro-batches */
    c.accum = 2;
    return c;
}

typedef struct {
    ddp_memory_use mem;
    size_t shard_len;     /* this rank's optimizer elements */
    size_t resident_grad; /* gradient bytes resident after the last step (host) */
    int64_t skipped;
} run_info;

/* Bytes of [p, p + bytes) resident in memory, by whole pages. */
static size_t resident_bytes(const void *p, size_t bytes) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)p / page * page, hi = ((uintptr_t)p + bytes + page - 1) / page * page;
    size_t pages = (hi - lo) / page, n = 0;
    unsigned char *vec = malloc(pages);
    assert_non_null(vec);
    assert_int_equal(mincore((void *)lo, hi - lo, vec), 0);
    for (size_t i = 0; i < pages; i++)
        n += vec[i] & 1;
    free(vec);
    return n * page;
}

/* Trains cfg over comm to the end; returns the parameters (malloc'd) and what *info asks. */
static float *train_info(ddp_train_config cfg, ddp_comm *comm, size_t *n, run_info *info) {
    ddp_trainer *t = NULL;
    ddp_train_data data = {.train = train_set, .test = test_set, .text = text};
    ddp_status s = ddp_trainer_create(&cfg, backend, comm, comm, &data, &t);
    if (s != DDP_OK) fail_msg("trainer_create: %s", ddp_error_trace_str());
    ddp_model *m = ddp_trainer_model(t);
    *n = ddp_model_num_params(m);
    ddp_step_stats st;
    int64_t skipped = 0;
    for (int64_t i = 0; i < ddp_trainer_total_steps(t); i++) {
        if (ddp_trainer_step(t, &st) != DDP_OK) fail_msg("step: %s", ddp_error_trace_str());
        skipped += st.skipped;
    }
    float *p = malloc(*n * sizeof(float));
    assert_non_null(p);
    assert_int_equal(ddp_trainer_get_params(t, p), DDP_OK);
    if (info) {
        ddp_trainer_memory(t, 0, &info->mem);
        info->shard_len = info->mem.optim / (2 * sizeof(float)); /* AdamW: m and v */
        info->resident_grad = resident_bytes(ddp_model_grads(m), *n * sizeof(float));
        info->skipped = skipped;
    }
    ddp_trainer_free(t);
    return p;
}

/* --zero 1 and 2 on all ranks against --zero 0 on all ranks and one process. */
static void stages_reach_the_replicated_parameters(ddp_train_config c, const char *what) {
    size_t n, n1;
    float *single = train_info(c, local_comm, &n, NULL);
    train_extra x = {.text = &text};
    double spread = rounding_spread(c, backend, local_comm, &train_set, &test_set, x.text, single);
    assert_true(spread > 0.0 && spread < 1e-3);
    double tol = SPREAD_MARGIN * spread;
    float *replicated = train_info(c, world_comm, &n1, NULL);
    for (int zero = 1; zero <= 2; zero++) {
        ddp_train_config z = c;
        z.zero = zero;
        float *p = train_info(z, world_comm, &n1, NULL);
        assert_int_equal(n1, n);
        double err = rel_error(p, single, n), err0 = rel_error(p, replicated, n);
        if (rank == 0)
            print_message("%s --zero %d on %d rank(s): relative error %.3g vs one process, %.3g "
                          "vs --zero 0 (tolerance %.3g)\n",
                          what, zero, world, err, err0, tol);
        assert_true(err <= tol);
        assert_true(err0 <= tol);
        assert_same_on_all_ranks(world_comm, p, n);
        free(p);
    }
    /* The runs moved the parameters far beyond the tolerance. */
    ddp_train_config init = c;
    init.max_steps = 1;
    init.sched.base_lr = 1e-12f;
    init.sched.min_lr = 0.0f;
    init.sched.warmup_steps = 0;
    float *start = train_info(init, local_comm, &n1, NULL);
    assert_true(rel_error(start, single, n) > 100.0 * tol);
    free(start);
    free(replicated);
    free(single);
}

static void mlp_stages_reach_the_replicated_parameters(void **state) {
    stages_reach_the_replicated_parameters(mlp_config(), "mlp");
}

static void gpt_stages_reach_the_replicated_parameters(void **state) {
    stages_reach_the_replicated_parameters(gpt_config(), "gpt");
}

static void optimizer_state_is_one_shard_per_rank(void **state) {
    for (int zero = 0; zero <= 3; zero++) {
        ddp_train_config c = mlp_config();
        c.max_steps = 1;
        c.zero = zero;
        size_t n;
        run_info info;
        free(train_info(c, world_comm, &n, &info));
        assert_int_equal(info.mem.optim_full, 2 * n * sizeof(float));
        /* Stage 3 holds its shard and the units in flight (test_zero3.c has the figures). */
        if (zero < 3 || world == 1)
            assert_int_equal(info.mem.params, n * sizeof(float));
        else
            assert_true(info.mem.params <= n * sizeof(float));
        uint64_t total = info.shard_len;
        assert_int_equal(ddp_comm_allreduce(world_comm, &total, 1, DDP_U64, DDP_SUM), DDP_OK);
        if (zero == 0) {
            assert_int_equal(info.shard_len, n);
            assert_int_equal(info.mem.grad_shard, 0);
        } else {
            /* 1/N, rounded up to whole cache lines of floats: at most 15 of padding. */
            size_t even = (n + (size_t)world - 1) / (size_t)world;
            assert_true(info.shard_len <= even + 15);
            assert_int_equal(total, n);
            assert_true(info.mem.grad_shard >= info.shard_len * sizeof(float));
            if (rank == 0)
                print_message("--zero %d, %d rank(s): optimizer state %zu of %zu bytes per "
                              "rank\n",
                              zero, world, info.mem.optim, info.mem.optim_full);
        }
    }
}

static void stage2_gives_sent_gradient_pages_back(void **state) {
    /* 72k parameters (282 KB) in buckets of 32 KB: many buckets, many pages each. */
    ddp_train_config c = mlp_config();
    c.model.hidden.v[0] = 256;
    c.model.hidden.v[1] = 256;
    c.max_steps = 3;
    c.reducer.bucket_bytes = 32 << 10;
    c.reducer.first_bucket_bytes = 8 << 10;
    size_t n;
    run_info one, two;
    c.zero = 1;
    free(train_info(c, world_comm, &n, &one));
    c.zero = 2;
    free(train_info(c, world_comm, &n, &two));
    size_t bytes = n * sizeof(float), page = (size_t)sysconf(_SC_PAGESIZE);
    if (rank == 0)
        print_message("gradient buffer of %zu bytes: %zu resident after a step at --zero 1, "
                      "%zu at --zero 2\n",
                      bytes, one.resident_grad, two.resident_grad);
    assert_true(one.resident_grad >= bytes - page);
    /* At most the two partial pages at each bucket's edges stay. */
    assert_true(two.resident_grad <= 2 * page * (bytes / c.reducer.bucket_bytes + 4));
    assert_true(two.resident_grad < bytes / 4);
}

static void nonfinite_gradients_are_skipped_on_every_rank(void **state) {
    /* A learning rate that blows the MLP up within a few steps: with --on-nonfinite skip
     * every rank must skip the same steps, from the norm of the shards. */
    for (int zero = 1; zero <= 2; zero++) {
        ddp_train_config c = mlp_config();
        c.optim.kind = DDP_OPTIM_SGD;
        c.clip_norm = 0.0f;
        c.sched.base_lr = 1e12f;
        c.sched.warmup_steps = 0;
        c.max_steps = 8;
        c.on_nonfinite = DDP_NONFINITE_SKIP;
        c.zero = zero;
        size_t n;
        run_info info;
        float *p = train_info(c, world_comm, &n, &info);
        assert_true(info.skipped > 0);
        int64_t all = info.skipped;
        assert_int_equal(ddp_comm_allreduce(world_comm, &all, 1, DDP_I64, DDP_MAX), DDP_OK);
        assert_int_equal(all, info.skipped);
        assert_same_on_all_ranks(world_comm, p, n);
        free(p);
    }
}

int main(int argc, char **argv) {
    mpi_test_init(&argc, &argv, &backend, &world_comm, &rank, &world);
    assert_int_equal(ddp_comm_create(DDP_COMM_LOCAL, backend, &local_comm), DDP_OK);
    synthetic_dataset(&train_set, 960, 20, 4, 7);
    synthetic_dataset(&test_set, 333, 20, 4, 8);
    synthetic_text(&text, 6000, 9);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(mlp_stages_reach_the_replicated_parameters),
        cmocka_unit_test(gpt_stages_reach_the_replicated_parameters),
        cmocka_unit_test(optimizer_state_is_one_shard_per_rank),
        cmocka_unit_test(stage2_gives_sent_gradient_pages_back),
        cmocka_unit_test(nonfinite_gradients_are_skipped_on_every_rank),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    ddp_dataset_free(&train_set);
    ddp_dataset_free(&test_set);
    ddp_text_free(&text);
    ddp_comm_free(local_comm);
    return mpi_test_finish(failed, backend, world_comm);
}
