/*
 * The sync type: the shard layout, the table of stages, and what every strategy does the
 * same way (the reducer's passes, the gradient norm, the optimizer's update of its view, the
 * evaluation's agreement, reading parameters). What differs lives behind ddp_sync_ops: see
 * sync_impl.h for the files.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sync/sync_impl.h"

/* ---- the shard layout: the one formula ------------------------------------------------- */

ddp_shard_layout ddp_shard_layout_of(size_t n, int ranks) {
    size_t r = ranks > 0 ? (size_t)ranks : 1;
    /* A multiple of 16 floats, so that shards start on cache lines. */
    size_t size = ((n + r - 1) / r + 15) / 16 * 16;
    return (ddp_shard_layout){.n = n, .size = size > 0 ? size : 16, .ranks = (int)r};
}

void ddp_shard_of(const ddp_shard_layout *l, int q, size_t *begin, size_t *len) {
    size_t b = (size_t)q * l->size;
    if (q < 0 || b >= l->n) {
        *begin = q < 0 ? 0 : l->n;
        *len = 0;
        return;
    }
    *begin = b;
    *len = l->n - b < l->size ? l->n - b : l->size;
}

void ddp_shard_counts(const ddp_shard_layout *l, size_t a, size_t b, size_t *counts) {
    for (int q = 0; q < l->ranks; q++) {
        size_t lo, len;
        ddp_shard_of(l, q, &lo, &len);
        size_t x = lo > a ? lo : a, e = lo + len < b ? lo + len : b;
        counts[q] = e > x ? e - x : 0;
    }
}

/* ---- set-up ------------------------------------------------------------------------------ */

/* The strategies by stage: the one place that maps a stage to its table. */
static const ddp_sync_ops *const stages[DDP_SYNC_MAX_STAGE + 1] = {
    &ddp_sync_replicated, &ddp_sync_zero1, &ddp_sync_zero2, &ddp_sync_zero3};

ddp_status ddp_sync_create(const ddp_sync_options *o, ddp_backend *b, ddp_comm *comm,
                           ddp_comm *ctrl, ddp_model *m, uint64_t seed, ddp_sync **out) {
    *out = NULL;
    if (o->stage < 0 || o->stage > DDP_SYNC_MAX_STAGE)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "--zero %d: the stages are 0 to %d", o->stage,
                        DDP_SYNC_MAX_STAGE);
    ddp_sync *s = calloc(1, sizeof *s);
    if (!s) return DDP_FAIL(DDP_ERR_NOMEM, "sync: out of memory");
    s->ops = stages[o->stage];
    s->opt = *o;
    s->backend = b;
    s->comm = comm;
    s->ctrl = ctrl;
    s->model = m;
    s->seed = seed;
    s->rank = ddp_comm_rank(comm);
    s->world = ddp_comm_size(comm);
    s->n = ddp_model_num_params(m);
    s->layout = ddp_shard_layout_of(s->n, s->world);
    s->view_begin = s->param_begin = 0;
    s->view_len = s->param_len = s->n;
    size_t mine_begin, mine_len;
    ddp_shard_of(&s->layout, s->rank, &mine_begin, &mine_len);
    if (s->ops->shards) {
        s->view_begin = mine_begin;
        s->view_len = mine_len;
    }
    if (s->ops->params_shared) {
        s->param_begin = mine_begin;
        s->param_len = mine_len;
    }
    /* Same seed on every rank: identical initial parameters without a broadcast, each rank
     * writing only those it holds (and none for a plan, which touches no page of them). */
    ddp_status st = DDP_OK;
    if (!o->no_init)
        st = ddp_model_init_params_range(m, seed, s->param_begin, s->param_begin + s->param_len);
    if (st == DDP_OK && s->ops->init) st = s->ops->init(s);
    if (st != DDP_OK) {
        ddp_sync_free(s);
        DDP_CHECK(st);
    }
    *out = s;
    return DDP_OK;
}

void ddp_sync_free(ddp_sync *s) {
    if (!s) return;
    /* A gather in flight is a collective the other ranks are in too. */
    if (ddp_sync_settle(s) != DDP_OK) ddp_log_current_error("freeing the sync");
    if (s->ops->free) s->ops->free(s);
    ddp_reducer_free(s->reducer);
    ddp_powersgd_free(s->psgd);
    ddp_comm_free(s->gather);
    ddp_backend_dealloc(s->backend, s->shard_grads);
    free(s);
}

