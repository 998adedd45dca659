/*
 * The trainer: set-up (model, optimizer, sampler, data on the device, the check that
 * all ranks agree), one training step, evaluation, and the parameter sync check.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train/trainer_impl.h"

/* Every rank must run the same configuration on the same data with the same model, or
 * the collectives would mismatch; compare fingerprints and name the rank that differs. */
static ddp_status check_fingerprints(ddp_trainer *t) {
    char canon[2048];
    size_t len = ddp_train_config_canonical(&t->cfg, canon, sizeof canon);
    uint32_t fp = ddp_crc32(0, canon, len);
    const char *shape = ddp_model_describe(t->model);
    fp = ddp_crc32(fp, shape, strlen(shape));
    char data[256];
    size_t dlen = t->src->identify(t, data, sizeof data);
    fp = ddp_crc32(fp, data, dlen);
    /* All ranks reach this comparison in ddp_trainer_create. */
    int first_bad = -1, n_bad = 0, mine_differs = 0;
    DDP_CHECK(ddp_comm_compare(t->ctrl, fp, &first_bad, &n_bad, &mine_differs));
    if (first_bad < 0) return DDP_OK;
    if (mine_differs)
        ddp_log_error("my configuration: %s | model %s | data %s", canon, shape, data);
    return DDP_FAIL(DDP_ERR_MISMATCH,
                    "rank %d (and %d rank(s) in all) runs a different configuration, model or "
                    "data than rank 0: every rank must get the same options and dataset",
                    first_bad, n_bad);
}

/* The ranges of the flat buffer that weight decay must leave alone (biases,
 * normalization, position embeddings), merged where adjacent. */
static ddp_status set_decay(ddp_trainer *t) {
    int nv = ddp_model_num_views(t->model);
    size_t(*ranges)[2] = malloc((size_t)nv * sizeof *ranges);
    if (!ranges) return DDP_FAIL(DDP_ERR_NOMEM, "trainer: out of memory");
    int n = 0;
    for (int i = 0; i < nv; i++) {
        const ddp_param_view *v = ddp_model_view(t->model, i);
        if (v->decay) continue;
        if (n > 0 && ranges[n - 1][0] + ranges[n - 1][1] == v->offset)
            ranges[n - 1][1] += v->count;
        else {
            ranges[n][0] = v->offset;
            ranges[n][1] = v->count;
            n++;
        }
    }
    ddp_status s = ddp_optim_set_no_decay(t->optim, (const size_t(*)[2])ranges, n);
    free(ranges);
    DDP_CHECK(s);
    return DDP_OK;
}

/* Everything in set-up that involves no collective: it may fail on one rank alone. */
static ddp_status setup_local(ddp_trainer *t, ddp_backend *b) {
    DDP_CHECK(ddp_train_config_resolve(&t->cfg, t->world));
    DDP_CHECK(t->src->setup(t));
    t->total_steps = t->cfg.max_steps > 0
                         ? t->cfg.max_steps
                         : (int64_t)t->cfg.epochs * (int64_t)t->sampler.steps_per_epoch;
    t->cfg.sched.total_steps = t->total_steps;
    t->start_batch = t->cfg.global_batch;
    t->start_accum = t->cfg.accum;
    DDP_CHECK(ddp_trainer_batch_check(t));
    DDP_CHECK(ddp_model_create(b, &t->cfg.model, t->max_batch, &t->model));
    /* Same seed on every rank: identical initial parameters without a broadcast. */
    DDP_CHECK(ddp_model_init_params(t->model, t->cfg.seed));
    t->num_params = ddp_model_num_params(t->model);
    DDP_CHECK(ddp_optim_create(b, &t->cfg.optim, t->num_params, &t->optim));
    DDP_CHECK(set_decay(t));
    t->h_params = malloc(t->num_params * sizeof(float));
    if (!t->h_params) return DDP_FAIL(DDP_ERR_NOMEM, "trainer: out of memory");
    DDP_CHECK(ddp_backend_alloc(b, 2 * sizeof(float), (void **)&t->d_stats));
    return DDP_OK;
}

