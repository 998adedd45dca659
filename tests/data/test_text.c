/*
 * Text as bytes: any file loads byte for byte (binary, large, through a pipe) with the
 * last tenth held out; missing, empty, one-byte files, directories and devices are
 * refused with the file named, and a text too short for the context says how long it
 * would have to be. Training windows are the same on every simulated rank, concatenate
 * to the global batch, stay inside the training split, change with the step and repeat
 * for the same step. Validation windows predict every validation byte exactly once over
 * all ranks, for many lengths, contexts and world sizes.
 */
#define _GNU_SOURCE /* mkfifo, fork */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "data/idx_fixture.h"
#include "ddp/data.h"

static const int worlds[] = {1, 2, 3, 4, 7};
#define NWORLDS (sizeof worlds / sizeof worlds[0])

/* n bytes that run through every value, NUL and 0xFF included. */
static unsigned char *pattern(size_t n) {
    unsigned char *b = malloc(n ? n : 1);
    assert_non_null(b);
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)(i * 7 + i / 256);
    return b;
}

/* Writes n pattern bytes to dir/name and loads them. */
static void load_pattern(const char *dir, const char *name, size_t n, ddp_text *t) {
    char path[512];
    fx_path(path, sizeof path, dir, name);
    unsigned char *b = pattern(n);
    fx_write(path, b, n, 0);
    assert_int_equal(ddp_text_load(path, t), DDP_OK);
    assert_int_equal(t->n_train + t->n_val, n);
    assert_memory_equal(t->bytes, b, n);
    assert_string_equal(t->path, path);
    free(b);
}

static void test_loads_any_bytes_and_holds_out_the_last_tenth(void **state) {
    /* size, validation bytes: 10% rounded to nearest, at least 1, never everything. */
    const size_t cases[][2] = {{2, 1},      {3, 1},      {9, 1},           {10, 1},   {14, 1},
                               {15, 2},     {24, 2},     {25, 3},          {100, 10}, {1001, 100},
                               {1005, 101}, {4096, 410}, {1000000, 100000}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ddp_text t;
        load_pattern(*state, "split.bin", cases[i][0], &t);
        assert_int_equal(t.n_val, cases[i][1]);
        assert_int_equal(t.n_train, cases[i][0] - cases[i][1]);
        ddp_text_free(&t);
        assert_null(t.bytes);
        assert_null(t.path);
    }
}

/* Larger than one 64 MiB read, so the chunked loop runs more than once. */
static void test_loads_a_large_file(void **state) {
    ddp_text t;
    load_pattern(*state, "large.bin", ((size_t)72 << 20) + 12345, &t);
    ddp_text_free(&t);
}

/* A pipe has no size to plan for: the buffer grows as the bytes arrive. */
static void test_loads_from_a_pipe(void **state) {
    char path[512];
    fx_path(path, sizeof path, *state, "fifo");
    assert_int_equal(mkfifo(path, 0600), 0);
    const size_t n = ((size_t)5 << 20) + 77;
    unsigned char *b = pattern(n);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *f = fopen(path, "wb");
        size_t put = f ? fwrite(b, 1, n, f) : 0;
        _exit(f != NULL && put == n && fclose(f) == 0 ? 0 : 1);
    }
    ddp_text t;
    assert_int_equal(ddp_text_load(path, &t), DDP_OK);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(t.n_train + t.n_val, n);
    assert_memory_equal(t.bytes, b, n);
    ddp_text_free(&t);
    free(b);
}

static void expect_load_fails(const char *path, ddp_status st, const char *what) {
    ddp_text t;
    ddp_error_clear();
    assert_int_equal(ddp_text_load(path, &t), st);
    assert_msg_has(what);
    assert_msg_has(path);
    assert_null(t.bytes);
    assert_null(t.path);
    assert_int_equal(t.n_train + t.n_val, 0);
    ddp_text_free(&t); /* harmless on an emptied result */
}

