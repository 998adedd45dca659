/*
 * Checkpoint files that must not be trusted, under mpirun with 1 and 2 ranks:
 *  - one flipped byte anywhere (magic, version, header, parameters, optimizer state,
 *    CRC) or a truncation is refused with DDP_ERR_FORMAT naming the file, and leaves the
 *    trainer as it was; an intact file of another format version is unsupported;
 *  - a damaged newest checkpoint is skipped (and moved aside) for the previous one,
 *    which resumes bit-exactly; a temporary file left by an interrupted write is
 *    ignored; when every checkpoint is damaged, resuming is refused naming the newest;
 *  - a checkpoint of other settings (hidden sizes, learning rate, seed, global batch) is
 *    refused naming the setting, while run length and logging may change.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "checkpoint/ckpt_fixture.h"
#include "train/checkpoint_impl.h" /* the header's fixed size, to write old formats */

#define T 8
static char master[256];    /* checkpoints of steps 4 and 8 of one run */
static float *final_params; /* that run's parameters after step 8 */
static size_t num_params;

static ddp_train_config config(void) {
    ddp_train_config c = fx_config(DDP_OPTIM_SGD, T);
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", master);
    c.checkpoint_every = 4;
    c.keep = 0;
    return c;
}

static int make_master(void **state) {
    fx_tempdir(master, sizeof master);
    ddp_train_config c = config();
    final_params = fx_train_run(&c, fx_world, &num_params);
    return 0;
}

static int remove_master(void **state) {
    fx_rmdir(master);
    free(final_params);
    return 0;
}

static void master_path(int64_t step, char *out, size_t cap) {
    ddp_checkpoint_path(out, cap, master, step);
}

static void spill(const char *path, const void *buf, size_t len) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* A trainer for the loading tests, at its initial parameters. */
static ddp_trainer *fresh_trainer(ddp_train_config c) {
    c.resume = 1;
    return fx_create(&c, fx_world);
}

/* Asserts the outcome of a collective load: `want` on rank 0 with a message containing
 * `needle`, DDP_ERR_REMOTE elsewhere. */
static void assert_refused(ddp_status s, ddp_status want, const char *needle) {
    if (fx_rank == 0) {
        if (s != want)
            fail_msg("got %s, expected %s: %s", ddp_status_str(s), ddp_status_str(want),
                     ddp_error_message());
        if (!strstr(ddp_error_message(), needle))
            fail_msg("message does not name '%s': %s", needle, ddp_error_message());
    } else {
        assert_int_equal(s, DDP_ERR_REMOTE);
    }
}

static void assert_params(ddp_trainer *t, const float *want) {
    size_t n;
    float *p = fx_params(t, &n);
    assert_int_equal(n, num_params);
    assert_memory_equal(p, want, n * sizeof(float));
    free(p);
}

static void flipped_byte_anywhere_is_refused_naming_the_file(void **state) {
    char dir[256], src[1200], dst[1200];
    fx_tempdir(dir, sizeof dir);
    master_path(T, src, sizeof src);
    ddp_checkpoint_path(dst, sizeof dst, dir, T);
    enum { NPOS = 10 };
    uint64_t pos[NPOS] = {0};
    unsigned char *bytes = NULL;
    size_t len = 0;
    if (fx_rank == 0) {
        bytes = fx_slurp(src, &len);
        ddp_checkpoint_info h;
        assert_int_equal(ddp_checkpoint_parse(bytes, len, src, &h), DDP_OK);
        size_t model = (size_t)((const unsigned char *)h.model - bytes);
        size_t params = (size_t)((const unsigned char *)h.params - bytes);
        size_t states = (size_t)((const unsigned char *)h.states - bytes);
        uint64_t p[NPOS] = {
            0,                        /* magic */
            9,                        /* version */
            13,                       /* fingerprint */
            30,                       /* settings text */
            model + h.model_len + 21, /* the step counter */
            params,                   /* first parameter */
            params + 4 * num_params / 2,
            states + 5, /* momentum */
            len - 5,    /* last byte of the optimizer state */
            len - 1,    /* CRC */
        };
        memcpy(pos, p, sizeof pos);
    }
    assert_int_equal(ddp_comm_broadcast(fx_world, pos, NPOS, DDP_U64, 0), DDP_OK);
    ddp_trainer *t = fresh_trainer(config());
    size_t n;
    float *initial = fx_params(t, &n);
    for (int i = 0; i < NPOS; i++) {
        if (fx_rank == 0) {
            bytes[pos[i]] ^= 0x5a;
            spill(dst, bytes, len);
            ddp_checkpoint_info h;
            assert_int_equal(ddp_checkpoint_parse(bytes, len, dst, &h), DDP_ERR_FORMAT);
            bytes[pos[i]] ^= 0x5a;
        }
        assert_refused(ddp_trainer_load_checkpoint(t, dst), DDP_ERR_FORMAT, dst);
        assert_params(t, initial);
    }
    /* The same file, intact, loads: the refusals were about the flipped bytes. */
    if (fx_rank == 0) spill(dst, bytes, len);
    assert_int_equal(ddp_trainer_load_checkpoint(t, dst), DDP_OK);
    assert_params(t, final_params);
    ddp_trainer_free(t);
    free(initial);
    free(bytes);
    fx_rmdir(dir);
}

