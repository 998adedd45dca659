/*
 * Stages 1 and 2: the optimizer state sharded (stage 1), and the averaged gradients too
 * (stage 2). The gradient buckets are reduce-scattered instead of all-reduced (stage 1 on
 * the last micro-batch, stage 2 on every one, adding into the shard and giving the sent
 * buckets' pages back), each rank updates its shard, and the parameters are all-gathered
 * bucket by bucket on the communication thread while the next step's forward runs, each
 * unit waiting only for the buckets that hold its parameters.
 *
 * Under --precision bf16 the all-gather writes the parameters while the next forward
 * reads them, so the products convert the weights per call instead of keeping a copy.
 */
#include "sync/sync_impl.h"

/* The model's unit hook: a unit's forward waits for the parameters it may read, those
 * before the end of its own (ddp_reducer_wait_params). */
static ddp_status wait_unit(void *ctx, int unit, ddp_unit_event ev) {
    ddp_sync *s = ctx;
    if (ev != DDP_UNIT_FORWARD_BEGIN) return DDP_OK;
    size_t begin, end;
    ddp_model_unit_params(s->model, unit, &begin, &end, NULL, 0);
    DDP_CHECK(ddp_reducer_wait_params(s->reducer, end));
    return DDP_OK;
}

static ddp_status sharded_start(ddp_sync *s) {
    ddp_model_set_unit_hook(s->model, wait_unit, s);
    return DDP_OK;
}

/* The last step's parameter all-gather, which micro-batch 0's forward waited for unit by
 * unit: its time that forward did not hide counts as exposed. */
static ddp_status sharded_forward_end(ddp_sync *s, int k, ddp_sync_stats *st) {
    if (k != 0) return DDP_OK;
    ddp_reducer_stats g;
    DDP_CHECK(ddp_reducer_finish_gather(s->reducer, &g));
    st->t_gather += g.t_comm;
    st->t_exposed += g.t_exposed;
    st->t_comm_cpu += g.t_comm_cpu;
    st->t_fwd_wait += g.t_exposed;
    return DDP_OK;
}

/* Every rank updated its shard alone: the all-gather gives every rank all of them, while
 * the next step's forward already runs the units whose parameters have arrived. Every rank
 * starts it, also after a skipped update (it then copies what every rank already has), so
 * that the collectives never depend on a verdict. */
static ddp_status sharded_step_end(ddp_sync *s) {
    DDP_CHECK(ddp_reducer_start_gather(s->reducer, ddp_model_params(s->model)));
    return DDP_OK;
}

static ddp_status sharded_settle(ddp_sync *s) {
    if (s->reducer) DDP_CHECK(ddp_reducer_finish_gather(s->reducer, NULL));
    return DDP_OK;
}

const ddp_sync_ops ddp_sync_zero1 = {
    .name = "zero-1",
    .shards = 1,
    .shares_grads = 1,
    .start = sharded_start,
    .forward_end = sharded_forward_end,
    .step_end = sharded_step_end,
    .settle = sharded_settle,
};

const ddp_sync_ops ddp_sync_zero2 = {
    .name = "zero-2",
    .shards = 1,
    .sends_each = 1,
    .releases = 1,
    .start = sharded_start,
    .forward_end = sharded_forward_end,
    .step_end = sharded_step_end,
    .settle = sharded_settle,
};
