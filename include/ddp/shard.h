/*
 * The shard layout: how the ZeRO stages cut the flat buffers (parameters, gradients,
 * optimizer state) over the ranks. The one formula of the code base: the reducer's
 * reduce-scatters and all-gathers, the optimizer's view, the parameters' gathers and the
 * sharded checkpoints all take their ranges from here, so a checkpoint's shards can be
 * read back by any number of ranks (the file stores the size it was cut with).
 */
#ifndef DDP_SHARD_H
#define DDP_SHARD_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    size_t n;    /* elements of the flat buffer */
    size_t size; /* elements of every shard but the last ones, which are shorter or empty */
    int ranks;
} ddp_shard_layout;

/* n elements over `ranks` ranks: shards of ceil(n / ranks) elements rounded up to a
 * multiple of 16 (floats: shards start on cache lines), cut from the flat buffer alone,
 * without regard to tensors or buckets. */
ddp_shard_layout ddp_shard_layout_of(size_t n, int ranks);
/* Shard q: elements [*begin, *begin + *len) (empty past the end of the buffer). */
void ddp_shard_of(const ddp_shard_layout *l, int q, size_t *begin, size_t *len);
/* counts[q] = the elements of [a, b) that lie in shard q, for every q < l->ranks: the blocks
 * of [a, b) in rank order, as an in-place all-gather or a reduce-scatter of it takes them. */
void ddp_shard_counts(const ddp_shard_layout *l, size_t a, size_t b, size_t *counts);

#ifdef __cplusplus
}
#endif
#endif