static void truncated_file_is_refused(void **state) {
    char dir[256], src[1200], dst[1200];
    fx_tempdir(dir, sizeof dir);
    master_path(T, src, sizeof src);
    ddp_checkpoint_path(dst, sizeof dst, dir, T);
    size_t len = 0;
    unsigned char *bytes = fx_rank == 0 ? fx_slurp(src, &len) : NULL;
    uint64_t full = len;
    assert_int_equal(ddp_comm_broadcast(fx_world, &full, 1, DDP_U64, 0), DDP_OK);
    const uint64_t cut[] = {0, 5, 8, 60, 150, full / 2, full - 4, full - 1};
    ddp_trainer *t = fresh_trainer(config());
    for (size_t i = 0; i < sizeof cut / sizeof *cut; i++) {
        if (fx_rank == 0) spill(dst, bytes, cut[i]);
        ddp_status s = ddp_trainer_load_checkpoint(t, dst);
        assert_refused(s, DDP_ERR_FORMAT, cut[i] >= 8 ? "truncated" : dst);
    }
    ddp_trainer_free(t);
    free(bytes);
    fx_rmdir(dir);
}

static void other_format_version_is_refused_as_unsupported(void **state) {
    char dir[256], src[1200], dst[1200];
    fx_tempdir(dir, sizeof dir);
    master_path(T, src, sizeof src);
    ddp_checkpoint_path(dst, sizeof dst, dir, T);
    if (fx_rank == 0) {
        size_t len;
        unsigned char *b = fx_slurp(src, &len);
        b[8] = DDP_CKPT_VERSION + 1; /* with a CRC that matches: intact, just not ours */
        uint32_t crc = ddp_crc32(0, b, len - 4);
        for (int i = 0; i < 4; i++)
            b[len - 4 + i] = (unsigned char)(crc >> (8 * i));
        spill(dst, b, len);
        free(b);
    }
    ddp_trainer *t = fresh_trainer(config());
    char want[32];
    snprintf(want, sizeof want, "format version %u", DDP_CKPT_VERSION + 1);
    assert_refused(ddp_trainer_load_checkpoint(t, dst), DDP_ERR_UNSUPPORTED, want);
    ddp_trainer_free(t);
    fx_rmdir(dir);
}

/* Writes to dst the current-format checkpoint src as format `version`, whose header ends
 * after `fixed` bytes of fields (1: 108, no model buffers; 2: 116, no batch schedule nor
 * noise scale); the model must have no buffers. */
static void write_old_format(const char *src, const char *dst, unsigned version, size_t fixed) {
    size_t len;
    unsigned char *b = fx_slurp(src, &len);
    uint32_t slen = b[16] | b[17] << 8 | b[18] << 16 | (uint32_t)b[19] << 24;
    uint32_t mlen =
        b[20 + slen] | b[21 + slen] << 8 | b[22 + slen] << 16 | (uint32_t)b[23 + slen] << 24;
    size_t fields = fixed + slen + mlen, old_head = (fields + 63) / 64 * 64;
    size_t head = (DDP_CKPT_FIXED_BYTES + slen + mlen + DDP_CKPT_ALIGN - 1) / DDP_CKPT_ALIGN *
                  DDP_CKPT_ALIGN,
           data = len - 4 - head;
    unsigned char *old = calloc(1, old_head + data + 4);
    memcpy(old, b, fields);
    old[8] = (unsigned char)version;
    memcpy(old + old_head, b + head, data);
    uint32_t crc = ddp_crc32(0, old, old_head + data);
    for (int i = 0; i < 4; i++)
        old[old_head + data + i] = (unsigned char)(crc >> (8 * i));
    spill(dst, old, old_head + data + 4);
    free(old);
    free(b);
}

