/*
 * The model: layers run in order over one flat parameter buffer and one flat gradient
 * buffer, their activations in one arena, the loss at the end, and the books of
 * gradients during backward (which contribution is the first, which the last, and
 * when a tensor is reported ready). The kinds (mlp.c, gpt.c, cnn.c) only declare layers
 * and tensors.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/layer.h"

typedef struct {
    ddp_param_view view; /* name, offset, count, shape, decay; in the parameters or buffers */
    ddp_init init;
    int uses; /* layers that contribute to its gradient */
    /* per backward pass */
    int touched;   /* got its first contribution */
    int uses_left; /* contributions still to come */
    int reported;  /* reported ready */
} tensor;

struct ddp_model {
    ddp_backend *backend;
    ddp_model_spec spec;
    int n_layers, cap_layers;
    ddp_layer **layers;
    int n_tensors, cap_tensors;
    tensor *tensors;
    int n_buffers, cap_buffers;
    tensor *buffers; /* state that is not trained: views into bufs */
    size_t num_params;
    size_t num_buffer_elems;
    float *bufs;    /* device (num_buffer_elems), NULL when there are none */
    ddp_comm *comm; /* for layers that communicate in forward and backward; may be NULL */
    float *params;  /* device (num_params) */
    float *grads;   /* device (num_params) */
    int own_grads;  /* grads was allocated here (not given by ddp_model_use_grad_buffer) */
    size_t max_batch, max_pos;
    /* the activation arena: each layer's output, each layer's saved tensors, the shared
     * scratch, the two backward buffers and the gradient of the logits; with
     * recomputation the outputs that end recompute segments only, then one segment's workspace for
     * the other outputs and the saved tensors */
    float *arena;
    size_t arena_bytes;
    float **outs;   /* (n_layers) rows x out_per_pos each */
    float *bwd[2];  /* rows x the widest layer boundary */
    float *dlogits; /* rows x classes */
    /* the last forward */
    ddp_batch batch;
    ddp_pass pass;
    int have_dlogits;
    /* the backward pass in progress */
    int overwrite;
    ddp_grad_ready_fn ready;
    void *ready_ctx;
    ddp_param_wait_fn param_wait; /* see ddp_model_set_param_wait */
    void *param_wait_ctx;
    char describe[256];
    double flops;
    int big_rows, big_N, big_K; /* the largest matrix product per sample (add_product) */
};

/* ---- building ------------------------------------------------------------------------ */

ddp_status ddp_model_add_layer(ddp_model *m, ddp_layer *l) {
    if (m->n_layers == m->cap_layers) {
        int cap = m->cap_layers ? 2 * m->cap_layers : 16;
        ddp_layer **grown = realloc(m->layers, (size_t)cap * sizeof *grown);
        if (!grown) {
            if (l->ops->destroy) l->ops->destroy(l);
            free(l);
            return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
        }
        m->layers = grown;
        m->cap_layers = cap;
    }
    l->param_end = m->num_params;
    m->layers[m->n_layers++] = l;
    return DDP_OK;
}

ddp_status ddp_model_add_param(ddp_model *m, const char *name, int ndim, const size_t *shape,
                               ddp_init init, int decay, int *id) {
    if (ndim < 1 || ndim > DDP_MAX_DIMS)
        return DDP_FAIL(DDP_ERR_INTERNAL, "model: tensor %s has %d dimensions", name, ndim);
    if (m->n_tensors == m->cap_tensors) {
        int cap = m->cap_tensors ? 2 * m->cap_tensors : 32;
        tensor *grown = realloc(m->tensors, (size_t)cap * sizeof *grown);
        if (!grown) return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
        m->tensors = grown;
        m->cap_tensors = cap;
    }
    tensor *t = &m->tensors[m->n_tensors];
    memset(t, 0, sizeof *t);
    if (strlen(name) >= sizeof t->view.name)
        return DDP_FAIL(DDP_ERR_INTERNAL, "model: tensor name %s is too long", name);
    snprintf(t->view.name, sizeof t->view.name, "%s", name);
    t->view.ndim = ndim;
    size_t count = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 0 || count > SIZE_MAX / shape[d])
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: tensor %s has an impossible shape", name);
        t->view.shape[d] = shape[d];
        count *= shape[d];
    }
    if (m->num_params > SIZE_MAX / sizeof(float) - count)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: too many parameters");
    t->view.offset = m->num_params;
    t->view.count = count;
    t->view.decay = decay || m->spec.decay_all;
    t->init = init;
    t->uses = 1;
    m->num_params += count;
    *id = m->n_tensors++;
    return DDP_OK;
}