int ddp_sync_needs_gather_comm(const ddp_sync *s) { return s->ops->params_shared; }
void ddp_sync_set_gather_comm(ddp_sync *s, ddp_comm *gather) { s->gather = gather; }

ddp_status ddp_sync_share_gradients(ddp_sync *s) {
    /* A strategy that gives the pages of sent buckets back to the system cannot keep them
     * in memory that the node's ranks share. Every rank has the same stage. */
    if (!ddp_backend_is_host(s->backend) || !s->ops->shares_grads) return DDP_OK;
    void *shared = NULL;
    DDP_CHECK(ddp_comm_alloc_shared(s->comm, s->n * sizeof(float), &shared));
    if (shared) DDP_CHECK(ddp_model_use_grad_buffer(s->model, shared));
    s->grads_shared = shared != NULL;
    return DDP_OK;
}

int ddp_sync_grads_shared(const ddp_sync *s) { return s->grads_shared; }

/* --compress powersgd: the compressor of the model's matrices, handed to the reducer. */
static int can_compress(const ddp_sync *s) {
    return !s->ops->sends_each && ddp_backend_is_host(s->backend);
}

static ddp_status make_compressor(ddp_sync *s) {
    const ddp_reducer_options *ro = &s->opt.reducer;
    int autoc = ro->compress == DDP_COMPRESS_AUTO;
    /* --compress auto where it cannot compress: no compressor, and the decision says so. */
    if (autoc && !can_compress(s)) return DDP_OK;
    if (!can_compress(s))
        return DDP_FAIL(DDP_ERR_UNSUPPORTED,
                        "--compress powersgd needs the CPU backend and --zero 0 or 1 (it sums "
                        "whole buckets in host memory; --zero %d %s)",
                        s->opt.stage,
                        s->ops->sends_each ? "sends each micro-batch's gradients into shards"
                                           : "keeps them on the device");
    int k = ddp_powersgd_matrices_of(s->model, ro->compress_rank, NULL, 0);
    ddp_psgd_matrix *mats = malloc((size_t)(k > 0 ? k : 1) * sizeof *mats);
    if (!mats) return DDP_FAIL(DDP_ERR_NOMEM, "sync: out of memory");
    ddp_powersgd_matrices_of(s->model, ro->compress_rank, mats, k);
    ddp_powersgd_options po = {.rank = ro->compress_rank,
                               /* auto: idle until the decision moves the start */
                               .start = autoc ? INT64_MAX : ro->compress_start,
                               .seed = s->seed,
                               .wire = ro->grad_dtype};
    ddp_status st = ddp_powersgd_create(&po, s->n, mats, k, &s->psgd);
    free(mats);
    DDP_CHECK(st);
    DDP_CHECK(ddp_reducer_set_compressor(s->reducer, s->psgd));
    return DDP_OK;
}

ddp_status ddp_sync_make_reducer(ddp_sync *s) {
    /* Buckets are cut where backward reports gradients ready; the first layer reports in
     * slices of a first bucket's size, so that its all-reduce, which no other layer's
     * backward can hide, mostly overlaps with its own. Not under compression, which
     * needs whole matrices in a bucket. */
    ddp_reducer_options ropt = s->opt.reducer;
    int compress = ropt.compress == DDP_COMPRESS_POWERSGD ||
                   (ropt.compress == DDP_COMPRESS_AUTO && can_compress(s));
    if (ropt.overlap && !compress)
        ropt.tail_elems =
            ddp_model_set_grad_slices(s->model, ropt.first_bucket_bytes / sizeof(float));
    int nb = ddp_model_ready_points(s->model, NULL, 0);
    size_t *bounds = malloc((size_t)nb * sizeof *bounds);
    if (!bounds) return DDP_FAIL(DDP_ERR_NOMEM, "sync: out of memory");
    ddp_model_ready_points(s->model, bounds, nb);
    ddp_status rs = ddp_reducer_create(s->comm, s->backend, ddp_model_grads(s->model), s->n, bounds,
                                       nb, &ropt, &s->reducer);
    free(bounds);
    DDP_CHECK(rs);
    if (s->ops->shards) {
        DDP_CHECK(ddp_backend_alloc(s->backend, s->layout.size * sizeof(float),
                                    (void **)&s->shard_grads));
        DDP_CHECK(ddp_reducer_set_shard(s->reducer, s->shard_grads, &s->layout, s->ops->releases));
    }
    if (compress) DDP_CHECK(make_compressor(s));
    return DDP_OK;
}