/* Checkpoints of format versions 1 (no model buffers) and 2 (no batch schedule or noise
 * scale: a fixed batch is assumed, the noise scale's averages start afresh) still resume:
 * made here from the current file of a model without buffers. */
static void resume_old_format(unsigned version, size_t fixed) {
    char dir[256], src[1200], dst[1200];
    fx_tempdir(dir, sizeof dir);
    master_path(4, src, sizeof src);
    ddp_checkpoint_path(dst, sizeof dst, dir, 4);
    if (fx_rank == 0) write_old_format(src, dst, version, fixed);
    ddp_train_config c = config();
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    ddp_trainer *t = fresh_trainer(c);
    int64_t resumed = -1;
    assert_int_equal(ddp_trainer_resume(t, dir, &resumed), DDP_OK);
    assert_int_equal(resumed, 4);
    assert_int_equal(ddp_trainer_run(t, NULL), DDP_OK);
    assert_params(t, final_params);
    ddp_trainer_free(t);
    fx_rmdir(dir);
}

static void format_version_1_still_resumes(void **state) { resume_old_format(1, 108); }
static void format_version_2_still_resumes(void **state) { resume_old_format(2, 116); }

/* dir gets the intact checkpoint of step 4 and a damaged one of step 8 (`how`: 0
 * truncated, 1 a flipped byte). */
static void damaged_newest(const char *dir, int how) {
    char src[1200], dst[1200];
    master_path(4, src, sizeof src);
    ddp_checkpoint_path(dst, sizeof dst, dir, 4);
    fx_copy(src, dst);
    if (fx_rank != 0) return;
    master_path(T, src, sizeof src);
    ddp_checkpoint_path(dst, sizeof dst, dir, T);
    size_t len;
    unsigned char *b = fx_slurp(src, &len);
    if (how == 0)
        len /= 2;
    else
        b[len / 2] ^= 1;
    spill(dst, b, len);
    free(b);
}

static void damaged_newest_falls_back_to_the_previous_checkpoint(void **state) {
    for (int how = 0; how < 2; how++) {
        char dir[256];
        fx_tempdir(dir, sizeof dir);
        damaged_newest(dir, how);
        ddp_train_config c = config();
        snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
        ddp_trainer *t = fresh_trainer(c);
        int64_t resumed = -1;
        assert_int_equal(ddp_trainer_resume(t, dir, &resumed), DDP_OK);
        assert_int_equal(resumed, 4);
        /* The damaged file is kept for inspection, under a name no resume picks. */
        if (fx_rank == 0) {
            char damaged[1300], listed[64];
            ddp_checkpoint_path(damaged, sizeof damaged, dir, T);
            strcat(damaged, ".damaged");
            assert_int_equal(access(damaged, F_OK), 0);
            fx_list(dir, listed, sizeof listed);
            assert_string_equal(listed, "4");
        }
        assert_int_equal(ddp_trainer_run(t, NULL), DDP_OK);
        assert_params(t, final_params);
        ddp_trainer_free(t);
        fx_rmdir(dir);
    }
}

static void leftover_temporary_file_is_ignored(void **state) {
    char dir[256], src[1200], dst[1200], tmp[1200];
    fx_tempdir(dir, sizeof dir);
    for (int64_t step = 4; step <= T; step += 4) {
        master_path(step, src, sizeof src);
        ddp_checkpoint_path(dst, sizeof dst, dir, step);
        fx_copy(src, dst);
    }
    /* A write of step 12 killed before its rename. */
    snprintf(tmp, sizeof tmp, "%s/.ckpt-00000012.ddp.tmp", dir);
    if (fx_rank == 0) spill(tmp, "DDPCKPT", 8);
    ddp_train_config c = config();
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    ddp_trainer *t = fresh_trainer(c);
    int64_t resumed = -1;
    assert_int_equal(ddp_trainer_resume(t, dir, &resumed), DDP_OK);
    assert_int_equal(resumed, T);
    assert_params(t, final_params);
    ddp_trainer_free(t);
    fx_rmdir(dir);
}