ddp_status ddp_model_add_buffer(ddp_model *m, const char *name, int ndim, const size_t *shape,
                                ddp_init init, int *id) {
    if (ndim < 1 || ndim > DDP_MAX_DIMS || strlen(name) >= sizeof m->tensors[0].view.name)
        return DDP_FAIL(DDP_ERR_INTERNAL, "model: buffer %s: %d dimensions or a long name", name,
                        ndim);
    if (m->n_buffers == m->cap_buffers) {
        int cap = m->cap_buffers ? 2 * m->cap_buffers : 8;
        tensor *grown = realloc(m->buffers, (size_t)cap * sizeof *grown);
        if (!grown) return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
        m->buffers = grown;
        m->cap_buffers = cap;
    }
    tensor *t = &m->buffers[m->n_buffers];
    memset(t, 0, sizeof *t);
    snprintf(t->view.name, sizeof t->view.name, "%s", name);
    t->view.ndim = ndim;
    size_t count = 1;
    for (int d = 0; d < ndim; d++) {
        t->view.shape[d] = shape[d];
        count *= shape[d];
    }
    t->view.offset = m->num_buffer_elems;
    t->view.count = count;
    t->init = init;
    m->num_buffer_elems += count;
    *id = m->n_buffers++;
    return DDP_OK;
}

float *ddp_model_buf(ddp_model *m, int id) { return m->bufs + m->buffers[id].view.offset; }

void ddp_model_share_param(ddp_model *m, int id) { m->tensors[id].uses++; }
float *ddp_model_w(ddp_model *m, int id) { return m->params + m->tensors[id].view.offset; }
float *ddp_model_dw(ddp_model *m, int id) { return m->grads + m->tensors[id].view.offset; }
ddp_backend *ddp_model_backend(ddp_model *m) { return m->backend; }
void ddp_model_set_positions(ddp_model *m, size_t max_pos) { m->max_pos = max_pos ? max_pos : 1; }
void ddp_model_add_flops(ddp_model *m, double flops) { m->flops += flops; }

void ddp_model_add_product(ddp_model *m, int rows, int N, int K) {
    double work = (double)rows * N * K;
    m->flops += 2.0 * work;
    if (work > (double)m->big_rows * m->big_N * m->big_K) {
        m->big_rows = rows;
        m->big_N = N;
        m->big_K = K;
    }
}

void ddp_model_largest_product(const ddp_model *m, size_t n, int *M, int *N, int *K) {
    size_t rows = (size_t)m->big_rows * n;
    *M = rows > 0x7fffffff ? 0x7fffffff : (int)rows;
    *N = m->big_N;
    *K = m->big_K;
}

/* a * b + c with overflow checks, for the arena's size. */
static int grow(size_t *total, size_t a, size_t b) {
    if (b != 0 && a > SIZE_MAX / b) return 0;
    if (*total > SIZE_MAX - a * b) return 0;
    *total += a * b;
    return 1;
}

/* Whether layer i's output is kept from forward to backward under recomputation: the
 * layers that end a recompute segment, and the logits. */
static int segment_end(const ddp_model *m, int i) {
    return m->layers[i]->segment_end || i == m->n_layers - 1;
}

/* Carves the arena: outputs, saved tensors, scratch, backward buffers, dlogits. With
 * recomputation, the outputs that end segments, then the workspace where each segment in
 * turn keeps its other outputs and its saved tensors (as much as the largest one needs). */
