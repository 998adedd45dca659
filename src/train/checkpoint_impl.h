/* Checkpoint internals shared by the files of src/train/: the atomic file writer, the
 * header encoder, directory upkeep, and the hooks of the run loop. */
#ifndef DDP_CHECKPOINT_IMPL_H
#define DDP_CHECKPOINT_IMPL_H

#include <stdio.h>

#include "ddp/checkpoint.h"

/* Bytes of the fixed fields of the header (all but the two texts and the padding). */
/* version 3 and 4: 188 (no compressor state), 2: 116 (no schedule, shards), 1: 108 (no
 * buffers) */
#define DDP_CKPT_FIXED_BYTES 212u
/* The float data start at a multiple of this many bytes. */
#define DDP_CKPT_ALIGN 64u

/* Encodes the header described by info (its array pointers are ignored), padded with
 * zeros to a multiple of DDP_CKPT_ALIGN; *out is malloc'd. */
ddp_status ddp_ckpt_encode_header(const ddp_checkpoint_info *info, unsigned char **out,
                                  size_t *len);

/* Writes one checkpoint file so that it appears under its final name only when
 * complete and on stable storage. */
typedef struct {
    FILE *f;
    uint32_t crc; /* of everything put so far */
    uint64_t bytes;
    int64_t step;
    char dir[DDP_PATH_MAX];
    char tmp[DDP_PATH_MAX + 64];
    char final[DDP_PATH_MAX + 64];
} ddp_ckpt_writer;

/* Opens DIR/.ckpt-<step>.ddp.tmp for writing (DIR must exist). */
ddp_status ddp_ckpt_writer_open(ddp_ckpt_writer *w, const char *dir, int64_t step);
/* The same for shard i of n: DIR/.ckpt-<step>.shard-<i>-of-<n>.ddp.tmp. */
ddp_status ddp_ckpt_writer_open_shard(ddp_ckpt_writer *w, const char *dir, int64_t step, uint32_t i,
                                      uint32_t n);
ddp_status ddp_ckpt_writer_put(ddp_ckpt_writer *w, const void *data, size_t bytes);
/* Appends the CRC, syncs the file, renames it to DIR/ckpt-<step>.ddp and syncs the
 * directory. On failure the temporary file is removed. */
ddp_status ddp_ckpt_writer_commit(ddp_ckpt_writer *w);
/* Closes and removes the temporary file (after a failed put). */
void ddp_ckpt_writer_abort(ddp_ckpt_writer *w);

/* Creates dir and its missing parents. */
ddp_status ddp_ckpt_mkdirs(const char *dir);
/* Removes temporary files left by interrupted writes and, of the checkpoints up to step
 * `newest` (the one just written), all but the `keep` newest (keep 0: none). Problems
 * are logged as warnings: the checkpoint just written is safe either way. */
void ddp_ckpt_prune(const char *dir, int keep, int64_t newest);

/* Warns, naming the missing manifest, about shard files of steps after `newest` (the
 * checkpoint about to be resumed; -1: none): a save that did not complete, ignored. */
void ddp_ckpt_warn_orphans(const char *dir, int64_t newest);

/* All ranks learn whether `local` failed anywhere: the failing rank keeps its own error,
 * the others get DDP_ERR_REMOTE naming it and `what` ("write a checkpoint").
 * COLLECTIVE over ctrl, except after a communication error (see ddp_comm_agree): that is
 * returned at once, and the caller must abort the job. */
ddp_status ddp_ckpt_agree(ddp_trainer *t, ddp_status local, const char *what);

/* The run loop's hook (src/train/run.c), after each step: saves every checkpoint_every
 * steps and after the last step; a no-op without a checkpoint directory. COLLECTIVE
 * over ctrl on the steps where it saves (the same on every rank). */
ddp_status ddp_checkpoint_run_step(ddp_trainer *t);

#endif
