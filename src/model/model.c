/*
 * The model: a stack of layers over one flat parameter buffer and one flat gradient
 * buffer, with an activation per layer output kept for backward.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/layer.h"

#define MAX_LAYERS (2 * DDP_MAX_HIDDEN + 2)
#define MAX_VIEWS  (2 * (DDP_MAX_HIDDEN + 1))

struct ddp_model {
    ddp_backend *backend;
    int n_layers;
    ddp_layer layers[MAX_LAYERS];
    size_t max_batch;
    size_t num_params;
    float *params; /* device (num_params) */
    float *grads;  /* device (num_params) */
    int own_grads; /* grads was allocated here (not given by ddp_model_use_grad_buffer) */
    /* acts[i + 1] is the output of layer i (max_batch, out_dim); acts[0] is the input
     * of the last forward, owned by the caller */
    const float *acts[MAX_LAYERS + 1];
    float *act_mem[MAX_LAYERS];
    float *scratch[2]; /* backward ping-pong (max_batch, widest layer) */
    int n_views;
    ddp_param_view views[MAX_VIEWS];
    char describe[256];
    double flops;
};

static void add_view(ddp_model *m, const char *name, size_t offset, size_t d0, size_t d1) {
    ddp_param_view *v = &m->views[m->n_views++];
    snprintf(v->name, sizeof v->name, "%s", name);
    v->offset = offset;
    v->ndim = d1 ? 2 : 1;
    v->shape[0] = d0;
    v->shape[1] = d1;
    v->count = d1 ? d0 * d1 : d0;
}

/* Points every layer's gradient views into m->grads. */
static void bind_grads(ddp_model *m) {
    for (int i = 0; i < m->n_layers; i++) {
        ddp_layer *l = &m->layers[i];
        if (l->param_count == 0) continue;
        l->dw = m->grads + l->param_offset;
        l->dbias = l->dw + l->out_dim * l->in_dim;
    }
}

ddp_status ddp_model_use_grad_buffer(ddp_model *m, float *grads) {
    DDP_CHECK(ddp_backend_zero(m->backend, grads, m->num_params * sizeof(float)));
    if (m->own_grads) ddp_backend_dealloc(m->backend, m->grads);
    m->grads = grads;
    m->own_grads = 0;
    bind_grads(m);
    return DDP_OK;
}

