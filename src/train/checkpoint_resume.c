/*
 * Resuming from a checkpoint: rank 0 chooses the file and checks that it belongs to
 * this run, its bytes are broadcast to every rank, and every rank loads them.
 *
 * A damaged newest checkpoint. Files only appear complete (see checkpoint_file.c), so a
 * damaged one means the storage failed or someone changed it. We skip it with a warning
 * that names it and the problem, and resume from the next older intact one: the job
 * goes on, having lost the steps since that one, and the damaged file is renamed to
 * <name>.damaged, kept for inspection but out of the way of pruning and of the next
 * resume. When no checkpoint is intact we refuse, naming the newest: starting
 * afresh would silently discard the run. A checkpoint that is intact but belongs to
 * another configuration, model or global batch is refused, never skipped, since the
 * older ones in the same directory belong to the same other run.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/powersgd.h"
#include "train/checkpoint_impl.h"
#include "train/trainer_impl.h"

/* The option behind a key of the settings text, for messages: the keys are option names,
 * but for those that identify the training data. */
static void option_of(const char *key, size_t n, char *buf, size_t cap) {
    static const char *const data[][2] = {{"train", "--data"},   {"dim", "--data"},
                                          {"classes", "--data"}, {"labels", "--data"},
                                          {"text", "--text"},    {"crc", "--text"}};
    for (size_t i = 0; i < sizeof data / sizeof *data; i++)
        if (strlen(data[i][0]) == n && memcmp(data[i][0], key, n) == 0) {
            snprintf(buf, cap, "%s", data[i][1]);
            return;
        }
    snprintf(buf, cap, "--%.*s", (int)n, key);
}

/* A value of the settings text for people: floats (written with all 9 digits, exact) are
 * shown as %g, item by item in lists like "hidden=256,128". */
static void show_value(const char *v, size_t n, char *out, size_t cap) {
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i <= n && o < cap;) {
        size_t end = i;
        while (end < n && v[end] != ',')
            end++;
        char part[128];
        size_t pl = end - i < sizeof part - 1 ? end - i : sizeof part - 1;
        memcpy(part, v + i, pl);
        part[pl] = '\0';
        char *e;
        double d = strtod(part, &e);
        if (strpbrk(part, ".eE") && e != part && *e == '\0')
            o += (size_t)snprintf(out + o, cap - o, "%s%g", i ? "," : "", d);
        else
            o += (size_t)snprintf(out + o, cap - o, "%s%s", i ? "," : "", part);
        i = end + 1;
    }
}

/* The token "key=value" at or after *pos in s; 0 at the end. */
static int next_token(const char *s, size_t len, size_t *pos, const char **key, size_t *klen,
                      const char **val, size_t *vlen) {
    while (*pos < len && s[*pos] == ' ')
        (*pos)++;
    if (*pos >= len) return 0;
    size_t i = *pos, end = i;
    while (end < len && s[end] != ' ')
        end++;
    size_t k = 0;
    while (i + k < end && s[i + k] != '=')
        k++;
    *key = s + i;
    *klen = k;
    *val = s + i + (k < end - i ? k + 1 : k);
    *vlen = end - (size_t)(*val - s);
    *pos = end;
    return 1;
}

/* Finds key in s; *val is NULL when absent. */
static void lookup(const char *s, size_t len, const char *key, size_t klen, const char **val,
                   size_t *vlen) {
    size_t pos = 0, kl;
    const char *k, *v;
    *val = NULL;
    *vlen = 0;
    while (next_token(s, len, &pos, &k, &kl, &v, vlen))
        if (kl == klen && memcmp(k, key, klen) == 0) {
            *val = v;
            return;
        }
}

/* Describes the first setting of `a` (the checkpoint's) that differs in `b` (this
 * run's), or one that only b has. Returns 0 when they agree. */
static int first_difference(const char *a, size_t alen, const char *b, size_t blen, char *msg,
                            size_t cap) {
    for (int pass = 0; pass < 2; pass++) {
        const char *s = pass ? b : a, *other = pass ? a : b;
        size_t len = pass ? blen : alen, olen = pass ? alen : blen, pos = 0, kl, vl, ovl;
        const char *k, *v, *ov;
        while (next_token(s, len, &pos, &k, &kl, &v, &vl)) {
            lookup(other, olen, k, kl, &ov, &ovl);
            if (ov && ovl == vl && memcmp(ov, v, vl) == 0) continue;
            char mine[160], theirs[160] = "(absent)";
            show_value(v, vl, mine, sizeof mine);
            if (ov) show_value(ov, ovl, theirs, sizeof theirs);
            char opt[80];
            option_of(k, kl, opt, sizeof opt);
            snprintf(msg, cap, "setting '%.*s' (%s) differs: %s in the checkpoint, %s in this run",
                     (int)kl, k, opt, pass ? theirs : mine, pass ? mine : theirs);
            return 1;
        }
    }
    return 0;
}