/* Gradients in memory that the node's ranks share, where the comm offers it: the
 * all-reduce then sums them in place, without messages. COLLECTIVE over t->comm; where
 * sharing is not possible the model keeps its own buffer. */
static ddp_status share_gradients(ddp_trainer *t) {
    if (!ddp_backend_is_host(t->backend)) return DDP_OK;
    void *shared = NULL;
    DDP_CHECK(ddp_comm_alloc_shared(t->comm, t->num_params * sizeof(float), &shared));
    if (shared) DDP_CHECK(ddp_model_use_grad_buffer(t->model, shared));
    t->grads_shared = shared != NULL;
    return DDP_OK;
}

/* The reducer over the model's gradient buffer, wherever share_gradients put it. Not
 * collective. */
static ddp_status setup_reducer(ddp_trainer *t) {
    /* Buckets are cut where backward reports gradients ready; the first layer reports in
     * slices of a first bucket's size, so that its all-reduce, which no other layer's
     * backward can hide, mostly overlaps with its own. */
    ddp_reducer_options ropt = t->cfg.reducer;
    if (ropt.overlap)
        ropt.tail_elems =
            ddp_model_set_grad_slices(t->model, ropt.first_bucket_bytes / sizeof(float));
    int nb = ddp_model_ready_points(t->model, NULL, 0);
    size_t *bounds = malloc((size_t)nb * sizeof *bounds);
    if (!bounds) return DDP_FAIL(DDP_ERR_NOMEM, "trainer: out of memory");
    ddp_model_ready_points(t->model, bounds, nb);
    ddp_status rs = ddp_reducer_create(t->comm, t->backend, ddp_model_grads(t->model),
                                       t->num_params, bounds, nb, &ropt, &t->reducer);
    free(bounds);
    DDP_CHECK(rs);
    return DDP_OK;
}

/* The set-up common to every source: local parts, agreement, fingerprints, shared
 * gradients, the reducer. COLLECTIVE. */
static ddp_status create(ddp_trainer *t, ddp_backend *b, ddp_comm *comm, ddp_comm *ctrl,
                         ddp_trainer **out) {
    t->backend = b;
    t->comm = comm;
    t->ctrl = ctrl;
    t->last_eval_loss = -1.0;
    ddp_gns_ema_init(&t->gns, t->cfg.gns_ema);
    t->rank = ddp_comm_rank(comm);
    t->world = ddp_comm_size(comm);
    ddp_status s = setup_local(t, b);
    if (s != DDP_OK) ddp_error_trace(__FILE__, __LINE__);
    /* All ranks agree on the outcome before the first collective of the run, so a rank
     * that failed alone does not leave the others waiting in it. */
    int failed;
    ddp_status agree = ddp_comm_agree(ctrl, s, &failed);
    if (s == DDP_OK && agree != DDP_OK) s = agree;
    if (s == DDP_OK && failed >= 0)
        s = DDP_FAIL(DDP_ERR_REMOTE, "rank %d failed to set up training (its message says why)",
                     failed);
    if (s == DDP_OK) s = check_fingerprints(t);
    if (s == DDP_OK && t->cfg.sync_bn) {
        /* A communicator of the batch norms' own: their collectives run inside forward and
         * backward while the reducer's thread may be all-reducing gradients on comm. Every
         * rank creates it (sync_bn is in the fingerprint). */
        s = ddp_comm_create(ddp_comm_kind_of(comm), b, &t->bn_comm);
        if (s == DDP_OK) {
            ddp_comm_set_label(t->bn_comm, "bn", "batch-norm statistics");
            ddp_model_set_comm(t->model, t->bn_comm);
        }
    }
    if (s == DDP_OK) s = share_gradients(t);
    if (s == DDP_OK) {
        /* Local again (a thread that could not start), so agreed on once more. */
        s = setup_reducer(t);
        if (s != DDP_OK) ddp_error_trace(__FILE__, __LINE__);
        agree = ddp_comm_agree(ctrl, s, &failed);
        if (s == DDP_OK && agree != DDP_OK) s = agree;
        if (s == DDP_OK && failed >= 0)
            s = DDP_FAIL(DDP_ERR_REMOTE,
                         "rank %d failed to set up the gradient reducer (its message says why)",
                         failed);
    }
    if (s != DDP_OK) {
        ddp_trainer_free(t);
        return s;
    }
    *out = t;
    return DDP_OK;
}