ddp_status ddp_model_create_mlp(ddp_backend *b, const ddp_mlp_spec *spec, size_t max_batch,
                                ddp_model **out) {
    *out = NULL;
    if (spec->n_hidden < 0 || spec->n_hidden > DDP_MAX_HIDDEN)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: %d hidden layers (at most %d)", spec->n_hidden,
                        DDP_MAX_HIDDEN);
    if (spec->input_dim == 0 || spec->num_classes < 2)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: input size %zu and %d classes",
                        spec->input_dim, spec->num_classes);
    if (max_batch == 0) return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: max_batch is 0");
    for (int i = 0; i < spec->n_hidden; i++)
        if (spec->hidden[i] == 0 || spec->hidden[i] > (1u << 24))
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "model: hidden layer %d has size %zu", i,
                            spec->hidden[i]);
    ddp_model *m = calloc(1, sizeof *m);
    if (!m) return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
    m->backend = b;
    m->max_batch = max_batch;
    m->own_grads = 1;

    size_t dims[DDP_MAX_HIDDEN + 2];
    int nd = 0;
    dims[nd++] = spec->input_dim;
    for (int i = 0; i < spec->n_hidden; i++)
        dims[nd++] = spec->hidden[i];
    dims[nd++] = (size_t)spec->num_classes;

    int off = snprintf(m->describe, sizeof m->describe, "mlp ");
    size_t widest = 0, offset = 0;
    for (int i = 0; i + 1 < nd; i++) {
        ddp_layer *l = &m->layers[m->n_layers++];
        ddp_layer_linear(l, dims[i], dims[i + 1]);
        snprintf(l->name, sizeof l->name, "fc%d", i);
        l->param_offset = offset;
        char name[40];
        snprintf(name, sizeof name, "fc%d.weight", i);
        add_view(m, name, offset, dims[i + 1], dims[i]);
        snprintf(name, sizeof name, "fc%d.bias", i);
        add_view(m, name, offset + dims[i + 1] * dims[i], dims[i + 1], 0);
        offset += l->param_count;
        m->flops += 2.0 * (double)dims[i] * (double)dims[i + 1];
        if (i + 2 < nd) {
            ddp_layer *a = &m->layers[m->n_layers++];
            ddp_layer_activation(a, spec->act, dims[i + 1]);
            snprintf(a->name, sizeof a->name, "%s%d", spec->act == DDP_ACT_GELU ? "gelu" : "relu",
                     i);
        }
        off += snprintf(m->describe + off, sizeof m->describe - (size_t)off, "%zu-", dims[i]);
    }
    for (int i = 0; i < nd; i++)
        if (dims[i] > widest) widest = dims[i];
    snprintf(m->describe + off, sizeof m->describe - (size_t)off, "%zu %s", dims[nd - 1],
             spec->act == DDP_ACT_GELU ? "gelu" : "relu");
    m->num_params = offset;

    ddp_status s = ddp_backend_alloc(b, offset * sizeof(float), (void **)&m->params);
    if (s == DDP_OK) s = ddp_backend_alloc(b, offset * sizeof(float), (void **)&m->grads);
    if (s == DDP_OK) s = ddp_backend_zero(b, m->grads, offset * sizeof(float));
    for (int i = 0; s == DDP_OK && i < m->n_layers; i++)
        s = ddp_backend_alloc(b, max_batch * m->layers[i].out_dim * sizeof(float),
                              (void **)&m->act_mem[i]);
    for (int i = 0; s == DDP_OK && i < 2; i++)
        s = ddp_backend_alloc(b, max_batch * widest * sizeof(float), (void **)&m->scratch[i]);
    if (s != DDP_OK) {
        ddp_model_free(m);
        DDP_CHECK(s);
    }
    for (int i = 0; i < m->n_layers; i++) {
        ddp_layer *l = &m->layers[i];
        m->acts[i + 1] = m->act_mem[i];
        if (l->param_count == 0) continue;
        l->w = m->params + l->param_offset;
        l->bias = l->w + l->out_dim * l->in_dim;
    }
    bind_grads(m);
    *out = m;
    return DDP_OK;
}

void ddp_model_free(ddp_model *m) {
    if (!m) return;
    ddp_backend *b = m->backend;
    ddp_backend_dealloc(b, m->params);
    if (m->own_grads) ddp_backend_dealloc(b, m->grads);
    for (int i = 0; i < m->n_layers; i++)
        ddp_backend_dealloc(b, m->act_mem[i]);
    for (int i = 0; i < 2; i++)
        ddp_backend_dealloc(b, m->scratch[i]);
    free(m);
}

size_t ddp_model_num_params(const ddp_model *m) { return m->num_params; }
size_t ddp_model_input_dim(const ddp_model *m) { return m->layers[0].in_dim; }
int ddp_model_num_classes(const ddp_model *m) { return (int)m->layers[m->n_layers - 1].out_dim; }
float *ddp_model_params(ddp_model *m) { return m->params; }
float *ddp_model_grads(ddp_model *m) { return m->grads; }
int ddp_model_num_views(const ddp_model *m) { return m->n_views; }
const ddp_param_view *ddp_model_view(const ddp_model *m, int i) {
    return i >= 0 && i < m->n_views ? &m->views[i] : NULL;
}
const char *ddp_model_describe(const ddp_model *m) { return m->describe; }
double ddp_model_flops_per_sample(const ddp_model *m) { return m->flops; }

ddp_status ddp_model_init_params(ddp_model *m, uint64_t seed) {
    float *host = malloc(m->num_params * sizeof(float));
    if (!host) return DDP_FAIL(DDP_ERR_NOMEM, "model init: out of memory");
    for (int i = 0; i < m->n_layers; i++) {
        ddp_layer *l = &m->layers[i];
        if (l->param_count == 0) continue;
        /* One RNG stream per layer: a layer's values do not depend on the others. */
        ddp_rng rng;
        ddp_rng_seed(&rng, seed, (uint64_t)i);
        float std = sqrtf(2.0f / (float)l->in_dim); /* He: variance 2 / fan_in */
        float *w = host + l->param_offset;
        size_t nw = l->out_dim * l->in_dim;
        for (size_t k = 0; k < nw; k++)
            w[k] = std * ddp_rng_normal(&rng);
        memset(w + nw, 0, l->out_dim * sizeof(float));
    }
    ddp_status s =
        ddp_backend_copy(m->backend, m->params, host, m->num_params * sizeof(float), DDP_COPY_H2D);
    if (s == DDP_OK) s = ddp_backend_sync(m->backend);
    free(host);
    DDP_CHECK(s);
    return DDP_OK;
}