/* Rank 0: does this checkpoint belong to this run? Same checks give the same answer on
 * every rank, since all ranks run the same configuration (checked at set-up). */
static ddp_status check_compatible(ddp_trainer *t, const ddp_checkpoint_info *h, const char *path) {
    if (h->global_batch != t->cfg.global_batch)
        return DDP_FAIL(DDP_ERR_MISMATCH,
                        "checkpoint %s was written with global batch %llu but this run has "
                        "--batch %zu: resume with --batch %llu (the number of ranks may change, "
                        "as long as it divides the batch)",
                        path, (unsigned long long)h->global_batch, t->cfg.global_batch,
                        (unsigned long long)h->global_batch);
    char mine[4096], diff[512];
    size_t len = ddp_checkpoint_settings(t, mine, sizeof mine);
    if (h->fingerprint != ddp_crc32(0, mine, len) || h->settings_len != len ||
        memcmp(h->settings, mine, len) != 0) {
        if (!first_difference(h->settings, h->settings_len, mine, len, diff, sizeof diff))
            snprintf(diff, sizeof diff, "the settings fingerprints differ");
        return DDP_FAIL(DDP_ERR_MISMATCH,
                        "checkpoint %s belongs to a run with other settings: %s; resume with the "
                        "checkpoint's settings, or start afresh in another --checkpoint-dir",
                        path, diff);
    }
    const char *model = ddp_model_describe(t->model);
    /* A manifest whose shard files hold the parameters (ZeRO-3) holds none itself. */
    int params_in_shards = h->shards > 0 && h->num_params == 0;
    if (h->model_len != strlen(model) || memcmp(h->model, model, h->model_len) != 0 ||
        (h->num_params != t->num_params && !params_in_shards) ||
        h->num_buffers != ddp_model_num_buffer_elems(t->model))
        return DDP_FAIL(DDP_ERR_MISMATCH,
                        "checkpoint %s holds the model '%.*s' (%llu parameters) but this run "
                        "builds '%s' (%zu parameters)",
                        path, (int)h->model_len, h->model, (unsigned long long)h->num_params, model,
                        t->num_params);
    if (h->optim_kind != (uint32_t)t->cfg.optim.kind ||
        h->num_states != (uint32_t)ddp_optim_num_states(t->optim) || h->state_size != t->num_params)
        return DDP_FAIL(DDP_ERR_MISMATCH,
                        "checkpoint %s holds optimizer %u with %u state buffer(s) of %llu "
                        "elements, which does not fit this run's optimizer",
                        path, h->optim_kind, h->num_states, (unsigned long long)h->state_size);
    size_t spe = t->src->ops->cursor(t->src).steps_per_epoch;
    if (h->sampler_step >= spe)
        return DDP_FAIL(DDP_ERR_MISMATCH,
                        "checkpoint %s resumes at step %llu of an epoch, but an epoch of this "
                        "run has %zu steps",
                        path, (unsigned long long)h->sampler_step, spe);
    return DDP_OK;
}

/* Rank 0: reads the newest intact checkpoint of dir. *steps (free() it) gets the n
 * steps found, ascending, of which the *skipped last are damaged. *len = 0 when there
 * is none. */
static ddp_status newest_intact(const char *dir, void **buf, size_t *len, char *path, size_t cap,
                                ddp_checkpoint_info *h, int64_t **steps, size_t *n,
                                size_t *skipped) {
    *skipped = 0;
    DDP_CHECK(ddp_checkpoint_list(dir, steps, n));
    char newest_problem[1024] = "";
    for (size_t i = *n; i-- > 0;) {
        ddp_checkpoint_path(path, cap, dir, (*steps)[i]);
        ddp_status s = ddp_checkpoint_read(path, buf, len, h);
        if (s == DDP_OK) return DDP_OK;
        /* Unreadable, or of another version: not ours to skip. */
        if (s != DDP_ERR_FORMAT) DDP_CHECK(s);
        if (!(*skipped)++)
            snprintf(newest_problem, sizeof newest_problem, "%s", ddp_error_message());
        ddp_log_warn("skipping a damaged checkpoint: %s", ddp_error_message());
        ddp_error_clear();
    }
    if (*n > 0)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "no usable checkpoint in %s: all %zu are damaged; the newest: %s", dir, *n,
                        newest_problem);
    return DDP_OK;
}

