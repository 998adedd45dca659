/*
 * A model's passes: forward over the layers with the loss at the end, backward in reverse
 * with the recomputation of segments, the units' events for the sync (ddp_model_set_unit_hook)
 * and the books of gradients (which contribution is the first, which the last, when a tensor
 * is reported ready, in slices where asked).
 */
#include <stdlib.h>
#include <string.h>

#include "model/model_impl.h"

/* Tells the unit hook, where there is one, that unit u's pass ev begins or ends. */
static ddp_status unit_event(ddp_model *m, int u, ddp_unit_event ev) {
    if (m->unit_hook) DDP_CHECK(m->unit_hook(m->unit_ctx, u, ev));
    return DDP_OK;
}
ddp_comm *ddp_model_comm(ddp_model *m) { return m->comm; }

ddp_status ddp_layer_part(ddp_model *m, ddp_layer *l, int k, ddp_unit_event ev) {
    if (l->n_parts) DDP_CHECK(unit_event(m, l->first_unit + k, ev));
    return DDP_OK;
}

/* Whether layer i, not parted, begins or ends its unit (the model tells the hook then; a
 * parted layer tells it itself). */
static int unit_starts(const ddp_model *m, int i) {
    return !m->layers[i]->n_parts && (i == 0 || m->unit_of[i - 1] != m->unit_of[i]);
}
static int unit_ends(const ddp_model *m, int i) {
    return !m->layers[i]->n_parts && (i == m->n_layers - 1 || m->unit_of[i + 1] != m->unit_of[i]);
}

/* The first layer of the recompute segment that ends at layer b. */
static int segment_start(const ddp_model *m, int b) {
    int a = b;
    while (a > 0 && !ddp_model_segment_end(m, a - 1))
        a--;
    return a;
}

/* Whether recompute_segment runs layer j of the segment that ends at b: all but a last
 * layer that saves nothing (its output, which ends the segment, is kept). */
static int reruns(const ddp_model *m, int j, int b) {
    return j < b || m->layers[j]->saved_per_pos != 0;
}

/* The unit uses of the passes, as the events come (see ddp_model_forward and _backward). */
int ddp_model_unit_uses(const ddp_model *m, int backward, int *uses, int max) {
    int n = 0;
#define USE(u)                                                                                     \
    do {                                                                                           \
        if (n < max) uses[n] = (u);                                                                \
        n++;                                                                                       \
    } while (0)
    for (int i = 0; i < m->n_layers; i++) {
        const ddp_layer *l = m->layers[i];
        for (int k = 0; k < l->n_parts; k++)
            USE(l->first_unit + k);
        if (unit_starts(m, i)) USE(m->unit_of[i]);
    }
    for (int i = m->n_layers - 1; backward && i >= 0; i--) {
        const ddp_layer *l = m->layers[i];
        if (unit_ends(m, i)) USE(m->unit_of[i]);
        if (m->spec.recompute && ddp_model_segment_end(m, i))
            for (int j = segment_start(m, i); j <= i && reruns(m, j, i); j++)
                for (int k = 0; k < m->layers[j]->n_parts; k++)
                    USE(m->layers[j]->first_unit + k);
        for (int k = l->n_parts - 1; k >= 0; k--)
            USE(l->first_unit + k);
    }
#undef USE
    return n;
}
/* ---- forward and backward ------------------------------------------------------------ */

static ddp_status check_batch(const ddp_model *m, const ddp_batch *batch) {
    if (batch->n == 0 || batch->n > m->max_batch)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "model: batch of %zu samples (the model was sized for 1..%zu)", batch->n,
                        m->max_batch);
    if (batch->t == 0 || batch->t > m->max_pos)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "model: %zu positions per sample (the model takes 1..%zu)", batch->t,
                        m->max_pos);
    int tokens = m->layers[0]->in_per_pos == 0;
    if (tokens ? !batch->tokens : !batch->x)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: a %s needs %s as input", m->describe,
                        tokens ? "tokens" : "features");
    return DDP_OK;
}