static ddp_status check_batch(const ddp_model *m, size_t n) {
    if (n == 0 || n > m->max_batch)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "model: batch of %zu samples (the model was sized for 1..%zu)", n,
                        m->max_batch);
    return DDP_OK;
}

ddp_status ddp_model_forward(ddp_model *m, const float *x, size_t n, const float **logits) {
    DDP_CHECK(check_batch(m, n));
    m->acts[0] = x;
    for (int i = 0; i < m->n_layers; i++) {
        ddp_layer *l = &m->layers[i];
        DDP_CHECK(ddp_trace_begin(l->name, "forward"));
        DDP_CHECK(l->ops->forward(l, m->backend, m->acts[i], m->act_mem[i], n));
        DDP_CHECK(ddp_trace_end());
    }
    *logits = m->acts[m->n_layers];
    return DDP_OK;
}

static ddp_status backward(ddp_model *m, const float *dlogits, size_t n, int overwrite,
                           ddp_grad_ready_fn ready, void *ctx) {
    DDP_CHECK(check_batch(m, n));
    const float *dy = dlogits;
    for (int i = m->n_layers - 1; i >= 0; i--) {
        ddp_layer *l = &m->layers[i];
        /* The first layer's input gradient is never needed. */
        float *dx = i > 0 ? m->scratch[i & 1] : NULL;
        DDP_CHECK(ddp_trace_begin(l->name, "backward"));
        DDP_CHECK(l->ops->backward(l, m->backend, m->acts[i], m->acts[i + 1], dy, dx, n, overwrite,
                                   ready, ctx));
        DDP_CHECK(ddp_trace_end());
        dy = dx;
    }
    return DDP_OK;
}

ddp_status ddp_model_backward(ddp_model *m, const float *dlogits, size_t n, ddp_grad_ready_fn ready,
                              void *ctx) {
    DDP_CHECK(backward(m, dlogits, n, 0, ready, ctx));
    return DDP_OK;
}

ddp_status ddp_model_backward_first(ddp_model *m, const float *dlogits, size_t n,
                                    ddp_grad_ready_fn ready, void *ctx) {
    DDP_CHECK(backward(m, dlogits, n, 1, ready, ctx));
    return DDP_OK;
}

/* The first layer with parameters: its gradients are final last in backward. */
static ddp_layer *first_param_layer(ddp_model *m) {
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i].param_count > 0) return &m->layers[i];
    return NULL;
}

size_t ddp_model_set_grad_slices(ddp_model *m, size_t max_elems) {
    ddp_layer *l = first_param_layer(m);
    if (!l) return 0;
    /* At least max_elems per slice (a reducer closes a bucket once it holds that much),
     * which leaves the lowest, last slice the short one: the least to send at the end. */
    size_t rows = (max_elems + l->in_dim - 1) / l->in_dim;
    l->slice_rows = max_elems == 0 || rows >= l->out_dim ? 0 : rows;
    return l->param_offset + l->param_count;
}

int ddp_model_ready_points(ddp_model *m, size_t *offsets, int max) {
    int n = 0;
    for (int i = 0; i < m->n_layers; i++) {
        const ddp_layer *l = &m->layers[i];
        if (l->param_count == 0) continue;
        size_t step = l->slice_rows ? l->slice_rows : l->out_dim;
        /* Slices are cut from the last row down, so the first may be the short one. */
        size_t first = l->out_dim % step ? l->out_dim % step : step;
        for (size_t r = 0; r < l->out_dim; r = r == 0 ? first : r + step) {
            if (n < max) offsets[n] = l->param_offset + r * l->in_dim;
            n++;
        }
    }
    return n;
}

ddp_status ddp_model_zero_grads(ddp_model *m) {
    DDP_CHECK(ddp_backend_zero(m->backend, m->grads, m->num_params * sizeof(float)));
    return DDP_OK;
}
