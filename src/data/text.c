/*
 * Text as bytes: loading a file whole with its validation split, the training-window
 * sampler and the validation windows.
 *
 * Every byte is a token, so there is nothing to parse and no file can be malformed: the
 * only ways to fail are a file that cannot be read and one too short for the context.
 * Training windows are drawn afresh from (seed, step) at every step instead of walking
 * a shuffled order, because the number of possible windows (one per byte) is far larger
 * than the number any run uses; a pure function of the step also means that a
 * checkpoint needs to remember nothing but the step.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/data_impl.h"

/* Bytes asked of one read(): large enough that a file of hundreds of megabytes takes a
 * few dozen system calls, below Linux's limit of about 2 GiB per call. */
#define READ_CHUNK ((size_t)64 << 20)
/* The first buffer for a file of unknown size (a pipe); it doubles as data arrives. */
#define READ_FIRST ((size_t)1 << 20)

/* The training windows' RNG streams are WINDOW_STREAM + step. Model initialization uses
 * streams 0, 1, 2, ... (one per layer) and the image sampler one per epoch, all small
 * counters, so starting this family at 0x7478 << 48 keeps it apart from them for any
 * step below 2^48. */
#define WINDOW_STREAM ((uint64_t)0x7478 << 48)

/* Bytes of the validation split of an n-byte file: 10% rounded to the nearest byte,
 * but at least 1 and at most n - 1 so that both parts are non-empty (n >= 2). */
static size_t val_bytes(size_t n) {
    size_t v = n / 10 + (n % 10 >= 5 ? 1 : 0);
    if (v < 1) v = 1;
    if (v > n - 1) v = n - 1;
    return v;
}

/* Reads fd to its end into a malloc'd buffer. `hint` (the size fstat reported, 0 when
 * unknown) sizes the buffer, one byte over so that the end shows up as a read of 0
 * bytes without a reallocation; a file that grows while it is read, or a pipe, makes the
 * buffer double, so the cost stays linear in the size. */