static ddp_status allocate(ddp_model *m) {
    size_t rows = m->max_batch * m->max_pos;
    if (m->max_pos != 0 && rows / m->max_pos != m->max_batch)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: batch of %zu x %zu positions is too large",
                        m->max_batch, m->max_pos);
    int rc = m->spec.recompute;
    size_t outs = 0, saved = 0, scratch = 0, widest = 0, work = 0, segment = 0;
    for (int i = 0; i < m->n_layers; i++) {
        const ddp_layer *l = m->layers[i];
        if (l->scratch_per_pos > scratch) scratch = l->scratch_per_pos;
        if (l->in_per_pos > widest) widest = l->in_per_pos;
        if (l->out_per_pos > widest) widest = l->out_per_pos;
        if (!rc) {
            outs += l->out_per_pos;
            saved += l->saved_per_pos;
            continue;
        }
        segment += l->saved_per_pos;
        if (!segment_end(m, i)) {
            segment += l->out_per_pos;
            continue;
        }
        outs += l->out_per_pos;
        if (segment > work) work = segment;
        segment = 0;
    }
    size_t classes = m->layers[m->n_layers - 1]->out_per_pos, total = 0;
    if (!grow(&total, rows, outs) || !grow(&total, rows, saved) || !grow(&total, rows, work) ||
        !grow(&total, rows, scratch) || !grow(&total, rows, 2 * widest) ||
        !grow(&total, rows, classes) || total > SIZE_MAX / sizeof(float))
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "model: activations for %zu samples do not fit in memory; use a "
                        "smaller micro-batch (--micro-batch or --accum)",
                        m->max_batch);
    m->outs = calloc((size_t)m->n_layers, sizeof *m->outs);
    if (!m->outs) return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
    ddp_status s = ddp_backend_alloc(m->backend, total * sizeof(float), (void **)&m->arena);
    if (s != DDP_OK) {
        ddp_error_trace(__FILE__, __LINE__);
        return DDP_FAIL(DDP_ERR_NOMEM,
                        "model: could not allocate %.1f MB of activations for %zu samples; use "
                        "a smaller micro-batch (--micro-batch or --accum)",
                        (double)total * sizeof(float) / 1e6, m->max_batch);
    }
    m->arena_bytes = total * sizeof(float);
    float *p = m->arena;
    if (!rc) {
        for (int i = 0; i < m->n_layers; i++) {
            m->outs[i] = p;
            p += rows * m->layers[i]->out_per_pos;
        }
        for (int i = 0; i < m->n_layers; i++) {
            m->layers[i]->saved = m->layers[i]->saved_per_pos ? p : NULL;
            p += rows * m->layers[i]->saved_per_pos;
        }
    } else {
        float *ws = p + rows * outs, *w = ws;
        for (int i = 0; i < m->n_layers; i++) {
            ddp_layer *l = m->layers[i];
            int keep = segment_end(m, i);
            if (keep) {
                m->outs[i] = p;
                p += rows * l->out_per_pos;
            } else {
                m->outs[i] = w;
                w += rows * l->out_per_pos;
            }
            l->saved = l->saved_per_pos ? w : NULL;
            w += rows * l->saved_per_pos;
            if (keep) w = ws; /* the next segment reuses the workspace */
        }
        p = ws + rows * work;
    }
    for (int i = 0; i < m->n_layers; i++)
        m->layers[i]->scratch = scratch ? p : NULL;
    p += rows * scratch;
    m->bwd[0] = p;
    m->bwd[1] = p + rows * widest;
    p += 2 * rows * widest;
    m->dlogits = p;
    if (m->num_buffer_elems > 0)
        DDP_CHECK(
            ddp_backend_alloc(m->backend, m->num_buffer_elems * sizeof(float), (void **)&m->bufs));
    DDP_CHECK(ddp_backend_alloc(m->backend, m->num_params * sizeof(float), (void **)&m->params));
    DDP_CHECK(ddp_backend_alloc(m->backend, m->num_params * sizeof(float), (void **)&m->grads));
    DDP_CHECK(ddp_backend_zero(m->backend, m->grads, m->num_params * sizeof(float)));
    return DDP_OK;
}

