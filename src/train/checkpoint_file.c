/*
 * The checkpoint file: encoding and strict parsing of the format described in
 * ddp/checkpoint.h, reading a whole file, and the directory side (names, listing,
 * atomic replacement, pruning). Nothing here knows about trainers or ranks.
 *
 * Why a checkpoint is either complete or invisible: it is written to a hidden temporary
 * name, flushed and fsync'ed, and only then renamed to ckpt-<step>.ddp; rename is
 * atomic within a file system, and the directory is fsync'ed afterwards so that the new
 * name itself survives a power cut. A process killed at any point leaves the old set of
 * checkpoints, or the old set plus the new one, never a partial ckpt-*.ddp.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "train/checkpoint_impl.h"

/* Float arrays are stored as the host's bytes; the format says little-endian. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoints store float32 little-endian: add byte swapping for this host"
#endif

/* Bounds on the two texts, so that a damaged length cannot point far outside. */
#define MAX_TEXT   (64u << 10)
#define MAX_STATES 16u

static void put32(unsigned char **p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        *(*p)++ = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char **p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        *(*p)++ = (unsigned char)(v >> (8 * i));
}

static void put_f64(unsigned char **p, double v) {
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    put64(p, bits);
}

static size_t header_bytes(uint32_t version, size_t settings_len, size_t model_len) {
    size_t fixed = version >= 5   ? DDP_CKPT_FIXED_BYTES
                   : version >= 3 ? DDP_CKPT_FIXED_BYTES - 24
                   : version == 2 ? DDP_CKPT_FIXED_BYTES - 96
                                  : DDP_CKPT_FIXED_BYTES - 104;
    size_t n = fixed + settings_len + model_len;
    return (n + DDP_CKPT_ALIGN - 1) / DDP_CKPT_ALIGN * DDP_CKPT_ALIGN;
}

ddp_status ddp_ckpt_encode_header(const ddp_checkpoint_info *in, unsigned char **out, size_t *len) {
    if (in->settings_len > MAX_TEXT || in->model_len > MAX_TEXT || in->num_states > MAX_STATES)
        return DDP_FAIL(DDP_ERR_INTERNAL,
                        "checkpoint header: texts of %zu and %zu bytes, %u "
                        "state buffers exceed the format's limits",
                        in->settings_len, in->model_len, in->num_states);
    size_t n = header_bytes(DDP_CKPT_VERSION, in->settings_len, in->model_len);
    unsigned char *buf = calloc(1, n), *p = buf;
    if (!buf) return DDP_FAIL(DDP_ERR_NOMEM, "checkpoint header: out of memory");
    memcpy(p, DDP_CKPT_MAGIC, 8);
    p += 8;
    put32(&p, DDP_CKPT_VERSION);
    put32(&p, ddp_crc32(0, in->settings, in->settings_len));
    put32(&p, (uint32_t)in->settings_len);
    memcpy(p, in->settings, in->settings_len);
    p += in->settings_len;
    put32(&p, (uint32_t)in->model_len);
    memcpy(p, in->model, in->model_len);
    p += in->model_len;
    put64(&p, in->num_params);
    put64(&p, in->global_batch);
    put32(&p, in->world);
    put64(&p, (uint64_t)in->step);
    put64(&p, in->epoch);
    put64(&p, in->sampler_epoch);
    put64(&p, in->sampler_step);
    put64(&p, (uint64_t)in->total_steps);
    put32(&p, in->optim_kind);
    put32(&p, in->num_states);
    put64(&p, (uint64_t)in->optim_steps);
    put64(&p, in->state_size);
    put64(&p, in->num_buffers);
    put64(&p, in->batch_now);
    put64(&p, in->sampler_pos);
    put64(&p, (uint64_t)in->samples);
    put64(&p, (uint64_t)in->batch_step);
    put_f64(&p, in->gns_g2);
    put_f64(&p, in->gns_trace);
    put64(&p, (uint64_t)in->gns_n);
    put32(&p, in->shards);
    put32(&p, in->shard_index);
    put64(&p, in->shard_size);
    put32(&p, in->psgd_rank);
    put32(&p, in->psgd_warm);
    put64(&p, in->psgd_q);
    put64(&p, in->psgd_errors);
    *out = buf;
    *len = n;
    return DDP_OK;
}

