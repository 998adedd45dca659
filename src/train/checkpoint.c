/*
 * Checkpoints of a trainer: what goes into one, saving it from rank 0, and resuming on
 * any number of ranks that divides the same global batch.
 *
 * Who reads and writes. Parameters and optimizer state are replicated, so rank 0 alone
 * writes. On resume rank 0 alone reads, checks, and broadcasts the file's bytes over the
 * control communicator: the other ranks need no access to the directory (no shared file
 * system), and every rank loads the very same bytes, so all end bitwise identical.
 * After every save and load all ranks agree on the outcome, so a failure on one rank
 * stops all of them with a message instead of leaving some inside the next collective.
 *
 * With sharded optimizer state (--zero), no rank holds all of it: each rank writes its own
 * shard file (its slice of the state) and rank 0 a small manifest naming the shards, the
 * world size and the slice boundaries, renamed into place last so that it is the commit
 * point. Resuming on another number of ranks re-slices: every rank reads the byte ranges
 * of the shards that overlap its new slice (checkpoint_resume.c). The single file is the
 * unsharded case.
 *
 * What must match on resume is the "settings" text (ddp_checkpoint_settings): the
 * options not marked resumable in their option-table entries (ddp/opt.h; ranks and the
 * batch split into micro-batches, run length, devices, communication and logging may
 * change), plus the training data's identity. The shuffle needs no stored random state:
 * each epoch's order is derived from (seed, epoch), so the source's cursor (epoch, step in
 * epoch) is all it takes.
 */
#include <stdlib.h>
#include <string.h>

#include "ddp/powersgd.h"
#include "train/checkpoint_impl.h"
#include "train/trainer_impl.h"

size_t ddp_checkpoint_settings(const ddp_trainer *t, char *buf, size_t cap) {
    /* The batch as configured: an adaptive schedule may have grown it since. */
    ddp_train_config cfg = t->cfg;
    cfg.global_batch = t->start_batch;
    cfg.accum = t->start_accum;
    size_t n = ddp_train_config_resume_text(&cfg, buf, cap);
    /* The source's cursor is only meaningful on the same training data. */
    if (n + 1 < cap) {
        buf[n++] = ' ';
        n += t->src->ops->identify(t->src, buf + n, cap - n);
    }
    return n < cap ? n : cap - 1;
}

ddp_status ddp_ckpt_agree(ddp_trainer *t, ddp_status local, const char *what) {
    int failed = -1;
    ddp_status a = ddp_comm_agree(t->ctrl, local, &failed);
    if (local != DDP_OK) return local;
    DDP_CHECK(a);
    if (failed >= 0)
        return DDP_FAIL(DDP_ERR_REMOTE, "rank %d failed to %s (its message says why)", failed,
                        what);
    return DDP_OK;
}

/* ---- saving ------------------------------------------------------------------------- */

/* Copies device memory to the file through a bounded host buffer. */
static ddp_status put_device(ddp_trainer *t, ddp_ckpt_writer *w, const float *dev, size_t n,
                             float *host, size_t host_cap) {
    for (size_t i = 0; i < n; i += host_cap) {
        size_t k = n - i < host_cap ? n - i : host_cap;
        DDP_CHECK(ddp_backend_copy(t->backend, host, dev + i, k * sizeof(float), DDP_COPY_D2H));
        DDP_CHECK(ddp_ckpt_writer_put(w, host, k * sizeof(float)));
    }
    return DDP_OK;
}

/* The data after the header, as h says which parts the file holds: parameters, the
 * optimizer state (this rank's part of it, which is all of it without sharding), the
 * model's buffers, and a manifest's shard CRCs. */
