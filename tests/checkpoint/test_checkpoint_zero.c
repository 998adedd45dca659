/*
 * Checkpoints of sharded state (--zero 1, 2 and 3), under mpirun with 1, 2 and 3 ranks (3:
 * shards of unequal size):
 *  - every rank writes its shard of the optimizer state (at stage 3 of the parameters too)
 *    and rank 0 a manifest; a run killed after a checkpoint resumes from it to parameters
 *    bitwise equal to the uninterrupted run, on the same ranks and stage;
 *  - the shards re-shard: a checkpoint of N ranks resumes in a world of one (stage 0, or 2,
 *    or for a stage-3 checkpoint 3), and a one-rank checkpoint resumes on N ranks at stage
 *    1 (of stage 2) or 3 (of stage 0), to the parameters of the uninterrupted run up to
 *    float rounding (tolerance from the rounding spread);
 *  - a damaged shard, a missing shard and a shard of another save are refused on every
 *    rank with a message that names the file; shards whose manifest is missing (a save
 *    that did not complete) are ignored and the older checkpoint is used; pruning removes
 *    the shards of pruned checkpoints.
 */
#include <dirent.h>
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

#define T 20 /* steps; checkpoints every 10 */

/* AdamW with clipping and accumulation, a batch that 1, 2 and 3 ranks divide. */
static ddp_train_config zero_config(int zero) {
    ddp_train_config c = fx_config(DDP_OPTIM_ADAMW, T);
    c.global_batch = 48;
    c.accum = 2;
    c.clip_norm = 0.5f;
    c.zero = zero;
    c.checkpoint_every = 10;
    return c;
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static void remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char p[1200];
        if (e->d_name[0] == '.' && (e->d_name[1] == '\0' || e->d_name[1] == '.')) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

/* The tolerance of a comparison with the one-process run of c (no checkpoints), whose
 * parameters are `single`. */
static double tolerance(ddp_train_config c, const float *single) {
    c.checkpoint_every = 0;
    c.zero = 0;
    double spread = rounding_spread(c, fx_backend, fx_local, &fx_train, &fx_test, NULL, single);
    assert_true(spread > 0.0 && spread < 1e-3);
    return SPREAD_MARGIN * spread;
}

static void sharded_checkpoints_resume_exactly_and_reshard(int zero) {
    char dir[256];
    fx_tempdir(dir, sizeof dir);
    ddp_train_config c = zero_config(zero);
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    size_t n, n2;
    float *whole = fx_train_run(&c, fx_world, &n);
    char path[1200];
    ddp_checkpoint_shard_path(path, sizeof path, dir, 10, (uint32_t)fx_size - 1, (uint32_t)fx_size);
    assert_true(file_exists(path));

    /* Killed after step 10, resumed on the same ranks: bit for bit. */
    fx_forget(dir, 20);
    int64_t resumed;
    float *p = fx_resume_run(c, dir, fx_world, &resumed, &n2);
    assert_int_equal(resumed, 10);
    assert_int_equal(n, n2);
    assert_memory_equal(whole, p, n * sizeof(float));
    assert_same_on_all_ranks(fx_world, p, n);
    free(p);

    /* The N-rank shards in a world of one, at stage 0, or 2 (3 for a stage-3 checkpoint),
     * by rank. */
    fx_forget(dir, 20);
    ddp_train_config one = zero_config(fx_rank % 2 == 0 ? 0 : zero == 3 ? 3 : 2);
    char mine[300];
    snprintf(mine, sizeof mine, "%s.rank%d", dir, fx_rank);
    fx_copy_dir(dir, mine);
    p = fx_resume_run(one, mine, fx_local, &resumed, &n2);
    assert_int_equal(resumed, 10);
    ddp_train_config ref = zero_config(0);
    ref.checkpoint_every = 0;
    float *reference = fx_train_run(&ref, fx_local, &n2);
    double tol = tolerance(ref, reference), err = rel_error(p, whole, n);
    if (fx_rank == 0)
        print_message("--zero %d on %d ranks resumed by one process: relative error %.3g "
                      "(tolerance %.3g)\n",
                      zero, fx_size, err, tol);
    assert_true(err <= tol);
    free(p);
    remove_dir(mine);

    /* A one-rank checkpoint of stage 2 on all ranks at stage 1; for stage 3, a one-rank
     * checkpoint of stage 0 (one file, the parameters whole) on all ranks at stage 3. */
    int from = zero == 3 ? 0 : 2, to = zero == 3 ? 3 : 1;
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    char first[300];
    snprintf(first, sizeof first, "%s.one", dir);
    if (fx_rank == 0) {
        ddp_train_config w = zero_config(from);
        snprintf(w.checkpoint_dir, sizeof w.checkpoint_dir, "%s", first);
        assert_int_equal(mkdir(first, 0755), 0);
        free(fx_train_run(&w, fx_local, &n2));
        ddp_checkpoint_path(path, sizeof path, first, 20);
        assert_int_equal(unlink(path), 0);
    }
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    p = fx_resume_run(zero_config(to), first, fx_world, &resumed, &n2);
    assert_int_equal(resumed, 10);
    err = rel_error(p, reference, n);
    if (fx_rank == 0)
        print_message("one process's --zero %d checkpoint resumed by %d ranks at --zero %d: "
                      "relative error %.3g (tolerance %.3g)\n",
                      from, fx_size, to, err, tol);
    assert_true(err <= tol);
    assert_same_on_all_ranks(fx_world, p, n);
    free(p);
    free(reference);
    free(whole);
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    if (fx_rank == 0) remove_dir(first);
    /* Every rank is done with the directory before rank 0 removes it. */
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    fx_rmdir(dir);
}

static void stage1_checkpoints_resume_exactly_and_reshard(void **state) {
    sharded_checkpoints_resume_exactly_and_reshard(1);
}

static void stage2_checkpoints_resume_exactly_and_reshard(void **state) {
    sharded_checkpoints_resume_exactly_and_reshard(2);
}

/* Stage 3: the shard files hold the parameters too (the manifest none). */
static void stage3_checkpoints_resume_exactly_and_reshard(void **state) {
    sharded_checkpoints_resume_exactly_and_reshard(3);
}

/* Resuming from dir must fail on every rank; the rank(s) that read the bad file name it. */
static void assert_resume_refused(ddp_train_config c, const char *dir, const char *file) {
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    c.resume = 1;
    ddp_trainer *t = fx_create(&c, fx_world);
    int64_t resumed = -1;
    ddp_status s = ddp_trainer_resume(t, dir, &resumed);
    assert_int_not_equal(s, DDP_OK);
    if (s != DDP_ERR_REMOTE) assert_msg_has(file);
    ddp_error_clear();
    ddp_trainer_free(t);
}

static void bad_shards_are_refused_naming_the_file(void **state) {
    char dir[256];
    fx_tempdir(dir, sizeof dir);
    ddp_train_config c = zero_config(1);
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    size_t n;
    free(fx_train_run(&c, fx_world, &n));
    fx_forget(dir, 20);
    char shard[1200], name[64];
    uint32_t last = (uint32_t)fx_size - 1;
    ddp_checkpoint_shard_path(shard, sizeof shard, dir, 10, last, (uint32_t)fx_size);
    snprintf(name, sizeof name, "ckpt-00000010.shard-%u-of-%d.ddp", last, fx_size);
    size_t len;
    unsigned char *good = fx_slurp(shard, &len);
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);

    /* One byte of the optimizer state flipped. */
    if (fx_rank == 0) {
        unsigned char *bad = malloc(len);
        memcpy(bad, good, len);
        bad[len - 100] ^= 0x10;
        FILE *f = fopen(shard, "wb");
        assert_int_equal(fwrite(bad, 1, len, f), len);
        fclose(f);
        free(bad);
    }
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    assert_resume_refused(c, dir, name);

    /* The shard gone. */
    if (fx_rank == 0) unlink(shard);
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    assert_resume_refused(c, dir, name);

    /* An intact shard of another save of the same step and ranks (another seed). */
    ddp_train_config other = c;
    other.seed = 7;
    char odir[300];
    snprintf(odir, sizeof odir, "%s.other", dir);
    if (fx_rank == 0) assert_int_equal(mkdir(odir, 0755), 0);
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    snprintf(other.checkpoint_dir, sizeof other.checkpoint_dir, "%s", odir);
    other.max_steps = 10;
    free(fx_train_run(&other, fx_world, &n));
    char oshard[1200];
    ddp_checkpoint_shard_path(oshard, sizeof oshard, odir, 10, last, (uint32_t)fx_size);
    if (fx_rank == 0) fx_copy(oshard, shard);
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    assert_resume_refused(c, dir, name);

    /* Put back, it resumes. */
    if (fx_rank == 0) {
        FILE *f = fopen(shard, "wb");
        assert_int_equal(fwrite(good, 1, len, f), len);
        fclose(f);
    }
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    int64_t resumed;
    free(fx_resume_run(c, dir, fx_world, &resumed, &n));
    assert_int_equal(resumed, 10);
    free(good);
    if (fx_rank == 0) remove_dir(odir);
    /* Every rank is done with the directory before rank 0 removes it. */
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    fx_rmdir(dir);
}

