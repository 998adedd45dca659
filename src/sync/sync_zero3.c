/*
 * Stage 3: the parameters sharded too. Each rank keeps its shard of the flat parameter
 * buffer (the rest of the buffer is address space whose pages are given back), updates it
 * with its shard of the averaged gradients and of the optimizer state, and the model's
 * units are gathered just in time around their forward and backward (gather.c). The
 * gradients leave as stage 2's do: every micro-batch's buckets reduce-scattered as backward
 * reports them final, added into the shard, their pages given back.
 *
 * Under --precision bf16 the backend's products read the weights from a bf16 copy that
 * this strategy keeps (ddp_backend_set_bf16_copy): the optimizer writes its shard's part
 * in the same pass as the fp32 update, and the gathers bring the rest of each unit's, half
 * the bytes of the fp32 values, which only the tensors read in fp32 need as well.
 */
#include <stdlib.h>

#include "sync/sync_impl.h"

typedef struct {
    ddp_gather *g;
    uint16_t *w16; /* (n) the bf16 copy, or NULL */
} zero3;

static ddp_status refresh_copy(ddp_sync *s) {
    zero3 *z = s->impl;
    if (!z->w16 || s->param_len == 0) return DDP_OK;
    DDP_CHECK(ddp_backend_f32_to_bf16(s->backend, ddp_model_params(s->model) + s->param_begin,
                                      z->w16 + s->param_begin, s->param_len));
    return DDP_OK;
}

static ddp_status zero3_init(ddp_sync *s) {
    zero3 *z = calloc(1, sizeof *z);
    if (!z) return DDP_FAIL(DDP_ERR_NOMEM, "sync: out of memory");
    s->impl = z;
    /* Units no larger than the maps' chunks: half a gradient bucket each, so that a bucket
     * closes inside a large matrix too, and the largest units held at once, not a whole
     * block, bound the parameters in memory. */
    DDP_CHECK(ddp_model_set_unit_limit(s->model, s->opt.reducer.bucket_bytes / sizeof(float) / 2));
    if (ddp_backend_math(s->backend) != DDP_MATH_BF16) return DDP_OK;
    DDP_CHECK(ddp_backend_alloc_pages(s->backend, s->n * sizeof(uint16_t), (void **)&z->w16));
    DDP_CHECK(ddp_backend_set_bf16_copy(s->backend, ddp_model_params(s->model), z->w16, s->n));
    if (!s->opt.no_init) DDP_CHECK(refresh_copy(s));
    return DDP_OK;
}

static ddp_status zero3_start(ddp_sync *s) {
    zero3 *z = s->impl;
    if (!s->gather)
        return DDP_FAIL(DDP_ERR_INTERNAL, "ZeRO-3 needs a communicator for its gathers");
    ddp_gather_options go = {.window = s->opt.gathers, .keep = s->opt.keep, .w16 = z->w16};
    DDP_CHECK(ddp_gather_create(s->backend, s->gather, s->model, &s->layout, &go, &z->g));
    DDP_CHECK(ddp_gather_start(z->g, s->opt.reducer.progress));
    ddp_model_set_unit_hook(s->model, ddp_gather_unit_event, z->g);
    return DDP_OK;
}

static void zero3_free(ddp_sync *s) {
    zero3 *z = s->impl;
    if (!z) return;
    ddp_model_set_unit_hook(s->model, NULL, NULL);
    ddp_gather_free(z->g);
    if (z->w16) {
        if (ddp_backend_set_bf16_weights(s->backend, NULL, 0) != DDP_OK)
            ddp_log_current_error("dropping the bf16 copy of the weights");
        ddp_backend_free_pages(s->backend, z->w16, s->n * sizeof(uint16_t));
    }
    free(z);
    s->impl = NULL;
}

static ddp_status zero3_step_begin(ddp_sync *s) {
    zero3 *z = s->impl;
    DDP_CHECK(ddp_gather_plan(z->g, s->micro_batches, 1));
    return DDP_OK;
}

/* The update is done: the next forward's first units are gathered now, while the rest of
 * the step's end (the logging, the next batch) runs. Every rank starts the same ones,
 * also after a skipped update. */
static ddp_status zero3_step_end(ddp_sync *s) {
    zero3 *z = s->impl;
    DDP_CHECK(ddp_gather_plan(z->g, 1, 0));
    DDP_CHECK(ddp_gather_prefetch(z->g));
    return DDP_OK;
}

static ddp_status zero3_settle(ddp_sync *s) {
    zero3 *z = s->impl;
    if (z && z->g) DDP_CHECK(ddp_gather_settle(z->g));
    return DDP_OK;
}

static ddp_status zero3_eval_pass(ddp_sync *s, int real) {
    zero3 *z = s->impl;
    DDP_CHECK(ddp_gather_plan(z->g, 1, 0));
    if (!real) DDP_CHECK(ddp_gather_idle_forward(z->g));
    return DDP_OK;
}

static void zero3_gather_stats(ddp_sync *s, ddp_sync_stats *st) {
    zero3 *z = s->impl;
    double fwd, bwd, gather, cpu;
    ddp_gather_take_stats(z->g, &fwd, &bwd, &gather, &cpu);
    st->t_gather += gather;
    st->t_comm_cpu += cpu;
    st->t_exposed += fwd + bwd;
    st->t_fwd_wait += fwd;
    st->t_bwd_wait += bwd;
}

static ddp_status zero3_params_changed(ddp_sync *s) {
    DDP_CHECK(refresh_copy(s));
    return DDP_OK;
}

/* The shard, and the units a window holds at most: the largest ones, as many as the
 * window (with keep: every unit). */
static void zero3_param_memory(const ddp_sync *s, int ranks, size_t *fp32, size_t *bf16) {
    const zero3 *z = s->impl;
    size_t shard = s->param_len;
    if (ranks > 0 && ranks != s->world) {
        ddp_shard_layout l = ddp_shard_layout_of(s->n, ranks);
        shard = l.size < s->n ? l.size : s->n;
    }
    size_t uf = 0, ub = 0;
    if (z && z->g) ddp_gather_largest(z->g, s->opt.keep ? 1 << 20 : s->opt.gathers, &uf, &ub);
    *fp32 = shard + uf;
    *bf16 = z && z->w16 ? shard + ub : 0;
    if (*fp32 > s->n) *fp32 = s->n;
    if (*bf16 > s->n) *bf16 = s->n;
}

static size_t zero3_read_chunk(const ddp_sync *s) {
    const zero3 *z = s->impl;
    size_t big = z && z->g ? ddp_gather_largest_unit(z->g) : s->n;
    return big > 0 ? big : 1;
}

const ddp_sync_ops ddp_sync_zero3 = {
    .name = "zero-3",
    .shards = 1,
    .sends_each = 1,
    .releases = 1,
    .params_shared = 1,
    .init = zero3_init,
    .start = zero3_start,
    .free = zero3_free,
    .step_begin = zero3_step_begin,
    .step_end = zero3_step_end,
    .settle = zero3_settle,
    .eval_pass = zero3_eval_pass,
    .gather_stats = zero3_gather_stats,
    .params_changed = zero3_params_changed,
    .param_memory = zero3_param_memory,
    .read_chunk = zero3_read_chunk,
};