static ddp_status read_all(int fd, const char *path, size_t hint, uint8_t **out, size_t *len) {
    size_t cap = hint > 0 && hint < SIZE_MAX ? hint + 1 : READ_FIRST;
    uint8_t *buf = malloc(cap);
    if (buf == NULL)
        return DDP_FAIL(DDP_ERR_NOMEM, "out of host memory for the %zu bytes of text file '%s'",
                        cap, path);
    size_t n = 0;
    for (;;) {
        if (n == cap) {
            size_t next = cap > SIZE_MAX / 2 ? SIZE_MAX : 2 * cap;
            uint8_t *grown = next > cap ? realloc(buf, next) : NULL;
            if (grown == NULL) {
                free(buf);
                return DDP_FAIL(DDP_ERR_NOMEM,
                                "out of host memory after %zu bytes of text file '%s'; use a "
                                "smaller file or a machine with more memory",
                                n, path);
            }
            buf = grown;
            cap = next;
        }
        size_t want = cap - n < READ_CHUNK ? cap - n : READ_CHUNK;
        ssize_t got = read(fd, buf + n, want);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            int e = errno;
            free(buf);
            return DDP_FAIL(DDP_ERR_IO, "cannot read text file '%s' after %zu bytes: %s", path, n,
                            strerror(e));
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    *out = buf;
    *len = n;
    return DDP_OK;
}

/* Opens path for reading and refuses what is not a file's contents: a directory, a
 * device or a socket. *size is the file's size, or 0 for a pipe. */
static ddp_status open_text(const char *path, int *fd_out, size_t *size) {
    int fd;
    do {
        fd = open(path, O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return DDP_FAIL(DDP_ERR_IO, "cannot open text file '%s': %s; check the path (--text FILE)",
                        path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return DDP_FAIL(DDP_ERR_IO, "cannot inspect text file '%s': %s", path, strerror(e));
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return DDP_FAIL(DDP_ERR_IO,
                        "text file '%s' is a directory (%s); pass the path of a file in it "
                        "(--text FILE)",
                        path, strerror(EISDIR));
    }
    /* Pipes are accepted so that --text <(command) works; devices could be endless. */
    if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode)) {
        close(fd);
        return DDP_FAIL(DDP_ERR_IO,
                        "text file '%s' is not a regular file (a device or a socket); pass a "
                        "file (--text FILE)",
                        path);
    }
    *fd_out = fd;
    *size = S_ISREG(st.st_mode) ? (size_t)st.st_size : 0;
    return DDP_OK;
}

ddp_status ddp_text_load(const char *path, ddp_text *out) {
    if (path == NULL || out == NULL)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "ddp_text_load: path or out is NULL");
    memset(out, 0, sizeof *out);
    int fd = -1;
    size_t size = 0;
    DDP_CHECK(open_text(path, &fd, &size));
    uint8_t *bytes = NULL;
    size_t n = 0;
    ddp_status s = read_all(fd, path, size, &bytes, &n);
    /* Everything has been read; closing a read-only file cannot lose data. */
    close(fd);
    DDP_CHECK(s);
    if (n < 2) {
        free(bytes);
        if (n == 0)
            return DDP_FAIL(DDP_ERR_FORMAT,
                            "text file '%s' is empty (0 bytes), so there is nothing to train "
                            "on; pass a file with text in it (--text FILE)",
                            path);
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "text file '%s' has only 1 byte, too short to split into a training "
                        "and a validation part; pass a longer file (--text FILE)",
                        path);
    }
    char *name = strdup(path);
    if (name == NULL) {
        free(bytes);
        return DDP_FAIL(DDP_ERR_NOMEM, "out of host memory for the name of text file '%s'", path);
    }
    out->bytes = bytes;
    out->n_val = val_bytes(n);
    out->n_train = n - out->n_val;
    out->path = name;
    return DDP_OK;
}

/* The shortest file whose split has at least ctx + 1 training and 2 validation bytes,
 * or 0 if that length does not fit in a size_t. */
static size_t min_file_bytes(size_t ctx) {
    size_t n;
    if (__builtin_add_overflow(ctx, 3, &n)) return 0;
    /* Each pass adds what the training split still lacks; it gains at least 1 byte per
     * pass and about 9 of every 10 added, so this ends after a few passes. */
    for (;;) {
        size_t v = val_bytes(n);
        size_t train = n - v;
        if (train >= ctx + 1 && v >= 2) return n;
        size_t add = train < ctx + 1 ? ctx + 1 - train : 1;
        if (__builtin_add_overflow(n, add, &n)) return 0;
    }
}

ddp_status ddp_text_check(const ddp_text *t, size_t ctx) {
    if (t == NULL || t->bytes == NULL)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "ddp_text_check: the text is not loaded");
    if (ctx == 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "context length is 0; a training window needs at least 1 position");
    if (t->n_train > ctx && t->n_val >= 2) return DDP_OK;
    size_t need = min_file_bytes(ctx);
    if (need == 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "context length %zu is larger than any file could serve; use a "
                        "shorter context",
                        ctx);
    const char *name = t->path ? t->path : "<memory>";
    size_t total = t->n_train + t->n_val;
    if (t->n_train <= ctx)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "text file '%s' (%zu bytes) is too short for context length %zu: its "
                        "training part (the first 90%%, %zu bytes) is shorter than the %zu "
                        "bytes one window reads (the inputs, and the targets one byte later); "
                        "use a file of at least %zu bytes or a shorter context",
                        name, total, ctx, t->n_train, ctx + 1, need);
    return DDP_FAIL(DDP_ERR_INVALID_ARG,
                    "text file '%s' (%zu bytes) is too short for context length %zu: its "
                    "validation part (the last 10%%) has %zu byte, and it needs 2 (one to "
                    "read, one to predict); use a file of at least %zu bytes",
                    name, total, ctx, t->n_val, need);
}