ddp_status ddp_model_forward(ddp_model *m, const ddp_batch *batch, ddp_mode mode, float grad_scale,
                             float *stats) {
    DDP_CHECK(check_batch(m, batch));
    m->batch = *batch;
    m->pass = (ddp_pass){
        .n = batch->n, .t = batch->t, .train = mode == DDP_MODE_TRAIN, .batch = &m->batch};
    m->have_dlogits = 0;
    const float *x = batch->x;
    for (int i = 0; i < m->n_layers; i++) {
        ddp_layer *l = m->layers[i];
        int u = m->unit_of[i];
        if (unit_starts(m, i)) DDP_CHECK(unit_event(m, u, DDP_UNIT_FORWARD_BEGIN));
        DDP_CHECK(ddp_trace_begin(l->name, "forward"));
        DDP_CHECK(l->ops->forward(l, m, &m->pass, x, m->outs[i]));
        DDP_CHECK(ddp_trace_end());
        x = m->outs[i];
        if (unit_ends(m, i)) DDP_CHECK(unit_event(m, u, DDP_UNIT_FORWARD_END));
    }
    if (!batch->targets) return DDP_OK;
    /* The loss belongs to the model: softmax cross-entropy over every prediction. */
    int train = mode == DDP_MODE_TRAIN && grad_scale != 0.0f;
    size_t rows = batch->n * batch->t;
    DDP_CHECK(ddp_backend_softmax_xent(m->backend, x, batch->targets, (int)rows,
                                       ddp_model_num_classes(m), train ? grad_scale : 0.0f,
                                       train ? m->dlogits : NULL, stats));
    m->have_dlogits = train;
    return DDP_OK;
}

static ddp_status report(ddp_model *m, tensor *t, size_t begin, size_t count) {
    if (m->ready) DDP_CHECK(m->ready(m->ready_ctx, t->view.offset + begin, count));
    return DDP_OK;
}

float ddp_grad_gemm_beta(ddp_model *m, int id) {
    tensor *t = &m->tensors[id];
    float beta = m->overwrite && !t->touched ? 0.0f : 1.0f;
    t->touched = 1;
    return beta;
}

ddp_status ddp_grad_prepare_add(ddp_model *m, int id) {
    tensor *t = &m->tensors[id];
    if (m->overwrite && !t->touched)
        DDP_CHECK(ddp_backend_zero(m->backend, ddp_model_dw(m, id), t->view.count * sizeof(float)));
    t->touched = 1;
    return DDP_OK;
}

ddp_status ddp_grad_done(ddp_model *m, int id) {
    tensor *t = &m->tensors[id];
    if (t->uses_left > 0) t->uses_left--;
    if (t->uses_left == 0 && !t->reported) {
        t->reported = 1;
        DDP_CHECK(report(m, t, 0, t->view.count));
    }
    return DDP_OK;
}

ddp_status ddp_grad_report_part(ddp_model *m, int id, size_t begin, size_t count) {
    DDP_CHECK(report(m, &m->tensors[id], begin, count));
    return DDP_OK;
}

void ddp_grad_done_reported(ddp_model *m, int id) {
    m->tensors[id].reported = 1;
    m->tensors[id].uses_left = 0;
}

/* Runs the forward of the segment that ends at layer b again, so that its outputs and saved
 * tensors are back in the workspace for its backward: the same kernels on the same inputs
 * in the same order as the first forward, so the same bits. The last layer runs only if it
 * saves something; its output, which ends the segment, is still there (and is written again with
 * the same values if it runs). */
static ddp_status recompute_segment(ddp_model *m, int b) {
    int a = segment_start(m, b);
    ddp_pass p = m->pass;
    p.recompute = 1;
    const float *x = a > 0 ? m->outs[a - 1] : m->batch.x;
    for (int j = a; j <= b && reruns(m, j, b); j++) {
        ddp_layer *l = m->layers[j];
        DDP_CHECK(ddp_trace_begin(l->name, "recompute"));
        DDP_CHECK(l->ops->forward(l, m, &p, x, m->outs[j]));
        DDP_CHECK(ddp_trace_end());
        x = m->outs[j];
    }
    return DDP_OK;
}