ddp_status ddp_model_create(ddp_backend *b, const ddp_model_spec *spec, size_t max_batch,
                            ddp_model **out) {
    *out = NULL;
    if (max_batch == 0) return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: max_batch is 0");
    ddp_model *m = calloc(1, sizeof *m);
    if (!m) return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
    m->backend = b;
    m->spec = *spec;
    m->max_batch = max_batch;
    m->max_pos = 1;
    m->own_grads = 1;
    const ddp_model_type *type = ddp_model_type_of(spec->kind);
    ddp_status s = type ? type->build(m, spec, m->describe, sizeof m->describe)
                        : DDP_FAIL(DDP_ERR_INVALID_ARG, "model: unknown kind %d", (int)spec->kind);
    if (s == DDP_OK && (m->n_layers == 0 || m->num_params == 0))
        s = DDP_FAIL(DDP_ERR_INTERNAL, "model: %s has no layers or no parameters",
                     ddp_model_kind_name(spec->kind));
    if (s == DDP_OK) s = allocate(m);
    if (s != DDP_OK) {
        ddp_error_trace(__FILE__, __LINE__);
        ddp_model_free(m);
        return s;
    }
    *out = m;
    return DDP_OK;
}

void ddp_model_free(ddp_model *m) {
    if (!m) return;
    ddp_backend *b = m->backend;
    ddp_backend_dealloc(b, m->params);
    if (m->own_grads) ddp_backend_dealloc(b, m->grads);
    ddp_backend_dealloc(b, m->arena);
    ddp_backend_dealloc(b, m->bufs);
    for (int i = 0; i < m->n_layers; i++) {
        if (m->layers[i]->ops->destroy) m->layers[i]->ops->destroy(m->layers[i]);
        free(m->layers[i]);
    }
    free(m->layers);
    free(m->tensors);
    free(m->buffers);
    free(m->outs);
    free(m);
}

ddp_status ddp_model_use_grad_buffer(ddp_model *m, float *grads) {
    DDP_CHECK(ddp_backend_zero(m->backend, grads, m->num_params * sizeof(float)));
    if (m->own_grads) ddp_backend_dealloc(m->backend, m->grads);
    m->grads = grads;
    m->own_grads = 0;
    return DDP_OK;
}

/* ---- accessors ------------------------------------------------------------------------- */

const ddp_model_spec *ddp_model_spec_of(const ddp_model *m) { return &m->spec; }
size_t ddp_model_num_params(const ddp_model *m) { return m->num_params; }
int ddp_model_num_classes(const ddp_model *m) {
    return (int)m->layers[m->n_layers - 1]->out_per_pos;
}
size_t ddp_model_max_positions(const ddp_model *m) { return m->max_pos; }
int ddp_model_takes_tokens(const ddp_model *m) { return m->layers[0]->in_per_pos == 0; }
int ddp_model_needs_comm(const ddp_model *m) {
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i]->communicates) return 1;
    return 0;
}
float *ddp_model_params(ddp_model *m) { return m->params; }
float *ddp_model_grads(ddp_model *m) { return m->grads; }
int ddp_model_num_views(const ddp_model *m) { return m->n_tensors; }
const ddp_param_view *ddp_model_view(const ddp_model *m, int i) {
    return i >= 0 && i < m->n_tensors ? &m->tensors[i].view : NULL;
}
size_t ddp_model_num_buffer_elems(const ddp_model *m) { return m->num_buffer_elems; }
float *ddp_model_buffers(ddp_model *m) { return m->bufs; }
int ddp_model_num_buffer_views(const ddp_model *m) { return m->n_buffers; }
const ddp_param_view *ddp_model_buffer_view(const ddp_model *m, int i) {
    return i >= 0 && i < m->n_buffers ? &m->buffers[i].view : NULL;
}
size_t ddp_model_activation_bytes(const ddp_model *m) { return m->arena_bytes; }
void ddp_model_set_comm(ddp_model *m, ddp_comm *comm) { m->comm = comm; }

void ddp_model_set_param_wait(ddp_model *m, ddp_param_wait_fn fn, void *ctx) {
    m->param_wait = fn;
    m->param_wait_ctx = ctx;
}
ddp_comm *ddp_model_comm(ddp_model *m) { return m->comm; }
const char *ddp_model_describe(const ddp_model *m) { return m->describe; }
double ddp_model_flops_per_sample(const ddp_model *m) { return m->flops; }
const float *ddp_model_logits(const ddp_model *m) { return m->outs[m->n_layers - 1]; }