static void shards_without_manifest_are_ignored_and_pruned(void **state) {
    char dir[256];
    fx_tempdir(dir, sizeof dir);
    ddp_train_config c = zero_config(2);
    c.keep = 1;
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    size_t n;
    free(fx_train_run(&c, fx_world, &n));
    /* --keep 1: only step 20 is left, its shards with it. */
    char path[1200];
    ddp_checkpoint_shard_path(path, sizeof path, dir, 10, 0, (uint32_t)fx_size);
    assert_false(file_exists(path));
    ddp_checkpoint_shard_path(path, sizeof path, dir, 20, 0, (uint32_t)fx_size);
    assert_true(file_exists(path));
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);

    /* The manifest of step 20 lost (as if the save had been killed before its rename):
     * nothing left to resume, so the run starts afresh, and its first save prunes the
     * orphaned shards of step 20 once its own step-20 checkpoint is in place. */
    char orphan[1200];
    ddp_checkpoint_shard_path(orphan, sizeof orphan, dir, 5, 0, (uint32_t)fx_size);
    if (fx_rank == 0) {
        ddp_checkpoint_path(path, sizeof path, dir, 20);
        assert_int_equal(unlink(path), 0);
        /* And an orphan of an earlier step, which the first save must remove. */
        ddp_checkpoint_shard_path(path, sizeof path, dir, 20, 0, (uint32_t)fx_size);
        fx_copy(path, orphan);
    }
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    int64_t resumed;
    free(fx_resume_run(c, dir, fx_world, &resumed, &n));
    assert_int_equal(resumed, 0);
    ddp_checkpoint_path(path, sizeof path, dir, 20);
    assert_true(file_exists(path));
    assert_false(file_exists(orphan));
    /* Every rank is done with the directory before rank 0 removes it. */
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
    fx_rmdir(dir);
}

int main(int argc, char **argv) {
    fx_init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(stage1_checkpoints_resume_exactly_and_reshard),
        cmocka_unit_test(stage2_checkpoints_resume_exactly_and_reshard),
        cmocka_unit_test(stage3_checkpoints_resume_exactly_and_reshard),
        cmocka_unit_test(bad_shards_are_refused_naming_the_file),
        cmocka_unit_test(shards_without_manifest_are_ignored_and_pruned),
    };
    return fx_finish(cmocka_run_group_tests(tests, NULL, NULL));
}
