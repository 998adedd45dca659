/*
 * Resuming, under mpirun with 1 and 2 ranks:
 *  - stopping half-way, freeing the trainer and resuming in a new one ends with
 *    parameters bitwise equal to an uninterrupted run, for SGD and AdamW;
 *  - the checkpoints the run loop writes resume bit-exactly too (a run killed after a
 *    checkpoint, also one at an epoch boundary);
 *  - a checkpoint of a one-rank run resumes on all ranks (with accumulation, even) to
 *    the parameters of the uninterrupted one-rank run, up to float rounding;
 *  - a failed write stops every rank with a message instead of hanging;
 *  - --resume with no checkpoint starts fresh; --keep leaves the newest and never the
 *    checkpoint just written; a fresh run refuses a directory that holds another run's
 *    checkpoints.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_util.h"

#include "checkpoint/ckpt_fixture.h"

#define T 30 /* steps: one and a half epochs */

static void step_n(ddp_trainer *t, int n) {
    ddp_step_stats st;
    for (int i = 0; i < n; i++)
        if (ddp_trainer_step(t, &st) != DDP_OK) fail_msg("step: %s", ddp_error_trace_str());
}

static void stop_half_way_and_resume(ddp_train_config c) {
    char dir[256];
    fx_tempdir(dir, sizeof dir);
    size_t n, n2;
    float *whole = fx_train_run(&c, fx_world, &n);

    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    ddp_trainer *t = fx_create(&c, fx_world);
    step_n(t, T / 2 - 5);
    assert_int_equal(ddp_trainer_save_checkpoint(t), DDP_OK);
    step_n(t, 5);
    assert_int_equal(ddp_trainer_save_checkpoint(t), DDP_OK);
    ddp_trainer_free(t);

    c.resume = 1;
    t = fx_create(&c, fx_world);
    int64_t resumed = -1;
    assert_int_equal(ddp_trainer_resume(t, dir, &resumed), DDP_OK);
    assert_int_equal(resumed, T / 2);
    assert_int_equal(ddp_trainer_run(t, NULL), DDP_OK);
    float *resumed_p = fx_params(t, &n2);
    ddp_trainer_free(t);
    assert_int_equal(n, n2);
    assert_memory_equal(whole, resumed_p, n * sizeof(float));
    assert_same_on_all_ranks(fx_world, resumed_p, n);
    free(whole);
    free(resumed_p);
    fx_rmdir(dir);
}

/* Mixed precision: the weights' bf16 copy is derived, not saved; the resumed run rebuilds
 * it from the fp32 masters and goes on to the same bits (the products on the CPU's bf16
 * kernels where it has them, else emulated: the same either way for this test). */
static void bf16_resume_half_way_is_bitwise_equal_to_uninterrupted(void **state) {
    ddp_backend *fp32 = fx_backend, *bf16 = NULL;
    ddp_backend_options o = {.device = DDP_DEVICE_CPU, .threads = 1, .math = DDP_MATH_BF16};
    assert_int_equal(ddp_backend_create(&o, &bf16), DDP_OK);
    fx_backend = bf16;
    ddp_train_config c = fx_gpt_config(T);
    c.math = DDP_MATH_BF16;
    stop_half_way_and_resume(c);
    c = fx_config(DDP_OPTIM_ADAMW, T);
    c.math = DDP_MATH_BF16;
    stop_half_way_and_resume(c);
    fx_backend = fp32;
    ddp_backend_free(bf16);
}

static void resume_half_way_is_bitwise_equal_to_uninterrupted_sgd(void **state) {
    stop_half_way_and_resume(fx_config(DDP_OPTIM_SGD, T));
}

static void resume_half_way_is_bitwise_equal_to_uninterrupted_adamw(void **state) {
    stop_half_way_and_resume(fx_config(DDP_OPTIM_ADAMW, T));
}