static void test_refuses_missing_empty_tiny_directory_and_device(void **state) {
    char path[512];
    fx_path(path, sizeof path, *state, "no-such-file.txt");
    expect_load_fails(path, DDP_ERR_IO, "No such file or directory");
    assert_msg_has("--text FILE");
    expect_load_fails(*state, DDP_ERR_IO, "is a directory");

    fx_path(path, sizeof path, *state, "empty.txt");
    fx_write(path, "", 0, 0);
    expect_load_fails(path, DDP_ERR_FORMAT, "is empty");

    fx_path(path, sizeof path, *state, "one.txt");
    fx_write(path, "x", 1, 0);
    expect_load_fails(path, DDP_ERR_FORMAT, "only 1 byte");

    expect_load_fails("/dev/null", DDP_ERR_IO, "not a regular file");

    /* Without read permission (root reads anyway, so only checked for other users). */
    if (geteuid() != 0) {
        fx_path(path, sizeof path, *state, "secret.txt");
        fx_write(path, "abcdef", 6, 0);
        assert_int_equal(chmod(path, 0), 0);
        expect_load_fails(path, DDP_ERR_IO, "Permission denied");
    }

    ddp_error_clear();
    assert_int_equal(ddp_text_load(NULL, NULL), DDP_ERR_INVALID_ARG);
}

/* The smallest file that ddp_text_check accepts for ctx is the one it names, and a
 * byte less is refused. */
static void test_check_names_the_shortest_file_that_fits(void **state) {
    const size_t ctxs[] = {1, 2, 8, 16, 63, 64, 100, 1000};
    for (size_t i = 0; i < sizeof ctxs / sizeof ctxs[0]; i++) {
        size_t ctx = ctxs[i];
        size_t need = 0;
        for (size_t n = 2; need == 0; n++) {
            ddp_text t;
            load_pattern(*state, "short.txt", n, &t);
            ddp_error_clear();
            ddp_status s = ddp_text_check(&t, ctx);
            int fits = t.n_train >= ctx + 1 && t.n_val >= 2;
            assert_int_equal(s, fits ? DDP_OK : DDP_ERR_INVALID_ARG);
            if (fits) {
                need = n;
            } else {
                assert_msg_has("too short for context length");
                assert_msg_has(t.path);
            }
            ddp_text_free(&t);
        }
        /* The message for a byte less names exactly that length. */
        ddp_text t;
        load_pattern(*state, "short.txt", need - 1, &t);
        ddp_error_clear();
        assert_int_equal(ddp_text_check(&t, ctx), DDP_ERR_INVALID_ARG);
        char want[64];
        snprintf(want, sizeof want, "a file of at least %zu bytes", need);
        assert_msg_has(want);
        ddp_error_clear();
        assert_int_equal(ddp_text_check(&t, 0), DDP_ERR_INVALID_ARG);
        assert_msg_has("context length is 0");
        ddp_text_free(&t);
    }
}

/* ---- training windows ------------------------------------------------------------- */

/* The global batch of a step, as a world of one sees it. */
static void global_offsets(size_t n_train, size_t ctx, size_t B, uint64_t seed, int64_t step,
                           size_t *out) {
    ddp_window_sampler s;
    assert_int_equal(ddp_window_sampler_init(&s, n_train, ctx, B, 0, 1, seed), DDP_OK);
    assert_int_equal(ddp_window_offsets(&s, step, out), DDP_OK);
}

static void test_ranks_agree_and_shards_concatenate(void **state) {
    const size_t n_train = 5000, ctx = 32;
    for (size_t w = 0; w < NWORLDS; w++) {
        int world = worlds[w];
        const size_t mults[] = {1, 2, 5};
        for (size_t m = 0; m < 3; m++) {
            size_t B = mults[m] * (size_t)world, L = B / (size_t)world;
            size_t *global = malloc(B * sizeof *global), *local = malloc(L * sizeof *local);
            assert_true(global && local);
            for (int64_t step = 0; step < 20; step++) {
                global_offsets(n_train, ctx, B, 99, step, global);
                for (int r = 0; r < world; r++) {
                    ddp_window_sampler s;
                    assert_int_equal(ddp_window_sampler_init(&s, n_train, ctx, B, r, world, 99),
                                     DDP_OK);
                    assert_int_equal(s.local_batch, L);
                    assert_int_equal(ddp_window_offsets(&s, step, local), DDP_OK);
                    assert_memory_equal(local, global + (size_t)r * L, L * sizeof *local);
                }
            }
            free(global);
            free(local);
        }
    }
}