static ddp_status write_body(ddp_trainer *t, ddp_ckpt_writer *w, const ddp_checkpoint_info *h,
                             const unsigned char *header, size_t header_len) {
    enum { CHUNK = 1 << 18 };
    DDP_CHECK(ddp_ckpt_writer_put(w, header, header_len));
    float *host = malloc(CHUNK * sizeof(float));
    if (!host) return DDP_FAIL(DDP_ERR_NOMEM, "checkpoint: out of memory");
    int manifest = h->shards > 0 && h->shard_index == DDP_CKPT_MANIFEST;
    /* The parameters this file holds: all of them, or a shard file's own (ZeRO-3). */
    size_t pb = 0, plen;
    if (h->shards > 0 && !manifest) ddp_sync_param_range(t->sync, &pb, &plen);
    ddp_status s = put_device(t, w, ddp_model_params(t->model) + pb, h->num_params, host, CHUNK);
    /* The optimizer state: all of it, or a shard file's part, which starts past the
     * optimizer's view where the state is whole (--zero 0 under compression). */
    size_t state_at = 0;
    if (h->shards > 0 && !manifest) {
        size_t vb, vlen, sb, slen;
        ddp_sync_view(t->sync, &vb, &vlen);
        ddp_shard_of(ddp_sync_layout(t->sync), t->rank, &sb, &slen);
        state_at = sb - vb;
    }
    for (int i = 0; s == DDP_OK && !manifest && i < ddp_optim_num_states(t->optim); i++)
        s = put_device(t, w, ddp_optim_state(t->optim, i) + state_at, h->state_size, host, CHUNK);
    if (s == DDP_OK) s = put_device(t, w, ddp_model_buffers(t->model), h->num_buffers, host, CHUNK);
    /* The compressor's state is in host memory. */
    ddp_powersgd *psgd = ddp_sync_compressor(t->sync);
    if (s == DDP_OK && h->psgd_q > 0)
        s = ddp_ckpt_writer_put(w, ddp_powersgd_q(psgd), h->psgd_q * sizeof(float));
    if (s == DDP_OK && h->psgd_errors > 0)
        s = ddp_ckpt_writer_put(w, ddp_powersgd_errors(psgd), h->psgd_errors * sizeof(float));
    if (s == DDP_OK && manifest) s = ddp_ckpt_writer_put(w, h->shard_crcs, 4 * (size_t)h->shards);
    free(host);
    DDP_CHECK(s);
    return DDP_OK;
}

/* Writes the file that h describes (its header and body) and commits it; *crc (may be
 * NULL) receives the CRC-32 stored at its end. */
static ddp_status write_file(ddp_trainer *t, const ddp_checkpoint_info *h, ddp_ckpt_writer *w,
                             uint32_t *crc) {
    unsigned char *header;
    size_t header_len;
    DDP_CHECK(ddp_ckpt_encode_header(h, &header, &header_len));
    const char *dir = t->cfg.checkpoint_dir;
    ddp_status s = h->shards > 0 && h->shard_index != DDP_CKPT_MANIFEST
                       ? ddp_ckpt_writer_open_shard(w, dir, t->step, h->shard_index, h->shards)
                       : ddp_ckpt_writer_open(w, dir, t->step);
    if (s == DDP_OK) {
        s = write_body(t, w, h, header, header_len);
        if (s == DDP_OK && crc) *crc = w->crc; /* before commit appends it */
        if (s == DDP_OK)
            s = ddp_ckpt_writer_commit(w);
        else
            ddp_ckpt_writer_abort(w);
    }
    free(header);
    DDP_CHECK(s);
    return DDP_OK;
}

/* Whether the checkpoint is cut into one file per rank and a manifest: where the
 * optimizer state is sharded, and where each rank has state of its own (PowerSGD's error
 * feedback). */
static int sharded(ddp_trainer *t) {
    return ddp_sync_stage(t->sync) > 0 || ddp_sync_compressor(t->sync) != NULL;
}

/* The header of this step's checkpoint: a whole one without sharding, else the manifest;
 * settings (cap 4096) receives its settings text. */