static void gpt_resume_half_way_is_bitwise_equal_to_uninterrupted(void **state) {
    stop_half_way_and_resume(fx_gpt_config(T));
}

static void cnn_resume_half_way_is_bitwise_equal_to_uninterrupted(void **state) {
    /* The running statistics of batch norm (buffers) are in the checkpoint too: a run
     * without them would normalize differently in evaluation and drift in training. */
    ddp_train_config c = fx_config(DDP_OPTIM_SGD, T);
    ddp_train_config_defaults_for(&c, DDP_MODEL_CNN);
    c.model.conv.v[0] = 3;
    c.model.conv.v[1] = 4;
    c.model.hidden.v[0] = 6;
    c.global_batch = 32;
    c.max_steps = T;
    c.sched.warmup_steps = 5;
    c.log_every = 5;
    c.quiet = 1;
    stop_half_way_and_resume(c);
}

/* Removes the checkpoints after `step`, as if the run had been killed before writing
 * them. */
static void forget_after(const char *dir, int64_t step) {
    if (fx_rank != 0) return;
    for (int64_t s = step + 1; s <= T; s++) {
        char path[1200];
        ddp_checkpoint_path(path, sizeof path, dir, s);
        unlink(path);
    }
}

static void run_loop_checkpoints_resume_after_a_kill(void **state) {
    char dir[256], listed[256];
    fx_tempdir(dir, sizeof dir);
    ddp_train_config c = fx_config(DDP_OPTIM_ADAMW, T);
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    c.checkpoint_every = 10;
    c.keep = 0;
    size_t n, n2;
    float *whole = fx_train_run(&c, fx_world, &n);
    if (fx_rank == 0) {
        fx_list(dir, listed, sizeof listed);
        assert_string_equal(listed, "10,20,30");
    }
    /* 20 is the first step of the second epoch: the sampler must reshuffle. */
    for (int64_t cut = 10; cut <= 20; cut += 10) {
        forget_after(dir, cut);
        c.resume = 1;
        ddp_trainer *t = fx_create(&c, fx_world);
        int64_t resumed = -1;
        assert_int_equal(ddp_trainer_resume(t, dir, &resumed), DDP_OK);
        assert_int_equal(resumed, cut);
        assert_int_equal(ddp_trainer_run(t, NULL), DDP_OK);
        float *p = fx_params(t, &n2);
        ddp_trainer_free(t);
        assert_memory_equal(whole, p, n * sizeof(float));
        free(p);
        /* The resumed run wrote the later checkpoints again, bit for bit the same, so the
         * next cut resumes from one that a resumed run wrote. */
    }
    free(whole);
    fx_rmdir(dir);
}

static void one_rank_checkpoint_resumes_on_all_ranks_with(ddp_train_config c) {
    char dir[256];
    fx_tempdir(dir, sizeof dir);
    size_t n, n2;
    /* The reference: one process over the whole run. */
    float *single = fx_train_run(&c, fx_local, &n);

    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    if (fx_rank == 0) {
        ddp_trainer *t = fx_create(&c, fx_local);
        step_n(t, T / 2);
        assert_int_equal(ddp_trainer_save_checkpoint(t), DDP_OK);
        ddp_trainer_free(t);
    }
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);

    c.resume = 1;
    c.accum = 2; /* the split of the batch may change as well */
    ddp_trainer *t = fx_create(&c, fx_world);
    int64_t resumed = -1;
    assert_int_equal(ddp_trainer_resume(t, dir, &resumed), DDP_OK);
    assert_int_equal(resumed, T / 2);
    assert_int_equal(ddp_trainer_run(t, NULL), DDP_OK);
    float *p = fx_params(t, &n2);
    ddp_trainer_free(t);
    assert_int_equal(n, n2);
    double err = rel_error(p, single, n);
    /* Other ranks and micro-batches sum the gradients in another order: within the
     * rounding spread of this run on this machine (test_util.h). */
    c.resume = 0;
    c.accum = 0;
    c.checkpoint_dir[0] = '\0';
    train_extra x = {.text = &fx_text};
    double tol = SPREAD_MARGIN *
                 rounding_spread(c, fx_backend, fx_local, &fx_train, &fx_test, x.text, single);
    if (fx_rank == 0)
        print_message("%s, %d rank(s) from a 1-rank checkpoint: relative error %.3g (tolerance "
                      "%.3g)\n",
                      ddp_model_kind_name(c.model.kind), fx_size, err, tol);
    assert_true(err <= tol);
    assert_same_on_all_ranks(fx_world, p, n);
    free(single);
    free(p);
    fx_rmdir(dir);
}