/* Many steps over tiny splits: every offset is a valid start, and every valid start
 * turns up (a range one too short or too long would show). */
static void test_offsets_stay_in_the_training_split(void **state) {
    const size_t ctx = 8, B = 12;
    for (size_t spare = 0; spare < 6; spare++) {
        size_t n_train = ctx + 1 + spare; /* spare + 1 possible starts */
        ddp_window_sampler s;
        assert_int_equal(ddp_window_sampler_init(&s, n_train, ctx, B, 0, 1, 5), DDP_OK);
        size_t hits[8] = {0}, off[12];
        for (int64_t step = 0; step < 2000; step++) {
            assert_int_equal(ddp_window_offsets(&s, step, off), DDP_OK);
            for (size_t i = 0; i < B; i++) {
                assert_true(off[i] + ctx + 1 <= n_train);
                hits[off[i]]++;
            }
        }
        for (size_t o = 0; o <= spare; o++)
            assert_true(hits[o] > 0);
    }
    /* The largest steps are as valid as the first. */
    ddp_window_sampler s;
    size_t off[4];
    assert_int_equal(ddp_window_sampler_init(&s, 100, 10, 4, 0, 1, 1), DDP_OK);
    assert_int_equal(ddp_window_offsets(&s, INT64_MAX, off), DDP_OK);
    for (size_t i = 0; i < 4; i++)
        assert_true(off[i] <= 89);
}

static void test_batches_change_with_step_and_seed_and_repeat(void **state) {
    enum { B = 16 };
    const size_t n_train = 1000000, ctx = 64;
    size_t a[B], b[B];
    global_offsets(n_train, ctx, B, 7, 3, a);
    /* The same step gives the same batch, whatever was asked in between. */
    global_offsets(n_train, ctx, B, 7, 100, b);
    global_offsets(n_train, ctx, B, 7, 3, b);
    assert_memory_equal(a, b, sizeof a);
    for (int64_t step = 0; step < 50; step++) {
        if (step == 3) continue;
        global_offsets(n_train, ctx, B, 7, step, b);
        assert_memory_not_equal(a, b, sizeof a);
    }
    global_offsets(n_train, ctx, B, 8, 3, b);
    assert_memory_not_equal(a, b, sizeof a);
    /* Within a batch the offsets are spread, not repeated. */
    for (int i = 0; i < B; i++)
        for (int j = i + 1; j < B; j++)
            assert_true(a[i] != a[j]);
}

static void test_window_sampler_refuses_bad_settings(void **state) {
    ddp_window_sampler s;
    size_t off[4];
    ddp_error_clear();
    assert_int_equal(ddp_window_sampler_init(&s, 100, 0, 4, 0, 1, 1), DDP_ERR_INVALID_ARG);
    assert_msg_has("context length is 0");
    assert_int_equal(ddp_window_sampler_init(&s, 100, 10, 0, 0, 1, 1), DDP_ERR_INVALID_ARG);
    assert_msg_has("global batch size is 0");
    assert_int_equal(ddp_window_sampler_init(&s, 100, 10, 10, 0, 4, 1), DDP_ERR_INVALID_ARG);
    assert_msg_has("not divisible by the 4 ranks");
    assert_msg_has("such as 8 or 12");
    assert_int_equal(ddp_window_sampler_init(&s, 10, 10, 4, 0, 1, 1), DDP_ERR_INVALID_ARG);
    assert_msg_has("too few for one window of context 10");
    assert_int_equal(ddp_window_sampler_init(&s, 100, 10, 4, 2, 2, 1), DDP_ERR_INVALID_ARG);
    assert_int_equal(ddp_window_sampler_init(&s, 100, 10, 4, 0, 0, 1), DDP_ERR_INVALID_ARG);
    assert_int_equal(ddp_window_offsets(&s, 0, off), DDP_ERR_INVALID_ARG);
    /* The smallest split that fits has one window position. */
    assert_int_equal(ddp_window_sampler_init(&s, 11, 10, 4, 0, 1, 1), DDP_OK);
    assert_int_equal(ddp_window_offsets(&s, -1, off), DDP_ERR_INVALID_ARG);
    assert_msg_has("negative");
}

