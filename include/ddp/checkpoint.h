/*
 * checkpoint: the training state on disk, so that a run can stop (or be killed) and go
 * on from where it was with the same result, and the trained parameters in a format
 * that other tools read (safetensors).
 *
 * A checkpoint holds everything the next step depends on: parameters, optimizer state
 * and step counter, the step and epoch, and the sampler's cursor. No random-number
 * state is stored because there is none to store: the shuffle order of an epoch is
 * derived from (seed, epoch) alone, so the cursor (epoch, step in epoch) recreates it.
 *
 * File layout (version 3; integers little-endian; docs/checkpoints.md has the table):
 *   "DDPCKPT\0", u32 version, u32 fingerprint (CRC-32 of the settings text),
 *   u32 length + settings text, u32 length + model description, u64 parameters,
 *   u64 global batch, u32 ranks of the writer, i64 step, u64 epoch, u64 sampler epoch,
 *   u64 sampler step, i64 schedule length, u32 optimizer kind, u32 state buffers,
 *   i64 optimizer steps, u64 elements per state buffer, u64 elements of the model's
 *   buffers (version 2 on), u64 global batch of the next step, u64 sampler position in
 *   samples, i64 samples trained, i64 step of the last batch change, f64 x 2 and i64 the
 *   noise scale's moving averages and their count, u32 shard files, u32 shard index, u64
 *   shard size (version 3 on), u32 PowerSGD rank, u32 PowerSGD Q warm, u64 Q elements,
 *   u64 error-feedback elements (version 5 on), zero padding to a multiple of 64 bytes,
 *   float32 parameters, float32 state buffers, float32 model buffers (running statistics;
 *   version 2 on), float32 Q factors, float32 error feedback (version 5 on), a manifest's
 *   u32 CRC-32 per shard file, u32 CRC-32 of all bytes before.
 *
 * Files are named ckpt-<step, 8 digits>.ddp and appear only complete: rank 0 writes a
 * hidden temporary file, syncs it, renames it into place and syncs the directory, so a
 * process killed at any moment leaves the previous checkpoints intact (and at worst a
 * stale temporary file, which is ignored and later removed). With sharded optimizer state
 * (--zero 1, 2, 3) every rank first writes ckpt-<step>.shard-<rank>-of-<ranks>.ddp the same
 * way, and ckpt-<step>.ddp is the manifest that commits them. Under --compress powersgd
 * the checkpoint is sharded at every stage: each rank's shard file holds its own error
 * feedback (all n elements: the ranks' errors differ), the manifest the Q factors (the
 * same on every rank). A resume on N' ranks gives rank j the sum of the errors of the
 * writer's ranks i with i mod N' = j: the sum over ranks, which is what the next steps'
 * results depend on, is kept, and on the same ranks each gets its own, bit for bit.
 */
#ifndef DDP_CHECKPOINT_H
#define DDP_CHECKPOINT_H

#include "ddp/model.h"
#include "ddp/train.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DDP_CKPT_MAGIC "DDPCKPT" /* 8 bytes with its terminating zero */
/* Versions 1 (no buffers), 2 (no schedule, no shards), 3 (no parameters in shard files)
 * and 4 (no compressor state) are read too. */
#define DDP_CKPT_VERSION 5u
/* shard_index of a manifest: the file that commits a sharded checkpoint */
#define DDP_CKPT_MANIFEST 0xffffffffu

/* What a checkpoint says about itself. The pointers point into the buffer that was
 * parsed; the texts are not zero-terminated; the arrays may be unaligned (copy them). */