/* Renames damaged checkpoints to <name>.damaged: kept for inspection, but out of the
 * way of pruning (which would otherwise count them among the newest) and of the next
 * resume. */
static void move_aside(const char *dir, const int64_t *steps, size_t count) {
    for (size_t i = 0; i < count; i++) {
        char from[DDP_PATH_MAX + 64], to[DDP_PATH_MAX + 80];
        ddp_checkpoint_path(from, sizeof from, dir, steps[i]);
        snprintf(to, sizeof to, "%s.damaged", from);
        if (rename(from, to) != 0)
            ddp_log_warn("could not move the damaged %s aside: %s", from, strerror(errno));
        else
            ddp_log_warn("moved the damaged %s aside to %s", from, to);
    }
}

/* Rank 0: reads `file`, or else the newest intact checkpoint of dir (see the policy at
 * the top), and checks that it belongs to this run. *len = 0 when dir holds none. */
static ddp_status pick(ddp_trainer *t, const char *dir, const char *file, void **buf, size_t *len,
                       char *path, size_t cap) {
    ddp_checkpoint_info h;
    int64_t *steps = NULL;
    size_t skipped = 0, n = 0;
    ddp_status s;
    if (file) {
        snprintf(path, cap, "%s", file);
        s = ddp_checkpoint_read(path, buf, len, &h);
    } else {
        s = newest_intact(dir, buf, len, path, cap, &h, &steps, &n, &skipped);
        if (s == DDP_OK) ddp_ckpt_warn_orphans(dir, *len > 0 ? h.step : -1);
    }
    if (s == DDP_OK && *len > 0) s = check_compatible(t, &h, path);
    if (s == DDP_OK && skipped > 0) {
        ddp_log_warn("resuming from the older %s: the %zu newer checkpoint(s) are damaged", path,
                     skipped);
        move_aside(dir, steps + n - skipped, skipped);
    }
    free(steps);
    if (s != DDP_OK) {
        free(*buf);
        *buf = NULL;
        *len = 0;
        DDP_CHECK(s);
    }
    return DDP_OK;
}

/* What a load takes from a checkpoint: elements [vb, vb + vlen) of each of its k optimizer
 * state buffers into states (k, vlen), and parameters [pb, pb + plen) into params. */
typedef struct {
    size_t vb, vlen, pb, plen, k;
    float *states, *params;
} take;

/* The elements of [lo, lo + len) in [qlo, qhi): *a, *e. */
static void overlap(size_t lo, size_t len, size_t qlo, size_t qhi, size_t *a, size_t *e) {
    *a = lo > qlo ? lo : qlo;
    *e = lo + len < qhi ? lo + len : qhi;
}

/* The directory of the checkpoint at path. */
static void dir_of(const char *path, char *dir, size_t cap) {
    snprintf(dir, cap, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, cap, ".");
}

/* Reads shard file q of the manifest m (at path, in dir) into *buf (free() it), h pointing
 * into it; qlen: the elements of the shard. The file must be intact and be the one the
 * manifest names (its CRC), or this fails naming it. */