ddp_status ddp_trainer_create(const ddp_train_config *cfg, ddp_backend *b, ddp_comm *comm,
                              ddp_comm *ctrl, const ddp_dataset *train, const ddp_dataset *test,
                              ddp_trainer **out) {
    *out = NULL;
    ddp_trainer *t = calloc(1, sizeof *t);
    if (!t) return DDP_FAIL(DDP_ERR_NOMEM, "trainer: out of memory");
    t->cfg = *cfg;
    t->src = &ddp_source_idx;
    t->train = train;
    t->test = test;
    return create(t, b, comm, ctrl, out);
}

ddp_status ddp_trainer_create_text(const ddp_train_config *cfg, ddp_backend *b, ddp_comm *comm,
                                   ddp_comm *ctrl, const ddp_text *text, ddp_trainer **out) {
    *out = NULL;
    ddp_trainer *t = calloc(1, sizeof *t);
    if (!t) return DDP_FAIL(DDP_ERR_NOMEM, "trainer: out of memory");
    t->cfg = *cfg;
    t->src = &ddp_source_text;
    t->text = text;
    return create(t, b, comm, ctrl, out);
}

void ddp_trainer_free(ddp_trainer *t) {
    if (!t) return;
    ddp_backend *b = t->backend;
    if (t->src && b) t->src->release(t);
    ddp_backend_dealloc(b, t->d_stats);
    free(t->h_params);
    ddp_reducer_free(t->reducer);
    ddp_comm_free(t->bn_comm);
    ddp_optim_free(t->optim);
    ddp_model_free(t->model);
    ddp_sampler_free(&t->sampler);
    if (t->metrics) fclose(t->metrics);
    free(t);
}

int64_t ddp_trainer_total_steps(const ddp_trainer *t) { return t->total_steps; }
ddp_model *ddp_trainer_model(ddp_trainer *t) { return t->model; }
int ddp_trainer_grads_shared(const ddp_trainer *t) { return t->grads_shared; }
double ddp_trainer_last_eval_loss(const ddp_trainer *t) { return t->last_eval_loss; }

ddp_status ddp_trainer_get_params(ddp_trainer *t, float *host) {
    DDP_CHECK(ddp_backend_copy(t->backend, host, ddp_model_params(t->model),
                               t->num_params * sizeof(float), DDP_COPY_D2H));
    return DDP_OK;
}

/* Reads the device stats (loss sum, correct count) and sums them over all ranks.
 * COLLECTIVE over ctrl. */
static ddp_status reduce_stats(ddp_trainer *t, double out[4]) {
    float h[2];
    DDP_CHECK(ddp_backend_copy(t->backend, h, t->d_stats, sizeof h, DDP_COPY_D2H));
    out[0] = h[0];
    out[1] = h[1];
    /* The noise scale's moving averages ride along (noise_scale.c). */
    ddp_trainer_gns_pack(t, out + 2);
    DDP_CHECK(ddp_comm_allreduce(t->ctrl, out, 4, DDP_F64, DDP_SUM));
    return DDP_OK;
}