typedef struct {
    uint32_t version;
    uint32_t fingerprint; /* CRC-32 of settings */
    const char *settings; /* canonical settings that must match on resume */
    size_t settings_len;
    const char *model; /* ddp_model_describe of the model that wrote it */
    size_t model_len;
    uint64_t num_params;
    uint64_t global_batch;
    uint32_t world;                       /* ranks of the run that wrote it (informational) */
    int64_t step;                         /* steps completed */
    uint64_t epoch;                       /* epoch of the last step */
    uint64_t sampler_epoch, sampler_step; /* the next batch */
    int64_t total_steps;                  /* length of the schedule of the run that wrote it */
    uint32_t optim_kind;                  /* ddp_optim_kind */
    uint32_t num_states;                  /* optimizer state buffers */
    int64_t optim_steps;
    uint64_t state_size;  /* elements per state buffer */
    uint64_t num_buffers; /* elements of the model's buffers (version 2; 0 in version 1) */
    /* version 3: the batch schedule and the noise scale's averages (in older files: the
     * fixed batch's values, and no averages) */
    uint64_t batch_now;   /* the global batch of the next step */
    uint64_t sampler_pos; /* samples of the sampler's epoch before the next batch */
    int64_t samples;      /* samples trained on */
    int64_t batch_step;   /* the step after which the batch last changed */
    double gns_g2, gns_trace;
    int64_t gns_n;
    /* Version 3: optimizer state sharded over `shards` files (0: it is in this file).
     * A manifest (shard_index DDP_CKPT_MANIFEST) holds everything but the state, and the
     * CRC-32 of each shard file; state_size is then the elements of each whole state
     * buffer. A shard file (shard_index < shards) holds the state elements
     * [shard_index * shard_size, + state_size) of every buffer, and no parameters. */
    uint32_t shards, shard_index;
    uint64_t shard_size;
    /* Version 5: PowerSGD's state (0 and none in older files, or without --compress). */
    uint32_t psgd_rank;     /* R of the run that wrote it; 0: no compressor state */
    uint32_t psgd_warm;     /* Q holds a step's result (else the seed's values) */
    uint64_t psgd_q;        /* elements of Q in this file (a manifest's) */
    uint64_t psgd_errors;   /* elements of error feedback in this file (a shard file's: n) */
    const void *params;     /* (num_params) float32 */
    const void *states;     /* (num_states, state_size) float32; none in a manifest */
    const void *buffers;    /* (num_buffers) float32 */
    const void *psgd_qdata; /* (psgd_q) float32 */
    const void *errors;     /* (psgd_errors) float32 */
    const void *shard_crcs; /* manifest: (shards) u32, little-endian */
} ddp_checkpoint_info;

/* Checks a checkpoint image in memory: magic, CRC, version, and that every field lies
 * inside the buffer and the sizes add up exactly. `name` (a path) is put in messages.
 * DDP_ERR_FORMAT for a damaged or truncated file, DDP_ERR_UNSUPPORTED for an intact
 * file of another format version. Not collective. */
ddp_status ddp_checkpoint_parse(const void *buf, size_t len, const char *name,
                                ddp_checkpoint_info *info);
/* Reads a whole checkpoint file and parses it; on success *buf (free() it) holds the
 * file and info points into it. Not collective. */
ddp_status ddp_checkpoint_read(const char *path, void **buf, size_t *len,
                               ddp_checkpoint_info *info);
/* All parameters of the checkpoint h parsed from path (h->state_size of them where a
 * manifest's shard files hold them, else h->num_params) into host: from the file, or from
 * the shard files beside it, read one at a time. Not collective. */
ddp_status ddp_checkpoint_read_params(const char *path, const ddp_checkpoint_info *h, float *host);
/* DIR/ckpt-<step>.ddp into buf. */
void ddp_checkpoint_path(char *buf, size_t cap, const char *dir, int64_t step);
/* DIR/ckpt-<step>.shard-<i>-of-<n>.ddp into buf: shard i of a sharded checkpoint. */
void ddp_checkpoint_shard_path(char *buf, size_t cap, const char *dir, int64_t step, uint32_t i,
                               uint32_t n);
/* The steps of the checkpoint files in dir, ascending (*steps: free() it). A missing
 * directory has none. Not collective. */