static void describe(ddp_trainer *t, ddp_checkpoint_info *out, char *settings) {
    const char *model = ddp_model_describe(t->model);
    ddp_cursor cursor = t->src->ops->cursor(t->src);
    ddp_checkpoint_info h = {
        .settings = settings,
        .settings_len = ddp_checkpoint_settings(t, settings, 4096),
        .model = model,
        .model_len = strlen(model),
        .num_params = t->num_params,
        .global_batch = t->start_batch, /* what --batch must say on resume */
        .world = (uint32_t)t->world,
        .step = t->step,
        .epoch = t->epoch,
        .sampler_epoch = cursor.epoch,
        .sampler_step = cursor.step,
        .total_steps = t->total_steps,
        .optim_kind = (uint32_t)t->cfg.optim.kind,
        .num_states = (uint32_t)ddp_optim_num_states(t->optim),
        .optim_steps = ddp_optim_steps(t->optim),
        /* Of each whole state buffer, whether or not this file holds it. */
        .state_size = t->num_params,
        .num_buffers = ddp_model_num_buffer_elems(t->model),
        .batch_now = t->cfg.global_batch,
        .sampler_pos = cursor.pos,
        .samples = t->samples,
        .batch_step = t->batch_step,
        .gns_g2 = t->gns.g2,
        .gns_trace = t->gns.tr,
        .gns_n = t->gns.n,
    };
    if (sharded(t)) {
        h.shards = (uint32_t)t->world;
        h.shard_index = DDP_CKPT_MANIFEST;
        h.shard_size = ddp_sync_layout(t->sync)->size;
        /* Where no rank holds all parameters, each shard file holds its own. */
        if (!ddp_sync_params_replicated(t->sync)) h.num_params = 0;
    }
    ddp_powersgd *psgd = ddp_sync_compressor(t->sync);
    if (psgd) {
        h.psgd_rank = (uint32_t)t->cfg.reducer.compress_rank;
        h.psgd_warm = (uint32_t)ddp_powersgd_q_warm(psgd);
        h.psgd_q = ddp_powersgd_q_elems(psgd); /* the manifest's */
    }
    *out = h;
}

/* Rank 0's file: the whole checkpoint, or the manifest that commits the shards (their
 * CRCs in crcs). */
static ddp_status write_checkpoint(ddp_trainer *t, const uint32_t *crcs) {
    double t0 = ddp_time_now();
    char settings[4096];
    ddp_checkpoint_info h;
    describe(t, &h, settings);
    h.shard_crcs = crcs;
    ddp_ckpt_writer w;
    DDP_CHECK(write_file(t, &h, &w, NULL));
    if (!t->cfg.quiet)
        ddp_log_info("checkpoint of step %lld written to %s (%.1f MB in %.2f s%s)",
                     (long long)t->step, w.final, (double)w.bytes / 1e6, ddp_time_now() - t0,
                     !h.shards          ? ""
                     : h.num_params > 0 ? ", the optimizer state in one shard file per rank"
                                        : ", parameters and optimizer state in one shard file per "
                                          "rank");
    /* Old checkpoints go only after the new one is safely in place. */
    ddp_ckpt_prune(t->cfg.checkpoint_dir, t->cfg.keep, t->step);
    return DDP_OK;
}

/* This rank's shard file of a sharded checkpoint: its part of the optimizer state (and
 * under ZeRO-3 of the parameters, the same range); *crc receives the file's CRC-32 for
 * the manifest. */
static ddp_status write_shard(ddp_trainer *t, uint32_t *crc) {
    char settings[4096];
    ddp_checkpoint_info h;
    describe(t, &h, settings);
    size_t shard_begin, shard_len, param_begin, param_len;
    ddp_shard_of(ddp_sync_layout(t->sync), t->rank, &shard_begin, &shard_len);
    ddp_sync_param_range(t->sync, &param_begin, &param_len);
    h.num_params = ddp_sync_params_replicated(t->sync) ? 0 : param_len;
    h.num_buffers = 0;
    h.state_size = shard_len;
    h.shard_index = (uint32_t)t->rank;
    /* Each rank's own error feedback; Q is the manifest's. */
    if (h.psgd_rank > 0) {
        h.psgd_q = 0;
        h.psgd_errors = t->num_params;
    }
    ddp_ckpt_writer w;
    DDP_CHECK(write_file(t, &h, &w, crc));
    return DDP_OK;
}