static void one_rank_checkpoint_resumes_on_all_ranks(void **state) {
    one_rank_checkpoint_resumes_on_all_ranks_with(fx_config(DDP_OPTIM_SGD, T));
}

static void gpt_one_rank_checkpoint_resumes_on_all_ranks(void **state) {
    one_rank_checkpoint_resumes_on_all_ranks_with(fx_gpt_config(T));
}

static void failed_write_stops_every_rank_with_a_message(void **state) {
    char dir[256], file[300];
    fx_tempdir(dir, sizeof dir);
    /* A directory below a regular file can be neither created nor written, even by
     * root. */
    snprintf(file, sizeof file, "%s/file", dir);
    if (fx_rank == 0) {
        FILE *f = fopen(file, "w");
        assert_non_null(f);
        fclose(f);
    }
    ddp_train_config c = fx_config(DDP_OPTIM_SGD, 5);
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s/ckpt", file);
    ddp_trainer *t = fx_create(&c, fx_world);
    step_n(t, 1);
    ddp_status s = ddp_trainer_save_checkpoint(t);
    if (fx_rank == 0) {
        assert_int_equal(s, DDP_ERR_IO);
        assert_non_null(strstr(ddp_error_message(), c.checkpoint_dir));
    } else {
        assert_int_equal(s, DDP_ERR_REMOTE);
        assert_non_null(strstr(ddp_error_message(), "rank 0"));
    }
    /* The run loop finds out before the first step. */
    s = ddp_trainer_run(t, NULL);
    assert_int_equal(s, fx_rank == 0 ? DDP_ERR_IO : DDP_ERR_REMOTE);
    ddp_trainer_free(t);
    fx_rmdir(dir);
}

static void resume_without_checkpoints_starts_fresh(void **state) {
    char dir[256], missing[300];
    fx_tempdir(dir, sizeof dir);
    snprintf(missing, sizeof missing, "%s/not-yet", dir);
    ddp_train_config c = fx_config(DDP_OPTIM_SGD, 10);
    size_t n, n2;
    float *fresh = fx_train_run(&c, fx_world, &n);
    const char *dirs[2] = {dir, missing};
    for (int i = 0; i < 2; i++) {
        snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dirs[i]);
        c.resume = 1;
        ddp_trainer *t = fx_create(&c, fx_world);
        int64_t resumed = -1;
        assert_int_equal(ddp_trainer_resume(t, dirs[i], &resumed), DDP_OK);
        assert_int_equal(resumed, 0);
        assert_int_equal(ddp_trainer_run(t, NULL), DDP_OK);
        float *p = fx_params(t, &n2);
        ddp_trainer_free(t);
        assert_memory_equal(fresh, p, n * sizeof(float));
        free(p);
    }
    free(fresh);
    fx_rmdir(missing);
    fx_rmdir(dir);
}