static void test_steps_per_epoch(void **state) {
    assert_int_equal(ddp_window_steps_per_epoch(1000, 10, 4), 25);
    assert_int_equal(ddp_window_steps_per_epoch(1039, 10, 4), 25);
    assert_int_equal(ddp_window_steps_per_epoch(1040, 10, 4), 26);
    /* A split smaller than one batch still makes an epoch of one step. */
    assert_int_equal(ddp_window_steps_per_epoch(30, 10, 4), 1);
    assert_int_equal(ddp_window_steps_per_epoch(1000, 0, 4), 1);
    assert_int_equal(ddp_window_steps_per_epoch(1000, 10, 0), 1);
    /* A product past SIZE_MAX does not wrap around. */
    assert_int_equal(ddp_window_steps_per_epoch(SIZE_MAX, SIZE_MAX / 2, 4), 1);
    ddp_window_sampler s;
    assert_int_equal(ddp_window_sampler_init(&s, 4300000, 256, 64, 1, 4, 1), DDP_OK);
    assert_int_equal(s.steps_per_epoch, 262);
}

static void test_fill_gives_inputs_and_next_byte_targets(void **state) {
    ddp_text t;
    load_pattern(*state, "fill.bin", 1000, &t);
    const size_t ctx = 16, offsets[3] = {0, 517, t.n_train - ctx - 1};
    int32_t tokens[3 * 16], targets[3 * 16];
    assert_int_equal(ddp_text_fill(&t, offsets, 3, ctx, tokens, targets), DDP_OK);
    for (size_t i = 0; i < 3; i++)
        for (size_t j = 0; j < ctx; j++) {
            assert_int_equal(tokens[i * ctx + j], t.bytes[offsets[i] + j]);
            assert_int_equal(targets[i * ctx + j], t.bytes[offsets[i] + j + 1]);
            assert_in_range(tokens[i * ctx + j], 0, DDP_TEXT_VOCAB - 1);
        }

    /* One window too far refuses the whole batch and writes nothing. */
    const size_t bad[2] = {0, t.n_train - ctx};
    memset(tokens, 0x55, sizeof tokens);
    ddp_error_clear();
    assert_int_equal(ddp_text_fill(&t, bad, 2, ctx, tokens, targets), DDP_ERR_INVALID_ARG);
    assert_msg_has("training split");
    for (size_t i = 0; i < 3 * ctx; i++)
        assert_int_equal(tokens[i], 0x55555555);
    assert_int_equal(ddp_text_fill(&t, offsets, 1, t.n_train, tokens, targets),
                     DDP_ERR_INVALID_ARG);
    assert_int_equal(ddp_text_fill(&t, offsets, 0, ctx, NULL, NULL), DDP_OK);
    ddp_text_free(&t);
}

/* Sampler and fill together on an all-0xFF file: every token is 255 (bytes are unsigned
 * tokens, never -1). */
static void test_fill_from_sampled_offsets(void **state) {
    char path[512];
    fx_path(path, sizeof path, *state, "ff.bin");
    unsigned char ff[300];
    memset(ff, 0xFF, sizeof ff);
    fx_write(path, ff, sizeof ff, 0);
    ddp_text t;
    assert_int_equal(ddp_text_load(path, &t), DDP_OK);
    assert_int_equal(ddp_text_check(&t, 32), DDP_OK);
    ddp_window_sampler s;
    assert_int_equal(ddp_window_sampler_init(&s, t.n_train, 32, 8, 1, 2, 3), DDP_OK);
    size_t off[4];
    int32_t tk[4 * 32], tg[4 * 32];
    for (int64_t step = 0; step < 100; step++) {
        assert_int_equal(ddp_window_offsets(&s, step, off), DDP_OK);
        assert_int_equal(ddp_text_fill(&t, off, 4, 32, tk, tg), DDP_OK);
        for (size_t i = 0; i < 4 * 32; i++)
            assert_true(tk[i] == 255 && tg[i] == 255);
    }
    ddp_text_free(&t);
}

/* ---- validation windows ----------------------------------------------------------- */