/* ---- initialization ------------------------------------------------------------------ */

size_t ddp_init_fan_in(const ddp_param_view *v) {
    /* Every dimension after the first feeds one output: (out, in) of a linear map, (out,
     * in, kh, kw) of a convolution, whose output sums in * kh * kw products. */
    return v->ndim > 1 ? v->count / v->shape[0] : v->count;
}

/* Writes the initial values of tensors ts[0..n) into host (laid out as their views say),
 * with RNG stream first_stream + i for tensor i. */
static void init_tensors(const tensor *ts, int n, uint64_t seed, uint64_t first_stream,
                         float *host) {
    for (int i = 0; i < n; i++) {
        const tensor *t = &ts[i];
        float *w = host + t->view.offset;
        /* One RNG stream per tensor: a tensor's values do not depend on the others. */
        ddp_rng rng;
        ddp_rng_seed(&rng, seed, first_stream + (uint64_t)i);
        float std = t->init.std;
        if (t->init.kind == DDP_INIT_HE_NORMAL)
            std = sqrtf(2.0f / (float)ddp_init_fan_in(&t->view));
        for (size_t k = 0; k < t->view.count; k++) {
            switch (t->init.kind) {
            case DDP_INIT_ZERO: w[k] = 0.0f; break;
            case DDP_INIT_ONE: w[k] = 1.0f; break;
            default: w[k] = std * ddp_rng_normal(&rng); break;
            }
        }
    }
}

ddp_status ddp_model_init_params(ddp_model *m, uint64_t seed) {
    size_t n = m->num_params > m->num_buffer_elems ? m->num_params : m->num_buffer_elems;
    float *host = malloc(n * sizeof(float));
    if (!host) return DDP_FAIL(DDP_ERR_NOMEM, "model init: out of memory");
    init_tensors(m->tensors, m->n_tensors, seed, 0, host);
    ddp_status s =
        ddp_backend_copy(m->backend, m->params, host, m->num_params * sizeof(float), DDP_COPY_H2D);
    /* Buffers draw from streams after the parameters' (none draws today: they start at
     * fixed values), so adding one never changes a parameter. */
    if (s == DDP_OK && m->n_buffers > 0) {
        init_tensors(m->buffers, m->n_buffers, seed, 1u << 20, host);
        s = ddp_backend_copy(m->backend, m->bufs, host, m->num_buffer_elems * sizeof(float),
                             DDP_COPY_H2D);
    }
    if (s == DDP_OK) s = ddp_backend_sync(m->backend);
    free(host);
    DDP_CHECK(s);
    return DDP_OK;
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
        if (m->param_wait && l->param_end > 0)
            DDP_CHECK(m->param_wait(m->param_wait_ctx, l->param_end));
        DDP_CHECK(ddp_trace_begin(l->name, "forward"));
        DDP_CHECK(l->ops->forward(l, m, &m->pass, x, m->outs[i]));
        DDP_CHECK(ddp_trace_end());
        x = m->outs[i];
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
    int a = b;
    while (a > 0 && !segment_end(m, a - 1))
        a--;
    ddp_pass p = m->pass;
    p.recompute = 1;
    const float *x = a > 0 ? m->outs[a - 1] : m->batch.x;
    for (int j = a; j <= b; j++) {
        ddp_layer *l = m->layers[j];
        if (j == b && l->saved_per_pos == 0) break;
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
        /* A segment's backward starts at its last layer: its activations first. */
        if (m->spec.recompute && segment_end(m, i)) {
            s = recompute_segment(m, i);
            if (s != DDP_OK) break;
        }
        /* The first layer's input gradient is never needed. */
        float *dx = i > 0 ? m->bwd[i & 1] : NULL;
        const float *x = i > 0 ? m->outs[i - 1] : m->batch.x;
        s = ddp_trace_begin(l->name, "backward");
        if (s == DDP_OK) s = l->ops->backward(l, m, &m->pass, x, m->outs[i], dy, dx);
        if (s == DDP_OK) s = ddp_trace_end();
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
