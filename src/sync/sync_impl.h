/*
 * The sync module's insides, shared by its files: the strategy table, the state every
 * strategy has, and the helpers they share. One file per strategy: sync_replicated.c
 * (stage 0), sync_sharded.c (stages 1 and 2), sync_zero3.c with gather.c (stage 3); the
 * shard layout, the common calls and the table of stages in sync.c.
 */
#ifndef DDP_SYNC_IMPL_H
#define DDP_SYNC_IMPL_H

#include "ddp/powersgd.h"
#include "ddp/sync.h"

typedef struct ddp_sync_ops ddp_sync_ops;

struct ddp_sync {
    const ddp_sync_ops *ops;
    ddp_sync_options opt;
    ddp_backend *backend;
    ddp_comm *comm;   /* the gradients' (the reducer's) */
    ddp_comm *ctrl;   /* host-side control */
    ddp_comm *gather; /* stage 3: the parameters' gathers (owned) */
    ddp_model *model;
    int rank, world;
    size_t n; /* parameters */
    ddp_shard_layout layout;
    size_t view_begin, view_len;   /* the optimizer's view */
    size_t param_begin, param_len; /* the parameters held between steps */
    ddp_reducer *reducer;
    ddp_powersgd *psgd; /* --compress powersgd: the reducer's compressor, or NULL */
    uint64_t seed;      /* of the run (PowerSGD's initial Q derives from it) */
    float *shard_grads; /* (layout.size) device: the averaged gradients of the shard */
    int grads_shared;   /* the gradients live in node-shared memory */
    int micro_batches;  /* of the step in progress */
    void *impl;         /* the strategy's own state */
};

struct ddp_sync_ops {
    const char *name;
    int shards;        /* the optimizer state and the averaged gradients are sharded */
    int sends_each;    /* every micro-batch's gradients are sent (and added into the shard) */
    int releases;      /* the gradient buffer's pages go back once sent */
    int params_shared; /* each rank holds only its shard of the parameters */
    int shares_grads;  /* the gradients may live in node-shared memory */
    /* Local set-up after the common one (the bf16 copy; stage 3: its units). */
    ddp_status (*init)(ddp_sync *s);
    /* After the reducer exists: the model's hook, threads. */
    ddp_status (*start)(ddp_sync *s);
    void (*free)(ddp_sync *s);
    /* NULL where nothing is done. */
    ddp_status (*step_begin)(ddp_sync *s);
    ddp_status (*forward_end)(ddp_sync *s, int k, ddp_sync_stats *st);
    ddp_status (*step_end)(ddp_sync *s);
    ddp_status (*settle)(ddp_sync *s);
    /* Stage 3: an evaluation's forward pass (real: with data; else its gathers only). NULL:
     * forward passes outside a step need nothing. */
    ddp_status (*eval_pass)(ddp_sync *s, int real);
    /* Adds the step's parameter-gather statistics into st. */
    void (*gather_stats)(ddp_sync *s, ddp_sync_stats *st);
    ddp_status (*params_changed)(ddp_sync *s);
    /* Parameters in flight at most (elements, fp32 and bf16), for the memory plan on
     * `ranks` ranks; NULL: all of them. */
    void (*param_memory)(const ddp_sync *s, int ranks, size_t *fp32, size_t *bf16);
    size_t (*read_chunk)(const ddp_sync *s);
};

extern const ddp_sync_ops ddp_sync_replicated, ddp_sync_zero1, ddp_sync_zero2, ddp_sync_zero3;

/* The reducer over the model's gradients, sharded into s->shard_grads where the strategy
 * shards (sync.c). Not collective. */
ddp_status ddp_sync_make_reducer(ddp_sync *s);
/* The bytes of the two largest buckets: what a strategy that sends and releases each
 * bucket keeps of the gradients at its peak (one written, one sent). */
size_t ddp_sync_two_largest_buckets(const ddp_sync *s);

/* ---- stage 3's gathers (gather.c) ------------------------------------------------------ */

typedef struct ddp_gather ddp_gather;
typedef struct {
    int window;    /* units held at once (the one computing included) */
    int keep;      /* keep a unit from its first use in an episode to its last */
    uint16_t *w16; /* the parameters' bf16 copy, gathered instead of the fp32 values of
                    * the tensors only the products read (NULL: fp32 everywhere) */
} ddp_gather_options;
/* Gathers over comm (its own; COLLECTIVE order: every rank gathers the same pieces in the
 * same order), of the model's parameters in its units, each rank holding
 * layout's shard. Not collective. */
ddp_status ddp_gather_create(ddp_backend *b, ddp_comm *comm, ddp_model *m,
                             const ddp_shard_layout *l, const ddp_gather_options *o,
                             ddp_gather **out);
void ddp_gather_free(ddp_gather *g);
/* Starts the gathers' thread where the comm needs one for progress (MPI). */
ddp_status ddp_gather_start(ddp_gather *g, ddp_progress progress);
/* The plan of the next passes: micro_batches forward passes, each followed by its backward
 * (backward 1) or not (an evaluation's forward). */
ddp_status ddp_gather_plan(ddp_gather *g, int micro_batches, int backward);
/* The model's unit hook (ctx = the gatherer). */
ddp_status ddp_gather_unit_event(void *g, int unit, ddp_unit_event ev);
/* Starts the gathers of the plan's first units (the next forward's), e.g. right after the
 * update. COLLECTIVE over the gatherer's comm. */
ddp_status ddp_gather_prefetch(ddp_gather *g);
/* One planned forward pass without computing: each unit gathered, then given back. */
ddp_status ddp_gather_idle_forward(ddp_gather *g);
/* Waits for the gathers in flight and gives back every unit held. */
ddp_status ddp_gather_settle(ddp_gather *g);
/* Seconds waited for gathers in forward and backward, and the gathers' own time and CPU
 * since the last call. */
void ddp_gather_take_stats(ddp_gather *g, double *fwd_wait, double *bwd_wait, double *gather,
                           double *cpu);
/* Elements of the largest units' gathers (fp32 and bf16), `units` of them. */
void ddp_gather_largest(const ddp_gather *g, int units, size_t *fp32, size_t *bf16);
size_t ddp_gather_largest_unit(const ddp_gather *g);

#endif
