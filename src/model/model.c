/*
 * The model: layers over one flat parameter buffer and one flat gradient buffer (pages
 * taken on first touch, which the ZeRO stages hold only in part), their activations in one
 * arena, the units in which ZeRO-3 gathers the parameters, and the parameters' initial
 * values. Its passes are in model_pass.c. The kinds (mlp.c, gpt.c, cnn.c) only declare
 * layers and tensors.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_impl.h"

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

/* Whether layer i runs in parts: it has them and, under recomputation, begins its segment
 * (whose recomputation then runs its parts before any other layer's parameters are read). */
static int runs_in_parts(const ddp_model *m, int i) {
    if (!m->layers[i]->ops->parts) return 0;
    return !m->spec.recompute || i == 0 || m->layers[i - 1]->segment_end;
}

/* The units: a unit ends where a recompute segment does, at the last layer, around a
 * layer that runs in parts, and between its parts. */
static ddp_status make_units(ddp_model *m) {
    free(m->unit_of);
    free(m->unit_layer);
    free(m->unit_end);
    m->unit_layer = NULL;
    m->unit_end = NULL;
    m->n_units = 0;
    int total = 0, most = 1;
    for (int i = 0; i < m->n_tensors; i++)
        m->tensors[i].chunk_rows = 0;
    for (int i = 0; i < m->n_layers; i++) {
        ddp_layer *l = m->layers[i];
        l->n_parts = 0;
        if (runs_in_parts(m, i)) {
            int k = l->ops->parts(l, m, m->unit_limit, NULL, 0);
            l->n_parts = k > 0 ? k : 1;
        }
        total += l->n_parts ? l->n_parts : 1;
        if (l->n_parts > most) most = l->n_parts;
    }
    m->unit_of = calloc((size_t)m->n_layers, sizeof *m->unit_of);
    m->unit_layer = calloc((size_t)total, sizeof *m->unit_layer);
    m->unit_end = calloc((size_t)total, sizeof *m->unit_end);
    size_t *cuts = calloc((size_t)most, sizeof *cuts);
    if (!m->unit_of || !m->unit_layer || !m->unit_end || !cuts) {
        free(cuts);
        return DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
    }
    int n = 0;
    for (int i = 0; i < m->n_layers; i++) {
        ddp_layer *l = m->layers[i];
        if (l->n_parts) {
            l->ops->parts(l, m, m->unit_limit, cuts, l->n_parts - 1);
            l->first_unit = m->unit_of[i] = n;
            for (int k = 0; k < l->n_parts; k++) {
                m->unit_layer[n] = i;
                m->unit_end[n++] = k + 1 < l->n_parts ? cuts[k] : l->param_end;
            }
            continue;
        }
        if (i == 0 || m->layers[i - 1]->segment_end || m->layers[i - 1]->n_parts) n++;
        l->first_unit = m->unit_of[i] = n - 1;
        m->unit_layer[n - 1] = i;
        m->unit_end[n - 1] = l->param_end;
    }
    free(cuts);
    m->unit_end[n - 1] = m->num_params;
    m->n_units = n;
    return DDP_OK;
}

ddp_status ddp_model_set_unit_limit(ddp_model *m, size_t max_elems) {
    m->unit_limit = max_elems;
    DDP_CHECK(make_units(m));
    return DDP_OK;
}