static void keep_two_leaves_the_two_newest_and_no_temporary_files(void **state) {
    char dir[256], listed[256], stale[300];
    fx_tempdir(dir, sizeof dir);
    /* What a write killed before its rename leaves behind. */
    snprintf(stale, sizeof stale, "%s/.ckpt-00000003.ddp.tmp", dir);
    if (fx_rank == 0) {
        FILE *f = fopen(stale, "w");
        assert_non_null(f);
        fputs("partial", f);
        fclose(f);
    }
    ddp_train_config c = fx_config(DDP_OPTIM_SGD, 23);
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    c.checkpoint_every = 5;
    c.keep = 2;
    size_t n;
    free(fx_train_run(&c, fx_world, &n));
    if (fx_rank == 0) {
        /* Every 5 steps and after the last: 5, 10, 15, 20, 23; the two newest stay. */
        fx_list(dir, listed, sizeof listed);
        assert_string_equal(listed, "20,23");
        assert_int_equal(access(stale, F_OK), -1);
    }
    fx_rmdir(dir);
}

static void pruning_keeps_the_checkpoint_just_written_after_loading_an_older_one(void **state) {
    char dir[256], listed[256], path[1200];
    fx_tempdir(dir, sizeof dir);
    ddp_train_config c = fx_config(DDP_OPTIM_SGD, 20);
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    c.checkpoint_every = 5;
    c.keep = 0;
    size_t n;
    free(fx_train_run(&c, fx_world, &n));
    /* Back to step 5 on purpose, then save there with --keep 1: the later checkpoints
     * are not older ones, and the one just written must survive. */
    c.keep = 1;
    ddp_trainer *t = fx_create(&c, fx_world);
    ddp_checkpoint_path(path, sizeof path, dir, 5);
    assert_int_equal(ddp_trainer_load_checkpoint(t, path), DDP_OK);
    step_n(t, 1);
    assert_int_equal(ddp_trainer_save_checkpoint(t), DDP_OK);
    if (fx_rank == 0) {
        fx_list(dir, listed, sizeof listed);
        assert_string_equal(listed, "6,10,15,20");
    }
    ddp_trainer_free(t);
    fx_rmdir(dir);
}

static void fresh_run_refuses_a_directory_with_checkpoints(void **state) {
    char dir[256];
    fx_tempdir(dir, sizeof dir);
    ddp_train_config c = fx_config(DDP_OPTIM_SGD, 5);
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    size_t n;
    free(fx_train_run(&c, fx_world, &n));
    ddp_trainer *t = fx_create(&c, fx_world);
    ddp_status s = ddp_trainer_run(t, NULL);
    if (fx_rank == 0) {
        assert_int_equal(s, DDP_ERR_INVALID_ARG);
        assert_non_null(strstr(ddp_error_message(), "--resume"));
        assert_non_null(strstr(ddp_error_message(), dir));
    } else {
        assert_int_equal(s, DDP_ERR_REMOTE);
    }
    ddp_trainer_free(t);
    fx_rmdir(dir);
}

int main(int argc, char **argv) {
    fx_init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(resume_half_way_is_bitwise_equal_to_uninterrupted_sgd),
        cmocka_unit_test(resume_half_way_is_bitwise_equal_to_uninterrupted_adamw),
        cmocka_unit_test(run_loop_checkpoints_resume_after_a_kill),
        cmocka_unit_test(one_rank_checkpoint_resumes_on_all_ranks),
        cmocka_unit_test(gpt_resume_half_way_is_bitwise_equal_to_uninterrupted),
        cmocka_unit_test(cnn_resume_half_way_is_bitwise_equal_to_uninterrupted),
        cmocka_unit_test(bf16_resume_half_way_is_bitwise_equal_to_uninterrupted),
        cmocka_unit_test(gpt_one_rank_checkpoint_resumes_on_all_ranks),
        cmocka_unit_test(failed_write_stops_every_rank_with_a_message),
        cmocka_unit_test(resume_without_checkpoints_starts_fresh),
        cmocka_unit_test(keep_two_leaves_the_two_newest_and_no_temporary_files),
        cmocka_unit_test(pruning_keeps_the_checkpoint_just_written_after_loading_an_older_one),
        cmocka_unit_test(fresh_run_refuses_a_directory_with_checkpoints),
    };
    return fx_finish(cmocka_run_group_tests(tests, NULL, NULL));
}