static ddp_status read_shard(const ddp_checkpoint_info *m, const char *path, const char *dir,
                             uint32_t q, size_t qlen, void **buf, ddp_checkpoint_info *h) {
    char shard[DDP_PATH_MAX + 128];
    ddp_checkpoint_shard_path(shard, sizeof shard, dir, m->step, q, m->shards);
    size_t len = 0;
    DDP_CHECK(ddp_checkpoint_read(shard, buf, &len, h));
    const unsigned char *c = (const unsigned char *)m->shard_crcs + 4 * (size_t)q;
    uint32_t want =
        (uint32_t)c[0] | (uint32_t)c[1] << 8 | (uint32_t)c[2] << 16 | (uint32_t)c[3] << 24;
    const unsigned char *s = (const unsigned char *)*buf + len - 4;
    uint32_t got =
        (uint32_t)s[0] | (uint32_t)s[1] << 8 | (uint32_t)s[2] << 16 | (uint32_t)s[3] << 24;
    int params_here = m->num_params == 0;
    if (got != want || h->shards != m->shards || h->shard_index != q || h->step != m->step ||
        h->num_states != m->num_states || h->shard_size != m->shard_size || h->state_size != qlen ||
        h->fingerprint != m->fingerprint || h->num_params != (params_here ? qlen : 0) ||
        h->psgd_rank != m->psgd_rank || h->psgd_errors != (m->psgd_rank ? m->state_size : 0)) {
        free(*buf);
        *buf = NULL;
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "checkpoint shard %s does not belong to the manifest %s (checksum "
                        "%08x where the manifest names %08x, or other sizes): it was written "
                        "by another save; resume from an older checkpoint",
                        shard, path, got, want);
    }
    return DDP_OK;
}

/* Reads what w asks for from the shard files that the manifest m (at path) commits, which
 * lie beside it. The shards may have been cut for another number of ranks: only those that
 * overlap the ranges are read, one at a time. They hold the optimizer state and, where the
 * manifest holds no parameters (ZeRO-3), the parameters of the same range. */
static ddp_status take_from_shards(const ddp_checkpoint_info *m, const char *path, take *w) {
    char dir[DDP_PATH_MAX + 64];
    dir_of(path, dir, sizeof dir);
    int params_here = m->num_params == 0;
    /* The layout the writer cut them with, whatever this run's. */
    ddp_shard_layout l = {.n = m->state_size, .size = m->shard_size, .ranks = (int)m->shards};
    for (uint32_t q = 0; q < m->shards; q++) {
        size_t qlo, qlen;
        ddp_shard_of(&l, (int)q, &qlo, &qlen);
        size_t sa, se, pa, pe;
        overlap(w->vb, w->k > 0 ? w->vlen : 0, qlo, qlo + qlen, &sa, &se);
        overlap(w->pb, params_here ? w->plen : 0, qlo, qlo + qlen, &pa, &pe);
        if (se <= sa && pe <= pa) continue;
        void *buf = NULL;
        ddp_checkpoint_info h;
        DDP_CHECK(read_shard(m, path, dir, q, qlen, &buf, &h));
        for (size_t i = 0; se > sa && i < w->k; i++)
            memcpy(w->states + i * w->vlen + (sa - w->vb),
                   (const char *)h.states + (i * h.state_size + (sa - qlo)) * sizeof(float),
                   (se - sa) * sizeof(float));
        if (pe > pa)
            memcpy(w->params + (pa - w->pb), (const char *)h.params + (pa - qlo) * sizeof(float),
                   (pe - pa) * sizeof(float));
        free(buf);
    }
    return DDP_OK;
}

/* PowerSGD's state into this run's compressor: Q from the manifest, and as error feedback
 * of rank j of `world` the sum of the writer's ranks' i with i mod world = j (their own on
 * the same ranks; the sum over ranks kept on any other number), added in ascending i.
 * Where the checkpoint has none, or of another rank R, the compressor starts afresh. */
static ddp_status take_compressor(ddp_trainer *t, const ddp_checkpoint_info *m, const char *path) {
    ddp_powersgd *p = ddp_sync_compressor(t->sync);
    if (!p) return DDP_OK;
    if (m->psgd_rank != (uint32_t)t->cfg.reducer.compress_rank ||
        m->psgd_q != ddp_powersgd_q_elems(p)) {
        if (t->rank == 0)
            ddp_log_warn("%s holds %s: PowerSGD's error feedback and Q start afresh", path,
                         m->psgd_rank ? "the compressor state of another --compress-rank"
                                      : "no compressor state");
        return DDP_OK;
    }
    memcpy(ddp_powersgd_q(p), m->psgd_qdata, m->psgd_q * sizeof(float));
    ddp_powersgd_set_q_warm(p, (int)m->psgd_warm);
    float *e = ddp_powersgd_errors(p);
    memset(e, 0, t->num_params * sizeof *e);
    char dir[DDP_PATH_MAX + 64];
    dir_of(path, dir, sizeof dir);
    ddp_shard_layout l = {.n = m->state_size, .size = m->shard_size, .ranks = (int)m->shards};
    int first = 1;
    for (uint32_t q = (uint32_t)t->rank; q < m->shards; q += (uint32_t)t->world) {
        size_t qlo, qlen;
        ddp_shard_of(&l, (int)q, &qlo, &qlen);
        void *buf = NULL;
        ddp_checkpoint_info h;
        DDP_CHECK(read_shard(m, path, dir, q, qlen, &buf, &h));
        const float *src = h.errors; /* 4-byte aligned: the data start on 64 bytes */
        /* The first one copied, not added, so that its zeros keep their signs. */
        if (first)
            memcpy(e, src, t->num_params * sizeof *e);
        else
            for (size_t i = 0; i < t->num_params; i++)
                e[i] += src[i];
        first = 0;
        free(buf);
    }
    return DDP_OK;
}

