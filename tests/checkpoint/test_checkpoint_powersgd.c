/*
 * Checkpoints of PowerSGD's state (--compress powersgd), under mpirun with 1, 2 and 3 ranks:
 *  - a compressed run killed after a checkpoint resumes from it to parameters bitwise
 *    equal to the uninterrupted run, at --zero 0 and 1 (each rank's shard file holds its
 *    own error feedback, the manifest Q);
 *  - on another number of ranks the error feedback is resharded: in a world of one, rank 0
 *    holds the sum of every writer rank's errors (the same sum, added in the same order);
 *    a one-rank checkpoint on N ranks gives rank 0 its errors and the others none; Q is
 *    the manifest's everywhere; the resumed runs go on to finite parameters, equal on
 *    every rank;
 *  - a checkpoint without compressor state (an uncompressed run) resumes with the
 *    compressor started afresh.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_util.h"

#include "checkpoint/ckpt_fixture.h"
#include "ddp/powersgd.h"
#include "train/trainer_impl.h"

#define T 20 /* steps; checkpoints every 10 */

static ddp_train_config psgd_config(int zero) {
    ddp_train_config c = fx_config(DDP_OPTIM_ADAMW, T);
    c.global_batch = 48;
    c.accum = 2;
    c.zero = zero;
    c.checkpoint_every = 10;
    c.reducer.compress = DDP_COMPRESS_POWERSGD;
    c.reducer.compress_rank = 2;
    c.reducer.compress_start = 3;
    return c;
}

static void resumes_exactly(int zero) {
    char dir[256];
    fx_tempdir(dir, sizeof dir);
    ddp_train_config c = psgd_config(zero);
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    size_t n, n2;
    float *whole = fx_train_run(&c, fx_world, &n);
    char path[1200];
    struct stat st;
    ddp_checkpoint_shard_path(path, sizeof path, dir, 10, (uint32_t)fx_rank, (uint32_t)fx_size);
    assert_int_equal(stat(path, &st), 0);
    fx_forget(dir, 20);
    int64_t resumed;
    float *p = fx_resume_run(c, dir, fx_world, &resumed, &n2);
    assert_int_equal(resumed, 10);
    assert_int_equal(n, n2);
    if (memcmp(whole, p, n * sizeof(float)) != 0)
        fail_msg("--zero %d: resumed run differs (relative %g)", zero, rel_error(p, whole, n));
    assert_same_on_all_ranks(fx_world, p, n);
    free(p);
    free(whole);
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    fx_rmdir(dir);
}

static void stage0_resumes_exactly(void **state) { resumes_exactly(0); }
static void stage1_resumes_exactly(void **state) { resumes_exactly(1); }

/* The sum of the error feedback of checkpoint `step` in dir over its writer's `ranks`
 * shard files, added in ascending order as a resume adds them; and its Q. */
static float *errors_in_files(const char *dir, int64_t step, int ranks, size_t n, float **q,
                              size_t *nq) {
    float *sum = calloc(n, sizeof *sum);
    assert_non_null(sum);
    for (int i = 0; i < ranks; i++) {
        char path[1200];
        ddp_checkpoint_shard_path(path, sizeof path, dir, step, (uint32_t)i, (uint32_t)ranks);
        void *buf = NULL;
        size_t len;
        ddp_checkpoint_info h;
        assert_int_equal(ddp_checkpoint_read(path, &buf, &len, &h), DDP_OK);
        assert_int_equal(h.psgd_errors, n);
        const float *e = h.errors;
        for (size_t k = 0; k < n; k++)
            sum[k] = i == 0 ? e[k] : sum[k] + e[k];
        free(buf);
    }
    char path[1200];
    ddp_checkpoint_path(path, sizeof path, dir, step);
    void *buf = NULL;
    size_t len;
    ddp_checkpoint_info h;
    assert_int_equal(ddp_checkpoint_read(path, &buf, &len, &h), DDP_OK);
    assert_true(h.psgd_warm);
    *nq = h.psgd_q;
    *q = malloc(*nq * sizeof **q);
    memcpy(*q, h.psgd_qdata, *nq * sizeof **q);
    free(buf);
    return sum;
}

/* Resumes c from dir over comm without running; checks this rank's error feedback against
 * want (NULL: zero) and Q against q; then runs to the end and returns the parameters. */
