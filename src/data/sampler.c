/*
 * The distributed sampler. Every rank computes the same permutation of the epoch from
 * (seed, epoch) alone, so no indices are ever communicated, and rank r reads its slice
 * [r * B/w, (r + 1) * B/w) of each global batch out of it. Because the order depends on
 * nothing but the seed and the epoch, a cursor of (epoch, step) is all that a checkpoint
 * needs to resume the exact same sequence of batches.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data/data_impl.h"

/* The order of an epoch: identity, then Fisher-Yates from a stream seeded by the epoch.
 * Starting from the identity every time (rather than reshuffling the last order) keeps
 * epoch e's order independent of how the sampler got there. */
static void build_order(ddp_sampler *s) {
    for (size_t i = 0; i < s->n; i++)
        s->order[i] = (uint32_t)i;
    if (!s->shuffle) return;
    ddp_rng rng;
    ddp_rng_seed(&rng, s->seed, s->epoch);
    for (size_t i = s->n - 1; i > 0; i--) {
        size_t j = (size_t)ddp_rng_below(&rng, (uint64_t)i + 1);
        uint32_t t = s->order[i];
        s->order[i] = s->order[j];
        s->order[j] = t;
    }
}

ddp_status ddp_data_fail_indivisible(size_t n, size_t global_batch, int world) {
    size_t w = (size_t)world;
    size_t below = global_batch / w * w;
    size_t above = below + w;
    if (below > 0 && above <= n)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "global batch %zu is not divisible by the %d ranks, so ranks would "
                        "get unequal shares; use a multiple of %d such as %zu or %zu",
                        global_batch, world, world, below, above);
    return DDP_FAIL(DDP_ERR_INVALID_ARG,
                    "global batch %zu is not divisible by the %d ranks, so ranks would get "
                    "unequal shares; use a multiple of %d such as %zu",
                    global_batch, world, world, below > 0 ? below : above);
}

ddp_status ddp_sampler_init(ddp_sampler *s, size_t n, size_t global_batch, int rank, int world,
                            uint64_t seed, int shuffle) {
    if (s == NULL) return DDP_FAIL(DDP_ERR_INVALID_ARG, "ddp_sampler_init: s is NULL");
    memset(s, 0, sizeof *s);
    if (world < 1 || rank < 0 || rank >= world)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "ddp_sampler_init: rank %d of world %d; need world >= 1 and "
                        "0 <= rank < world",
                        rank, world);
    /* Indices are handed out as int32 (and stored as uint32 in the order). */
    if (n == 0 || n > INT32_MAX)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "ddp_sampler_init: a dataset of %zu samples; the sampler handles 1 "
                        "to %d",
                        n, INT32_MAX);
    if (global_batch == 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "global batch size is 0; use a positive multiple of the %d ranks", world);
    if ((size_t)world > n)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "%d ranks but only %zu samples: every rank needs at least one sample "
                        "per step; use fewer ranks or a larger dataset",
                        world, n);
    if (global_batch > n)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "global batch %zu is larger than the dataset (%zu samples), so an "
                        "epoch would have no full batch; use at most %zu (a multiple of the "
                        "%d ranks)",
                        global_batch, n, n / (size_t)world * (size_t)world, world);
    if (global_batch % (size_t)world != 0) return ddp_data_fail_indivisible(n, global_batch, world);

    uint32_t *order = malloc(n * sizeof *order);
    if (order == NULL)
        return DDP_FAIL(DDP_ERR_NOMEM, "out of host memory for the sampler's order of %zu samples",
                        n);
    s->n = n;
    s->global_batch = global_batch;
    s->local_batch = global_batch / (size_t)world;
    s->rank = rank;
    s->world = world;
    s->seed = seed;
    s->shuffle = shuffle != 0;
    s->steps_per_epoch = n / global_batch;
    s->epoch = 0;
    s->step = 0;
    s->order = order;
    build_order(s);
    return DDP_OK;
}