/* What w asks for, from the checkpoint itself (a whole one, or a manifest that holds the
 * parameters) or from its shard files. */
static ddp_status take_from(const ddp_checkpoint_info *h, const char *path, take *w) {
    if (h->shards > 0) DDP_CHECK(take_from_shards(h, path, w));
    if (h->shards == 0)
        for (size_t i = 0; i < w->k; i++)
            memcpy(w->states + i * w->vlen,
                   (const char *)h->states + (i * h->state_size + w->vb) * sizeof(float),
                   w->vlen * sizeof(float));
    if (h->num_params > 0 && w->plen > 0)
        memcpy(w->params, (const char *)h->params + w->pb * sizeof(float), w->plen * sizeof(float));
    return DDP_OK;
}

ddp_status ddp_checkpoint_read_params(const char *path, const ddp_checkpoint_info *h, float *host) {
    size_t n = h->num_params > 0 ? h->num_params : h->state_size;
    take w = {.pb = 0, .plen = n, .params = host};
    DDP_CHECK(take_from(h, path, &w));
    return DDP_OK;
}

/* Every rank: its part of the parameters (all, or its shard under ZeRO-3) and of the
 * optimizer state, from the checkpoint itself or from its shard files, onto the device. */
static ddp_status load_state(ddp_trainer *t, const ddp_checkpoint_info *h, const char *path) {
    take w = {.k = h->num_states};
    ddp_sync_view(t->sync, &w.vb, &w.vlen);
    ddp_sync_param_range(t->sync, &w.pb, &w.plen);
    w.states = malloc((w.k * w.vlen > 0 ? w.k * w.vlen : 1) * sizeof *w.states);
    w.params = malloc((w.plen > 0 ? w.plen : 1) * sizeof *w.params);
    ddp_status s = w.states && w.params
                       ? take_from(h, path, &w)
                       : DDP_FAIL(DDP_ERR_NOMEM, "no memory to load the optimizer state");
    if (s == DDP_OK)
        s = ddp_backend_copy(t->backend, ddp_model_params(t->model) + w.pb, w.params,
                             w.plen * sizeof(float), DDP_COPY_H2D);
    for (size_t i = 0; s == DDP_OK && i < w.k; i++)
        s = ddp_backend_copy(t->backend, ddp_optim_state(t->optim, (int)i), w.states + i * w.vlen,
                             w.vlen * sizeof(float), DDP_COPY_H2D);
    if (s == DDP_OK) s = ddp_backend_sync(t->backend);
    free(w.states);
    free(w.params);
    DDP_CHECK(s);
    return DDP_OK;
}

/* Every rank: puts the checkpoint's state into the trainer. */
static ddp_status apply(ddp_trainer *t, const ddp_checkpoint_info *h, const char *path) {
    ddp_backend *b = t->backend;
    if (ddp_trainer_adaptive(t))
        DDP_CHECK(ddp_trainer_batch_resume(t, h->batch_now, h->sampler_epoch,
                                           (size_t)h->sampler_step, (size_t)h->sampler_pos));
    else
        DDP_CHECK(t->src->ops->seek(t->src, h->sampler_epoch, (size_t)h->sampler_step));
    DDP_CHECK(load_state(t, h, path));
    DDP_CHECK(take_compressor(t, h, path));
    DDP_CHECK(ddp_backend_copy(b, ddp_model_buffers(t->model), h->buffers,
                               h->num_buffers * sizeof(float), DDP_COPY_H2D));
    /* The host buffer is freed after this: the copies must be done with it. */
    DDP_CHECK(ddp_backend_sync(b));
    ddp_optim_set_steps(t->optim, h->optim_steps);
    t->step = h->step;
    t->samples = h->samples;
    t->batch_step = h->batch_step;
    t->epoch = h->epoch;
    t->gns.g2 = h->gns_g2;
    t->gns.tr = h->gns_trace;
    t->gns.n = h->gns_n;
    if (ddp_trainer_adaptive(t)) ddp_trainer_batch_steps_left(t);
    return DDP_OK;
}