void ddp_text_free(ddp_text *t) {
    if (t == NULL) return;
    free(t->bytes);
    free(t->path);
    memset(t, 0, sizeof *t);
}

static ddp_status check_rank(const char *fn, int rank, int world) {
    if (world < 1 || rank < 0 || rank >= world)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "%s: rank %d of world %d; need world >= 1 and 0 <= rank < world", fn, rank,
                        world);
    return DDP_OK;
}

/* ---- training windows ------------------------------------------------------------- */

size_t ddp_window_steps_per_epoch(size_t n_train, size_t ctx, size_t global_batch) {
    if (ctx == 0 || global_batch == 0) return 1;
    /* Dividing twice is the same as dividing by the product, which could overflow. */
    size_t steps = n_train / global_batch / ctx;
    return steps > 0 ? steps : 1;
}

ddp_status ddp_window_sampler_init(ddp_window_sampler *s, size_t n_train, size_t ctx,
                                   size_t global_batch, int rank, int world, uint64_t seed) {
    if (s == NULL) return DDP_FAIL(DDP_ERR_INVALID_ARG, "ddp_window_sampler_init: s is NULL");
    memset(s, 0, sizeof *s);
    DDP_CHECK(check_rank("ddp_window_sampler_init", rank, world));
    if (ctx == 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "context length is 0; a training window needs at least 1 position");
    if (global_batch == 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "global batch size is 0; use a positive multiple of the %d ranks", world);
    if (global_batch % (size_t)world != 0)
        return ddp_data_fail_indivisible(SIZE_MAX, global_batch, world);
    if (n_train <= ctx)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "the training split has %zu bytes, too few for one window of context "
                        "%zu, which reads %zu bytes (the inputs, and the targets one byte "
                        "later); use a longer text or a shorter context",
                        n_train, ctx, ctx + 1);
    s->n_train = n_train;
    s->ctx = ctx;
    s->global_batch = global_batch;
    s->local_batch = global_batch / (size_t)world;
    s->rank = rank;
    s->world = world;
    s->seed = seed;
    s->steps_per_epoch = ddp_window_steps_per_epoch(n_train, ctx, global_batch);
    return DDP_OK;
}

ddp_status ddp_window_offsets(const ddp_window_sampler *s, int64_t step, size_t *offsets) {
    if (s == NULL || s->ctx == 0 || offsets == NULL)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "ddp_window_offsets: sampler not initialized or offsets is NULL");
    if (step < 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "ddp_window_offsets: step %lld is negative",
                        (long long)step);
    ddp_rng rng;
    ddp_rng_seed(&rng, s->seed, WINDOW_STREAM + (uint64_t)step);
    /* Starts in [0, n_train - ctx - 1], so that the targets' last byte, o + ctx, is
     * still inside the training split. */
    uint64_t starts = (uint64_t)(s->n_train - s->ctx);
    /* Every rank draws the whole global batch in order and keeps its part: the draws
     * before it decide where its part of the stream begins (rejection sampling makes the
     * number of words per draw vary), and B draws per step cost nothing next to a step. */
    size_t skip = (size_t)s->rank * s->local_batch;
    for (size_t i = 0; i < skip; i++)
        (void)ddp_rng_below(&rng, starts);
    for (size_t i = 0; i < s->local_batch; i++)
        offsets[i] = (size_t)ddp_rng_below(&rng, starts);
    return DDP_OK;
}