/* A bounds-checked cursor: reads past the end yield zeros and set `short_read`. */
typedef struct {
    const unsigned char *p;
    size_t len, pos;
    int short_read;
} reader;

static const unsigned char *take(reader *r, size_t n) {
    if (r->short_read || n > r->len - r->pos) {
        r->short_read = 1;
        return NULL;
    }
    const unsigned char *at = r->p + r->pos;
    r->pos += n;
    return at;
}
static uint32_t get32(reader *r) {
    const unsigned char *b = take(r, 4);
    uint32_t v = 0;
    for (int i = 0; b && i < 4; i++)
        v |= (uint32_t)b[i] << (8 * i);
    return v;
}
static uint64_t get64(reader *r) {
    const unsigned char *b = take(r, 8);
    uint64_t v = 0;
    for (int i = 0; b && i < 8; i++)
        v |= (uint64_t)b[i] << (8 * i);
    return v;
}

/* Reads the header fields and the size the whole file must have. Returns 1 when they
 * were read, 0 when the header runs past the end of the buffer, -1 when its numbers are
 * impossible. */
static int parse_header(const unsigned char *buf, size_t len, ddp_checkpoint_info *h,
                        uint64_t *expected) {
    reader r = {buf, len, 8, 0};
    memset(h, 0, sizeof *h);
    h->version = get32(&r);
    h->fingerprint = get32(&r);
    h->settings_len = get32(&r);
    if (h->settings_len > MAX_TEXT) return -1;
    h->settings = (const char *)take(&r, h->settings_len);
    h->model_len = get32(&r);
    if (h->model_len > MAX_TEXT) return -1;
    h->model = (const char *)take(&r, h->model_len);
    h->num_params = get64(&r);
    h->global_batch = get64(&r);
    h->world = get32(&r);
    h->step = (int64_t)get64(&r);
    h->epoch = get64(&r);
    h->sampler_epoch = get64(&r);
    h->sampler_step = get64(&r);
    h->total_steps = (int64_t)get64(&r);
    h->optim_kind = get32(&r);
    h->num_states = get32(&r);
    h->optim_steps = (int64_t)get64(&r);
    h->state_size = get64(&r);
    if (h->version >= 2) h->num_buffers = get64(&r);
    if (h->version >= 3) {
        h->batch_now = get64(&r);
        h->sampler_pos = get64(&r);
        h->samples = (int64_t)get64(&r);
        h->batch_step = (int64_t)get64(&r);
        uint64_t g2 = get64(&r), tr = get64(&r);
        memcpy(&h->gns_g2, &g2, sizeof g2);
        memcpy(&h->gns_trace, &tr, sizeof tr);
        h->gns_n = (int64_t)get64(&r);
        h->shards = get32(&r);
        h->shard_index = get32(&r);
        h->shard_size = get64(&r);
    }
    if (h->version >= 5) {
        h->psgd_rank = get32(&r);
        h->psgd_warm = get32(&r);
        h->psgd_q = get64(&r);
        h->psgd_errors = get64(&r);
    }
    if (h->version < 3) {
        /* A fixed batch throughout, and no noise-scale averages. */
        h->batch_now = h->global_batch;
        h->sampler_pos = h->sampler_step * h->global_batch;
        /* Unsigned: a damaged file's numbers must not overflow a signed product. */
        h->samples = (int64_t)((uint64_t)h->step * h->global_batch);
    }
    if (r.short_read) return 0;
    /* Bounded so that the products below cannot overflow. */
    if (h->num_states > MAX_STATES || h->num_params > ((uint64_t)1 << 60) ||
        h->state_size > ((uint64_t)1 << 60) || h->num_buffers > ((uint64_t)1 << 60) ||
        h->shards > (1u << 24) || h->shard_size > ((uint64_t)1 << 60) ||
        h->psgd_q > ((uint64_t)1 << 60) || h->psgd_errors > ((uint64_t)1 << 60) ||
        h->psgd_warm > 1 || (h->psgd_rank == 0 && (h->psgd_q || h->psgd_errors)) ||
        (h->shards > 0 && h->shard_index != DDP_CKPT_MANIFEST && h->shard_index >= h->shards) ||
        (h->shards == 0 && h->shard_index != 0))
        return -1;
    int manifest = h->shards > 0 && h->shard_index == DDP_CKPT_MANIFEST;
    uint64_t data_off = header_bytes(h->version, h->settings_len, h->model_len);
    uint64_t states_off = data_off + 4 * h->num_params;
    uint64_t buffers_off =
        states_off + (manifest ? 0 : 4 * (uint64_t)h->num_states * h->state_size);
    uint64_t q_off = buffers_off + 4 * h->num_buffers;
    uint64_t errors_off = q_off + 4 * h->psgd_q;
    uint64_t crcs_off = errors_off + 4 * h->psgd_errors;
    *expected = crcs_off + (manifest ? 4 * (uint64_t)h->shards : 0) + 4;
    h->params = buf + (data_off <= len ? data_off : len);
    h->states = buf + (states_off <= len ? states_off : len);
    h->buffers = buf + (buffers_off <= len ? buffers_off : len);
    h->psgd_qdata = buf + (q_off <= len ? q_off : len);
    h->errors = buf + (errors_off <= len ? errors_off : len);
    h->shard_crcs = buf + (crcs_off <= len ? crcs_off : len);
    return 1;
}