ddp_status ddp_sampler_next(ddp_sampler *s, int32_t *idx, uint64_t *epoch_out) {
    if (s == NULL || s->order == NULL || idx == NULL)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "ddp_sampler_next: sampler not initialized or idx is NULL");
    const uint32_t *slice = s->order + s->pos + (size_t)s->rank * s->local_batch;
    for (size_t i = 0; i < s->local_batch; i++)
        idx[i] = (int32_t)slice[i];
    if (epoch_out) *epoch_out = s->epoch;

    /* Move on eagerly, so that epoch and step always name the next batch (which is what
     * a checkpoint saves). With a fixed batch pos is step x global_batch, and the epoch
     * ends after steps_per_epoch steps. */
    s->step++;
    s->pos += s->global_batch;
    if (s->pos + s->global_batch > s->n) {
        s->step = 0;
        s->pos = 0;
        s->epoch++;
        build_order(s);
    }
    return DDP_OK;
}

ddp_status ddp_sampler_set_batch(ddp_sampler *s, size_t global_batch) {
    if (s == NULL || s->order == NULL)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "ddp_sampler_set_batch: sampler not initialized");
    if (global_batch == 0 || global_batch > s->n)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "global batch %zu: a batch must hold 1 to %zu samples (the dataset)",
                        global_batch, s->n);
    if (global_batch % (size_t)s->world != 0)
        return ddp_data_fail_indivisible(s->n, global_batch, s->world);
    s->global_batch = global_batch;
    s->local_batch = global_batch / (size_t)s->world;
    s->steps_per_epoch = s->n / global_batch;
    if (s->pos + global_batch > s->n) {
        s->step = 0;
        s->pos = 0;
        s->epoch++;
        build_order(s);
    }
    return DDP_OK;
}

ddp_status ddp_sampler_seek_pos(ddp_sampler *s, uint64_t epoch, size_t step, size_t pos) {
    if (s == NULL || s->order == NULL)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "ddp_sampler_seek_pos: sampler not initialized");
    if (pos > s->n || s->n - pos < s->global_batch || step > pos)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "cannot resume at sample %zu (step %zu) of epoch %llu: an epoch of %zu "
                        "samples has no full batch of %zu there; was the checkpoint written "
                        "with another dataset?",
                        pos, step, (unsigned long long)epoch, s->n, s->global_batch);
    s->step = step;
    s->pos = pos;
    if (epoch != s->epoch) {
        s->epoch = epoch;
        build_order(s);
    }
    return DDP_OK;
}

ddp_status ddp_sampler_seek(ddp_sampler *s, uint64_t epoch, size_t step) {
    if (s == NULL || s->order == NULL)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "ddp_sampler_seek: sampler not initialized");
    if (step >= s->steps_per_epoch)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "cannot resume at step %zu of epoch %llu: an epoch of %zu samples "
                        "in global batches of %zu has steps 0 to %zu; was the checkpoint "
                        "written with another batch size or dataset?",
                        step, (unsigned long long)epoch, s->n, s->global_batch,
                        s->steps_per_epoch - 1);
    s->step = step;
    s->pos = step * s->global_batch;
    if (epoch != s->epoch) {
        s->epoch = epoch;
        build_order(s);
    }
    return DDP_OK;
}

void ddp_sampler_free(ddp_sampler *s) {
    if (s == NULL) return;
    free(s->order);
    memset(s, 0, sizeof *s);
}

void ddp_split_range(size_t n, int rank, int world, size_t *begin, size_t *count) {
    if (world < 1 || rank < 0 || rank >= world) {
        *begin = 0;
        *count = 0;
        return;
    }
    /* The first n % world ranks take one item more. */
    size_t w = (size_t)world, r = (size_t)rank;
    size_t base = n / w, extra = n % w;
    *begin = r * base + (r < extra ? r : extra);
    *count = base + (r < extra ? 1 : 0);
}