ddp_status ddp_checkpoint_list(const char *dir, int64_t **steps, size_t *n);

/* Rank 0 creates cfg.checkpoint_dir and, for a trainer at step 0 (not resumed), refuses
 * a directory that already holds checkpoints: they belong to another run and would mix
 * with this one's. ddp_trainer_run does this before its first step; calling it earlier
 * makes a bad directory a set-up error. A no-op without a checkpoint directory.
 * COLLECTIVE over ctrl. */
ddp_status ddp_trainer_prepare_checkpoints(ddp_trainer *t);
/* Saves the trainer's state to cfg.checkpoint_dir as the checkpoint of the current
 * step. Rank 0 writes; then all ranks agree on the outcome, so that a failed write stops
 * every rank with a message instead of leaving some waiting. Afterwards rank 0 removes
 * all but the cfg.keep newest checkpoints. COLLECTIVE over ctrl. */
ddp_status ddp_trainer_save_checkpoint(ddp_trainer *t);
/* Resumes from the newest usable checkpoint in dir. Rank 0 reads it and broadcasts the
 * bytes, so only rank 0 needs to see the directory and all ranks load identical state.
 * A damaged newest file (CRC, truncation, bad magic) is skipped with a warning naming it
 * and the next older one is tried; if none is usable, it fails naming the newest. A
 * checkpoint of another configuration, model or global batch is refused (never skipped).
 * With no checkpoint at all, training starts fresh and one info line says so.
 * *resumed_step (may be NULL) receives the step resumed from, 0 when fresh.
 * COLLECTIVE over ctrl. */
ddp_status ddp_trainer_resume(ddp_trainer *t, const char *dir, int64_t *resumed_step);
/* Loads one given checkpoint file, with the same checks and no fallback. COLLECTIVE
 * over ctrl. */
ddp_status ddp_trainer_load_checkpoint(ddp_trainer *t, const char *path);

/* The settings text stored in (and compared against) a checkpoint: the canonical
 * configuration without what may change on resume (number of ranks, accumulation, run
 * length, devices, communication, logging), plus the training set's size and labels. */
size_t ddp_checkpoint_settings(const ddp_trainer *t, char *buf, size_t cap);

/* Writes the parameters and the buffers (host copies; buffers may be NULL for a model
 * without any) as safetensors: u64 header length, a JSON header naming every tensor of
 * the model's views, then of its buffer views ("fc0.weight" (out, in), "fc0.bias" (out),
 * ...), with dtype F32, shape and data_offsets, plus "__metadata__" {"model":
 * description}, padded with spaces to a multiple of 8, then the float32 data. Not
 * collective. */
ddp_status ddp_safetensors_write(const ddp_model *m, const float *host_params,
                                 const float *host_buffers, const char *path);
/* The model description stored in a safetensors file's metadata (as written by
 * ddp_safetensors_write), into describe. Not collective. */
ddp_status ddp_safetensors_model(const char *path, char *describe, size_t cap);
/* Reads every tensor of the model's views from a safetensors file into host (num_params
 * floats, at the views' offsets) and of its buffer views into host_buffers, checking
 * names, dtype F32, shapes and byte ranges; a file of another model fails naming the
 * tensor. Not collective. */
ddp_status ddp_safetensors_read(const ddp_model *m, const char *path, float *host,
                                float *host_buffers);
/* The trainer's parameters and buffers as ddp_safetensors_write writes them, rank 0 writing
 * the file. Where each rank holds only its shard of the parameters (ZeRO-3) every rank takes
 * part: the parameters are gathered in pieces of at most one unit (ddp_sync_read_params)
 * and streamed to the file, so that no rank holds more than that beyond its shard.
 * COLLECTIVE: every rank calls it (ranks other than 0 return at once where the parameters
 * are replicated). */
ddp_status ddp_trainer_export(ddp_trainer *t, const char *path);

#ifdef __cplusplus
}
#endif
#endif