static void all_checkpoints_damaged_is_refused_naming_the_newest(void **state) {
    char dir[256], newest[1200], older[1200], listed[64];
    fx_tempdir(dir, sizeof dir);
    damaged_newest(dir, 1);
    ddp_checkpoint_path(newest, sizeof newest, dir, T);
    ddp_checkpoint_path(older, sizeof older, dir, 4);
    if (fx_rank == 0) {
        size_t len;
        unsigned char *b = fx_slurp(older, &len);
        spill(older, b, len - 1);
        free(b);
    }
    ddp_train_config c = config();
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    ddp_trainer *t = fresh_trainer(c);
    int64_t resumed = -1;
    assert_refused(ddp_trainer_resume(t, dir, &resumed), DDP_ERR_FORMAT, newest);
    /* A refusal changes nothing on disk. */
    if (fx_rank == 0) {
        fx_list(dir, listed, sizeof listed);
        assert_string_equal(listed, "4,8");
    }
    ddp_trainer_free(t);
    fx_rmdir(dir);
}

/* Resuming the master checkpoints with a changed configuration. */
static ddp_status resume_changed(ddp_train_config c, int64_t *resumed) {
    c.resume = 1;
    ddp_trainer *t = fx_create(&c, fx_world);
    ddp_status s = ddp_trainer_resume(t, master, resumed);
    ddp_trainer_free(t);
    return s;
}

static void other_hidden_sizes_are_refused_naming_the_setting(void **state) {
    ddp_train_config c = config();
    c.model.hidden.v[0] = 32;
    assert_refused(resume_changed(c, NULL), DDP_ERR_MISMATCH, "'hidden' (--hidden)");
}

static void other_learning_rate_is_refused_naming_the_setting(void **state) {
    ddp_train_config c = config();
    c.sched.base_lr = 0.05f;
    assert_refused(resume_changed(c, NULL), DDP_ERR_MISMATCH, "'lr' (--lr) differs: 0.1 in");
}

static void other_seed_is_refused_naming_the_setting(void **state) {
    ddp_train_config c = config();
    c.seed = 43;
    assert_refused(resume_changed(c, NULL), DDP_ERR_MISMATCH, "'seed'");
}

static void other_global_batch_is_refused(void **state) {
    ddp_train_config c = config();
    c.global_batch = 64;
    assert_refused(resume_changed(c, NULL), DDP_ERR_MISMATCH, "global batch 32");
}

static void run_length_and_logging_may_change_on_resume(void **state) {
    ddp_train_config c = config();
    c.max_steps = 12;
    c.log_every = 1;
    c.eval_every = 3;
    c.check_sync = 2;
    c.checkpoint_every = 0;
    c.accum = 2;
    int64_t resumed = -1;
    assert_int_equal(resume_changed(c, &resumed), DDP_OK);
    assert_int_equal(resumed, T);
}

int main(int argc, char **argv) {
    fx_init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(flipped_byte_anywhere_is_refused_naming_the_file),
        cmocka_unit_test(truncated_file_is_refused),
        cmocka_unit_test(other_format_version_is_refused_as_unsupported),
        cmocka_unit_test(format_version_1_still_resumes),
        cmocka_unit_test(format_version_2_still_resumes),
        cmocka_unit_test(damaged_newest_falls_back_to_the_previous_checkpoint),
        cmocka_unit_test(leftover_temporary_file_is_ignored),
        cmocka_unit_test(all_checkpoints_damaged_is_refused_naming_the_newest),
        cmocka_unit_test(other_hidden_sizes_are_refused_naming_the_setting),
        cmocka_unit_test(other_learning_rate_is_refused_naming_the_setting),
        cmocka_unit_test(other_seed_is_refused_naming_the_setting),
        cmocka_unit_test(other_global_batch_is_refused),
        cmocka_unit_test(run_length_and_logging_may_change_on_resume),
    };
    return fx_finish(cmocka_run_group_tests(tests, make_master, remove_master));
}