ddp_status ddp_checkpoint_parse(const void *data, size_t len, const char *name,
                                ddp_checkpoint_info *info) {
    const unsigned char *buf = data;
    memset(info, 0, sizeof *info);
    if (len < 8 || memcmp(buf, DDP_CKPT_MAGIC, 8) != 0)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "checkpoint %s: not a ddp checkpoint (%s): it does not start with "
                        "\"DDPCKPT\"; was it written by ddp-train --checkpoint-dir?",
                        name, len < 8 ? "shorter than the magic number" : "bad magic number");
    ddp_checkpoint_info h;
    uint64_t expected = 0;
    int header = parse_header(buf, len, &h, &expected);
    uint32_t stored = 0, crc = 0;
    if (len >= 12) {
        const unsigned char *c = buf + len - 4;
        stored = (uint32_t)c[0] | (uint32_t)c[1] << 8 | (uint32_t)c[2] << 16 | (uint32_t)c[3] << 24;
        crc = ddp_crc32(0, buf, len - 4);
    }
    /* Only an intact file is believed about its version: a damaged byte is reported as
     * damage, never as a strange version or setting. */
    int intact = len >= 12 && crc == stored;
    if (intact && (h.version < 1 || h.version > DDP_CKPT_VERSION))
        return DDP_FAIL(DDP_ERR_UNSUPPORTED,
                        "checkpoint %s has format version %u; this build reads versions 1 to "
                        "%u: resume it with the ddp-train that wrote it",
                        name, h.version, DDP_CKPT_VERSION);
    if (!intact && header == 0)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "checkpoint %s is truncated or damaged: its %zu bytes end inside its "
                        "header; resume from an older checkpoint or start afresh",
                        name, len);
    if (!intact && header == 1 && expected != len)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "checkpoint %s is truncated or damaged: %zu bytes where its header "
                        "promises %llu, and the CRC-32 does not match; resume from an older "
                        "checkpoint or start afresh",
                        name, len, (unsigned long long)expected);
    if (!intact)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "checkpoint %s is damaged: CRC-32 mismatch (stored %08x, computed %08x "
                        "over %zu bytes); resume from an older checkpoint or start afresh",
                        name, stored, crc, len >= 4 ? len - 4 : 0);
    if (header != 1 || expected != len)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "checkpoint %s: its %zu bytes do not match the sizes in its header; "
                        "the file was not written by ddp-train",
                        name, len);
    if (ddp_crc32(0, h.settings, h.settings_len) != h.fingerprint || h.step < 0 ||
        h.optim_steps < 0 || h.total_steps < 0 || h.samples < 0 || h.batch_step < 0 ||
        h.gns_n < 0 || h.batch_now == 0)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "checkpoint %s: inconsistent header (fingerprint or counters); the "
                        "file was not written by ddp-train",
                        name);
    *info = h;
    return DDP_OK;
}