ddp_status ddp_sync_start(ddp_sync *s) {
    DDP_CHECK(ddp_sync_make_reducer(s));
    if (s->ops->start) DDP_CHECK(s->ops->start(s));
    return DDP_OK;
}

/* ---- a training step --------------------------------------------------------------------- */

ddp_status ddp_sync_step_begin(ddp_sync *s, int64_t step, int micro_batches) {
    s->micro_batches = micro_batches;
    if (s->psgd) ddp_powersgd_set_step(s->psgd, step);
    if (s->ops->step_begin) DDP_CHECK(s->ops->step_begin(s));
    return DDP_OK;
}

ddp_status ddp_sync_forward_end(ddp_sync *s, int k, ddp_sync_stats *st) {
    if (s->ops->forward_end) DDP_CHECK(s->ops->forward_end(s, k, st));
    return DDP_OK;
}

ddp_status ddp_sync_backward_begin(ddp_sync *s, int k, ddp_sync_pass *p) {
    int last = k == s->micro_batches - 1;
    /* Sending every micro-batch's gradients (adding them up in the shard) means that no
     * full gradient buffer has to last from one micro-batch to the next: each backward
     * writes it. Otherwise the first writes, the others add, and the last one sends. */
    p->send = last || s->ops->sends_each;
    p->first = k == 0 || s->ops->sends_each;
    p->ready = NULL;
    p->ctx = NULL;
    if (!p->send) return DDP_OK;
    if (s->ops->shards)
        DDP_CHECK(ddp_reducer_begin_sharded(s->reducer, s->ops->sends_each && k > 0));
    else
        DDP_CHECK(ddp_reducer_begin(s->reducer));
    p->ready = ddp_sync_grad_ready;
    p->ctx = s;
    return DDP_OK;
}

ddp_status ddp_sync_grad_ready(void *sync, size_t offset, size_t count) {
    DDP_CHECK(ddp_reducer_ready(((ddp_sync *)sync)->reducer, offset, count));
    return DDP_OK;
}

int ddp_sync_started_sending(const ddp_sync *s) { return ddp_reducer_num_launched(s->reducer) > 0; }

ddp_status ddp_sync_backward_end(ddp_sync *s, ddp_sync_stats *st) {
    ddp_reducer_stats pass;
    /* Every rank reaches this after the same micro-batches. */
    DDP_CHECK(ddp_reducer_finish(s->reducer, &pass));
    st->t_comm += pass.t_comm;
    st->t_exposed += pass.t_exposed;
    st->t_comm_cpu += pass.t_comm_cpu;
    return DDP_OK;
}

ddp_status ddp_sync_grad_norm(ddp_sync *s, double *norm) {
    if (!s->ops->shards) {
        DDP_CHECK(ddp_grad_norm(s->backend, ddp_model_grads(s->model), s->n, norm));
        /* Non-finite gradients would stay in the error feedback: every rank (the norm is
         * the same on all) starts it afresh. */
        if (s->psgd && !isfinite(*norm)) ddp_powersgd_reset(s->psgd);
        return DDP_OK;
    }
    /* The shards' sums of squares, summed over ranks: the same double on every rank, so
     * every rank reaches the same verdict on clipping and finiteness. All ranks reach this
     * once per step. */
    double sumsq;
    DDP_CHECK(ddp_backend_sumsq(s->backend, s->shard_grads, s->view_len, &sumsq));
    DDP_CHECK(ddp_comm_allreduce(s->ctrl, &sumsq, 1, DDP_F64, DDP_SUM));
    *norm = sqrt(sumsq);
    if (s->psgd && !isfinite(*norm)) ddp_powersgd_reset(s->psgd);
    return DDP_OK;
}

ddp_status ddp_sync_update(ddp_sync *s, ddp_optim *o, float lr, float gscale) {
    float *grads = s->ops->shards ? s->shard_grads : ddp_model_grads(s->model);
    DDP_CHECK(ddp_optim_step(o, ddp_model_params(s->model) + s->view_begin, grads, lr, gscale));
    return DDP_OK;
}

ddp_status ddp_sync_step_end(ddp_sync *s) {
    if (s->ops->step_end) DDP_CHECK(s->ops->step_end(s));
    return DDP_OK;
}

ddp_status ddp_sync_settle(ddp_sync *s) {
    if (s->ops->settle) DDP_CHECK(s->ops->settle(s));
    return DDP_OK;
}

/* ---- evaluation ---------------------------------------------------------------------------- */