/* A text whose validation byte k is k (n_val <= 250) after n_train bytes of 0xFF, so a
 * target names the position it predicts and a leak from the training split shows. */
static ddp_text val_text(size_t n_train, size_t n_val) {
    ddp_text t = {0};
    t.bytes = malloc(n_train + n_val);
    assert_non_null(t.bytes);
    memset(t.bytes, 0xFF, n_train);
    for (size_t k = 0; k < n_val; k++)
        t.bytes[n_train + k] = (uint8_t)k;
    t.n_train = n_train;
    t.n_val = n_val;
    return t;
}

/* Runs every rank of the world in batches of `batch` windows and checks that positions
 * 1 .. n_val - 1 are each predicted once, from the byte before, by windows that are full
 * except the very last one. */
static void check_exactly_once(size_t n_val, size_t ctx, int world, size_t batch) {
    ddp_text t = val_text(13, n_val);
    unsigned hits[256] = {0};
    size_t next_begin = 0, windows = 0, short_rows = 0;
    int32_t *tk = malloc(batch * ctx * sizeof *tk), *tg = malloc(batch * ctx * sizeof *tg);
    assert_true(tk && tg);
    for (int r = 0; r < world; r++) {
        ddp_val_windows v;
        assert_int_equal(ddp_val_windows_init(&v, &t, ctx, r, world), DDP_OK);
        assert_int_equal(v.n_windows, (n_val - 1 + ctx - 1) / ctx);
        assert_in_range(v.last_len, 1, ctx);
        /* Shares are contiguous and in rank order. */
        assert_int_equal(v.begin, next_begin);
        next_begin += v.count;
        for (size_t first = 0; first < v.count; first += batch) {
            size_t n = v.count - first < batch ? v.count - first : batch;
            size_t last_len = 0;
            assert_int_equal(ddp_val_windows_fill(&v, &t, first, n, tk, tg, &last_len), DDP_OK);
            for (size_t i = 0; i < n; i++) {
                size_t len = 0;
                while (len < ctx && tg[i * ctx + len] >= 0)
                    len++;
                if (i + 1 < n)
                    assert_int_equal(len, ctx);
                else
                    assert_int_equal(len, last_len);
                if (len < ctx) {
                    short_rows++;
                    assert_int_equal(v.begin + first + i, v.n_windows - 1);
                }
                for (size_t j = 0; j < ctx; j++) {
                    int32_t target = tg[i * ctx + j], token = tk[i * ctx + j];
                    if (j >= len) {
                        assert_int_equal(target, -1);
                        assert_int_equal(token, 0);
                        continue;
                    }
                    assert_in_range(target, 1, n_val - 1);
                    assert_int_equal(token, target - 1);
                    hits[target]++;
                }
            }
            windows += n;
        }
        /* An empty share fills nothing and says so. */
        size_t last_len = 99;
        assert_int_equal(ddp_val_windows_fill(&v, &t, v.count, 0, tk, tg, &last_len), DDP_OK);
        assert_int_equal(last_len, 0);
    }
    assert_int_equal(next_begin, (n_val - 1 + ctx - 1) / ctx);
    assert_int_equal(windows, next_begin);
    assert_int_equal(short_rows, (n_val - 1) % ctx != 0);
    assert_int_equal(hits[0], 0);
    for (size_t k = 1; k < n_val; k++)
        assert_int_equal(hits[k], 1);
    free(tk);
    free(tg);
    ddp_text_free(&t);
}

static void test_validation_predicts_every_byte_exactly_once(void **state) {
    const size_t n_vals[] = {2, 3, 4, 5, 9, 10, 17, 33, 64, 65, 100, 250};
    const size_t ctxs[] = {1, 2, 3, 4, 7, 16, 64, 300};
    const size_t batches[] = {1, 2, 5};
    for (size_t a = 0; a < sizeof n_vals / sizeof n_vals[0]; a++)
        for (size_t c = 0; c < sizeof ctxs / sizeof ctxs[0]; c++)
            for (size_t w = 0; w < NWORLDS; w++)
                for (size_t b = 0; b < 3; b++)
                    check_exactly_once(n_vals[a], ctxs[c], worlds[w], batches[b]);
}