ddp_status ddp_checkpoint_read(const char *path, void **buf, size_t *len,
                               ddp_checkpoint_info *info) {
    *buf = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return DDP_FAIL(DDP_ERR_IO, "checkpoint %s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return DDP_FAIL(DDP_ERR_IO, "checkpoint %s: not a regular file", path);
    }
    size_t n = (size_t)st.st_size;
    unsigned char *b = malloc(n ? n : 1);
    if (!b) {
        fclose(f);
        return DDP_FAIL(DDP_ERR_NOMEM, "checkpoint %s: no memory for its %zu bytes", path, n);
    }
    size_t got = fread(b, 1, n, f);
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(b);
        return DDP_FAIL(DDP_ERR_IO, "checkpoint %s: read error", path);
    }
    ddp_status s = ddp_checkpoint_parse(b, got, path, info);
    if (s != DDP_OK) {
        free(b);
        DDP_CHECK(s);
    }
    *buf = b;
    *len = got;
    return DDP_OK;
}

void ddp_checkpoint_path(char *buf, size_t cap, const char *dir, int64_t step) {
    snprintf(buf, cap, "%s/ckpt-%08lld.ddp", dir, (long long)step);
}

void ddp_checkpoint_shard_path(char *buf, size_t cap, const char *dir, int64_t step, uint32_t i,
                               uint32_t n) {
    snprintf(buf, cap, "%s/ckpt-%08lld.shard-%u-of-%u.ddp", dir, (long long)step, i, n);
}

/* The step of a shard file's name "ckpt-<digits>.shard-<i>-of-<n>.ddp", or -1. */
static int64_t step_of_shard_name(const char *name) {
    long long step;
    unsigned i, n;
    int end = 0;
    if (strncmp(name, "ckpt-", 5) != 0 ||
        sscanf(name, "ckpt-%lld.shard-%u-of-%u.ddp%n", &step, &i, &n, &end) != 3 ||
        name[end] != '\0' || step < 0)
        return -1;
    return step;
}

/* The step of a name "ckpt-<digits>.ddp", or -1 for any other name. */
static int64_t step_of_name(const char *name) {
    if (strncmp(name, "ckpt-", 5) != 0) return -1;
    const char *p = name + 5;
    int64_t step = 0;
    int digits = 0;
    for (; *p >= '0' && *p <= '9' && digits < 18; p++, digits++)
        step = step * 10 + (*p - '0');
    return digits > 0 && strcmp(p, ".ddp") == 0 ? step : -1;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

ddp_status ddp_checkpoint_list(const char *dir, int64_t **steps, size_t *n) {
    *steps = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return DDP_OK;
        return DDP_FAIL(DDP_ERR_IO, "checkpoint directory %s: %s", dir, strerror(errno));
    }
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int64_t step = step_of_name(e->d_name);
        if (step < 0) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            int64_t *grown = realloc(*steps, cap * sizeof *grown);
            if (!grown) {
                closedir(d);
                free(*steps);
                *steps = NULL;
                *n = 0;
                return DDP_FAIL(DDP_ERR_NOMEM, "listing %s: out of memory", dir);
            }
            *steps = grown;
        }
        (*steps)[(*n)++] = step;
    }
    closedir(d);
    if (*n > 1) qsort(*steps, *n, sizeof **steps, cmp_i64);
    return DDP_OK;
}

ddp_status ddp_ckpt_mkdirs(const char *dir) {
    DDP_CHECK(ddp_mkdirs(dir, "--checkpoint-dir"));
    return DDP_OK;
}