ddp_status ddp_trainer_step(ddp_trainer *t, ddp_step_stats *st) {
    ddp_backend *b = t->backend;
    const ddp_train_config *c = &t->cfg;
    /* Scaling by 1 / (predictions in the global batch) here makes the summed all-reduce
     * the gradient of the mean loss, with no separate division. */
    float grad_scale = 1.0f / (float)(c->global_batch * t->src->positions(t));
    float *grads = ddp_model_grads(t->model);
    memset(st, 0, sizeof *st);
    /* Phase timings need the device to be idle at the boundaries; on the CPU that is
     * free, on a GPU it costs syncs, so only the logged steps pay for it there. */
    int log_step = (t->step + 1) % c->log_every == 0 || t->step + 1 == t->total_steps;
    int timed = ddp_backend_is_host(b) || log_step;
    double t0 = ddp_time_now(), t1;

    DDP_CHECK(t->src->next(t));
    DDP_CHECK(ddp_backend_zero(b, t->d_stats, 2 * sizeof(float)));
    for (int k = 0; k < c->accum; k++) {
        int last = k == c->accum - 1;
        t1 = ddp_time_now();
        DDP_CHECK(ddp_trace_begin("forward", "compute"));
        ddp_batch batch;
        DDP_CHECK(t->src->micro_batch(t, k, &batch));
        DDP_CHECK(ddp_model_forward(t->model, &batch, DDP_MODE_TRAIN, grad_scale, t->d_stats));
        if (timed) DDP_CHECK(ddp_backend_sync(b));
        DDP_CHECK(ddp_trace_end());
        st->t_forward += ddp_time_now() - t1;
        t1 = ddp_time_now();
        DDP_CHECK(ddp_trace_begin("backward", "compute"));
        /* Only the last micro-batch communicates: its backward hands each bucket to the
         * reducer as soon as the bucket's gradients are final. */
        if (last) DDP_CHECK(ddp_reducer_begin(t->reducer));
        /* The first micro-batch writes the gradients, the others add to them: no pass
         * to zero the buffer. */
        ddp_grad_ready_fn ready = NULL;
        void *ready_ctx = NULL;
        if (last) ddp_trainer_gns_ready_fn(t, &ready, &ready_ctx);
        DDP_CHECK(ddp_model_backward(t->model, k == 0, ready, ready_ctx));
        DDP_CHECK(ddp_trainer_gns_after_backward(t, k));
        if (timed) DDP_CHECK(ddp_backend_sync(b));
        DDP_CHECK(ddp_trace_end());
        st->t_backward += ddp_time_now() - t1;
    }
    ddp_reducer_stats rs;
    /* Every rank reaches this once per step, after its last micro-batch. */
    DDP_CHECK(ddp_trace_begin("allreduce wait", "comm"));
    DDP_CHECK(ddp_reducer_finish(t->reducer, &rs));
    if (timed) DDP_CHECK(ddp_backend_sync(b));
    DDP_CHECK(ddp_trace_end());
    st->t_allreduce = rs.t_comm;
    st->t_exposed = rs.t_exposed;
    st->t_comm_cpu = rs.t_comm_cpu;

    t1 = ddp_time_now();
    DDP_CHECK(ddp_trace_begin("optimizer", "compute"));
    /* The averaged gradients are identical on every rank, so every rank reaches the
     * same verdict on them without communicating. One pass gives the norm: it is logged,
     * it decides whether the gradients are finite, and clipping is its coefficient
     * applied inside the update. */
    DDP_CHECK(ddp_grad_norm(b, grads, t->num_params, &st->grad_norm));
    st->lr = ddp_trainer_batch_lr(t);
    if (!isfinite(st->grad_norm)) {
        if (c->on_nonfinite == DDP_NONFINITE_ABORT)
            return DDP_FAIL(DDP_ERR_NONFINITE,
                            "step %lld: the averaged gradients are not finite (NaN or inf); lower "
                            "--lr, add --clip, or pass --on-nonfinite skip to skip such steps",
                            (long long)t->step + 1);
        st->skipped = 1;
        t->skipped_steps++;
        ddp_log_warn("step %lld: non-finite gradients, update skipped (%lld so far)",
                     (long long)t->step + 1, (long long)t->skipped_steps);
    } else {
        DDP_CHECK(ddp_optim_step(t->optim, ddp_model_params(t->model), grads, st->lr,
                                 ddp_clip_coef(st->grad_norm, c->clip_norm)));
    }
    ddp_trainer_gns_observe(t, st);
    /* Running statistics of batch norm on a rank's own shard differ between ranks; their
     * average keeps every rank's model, evaluation and checkpoint the same. (With
     * --sync-bn they come from the global batch and are the same already.) All ranks
     * reach this after every step when the model has buffers. */
    size_t nbuf = ddp_model_num_buffer_elems(t->model);
    if (nbuf > 0 && t->world > 1 && !t->bn_comm)
        DDP_CHECK(ddp_comm_allreduce(t->comm, ddp_model_buffers(t->model), nbuf, DDP_F32, DDP_AVG));
    if (timed) DDP_CHECK(ddp_backend_sync(b));
    DDP_CHECK(ddp_trace_end());
    st->t_optim = ddp_time_now() - t1;

    t->step++;
    t->samples += (int64_t)c->global_batch;
    st->step = t->step;
    st->epoch = t->epoch;
    if (log_step) {
        double sums[4];
        /* All ranks log on the same steps (log_every is in the fingerprint). */
        DDP_CHECK(reduce_stats(t, sums));
        ddp_trainer_gns_unpack(t, sums + 2, st);
        DDP_CHECK(ddp_trainer_batch_adapt(t, st));
        st->loss = sums[0] / ((double)c->global_batch * (double)t->src->positions(t));
        st->logged = 1;
    }
    st->t_step = ddp_time_now() - t0;
    return DDP_OK;
}