ddp_status ddp_text_fill(const ddp_text *t, const size_t *offsets, size_t n, size_t ctx,
                         int32_t *tokens, int32_t *targets) {
    if (t == NULL || t->bytes == NULL ||
        (n > 0 && (offsets == NULL || tokens == NULL || targets == NULL)))
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "ddp_text_fill: the text is not loaded or an array is NULL");
    if (ctx == 0 || t->n_train <= ctx)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "ddp_text_fill: context length %zu does not fit the training split of "
                        "'%s' (%zu bytes); call ddp_text_check first",
                        ctx, t->path ? t->path : "<memory>", t->n_train);
    /* All offsets are checked before anything is written, so that a bad batch leaves
     * the buffers as they were. */
    size_t last = t->n_train - ctx - 1;
    for (size_t i = 0; i < n; i++)
        if (offsets[i] > last)
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "ddp_text_fill: window %zu starts at byte %zu, but windows of "
                            "context %zu must start at or before byte %zu to stay inside the "
                            "training split of '%s' (%zu bytes)",
                            i, offsets[i], ctx, last, t->path ? t->path : "<memory>", t->n_train);
    for (size_t i = 0; i < n; i++) {
        const uint8_t *src = t->bytes + offsets[i];
        int32_t *tk = tokens + i * ctx, *tg = targets + i * ctx;
        for (size_t j = 0; j < ctx; j++) {
            tk[j] = src[j];
            tg[j] = src[j + 1];
        }
    }
    return DDP_OK;
}

/* ---- validation windows ----------------------------------------------------------- */

ddp_status ddp_val_windows_init(ddp_val_windows *v, const ddp_text *t, size_t ctx, int rank,
                                int world) {
    if (v == NULL || t == NULL || t->bytes == NULL)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "ddp_val_windows_init: v is NULL or the text is not loaded");
    memset(v, 0, sizeof *v);
    DDP_CHECK(check_rank("ddp_val_windows_init", rank, world));
    if (ctx == 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "context length is 0; a validation window needs at least 1 position");
    if (t->n_val < 2)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "the validation split of text file '%s' has %zu byte(s); it needs at "
                        "least 2 (one to read, one to predict); use a longer file",
                        t->path ? t->path : "<memory>", t->n_val);
    size_t predicted = t->n_val - 1; /* the first byte has nothing before it */
    v->n_val = t->n_val;
    v->ctx = ctx;
    v->n_windows = predicted / ctx + (predicted % ctx != 0);
    v->last_len = predicted - (v->n_windows - 1) * ctx;
    ddp_split_range(v->n_windows, rank, world, &v->begin, &v->count);
    return DDP_OK;
}

ddp_status ddp_val_windows_fill(const ddp_val_windows *v, const ddp_text *t, size_t first, size_t n,
                                int32_t *tokens, int32_t *targets, size_t *last_len) {
    if (v == NULL || v->ctx == 0 || t == NULL || t->bytes == NULL || last_len == NULL ||
        (n > 0 && (tokens == NULL || targets == NULL)))
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "ddp_val_windows_fill: windows or text not initialized, or an array "
                        "is NULL");
    if (v->n_val != t->n_val)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "ddp_val_windows_fill: the windows were made for a validation split "
                        "of %zu bytes, but '%s' has %zu",
                        v->n_val, t->path ? t->path : "<memory>", t->n_val);
    if (first > v->count || n > v->count - first)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "ddp_val_windows_fill: %zu windows from window %zu asked for, but "
                        "this rank's share has %zu windows",
                        n, first, v->count);
    const uint8_t *val = t->bytes + t->n_train;
    size_t ctx = v->ctx, len = 0;
    for (size_t i = 0; i < n; i++) {
        size_t w = v->begin + first + i;
        size_t start = w * ctx;
        len = w + 1 == v->n_windows ? v->last_len : ctx;
        int32_t *tk = tokens + i * ctx, *tg = targets + i * ctx;
        for (size_t j = 0; j < len; j++) {
            tk[j] = val[start + j];
            tg[j] = val[start + j + 1];
        }
        /* Only the last window can be short; -1 marks positions that predict nothing. */
        for (size_t j = len; j < ctx; j++) {
            tk[j] = 0;
            tg[j] = -1;
        }
    }
    *last_len = len;
    return DDP_OK;
}