/* Crash injection for tests: DDP_INJECT_CKPT_CRASH="STEP:BYTES" kills this process with
 * SIGKILL once BYTES bytes of the checkpoint of step STEP are in its temporary file, as a
 * crash or a kill in the middle of a write would. Returns the byte budget for the write of
 * `step`, or -1 when none applies. Read once. */
static long long crash_after(int64_t step) {
    static int parsed;
    static long long at_step = -1, at_bytes = -1;
    if (!parsed) {
        parsed = 1;
        const char *env = getenv("DDP_INJECT_CKPT_CRASH");
        if (env && sscanf(env, "%lld:%lld", &at_step, &at_bytes) != 2) at_step = -1;
    }
    return at_step == step && at_bytes >= 0 ? at_bytes : -1;
}

static void maybe_crash(ddp_ckpt_writer *w, const void *data, size_t bytes) {
    long long budget = crash_after(w->step);
    if (budget < 0 || (long long)(w->bytes + bytes) < budget) return;
    size_t part = (size_t)(budget - (long long)w->bytes);
    if (part > 0) fwrite(data, 1, part, w->f);
    fflush(w->f);
    fsync(fileno(w->f));
    ddp_log_error("checkpoint: injected crash after %lld bytes of %s (DDP_INJECT_CKPT_CRASH)",
                  budget, w->tmp);
    raise(SIGKILL);
}

/* Opens w->tmp, whose name the caller has set. */
static ddp_status writer_open(ddp_ckpt_writer *w) {
    w->f = fopen(w->tmp, "wb");
    if (!w->f)
        return DDP_FAIL(DDP_ERR_IO,
                        "checkpoint: cannot create %s: %s; check that --checkpoint-dir exists "
                        "and is writable",
                        w->tmp, strerror(errno));
    return DDP_OK;
}

ddp_status ddp_ckpt_writer_open(ddp_ckpt_writer *w, const char *dir, int64_t step) {
    memset(w, 0, sizeof *w);
    w->step = step;
    snprintf(w->dir, sizeof w->dir, "%s", dir);
    snprintf(w->tmp, sizeof w->tmp, "%s/.ckpt-%08lld.ddp.tmp", dir, (long long)step);
    ddp_checkpoint_path(w->final, sizeof w->final, dir, step);
    DDP_CHECK(writer_open(w));
    return DDP_OK;
}

ddp_status ddp_ckpt_writer_open_shard(ddp_ckpt_writer *w, const char *dir, int64_t step, uint32_t i,
                                      uint32_t n) {
    memset(w, 0, sizeof *w);
    w->step = step;
    snprintf(w->dir, sizeof w->dir, "%s", dir);
    snprintf(w->tmp, sizeof w->tmp, "%s/.ckpt-%08lld.shard-%u-of-%u.ddp.tmp", dir, (long long)step,
             i, n);
    ddp_checkpoint_shard_path(w->final, sizeof w->final, dir, step, i, n);
    DDP_CHECK(writer_open(w));
    return DDP_OK;
}

ddp_status ddp_ckpt_writer_put(ddp_ckpt_writer *w, const void *data, size_t bytes) {
    maybe_crash(w, data, bytes);
    if (bytes && fwrite(data, 1, bytes, w->f) != bytes)
        return DDP_FAIL(DDP_ERR_IO,
                        "checkpoint: writing %s failed after %llu bytes: %s (disk "
                        "full?)",
                        w->tmp, (unsigned long long)w->bytes, strerror(errno));
    w->crc = ddp_crc32(w->crc, data, bytes);
    w->bytes += bytes;
    return DDP_OK;
}

void ddp_ckpt_writer_abort(ddp_ckpt_writer *w) {
    if (w->f) fclose(w->f);
    w->f = NULL;
    if (w->tmp[0]) unlink(w->tmp);
}

static ddp_status fail_commit(ddp_ckpt_writer *w, const char *what) {
    int e = errno;
    ddp_ckpt_writer_abort(w);
    return DDP_FAIL(DDP_ERR_IO, "checkpoint: %s %s failed: %s (disk full or not writable?)", what,
                    w->final, strerror(e));
}