ddp_status ddp_trainer_evaluate_part(ddp_trainer *t, int full, double *accuracy, double *loss) {
    double sums[3] = {0.0, 0.0, 0.0};
    DDP_CHECK(t->src->evaluate(t, sums, full));
    /* Every rank evaluates at the same steps; its shard may be empty but it still
     * contributes to the sums. */
    DDP_CHECK(ddp_comm_allreduce(t->ctrl, sums, 3, DDP_F64, DDP_SUM));
    *accuracy = sums[2] > 0 ? sums[1] / sums[2] : 0.0;
    *loss = sums[2] > 0 ? sums[0] / sums[2] : 0.0;
    return DDP_OK;
}

ddp_status ddp_trainer_evaluate(ddp_trainer *t, double *accuracy, double *loss) {
    DDP_CHECK(ddp_trainer_evaluate_part(t, 1, accuracy, loss));
    return DDP_OK;
}

ddp_status ddp_trainer_check_sync(ddp_trainer *t) {
    DDP_CHECK(ddp_trainer_get_params(t, t->h_params));
    uint32_t crc = ddp_crc32(0, t->h_params, t->num_params * sizeof(float));
    /* The buffers (running statistics) must agree as well. */
    size_t nbuf = ddp_model_num_buffer_elems(t->model);
    if (nbuf > 0) {
        float *h = malloc(nbuf * sizeof *h);
        if (!h) return DDP_FAIL(DDP_ERR_NOMEM, "out of memory");
        ddp_status cs = ddp_backend_copy(t->backend, h, ddp_model_buffers(t->model),
                                         nbuf * sizeof *h, DDP_COPY_D2H);
        crc = ddp_crc32(crc, h, nbuf * sizeof *h);
        free(h);
        DDP_CHECK(cs);
    }
    uint32_t *all = calloc((size_t)t->world, sizeof *all);
    if (!all) return DDP_FAIL(DDP_ERR_NOMEM, "out of memory");
    ddp_status s = ddp_comm_allgather(t->ctrl, &crc, all, 1, DDP_U32);
    int bad = -1;
    for (int r = 1; s == DDP_OK && r < t->world; r++)
        if (all[r] != all[0]) {
            bad = r;
            break;
        }
    uint32_t c0 = all[0], cb = bad >= 0 ? all[bad] : 0;
    free(all);
    DDP_CHECK(s);
    if (bad >= 0)
        return DDP_FAIL(DDP_ERR_MISMATCH,
                        "parameters diverged after step %lld: rank %d's checksum %08x differs "
                        "from rank 0's %08x (a rank computed a different update)",
                        (long long)t->step, bad, cb, c0);
    return DDP_OK;
}