static void test_validation_shares_and_short_window(void **state) {
    /* 17 bytes predict 16 positions: two windows of 7 and one of 2. */
    ddp_text t = val_text(5, 17);
    ddp_val_windows v;
    assert_int_equal(ddp_val_windows_init(&v, &t, 7, 0, 1), DDP_OK);
    assert_int_equal(v.n_windows, 3);
    assert_int_equal(v.last_len, 2);
    int32_t tk[3 * 7], tg[3 * 7];
    size_t last_len;
    assert_int_equal(ddp_val_windows_fill(&v, &t, 0, 3, tk, tg, &last_len), DDP_OK);
    assert_int_equal(last_len, 2);
    /* The short row runs on its own as (1, 2) from tokens + 2 * ctx. */
    assert_int_equal(tk[14], 14);
    assert_int_equal(tk[15], 15);
    assert_int_equal(tg[14], 15);
    assert_int_equal(tg[15], 16);
    assert_int_equal(ddp_val_windows_fill(&v, &t, 0, 2, tk, tg, &last_len), DDP_OK);
    assert_int_equal(last_len, 7);

    /* More ranks than windows: the first three get one each, the rest none. */
    for (int r = 0; r < 7; r++) {
        assert_int_equal(ddp_val_windows_init(&v, &t, 7, r, 7), DDP_OK);
        assert_int_equal(v.count, r < 3 ? 1 : 0);
        assert_int_equal(v.begin, r < 3 ? (size_t)r : 3);
    }
    /* Fewer predictable bytes than the context: one short window. */
    assert_int_equal(ddp_val_windows_init(&v, &t, 64, 0, 2), DDP_OK);
    assert_int_equal(v.n_windows, 1);
    assert_int_equal(v.last_len, 16);
    assert_int_equal(v.count, 1);

    ddp_error_clear();
    assert_int_equal(ddp_val_windows_fill(&v, &t, 1, 1, tk, tg, &last_len), DDP_ERR_INVALID_ARG);
    assert_msg_has("this rank's share has 1 windows");
    assert_int_equal(ddp_val_windows_init(&v, &t, 0, 0, 1), DDP_ERR_INVALID_ARG);
    assert_int_equal(ddp_val_windows_init(&v, &t, 4, 1, 1), DDP_ERR_INVALID_ARG);

    /* Windows made for one text are refused for another. */
    ddp_text other = val_text(5, 30);
    assert_int_equal(ddp_val_windows_init(&v, &t, 4, 0, 1), DDP_OK);
    assert_int_equal(ddp_val_windows_fill(&v, &other, 0, 1, tk, tg, &last_len),
                     DDP_ERR_INVALID_ARG);
    assert_msg_has("validation split");
    ddp_text_free(&other);

    /* One validation byte predicts nothing. */
    ddp_text tiny = val_text(5, 1);
    assert_int_equal(ddp_val_windows_init(&v, &tiny, 4, 0, 1), DDP_ERR_INVALID_ARG);
    assert_msg_has("at least 2");
    ddp_text_free(&tiny);
    ddp_text_free(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_loads_any_bytes_and_holds_out_the_last_tenth,
                                        fx_tmpdir_setup, fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_loads_a_large_file, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_loads_from_a_pipe, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_refuses_missing_empty_tiny_directory_and_device,
                                        fx_tmpdir_setup, fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_check_names_the_shortest_file_that_fits,
                                        fx_tmpdir_setup, fx_tmpdir_teardown),
        cmocka_unit_test(test_ranks_agree_and_shards_concatenate),
        cmocka_unit_test(test_offsets_stay_in_the_training_split),
        cmocka_unit_test(test_batches_change_with_step_and_seed_and_repeat),
        cmocka_unit_test(test_window_sampler_refuses_bad_settings),
        cmocka_unit_test(test_steps_per_epoch),
        cmocka_unit_test_setup_teardown(test_fill_gives_inputs_and_next_byte_targets,
                                        fx_tmpdir_setup, fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_fill_from_sampled_offsets, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test(test_validation_predicts_every_byte_exactly_once),
        cmocka_unit_test(test_validation_shares_and_short_window),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