void ddp_model_chunk_rows(ddp_model *m, int id, size_t rows) {
    tensor *t = &m->tensors[id];
    t->chunk_rows = rows < t->view.shape[0] ? rows : 0;
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

void ddp_model_products_only(ddp_model *m, int id) { m->tensors[id].view.products_only = 1; }

float *ddp_model_buf(ddp_model *m, int id) { return m->bufs + m->buffers[id].view.offset; }

void ddp_model_share_param(ddp_model *m, int id) {
    m->tensors[id].uses++;
    /* The layer added next is the one that shares it; remembered for the units. Without
     * memory for it, the layer's unit would not name the tensor: reported at build. */
    if (m->n_shares == m->cap_shares) {
        int cap = m->cap_shares ? 2 * m->cap_shares : 4;
        int(*grown)[2] = realloc(m->shares, (size_t)cap * sizeof *grown);
        if (!grown) {
            m->share_failed = 1;
            return;
        }
        m->shares = grown;
        m->cap_shares = cap;
    }
    m->shares[m->n_shares][0] = m->n_layers;
    m->shares[m->n_shares][1] = id;
    m->n_shares++;
}
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
        if (!ddp_model_segment_end(m, i)) {
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
            int keep = ddp_model_segment_end(m, i);
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
    /* Pages taken on first touch and given back in parts (the ZeRO stages hold only some
     * of either); zeroed, so no pass over the gradients here. */
    size_t bytes = m->num_params * sizeof(float);
    DDP_CHECK(ddp_backend_alloc_pages(m->backend, bytes, (void **)&m->params));
    DDP_CHECK(ddp_backend_alloc_pages(m->backend, bytes, (void **)&m->grads));
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
    if (s == DDP_OK && m->share_failed) s = DDP_FAIL(DDP_ERR_NOMEM, "model: out of memory");
    if (s == DDP_OK) s = make_units(m);
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
    ddp_backend_free_pages(b, m->params, m->num_params * sizeof(float));
    if (m->own_grads) ddp_backend_free_pages(b, m->grads, m->num_params * sizeof(float));
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
    free(m->unit_of);
    free(m->unit_layer);
    free(m->unit_end);
    free(m->shares);
    free(m);
}

ddp_status ddp_model_use_grad_buffer(ddp_model *m, float *grads) {
    DDP_CHECK(ddp_backend_zero(m->backend, grads, m->num_params * sizeof(float)));
    if (m->own_grads) ddp_backend_free_pages(m->backend, m->grads, m->num_params * sizeof(float));
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

void ddp_model_set_unit_hook(ddp_model *m, ddp_unit_fn fn, void *ctx) {
    m->unit_hook = fn;
    m->unit_ctx = ctx;
}

void ddp_model_unit_hook(const ddp_model *m, ddp_unit_fn *fn, void **ctx) {
    *fn = m->unit_hook;
    *ctx = m->unit_ctx;
}

int ddp_model_num_units(const ddp_model *m) { return m->n_units; }

int ddp_model_unit_params(const ddp_model *m, int u, size_t *begin, size_t *end, int *shared,
                          int max) {
    *begin = u > 0 ? m->unit_end[u - 1] : 0;
    *end = m->unit_end[u];
    int n = 0;
    for (int i = 0; i < m->n_shares; i++) {
        int layer = m->shares[i][0], id = m->shares[i][1];
        const ddp_param_view *v = &m->tensors[id].view;
        if (layer >= m->n_layers || m->unit_of[layer] != u) continue;
        if (v->offset >= *begin && v->offset + v->count <= *end) continue; /* its own */
        if (n < max) shared[n] = id;
        n++;
    }
    return n;
}

const char *ddp_model_unit_name(const ddp_model *m, int u) {
    return m->layers[m->unit_layer[u]]->name;
}

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

/* The values of elements [lo, hi) of the flat buffer that init_tensors would write, into
 * host (hi - lo): every tensor that overlaps the range draws its stream from its first
 * element, so the part is the same bits as the whole. */
static void init_range(const tensor *ts, int n, uint64_t seed, size_t lo, size_t hi, float *host) {
    for (int i = 0; i < n; i++) {
        const tensor *t = &ts[i];
        size_t a = t->view.offset, e = a + t->view.count;
        if (e <= lo || a >= hi) continue;
        ddp_rng rng;
        ddp_rng_seed(&rng, seed, (uint64_t)i);
        float std = t->init.std;
        if (t->init.kind == DDP_INIT_HE_NORMAL)
            std = sqrtf(2.0f / (float)ddp_init_fan_in(&t->view));
        size_t stop = e < hi ? e : hi;
        for (size_t k = a; k < stop; k++) {
            float v;
            switch (t->init.kind) {
            case DDP_INIT_ZERO: v = 0.0f; break;
            case DDP_INIT_ONE: v = 1.0f; break;
            default: v = std * ddp_rng_normal(&rng); break;
            }
            if (k >= lo) host[k - lo] = v;
        }
    }
}

ddp_status ddp_model_init_params(ddp_model *m, uint64_t seed) {
    DDP_CHECK(ddp_model_init_params_range(m, seed, 0, m->num_params));
    return DDP_OK;
}

ddp_status ddp_model_init_params_range(ddp_model *m, uint64_t seed, size_t lo, size_t hi) {
    if (hi > m->num_params) hi = m->num_params;
    if (lo > hi) lo = hi;
    size_t n = hi - lo > m->num_buffer_elems ? hi - lo : m->num_buffer_elems;
    float *host = malloc((n > 0 ? n : 1) * sizeof(float));
    if (!host) return DDP_FAIL(DDP_ERR_NOMEM, "model init: out of memory");
    init_range(m->tensors, m->n_tensors, seed, lo, hi, host);
    ddp_status s =
        ddp_backend_copy(m->backend, m->params + lo, host, (hi - lo) * sizeof(float), DDP_COPY_H2D);
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