ddp_status ddp_model_backward(ddp_model *m, int first, ddp_grad_ready_fn ready, void *ctx) {
    if (!m->have_dlogits)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "model: backward needs a forward in train mode with targets and a "
                        "gradient scale just before it");
    m->overwrite = first;
    m->ready = ready;
    m->ready_ctx = ctx;
    for (int i = 0; i < m->n_tensors; i++) {
        tensor *t = &m->tensors[i];
        t->touched = t->reported = 0;
        t->uses_left = t->uses;
    }
    const float *dy = m->dlogits;
    ddp_status s = DDP_OK;
    for (int i = m->n_layers - 1; s == DDP_OK && i >= 0; i--) {
        ddp_layer *l = m->layers[i];
        int u = m->unit_of[i];
        /* A unit's backward starts at its last layer (its parameters first, whatever
         * recomputation does), and a recompute segment's with its activations; a parted
         * layer tells of its parts' uses itself, those of the recomputation too. */
        if (unit_ends(m, i)) {
            s = unit_event(m, u, DDP_UNIT_BACKWARD_BEGIN);
            if (s != DDP_OK) break;
        }
        if (m->spec.recompute && ddp_model_segment_end(m, i)) {
            s = recompute_segment(m, i);
            if (s != DDP_OK) break;
        }
        /* The first layer's input gradient is never needed. */
        float *dx = i > 0 ? m->bwd[i & 1] : NULL;
        const float *x = i > 0 ? m->outs[i - 1] : m->batch.x;
        s = ddp_trace_begin(l->name, "backward");
        if (s == DDP_OK) s = l->ops->backward(l, m, &m->pass, x, m->outs[i], dy, dx);
        if (s == DDP_OK) s = ddp_trace_end();
        if (s == DDP_OK && unit_starts(m, i)) s = unit_event(m, u, DDP_UNIT_BACKWARD_END);
        dy = dx;
    }
    /* Tensors that got no contribution, or fewer than their users promised (a layer
     * skipped): zeroed when this pass writes, and reported, so that the reducer's count
     * of every bucket reaches zero. Last layer first, as backward goes. */
    for (int i = m->n_tensors - 1; s == DDP_OK && i >= 0; i--) {
        tensor *t = &m->tensors[i];
        if (t->reported) continue;
        if (!t->touched && m->overwrite)
            s = ddp_backend_zero(m->backend, ddp_model_dw(m, i), t->view.count * sizeof(float));
        t->reported = 1;
        if (s == DDP_OK) s = report(m, t, 0, t->view.count);
    }
    m->ready = NULL;
    m->ready_ctx = NULL;
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_model_zero_grads(ddp_model *m) {
    DDP_CHECK(ddp_backend_zero(m->backend, m->grads, m->num_params * sizeof(float)));
    return DDP_OK;
}

/* ---- reporting in slices --------------------------------------------------------------- */

size_t ddp_model_set_grad_slices(ddp_model *m, size_t max_elems) {
    ddp_layer *l = m->layers[0];
    if (!ddp_layer_is_linear(l)) return 0;
    int w = ddp_layer_linear_weight(l);
    size_t in = m->tensors[w].view.shape[1], out = m->tensors[w].view.shape[0];
    /* At least max_elems per slice (a reducer closes a bucket once it holds that much),
     * which leaves the lowest, last slice the short one: the least to send at the end. */
    size_t rows = (max_elems + in - 1) / in;
    ddp_layer_linear_set_slices(l, max_elems == 0 || rows >= out ? 0 : rows);
    /* The first layer's tensors (weight, then bias) are final last. */
    const tensor *bias = &m->tensors[ddp_layer_linear_bias(l)];
    return bias->view.offset + bias->view.count;
}

int ddp_model_ready_points(ddp_model *m, size_t *offsets, int max) {
    int n = 0;
    const ddp_layer *first = m->layers[0];
    size_t slice = ddp_layer_is_linear(first) ? ddp_layer_linear_slice_rows(first) : 0;
    int sliced = slice ? ddp_layer_linear_weight(first) : -1;
    for (int i = 0; i < m->n_tensors; i++) {
        const ddp_param_view *v = &m->tensors[i].view;
        size_t chunk = m->tensors[i].chunk_rows;
        if (i != sliced && chunk) {
            /* Chunks from row 0 up (ddp_model_chunk_rows). */
            for (size_t r = 0; r < v->shape[0]; r += chunk) {
                if (n < max) offsets[n] = v->offset + r * (v->count / v->shape[0]);
                n++;
            }
            continue;
        }
        if (i != sliced) {
            if (n < max) offsets[n] = v->offset;
            n++;
            continue;
        }
        /* Slices are cut from the last row down, so the first may be the short one. */
        size_t out = v->shape[0], in = v->shape[1];
        size_t firstrows = out % slice ? out % slice : slice;
        for (size_t r = 0; r < out; r = r == 0 ? firstrows : r + slice) {
            if (n < max) offsets[n] = v->offset + r * in;
            n++;
        }
    }
    return n;
}