/* Whether any rank has one more forward pass to run (mine: this one does). All ranks reach
 * it as often as the rank with the most passes, plus once. */
static ddp_status any_pass(ddp_sync *s, int mine, int *any) {
    int32_t v = mine;
    DDP_CHECK(ddp_comm_allreduce(s->ctrl, &v, 1, DDP_I32, DDP_MAX));
    *any = v != 0;
    return DDP_OK;
}

ddp_status ddp_sync_eval_pass(ddp_sync *s) {
    if (!s->ops->eval_pass) return DDP_OK;
    int any;
    DDP_CHECK(any_pass(s, 1, &any));
    DDP_CHECK(s->ops->eval_pass(s, 1));
    return DDP_OK;
}

ddp_status ddp_sync_eval_end(ddp_sync *s) {
    if (!s->ops->eval_pass) return DDP_OK;
    for (;;) {
        int any;
        DDP_CHECK(any_pass(s, 0, &any));
        if (!any) break;
        DDP_CHECK(s->ops->eval_pass(s, 0));
    }
    DDP_CHECK(ddp_sync_settle(s));
    return DDP_OK;
}

void ddp_sync_gather_stats(ddp_sync *s, ddp_sync_stats *st) {
    if (s->ops->gather_stats) s->ops->gather_stats(s, st);
}

/* ---- the parameters outside a step ----------------------------------------------------- */

void ddp_sync_view(const ddp_sync *s, size_t *begin, size_t *len) {
    *begin = s->view_begin;
    *len = s->view_len;
}

void ddp_sync_param_range(const ddp_sync *s, size_t *begin, size_t *len) {
    *begin = s->param_begin;
    *len = s->param_len;
}

const ddp_shard_layout *ddp_sync_layout(const ddp_sync *s) { return &s->layout; }

int ddp_sync_stage(const ddp_sync *s) { return s->opt.stage; }
int ddp_sync_params_replicated(const ddp_sync *s) { return !s->ops->params_shared; }
int ddp_sync_sends_each_micro_batch(const ddp_sync *s) { return s->ops->sends_each; }

ddp_status ddp_sync_params_changed(ddp_sync *s) {
    /* Where products keep a bf16 copy of the weights, it is rewritten before it is read. */
    ddp_backend_weights_changed(s->backend);
    if (s->ops->params_changed) DDP_CHECK(s->ops->params_changed(s));
    return DDP_OK;
}

size_t ddp_sync_read_chunk(const ddp_sync *s) {
    return s->ops->read_chunk ? s->ops->read_chunk(s) : s->n;
}

ddp_status ddp_sync_read_params(ddp_sync *s, size_t a, size_t b, float *host) {
    if (b > s->n || a > b)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "sync: parameters [%zu, %zu) of %zu", a, b, s->n);
    const float *params = ddp_model_params(s->model);
    if (!s->ops->params_shared) {
        DDP_CHECK(
            ddp_backend_copy(s->backend, host, params + a, (b - a) * sizeof(float), DDP_COPY_D2H));
        return DDP_OK;
    }
    /* Every rank puts its own part of [a, b) in place, then an in-place all-gather over the
     * host control comm fills in the others' (the device's memory may be another's). */
    size_t *counts = calloc((size_t)s->world, sizeof *counts);
    if (!counts) return DDP_FAIL(DDP_ERR_NOMEM, "sync: out of memory");
    ddp_shard_counts(&s->layout, a, b, counts);
    size_t lo = s->param_begin > a ? s->param_begin : a;
    ddp_status st = DDP_OK;
    if (counts[s->rank] > 0)
        st = ddp_backend_copy(s->backend, host + (lo - a), params + lo,
                              counts[s->rank] * sizeof(float), DDP_COPY_D2H);
    /* Every rank asks for the same range: all reach this. */
    if (st == DDP_OK) st = ddp_comm_allgatherv(s->ctrl, host, counts, DDP_F32);
    free(counts);
    DDP_CHECK(st);
    return DDP_OK;
}

/* ---- memory ---------------------------------------------------------------------------- */

/* The bytes of the largest bucket, and of the two largest. */
static void largest_buckets(const ddp_sync *s, size_t *one, size_t *two) {
    size_t big[2] = {0, 0};
    for (int i = 0; i < ddp_reducer_num_buckets(s->reducer); i++) {
        size_t a, e;
        ddp_reducer_bucket(s->reducer, i, &a, &e);
        if (e - a > big[0]) {
            big[1] = big[0];
            big[0] = e - a;
        } else if (e - a > big[1]) {
            big[1] = e - a;
        }
    }
    *one = big[0] * sizeof(float);
    *two = (big[0] + big[1]) * sizeof(float);
}

