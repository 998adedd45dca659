/* The checkpoint tests' shared set-up and helpers (see ckpt_fixture.h). */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "checkpoint/ckpt_fixture.h"
#include "test_util.h"
#include "train/synthetic.h"

ddp_backend *fx_backend;
ddp_comm *fx_world, *fx_local;
ddp_dataset fx_train, fx_test;
ddp_text fx_text;
int fx_rank, fx_size;

void fx_init(int *argc, char ***argv) {
    if (ddp_mpi_init(argc, argv) != DDP_OK) abort();
    ddp_backend_options bo = {.device = DDP_DEVICE_CPU, .threads = 1};
    if (ddp_backend_create(&bo, &fx_backend) != DDP_OK ||
        ddp_comm_create(DDP_COMM_MPI, fx_backend, &fx_world) != DDP_OK ||
        ddp_comm_create(DDP_COMM_LOCAL, fx_backend, &fx_local) != DDP_OK) {
        fprintf(stderr, "set-up failed: %s\n", ddp_error_trace_str());
        abort();
    }
    fx_rank = ddp_comm_rank(fx_world);
    fx_size = ddp_comm_size(fx_world);
    /* Warnings stay on: the fallback tests print theirs, which is worth seeing. */
    ddp_log_init(fx_rank, fx_size, DDP_LOG_WARN);
    /* 640 samples in batches of 32: 20 steps per epoch, so runs cross an epoch. */
    synthetic_dataset(&fx_train, 640, 20, 4, 7);
    synthetic_dataset(&fx_test, 200, 20, 4, 8);
    /* 4 x 5 images for the CNN (the MLP does not look at the geometry). */
    fx_train.height = fx_test.height = 4;
    fx_train.width = fx_test.width = 5;
    /* 2700 training bytes in batches of 8 windows of 8: 42 steps per epoch. */
    synthetic_text(&fx_text, 3000, 9);
}

int fx_finish(int failed) {
    int any = failed;
    ddp_comm_allreduce(fx_world, &any, 1, DDP_I32, DDP_MAX);
    ddp_dataset_free(&fx_train);
    ddp_dataset_free(&fx_test);
    ddp_text_free(&fx_text);
    ddp_comm_free(fx_local);
    ddp_comm_free(fx_world);
    ddp_backend_free(fx_backend);
    ddp_mpi_finalize();
    return any ? 1 : 0;
}

ddp_train_config fx_config(ddp_optim_kind kind, int64_t steps) {
    ddp_train_config c = small_mlp_config(steps, 5);
    c.optim.kind = kind;
    if (kind == DDP_OPTIM_ADAMW) {
        c.sched.base_lr = 3e-3f;
        c.optim.weight_decay = 0.01f;
        c.clip_norm = 0.5f;
    }
    return c;
}

ddp_train_config fx_gpt_config(int64_t steps) { return tiny_gpt_config(steps, 5); }

void fx_tempdir(char *out, size_t cap) {
    char name[256] = "";
    if (fx_rank == 0) {
        snprintf(name, sizeof name, "/tmp/ddp-ckpt-test.XXXXXX");
        if (!mkdtemp(name)) fail_msg("mkdtemp failed");
    }
    /* Only rank 0 touches the directory, but the configurations must agree. */
    assert_int_equal(ddp_comm_broadcast(fx_world, name, sizeof name, DDP_U8, 0), DDP_OK);
    snprintf(out, cap, "%s", name);
}

void fx_rmdir(const char *dir) {
    if (fx_rank != 0) return;
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[1400];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

void fx_copy(const char *from, const char *to) {
    if (fx_rank != 0) return;
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[1 << 14];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

ddp_trainer *fx_create(const ddp_train_config *cfg, ddp_comm *comm) {
    ddp_trainer *t = NULL;
    ddp_train_data data = {.train = fx_train, .test = fx_test, .text = fx_text};
    ddp_status s = ddp_trainer_create(cfg, fx_backend, comm, comm, &data, &t);
    if (s != DDP_OK) fail_msg("trainer_create: %s", ddp_error_trace_str());
    return t;
}

float *fx_params(ddp_trainer *t, size_t *n) {
    ddp_model *m = ddp_trainer_model(t);
    size_t np = ddp_model_num_params(m), nb = ddp_model_num_buffer_elems(m);
    *n = np + nb;
    float *p = malloc(*n * sizeof(float));
    assert_non_null(p);
    assert_int_equal(ddp_trainer_get_params(t, p), DDP_OK);
    /* The buffers too (CPU backend: host memory): a resume that lost the running
     * statistics would still train the same parameters. */
    if (nb) memcpy(p + np, ddp_model_buffers(m), nb * sizeof(float));
    return p;
}

float *fx_train_run(const ddp_train_config *cfg, ddp_comm *comm, size_t *n) {
    ddp_trainer *t = fx_create(cfg, comm);
    if (ddp_trainer_run(t, NULL) != DDP_OK) fail_msg("run: %s", ddp_error_trace_str());
    float *p = fx_params(t, n);
    ddp_trainer_free(t);
    return p;
}

void fx_list(const char *dir, char *out, size_t cap) {
    int64_t *steps;
    size_t n, o = 0;
    out[0] = '\0';
    assert_int_equal(ddp_checkpoint_list(dir, &steps, &n), DDP_OK);
    for (size_t i = 0; i < n && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%lld", i ? "," : "", (long long)steps[i]);
    free(steps);
}

unsigned char *fx_slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*len ? *len : 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

/* Rank 0 removes the manifest and the shards of checkpoint `step`. */
void fx_forget(const char *dir, int64_t step) {
    if (fx_rank == 0) {
        char path[1200];
        ddp_checkpoint_path(path, sizeof path, dir, step);
        unlink(path);
        for (uint32_t n = 1; n <= 4; n++)
            for (uint32_t i = 0; i < n; i++) {
                ddp_checkpoint_shard_path(path, sizeof path, dir, step, i, n);
                unlink(path);
            }
    }
    assert_int_equal(ddp_comm_barrier(fx_world), DDP_OK);
}

/* Resumes c (resume set) from dir over comm and runs it to the end; returns the
 * parameters and the step resumed from. */
float *fx_resume_run(ddp_train_config c, const char *dir, ddp_comm *comm, int64_t *resumed,
                     size_t *n) {
    snprintf(c.checkpoint_dir, sizeof c.checkpoint_dir, "%s", dir);
    c.resume = 1;
    ddp_trainer *t = fx_create(&c, comm);
    *resumed = -1;
    if (ddp_trainer_resume(t, dir, resumed) != DDP_OK)
        fail_msg("resume: %s", ddp_error_trace_str());
    assert_int_equal(ddp_trainer_run(t, NULL), DDP_OK);
    float *p = fx_params(t, n);
    ddp_trainer_free(t);
    return p;
}

/* Every rank copies the regular files of `from` into the new directory `to`. */
void fx_copy_dir(const char *from, const char *to) {
    assert_int_equal(mkdir(to, 0755), 0);
    DIR *d = opendir(from);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char a[1200], b[1200];
        snprintf(a, sizeof a, "%s/%s", from, e->d_name);
        snprintf(b, sizeof b, "%s/%s", to, e->d_name);
        size_t len;
        unsigned char *data = fx_slurp(a, &len);
        FILE *f = fopen(b, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(data, 1, len, f), len);
        assert_int_equal(fclose(f), 0);
        free(data);
    }
    closedir(d);
}