ddp_status ddp_trainer_save_checkpoint(ddp_trainer *t) {
    ddp_status s = ddp_trainer_settle(t);
    if (s != DDP_OK) ddp_error_trace(__FILE__, __LINE__);
    DDP_CHECK(ddp_ckpt_agree(t, s, "finish the parameters' all-gather"));
    /* Each rank's share of the noise scale's averages becomes their mean, which the file
     * keeps: the resumed run continues from what this run continues from. Every rank
     * reaches this after the same step. */
    DDP_CHECK(ddp_trainer_gns_sync(t));
    if (!t->cfg.checkpoint_dir[0]) {
        s = DDP_FAIL(DDP_ERR_INVALID_ARG, "saving a checkpoint needs --checkpoint-dir");
        ddp_error_trace(__FILE__, __LINE__);
        DDP_CHECK(ddp_ckpt_agree(t, s, "write a checkpoint"));
    }
    uint32_t *crcs = NULL;
    if (sharded(t)) {
        /* Every rank writes its shard; only when all of them are in place does rank 0
         * write the manifest, whose rename commits the checkpoint. */
        uint32_t crc = 0;
        s = write_shard(t, &crc);
        if (s == DDP_OK && t->rank == 0) {
            crcs = calloc((size_t)t->world, sizeof *crcs);
            if (!crcs) s = DDP_FAIL(DDP_ERR_NOMEM, "checkpoint: out of memory");
        }
        if (s != DDP_OK) ddp_error_trace(__FILE__, __LINE__);
        /* Every rank reaches these after the same step. */
        s = ddp_ckpt_agree(t, s, "write its checkpoint shard");
        uint32_t *all = NULL;
        if (s == DDP_OK) {
            all = calloc((size_t)t->world, sizeof *all);
            s = all ? DDP_OK : DDP_FAIL(DDP_ERR_NOMEM, "checkpoint: out of memory");
            s = ddp_ckpt_agree(t, s, "gather the shards' checksums");
        }
        if (s == DDP_OK) s = ddp_comm_allgather(t->ctrl, &crc, all, 1, DDP_U32);
        if (s == DDP_OK && crcs)
            for (int r = 0; r < t->world; r++) /* stored little-endian, as the format says */
                crcs[r] = all[r];
        free(all);
        if (s != DDP_OK) {
            free(crcs);
            DDP_CHECK(s);
        }
    }
    if (t->rank == 0) s = write_checkpoint(t, crcs);
    free(crcs);
    if (s != DDP_OK) ddp_error_trace(__FILE__, __LINE__);
    /* Every rank reaches this after the same step, whether rank 0's write worked or not. */
    DDP_CHECK(ddp_ckpt_agree(t, s, "write a checkpoint"));
    return DDP_OK;
}

ddp_status ddp_trainer_prepare_checkpoints(ddp_trainer *t) {
    const char *dir = t->cfg.checkpoint_dir;
    /* The CLI prepares before training, so that a bad directory is a set-up error; the
     * run loop asks again for other callers. Every rank has the same flag. */
    if (!dir[0] || t->checkpoints_ready) return DDP_OK;
    ddp_status s = DDP_OK;
    if (t->rank == 0) {
        s = ddp_ckpt_mkdirs(dir);
        int64_t *steps = NULL;
        size_t n = 0;
        if (s == DDP_OK && t->step == 0) s = ddp_checkpoint_list(dir, &steps, &n);
        /* A fresh run's checkpoints would interleave with the old ones, and pruning or a
         * later --resume could pick the wrong run's. */
        if (s == DDP_OK && n > 0)
            s = DDP_FAIL(DDP_ERR_INVALID_ARG,
                         "--checkpoint-dir %s already holds %zu checkpoint(s) of another run "
                         "(the newest of step %lld): pass --resume to continue it, or use an "
                         "empty directory",
                         dir, n, (long long)steps[n - 1]);
        free(steps);
    }
    /* All ranks reach this when checkpoints are on (the setting is part of the
     * configuration fingerprint). */
    DDP_CHECK(ddp_ckpt_agree(t, s, "prepare the checkpoint directory"));
    t->checkpoints_ready = 1;
    return DDP_OK;
}

ddp_status ddp_checkpoint_run_step(ddp_trainer *t) {
    if (!t->cfg.checkpoint_dir[0]) return DDP_OK;
    int every = t->cfg.checkpoint_every;
    if ((every > 0 && t->step % every == 0) || t->step == t->total_steps)
        DDP_CHECK(ddp_trainer_save_checkpoint(t));
    return DDP_OK;
}