static void report(ddp_trainer *t, const ddp_checkpoint_info *h, const char *path) {
    if (t->rank != 0) return;
    ddp_log_info("resumed from %s: step %lld of %lld, epoch %llu (written by %u rank(s), now %d)",
                 path, (long long)h->step, (long long)t->total_steps, (unsigned long long)h->epoch,
                 h->world, t->world);
    if (t->cfg.sched.kind == DDP_SCHED_COSINE && h->total_steps != t->total_steps &&
        h->step > t->cfg.sched.warmup_steps)
        ddp_log_warn("the cosine schedule now ends at step %lld instead of %lld: learning rates "
                     "from here on differ from those of the run that wrote %s",
                     (long long)t->total_steps, (long long)h->total_steps, path);
    if (h->step >= t->total_steps)
        ddp_log_info("the checkpoint is at or past the last step (%lld): nothing left to train",
                     (long long)t->total_steps);
}

/* Broadcasts n bytes from rank 0 in pieces that MPI's int counts can carry. */
static ddp_status broadcast_bytes(ddp_comm *c, void *buf, size_t n) {
    const size_t piece = (size_t)1 << 30;
    for (size_t i = 0; i < n; i += piece)
        DDP_CHECK(ddp_comm_broadcast(c, (char *)buf + i, n - i < piece ? n - i : piece, DDP_U8, 0));
    return DDP_OK;
}

static ddp_status load(ddp_trainer *t, const char *dir, const char *file, int64_t *resumed) {
    if (resumed) *resumed = 0;
    void *buf = NULL;
    size_t len = 0;
    char path[DDP_PATH_MAX + 64] = "";
    ddp_status s = DDP_OK;
    if (t->rank == 0) s = pick(t, dir, file, &buf, &len, path, sizeof path);
    if (s != DDP_OK) ddp_error_trace(__FILE__, __LINE__);
    /* Every rank reaches each of the collectives below, in this order. */
    DDP_CHECK(ddp_ckpt_agree(t, s, "read a checkpoint"));
    uint64_t n = len;
    s = ddp_comm_broadcast(t->ctrl, &n, 1, DDP_U64, 0);
    if (s == DDP_OK) s = ddp_comm_broadcast(t->ctrl, path, sizeof path, DDP_U8, 0);
    if (s == DDP_OK && n == 0) {
        ddp_log_info("--resume: no checkpoint in %s, starting from step 0", dir);
        return DDP_OK;
    }
    if (s == DDP_OK && t->rank != 0) {
        buf = malloc(n);
        if (!buf)
            s = DDP_FAIL(DDP_ERR_NOMEM, "no memory for the %llu-byte checkpoint %s",
                         (unsigned long long)n, path);
    }
    s = ddp_ckpt_agree(t, s, "receive the checkpoint");
    if (s == DDP_OK) s = broadcast_bytes(t->ctrl, buf, n);
    ddp_checkpoint_info h = {0};
    /* Parsed again on every rank: rank 0 checked these bytes, the others got them over
     * the network, and the CRC covers that hop too. */
    if (s == DDP_OK) s = ddp_checkpoint_parse(buf, n, path, &h);
    if (s == DDP_OK) s = apply(t, &h, path);
    if (s == DDP_OK) report(t, &h, path);
    free(buf);
    /* The parameters came from the file (and from other ranks): their bf16 copy, where
     * products keep one, is rewritten before it is read. */
    if (s == DDP_OK) s = ddp_sync_params_changed(t->sync);
    DDP_CHECK(ddp_ckpt_agree(t, s, "load the checkpoint"));
    if (resumed) *resumed = h.step;
    return DDP_OK;
}

ddp_status ddp_trainer_resume(ddp_trainer *t, const char *dir, int64_t *resumed_step) {
    DDP_CHECK(load(t, dir, NULL, resumed_step));
    return DDP_OK;
}

ddp_status ddp_trainer_load_checkpoint(ddp_trainer *t, const char *path) {
    DDP_CHECK(load(t, NULL, path, NULL));
    return DDP_OK;
}