ddp_status ddp_ckpt_writer_commit(ddp_ckpt_writer *w) {
    unsigned char crc[4], *p = crc;
    put32(&p, w->crc);
    ddp_status s = ddp_ckpt_writer_put(w, crc, sizeof crc);
    if (s != DDP_OK) {
        ddp_ckpt_writer_abort(w);
        DDP_CHECK(s);
    }
    /* Data on disk before the name: otherwise a crash after the rename could leave the
     * final name pointing at blocks that were never written. */
    if (fflush(w->f) != 0 || fsync(fileno(w->f)) != 0) return fail_commit(w, "syncing");
    int rc = fclose(w->f);
    w->f = NULL;
    if (rc != 0) return fail_commit(w, "closing");
    if (rename(w->tmp, w->final) != 0) return fail_commit(w, "renaming into");
    int fd = open(w->dir, O_RDONLY | O_DIRECTORY);
    /* Some file systems cannot sync a directory (EINVAL): the rename is all they offer. */
    if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL && errno != ENOTSUP)) {
        int e = errno;
        if (fd >= 0) close(fd);
        return DDP_FAIL(DDP_ERR_IO, "checkpoint %s: syncing the directory failed: %s", w->final,
                        strerror(e));
    }
    close(fd);
    return DDP_OK;
}

/* A temporary file of an interrupted write: ".ckpt-<digits>.ddp.tmp". */
static int is_stale_tmp(const char *name) {
    size_t n = strlen(name);
    return strncmp(name, ".ckpt-", 6) == 0 && n > 14 && strcmp(name + n - 8, ".ddp.tmp") == 0;
}

void ddp_ckpt_warn_orphans(const char *dir, int64_t newest) {
    DIR *d = opendir(dir);
    if (!d) return;
    int64_t warned = -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int64_t step = step_of_shard_name(e->d_name);
        if (step <= newest || step == warned) continue;
        char manifest[DDP_PATH_MAX + 64];
        ddp_checkpoint_path(manifest, sizeof manifest, dir, step);
        ddp_log_warn("ignoring the shard files of step %lld in %s: their manifest %s is missing "
                     "(that save did not complete)",
                     (long long)step, dir, manifest);
        warned = step;
    }
    closedir(d);
}

void ddp_ckpt_prune(const char *dir, int keep, int64_t newest) {
    char path[DDP_PATH_MAX + 300];
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (!is_stale_tmp(e->d_name)) continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (unlink(path) != 0)
                ddp_log_warn("checkpoint: cannot remove the stale %s: %s", path, strerror(errno));
        }
        closedir(d);
    }
    int64_t *steps;
    size_t n;
    if (ddp_checkpoint_list(dir, &steps, &n) != DDP_OK) {
        ddp_log_warn("checkpoint: old checkpoints not pruned: %s", ddp_error_message());
        ddp_error_clear();
        return;
    }
    /* Later steps than the one just written are left alone: they are not older, and
     * this run will replace them when it gets there. */
    size_t upto = n;
    while (upto > 0 && steps[upto - 1] > newest)
        upto--;
    /* Oldest first, leaving the `keep` newest (keep 0: all). */
    size_t removed = 0;
    for (size_t i = 0; keep > 0 && i + (size_t)keep < upto; i++, removed++) {
        ddp_checkpoint_path(path, sizeof path, dir, steps[i]);
        if (unlink(path) != 0)
            ddp_log_warn("checkpoint: cannot remove the old %s: %s", path, strerror(errno));
    }
    /* Shard files up to `newest` whose manifest is gone (pruned just now, or never
     * written because the save failed or was killed before its commit). */
    d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            int64_t step = step_of_shard_name(e->d_name);
            if (step < 0 || step > newest) continue;
            int kept = 0;
            for (size_t i = removed; i < n && !kept; i++)
                kept = steps[i] == step;
            if (kept) continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (unlink(path) != 0)
                ddp_log_warn("checkpoint: cannot remove the old %s: %s", path, strerror(errno));
        }
        closedir(d);
    }
    free(steps);
}