static float *resume_and_check(ddp_train_config c, const char *dir, ddp_comm *comm,
                               const float *want, const float *q, size_t nq, size_t *n) {
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    c.resume = 1;
    ddp_trainer *t = fx_create(&c, comm);
    int64_t resumed = -1;
    if (ddp_trainer_resume(t, dir, &resumed) != DDP_OK)
        fail_msg("resume: %s", ddp_error_trace_str());
    assert_int_equal(resumed, 10);
    ddp_powersgd *p = ddp_sync_compressor(t->sync);
    assert_non_null(p);
    const float *e = ddp_powersgd_errors(p);
    for (size_t k = 0; k < t->num_params; k++)
        if (e[k] != (want ? want[k] : 0.0f))
            fail_msg("error feedback element %zu: %g, expected %g", k, e[k], want ? want[k] : 0.0);
    assert_int_equal(ddp_powersgd_q_elems(p), nq);
    assert_memory_equal(ddp_powersgd_q(p), q, nq * sizeof *q);
    assert_true(ddp_powersgd_q_warm(p));
    assert_int_equal(ddp_trainer_run(t, NULL), DDP_OK);
    float *params = fx_params(t, n);
    ddp_trainer_free(t);
    for (size_t k = 0; k < *n; k++)
        assert_true(isfinite(params[k]));
    return params;
}

static void error_feedback_is_resharded(void **state) {
    char dir[256];
    fx_tempdir(dir, sizeof dir);
    ddp_train_config c = psgd_config(0);
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    size_t n;
    free(fx_train_run(&c, fx_world, &n));
    fx_forget(dir, 20);
    size_t np = n; /* the MLP has no buffers */
    float *q = NULL;
    size_t nq = 0;
    float *sum = errors_in_files(dir, 10, fx_size, np, &q, &nq);
    double norm = 0.0;
    for (size_t k = 0; k < np; k++)
        norm += (double)sum[k] * sum[k];
    assert_true(norm > 0.0); /* there is something to carry */

    /* N ranks' checkpoint in a world of one (each rank its own copy of the files). */
    char mine[300];
    snprintf(mine, sizeof mine, "%s.rank%d", dir, fx_rank);
    fx_copy_dir(dir, mine);
    size_t n2;
    float *p = resume_and_check(psgd_config(1), mine, fx_local, sum, q, nq, &n2);
    free(p);
    free(sum);
    free(q);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", mine);
    assert_int_equal(system(cmd), 0);

    /* A one-rank checkpoint on all ranks: rank 0 takes its errors, the others none. */
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    char first[300];
    snprintf(first, sizeof first, "%s.one", dir);
    if (fx_rank == 0) {
        ddp_train_config w = psgd_config(0);
        snprintf(w.checkpoint_dir, sizeof w.checkpoint_dir, "%s", first);
        assert_int_equal(mkdir(first, 0755), 0);
        free(fx_train_run(&w, fx_local, &n2));
    }
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    sum = errors_in_files(first, 10, 1, np, &q, &nq);
    char last[1200];
    ddp_checkpoint_path(last, sizeof last, first, 20);
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    if (fx_rank == 0) assert_int_equal(unlink(last), 0);
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    p = resume_and_check(psgd_config(0), first, fx_world, fx_rank == 0 ? sum : NULL, q, nq, &n2);
    assert_same_on_all_ranks(fx_world, p, n2);
    free(p);
    free(sum);
    free(q);
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    if (fx_rank == 0) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", first);
        assert_int_equal(system(cmd), 0);
    }
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    fx_rmdir(dir);
}

static void uncompressed_checkpoint_starts_the_compressor_afresh(void **state) {
    char dir[256];
    fx_tempdir(dir, sizeof dir);
    ddp_train_config plain = psgd_config(0);
    plain.reducer.compress = DDP_COMPRESS_NONE;
    snprintf(plain.checkpoint_dir, sizeof plain.checkpoint_dir, "%s", dir);
    size_t n;
    free(fx_train_run(&plain, fx_world, &n));
    fx_forget(dir, 20);
    ddp_train_config c = psgd_config(0);
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    c.resume = 1;
    ddp_trainer *t = fx_create(&c, fx_world);
    int64_t resumed = -1;
    assert_int_equal(ddp_trainer_resume(t, dir, &resumed), DDP_OK);
    assert_int_equal(resumed, 10);
    ddp_powersgd *p = ddp_sync_compressor(t->sync);
    assert_false(ddp_powersgd_q_warm(p));
    for (size_t k = 0; k < t->num_params; k++)
        assert_true(ddp_powersgd_errors(p)[k] == 0.0f);
    assert_int_equal(ddp_trainer_run(t, NULL), DDP_OK);
    ddp_trainer_free(t);
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    fx_rmdir(dir);
}

int main(int argc, char **argv) {
    fx_init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(stage0_resumes_exactly),
        cmocka_unit_test(stage1_resumes_exactly),
        cmocka_unit_test(error_feedback_is_resharded),
        cmocka_unit_test(uncompressed_checkpoint_starts_the_compressor_afresh),
    };
    return fx_finish(cmocka_run_group_tests(tests, NULL, NULL));
}