size_t ddp_sync_two_largest_buckets(const ddp_sync *s) {
    size_t one, two;
    largest_buckets(s, &one, &two);
    return two;
}

void ddp_sync_memory_use(const ddp_sync *s, int ranks, ddp_sync_memory *m) {
    size_t f = sizeof(float);
    ddp_shard_layout l = s->layout;
    size_t shard = s->view_len;
    if (ranks > 0 && ranks != s->world) {
        l = ddp_shard_layout_of(s->n, ranks);
        shard = s->ops->shards ? (l.size < s->n ? l.size : s->n) : s->n;
    }
    memset(m, 0, sizeof *m);
    m->view = shard;
    m->params = s->n * f;
    if (s->ops->param_memory) {
        size_t fp32 = 0, bf16 = 0;
        s->ops->param_memory(s, ranks, &fp32, &bf16);
        m->params = fp32 * f;
        m->params_bf16 = bf16 * sizeof(uint16_t);
    }
    m->grads = s->n * f;
    /* Where the pages of sent buckets go back (host memory), at most the two largest
     * buckets are resident: one being written by backward while the other is sent. */
    if (s->ops->releases && ddp_backend_is_host(s->backend)) {
        size_t one;
        largest_buckets(s, &one, &m->grads);
        /* Their reduce-scatters leave from ordinary memory, through MPI's temporaries: Open
         * MPI's MPI_Reduce_scatter of a 28 MB bucket takes 53, 47 and 37 MiB more at 2, 4
         * and 8 ranks (bench/results/zero.md); twice the largest bucket bounds them. */
        m->comm = 2 * one;
    }
    if (s->ops->shards) m->grad_shard = (ranks > 0 && ranks != s->world ? shard : l.size) * f;
    /* PowerSGD's error feedback (a gradient buffer's worth), its Q factors and wire. */
    if (s->psgd) m->comm += ddp_powersgd_bytes(s->psgd);
}

ddp_powersgd *ddp_sync_compressor(ddp_sync *s) { return s->psgd; }

ddp_status ddp_sync_compress_cost(ddp_sync *s, ddp_comm *local, ddp_compress_cost *c) {
    memset(c, 0, sizeof *c);
    int nb = ddp_reducer_num_buckets(s->reducer);
    size_t esize = s->opt.reducer.grad_dtype == DDP_BF16 ? 2 : 4;
    c->buckets = nb;
    c->bytes = s->n * esize;
    if (!s->psgd) return DDP_OK;
    size_t *bounds = malloc(2 * (size_t)nb * sizeof *bounds);
    if (!bounds) return DDP_FAIL(DDP_ERR_NOMEM, "sync: out of memory");
    for (int i = 0; i < nb; i++) {
        ddp_reducer_bucket(s->reducer, i, &bounds[2 * i], &bounds[2 * i + 1]);
        size_t elems;
        int calls;
        ddp_powersgd_wire(s->psgd, bounds[2 * i], bounds[2 * i + 1], &elems, &calls);
        c->psgd_bytes += elems * esize;
        c->psgd_calls += calls;
    }
    ddp_status st = ddp_powersgd_time_work(s->psgd, local, ddp_model_grads(s->model), bounds, nb,
                                           &c->psgd_work);
    free(bounds);
    DDP_CHECK(st);
    return DDP_OK;
}

void ddp_sync_wire(const ddp_sync *s, size_t *bytes, int *collectives, int *buckets) {
    size_t esize = s->opt.reducer.grad_dtype == DDP_BF16 ? 2 : 4;
    int nb = ddp_reducer_num_buckets(s->reducer), on = s->psgd && ddp_powersgd_compressing(s->psgd);
    *buckets = nb;
    *bytes = on ? 0 : s->n * esize;
    *collectives = on ? 0 : nb;
    for (int i = 0; on && i < nb; i++) {
        size_t a, e, elems;
        int calls;
        ddp_reducer_bucket(s->reducer, i, &a, &e);
        ddp_powersgd_wire(s->psgd, a, e, &elems, &calls);
        *bytes += elems * esize;
        *collectives += calls;
    }
}

void ddp_sync_compress_from(ddp_sync *s, int64_t step) {
    if (s->psgd) ddp_powersgd_set_start(s->psgd, step);
}
