/*
 * The CPU backend's 2-D convolution (ddp/backend_ops.h says what it computes), on
 * oneDNN's convolution primitives: the same library PyTorch's CPU convolutions run on.
 * Measured against im2col + one OpenBLAS product per direction on the small CNN's two
 * convolutions, one thread, it is about twice as fast forward and backward, and the
 * products alone of im2col + OpenBLAS already take longer than oneDNN's whole
 * convolution (bench/RESULTS.md, "Convolutions on the CPU"; bench/conv/ keeps the im2col
 * version for the comparison).
 *
 * Activations stay channels-last (oneDNN's nhwc) and weights in PyTorch's layout (oihw);
 * the primitives choose their own weight layout, so each call reorders the weights (a
 * few thousand floats) into it and the weight gradient back out of it, and adds that
 * into dw ("+="). Primitives are made once per shape and number of threads, kept in a
 * small cache of the backend (the first call of a shape costs a few milliseconds of JIT
 * compilation), and run with a scratchpad the cache owns (oneDNN's own would tie each
 * primitive to the thread that made it). A lock makes the cache safe to use from any
 * thread, one call at a time.
 *
 * In bf16 (math BF16) the primitives take bf16 images, output gradients and weights and
 * give fp32 outputs and gradients: each call converts x and dy into bf16 buffers of the
 * entry, and the weights' reorder into the primitive's layout converts them too. Where
 * the CPU has no bf16 kernels (the matmul cache's verdict, backend_cpu_matmul.c), the fp32
 * primitives run on copies of x, w and dy rounded to bf16: the same numbers, products of
 * bf16 values being exact in fp32.
 *
 * Threads: oneDNN runs on the backend's BLAS thread count (openblas_get_num_threads),
 * so that one setting sizes both. Debian's oneDNN is built on OpenMP, whose thread count
 * belongs to the calling thread: each call sets it first, through the runtime that
 * oneDNN itself loaded (looked up by name, so that a build with clang, whose OpenMP is
 * another library, still sets the one oneDNN reads). Results are the same bits on every
 * call for a fixed thread count and CPU: oneDNN's CPU convolutions reduce in a fixed
 * order, without atomics.
 */
#define _GNU_SOURCE /* RTLD_DEFAULT */
#include <cblas.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <dnnl.h>
#include <dnnl_debug.h>

#include "backend/backend_impl.h"

#if DNNL_VERSION_MAJOR != 2
#error "ddp's CPU convolutions use oneDNN 2.x's C API (Debian 12's libdnnl-dev is 2.6)"
#endif

/* Shapes kept at once: a network has a few convolutions, each seen at the training batch,
 * the last partial batch and the evaluation batch. The least recently used goes first. */
enum { CACHE_MAX = 16 };

static ddp_status dnnl_failed(dnnl_status_t st, const char *call, const char *file, int line) {
    return ddp_error_set(st == dnnl_out_of_memory ? DDP_ERR_NOMEM : DDP_ERR_BACKEND, file, line,
                         "conv2d: oneDNN call %s failed: %s", call, dnnl_status2str(st));
}

#define DNNL_CHECK(call)                                                                           \
    do {                                                                                           \
        dnnl_status_t dnnl_st_ = (call);                                                           \
        if (dnnl_st_ != dnnl_success) return dnnl_failed(dnnl_st_, #call, __FILE__, __LINE__);     \
    } while (0)

/* A primitive and the memory object of its scratchpad, which points into the cache's
 * shared scratchpad buffer (calls run one at a time, so one buffer serves them all). */
typedef struct {
    dnnl_primitive_t p;
    dnnl_memory_t scratch;
} prim;

/* Weights in oihw (`user`) and in a primitive's layout (`side`): when the two differ,
 * `conv` converts between them and the side lives in `buf`; else the side is the user's
 * buffer itself. */
typedef struct {
    prim conv; /* conv.p NULL: same layout */
    dnnl_memory_t user, side;
    void *buf;
} layout;

/* One shape's primitives and the buffers its calls need. */
typedef struct conv_prims {
    ddp_conv_shape s;
    int threads;
    int bf16;               /* 1: native bf16 primitives; 2: fp32 on rounded copies */
    void *x16, *dy16, *w16; /* bf16 mode: x, dy (and w when emulated) as computed on */
    prim fwd, bwd_data, bwd_weights;
    layout w_fwd, w_bwd, dw;         /* oihw -> fwd, oihw -> bwd data, bwd weights -> oihw */
    dnnl_memory_t src, dst, bias;    /* x, y (nhwc), bias */
    dnnl_memory_t dsrc, ddst, dbias; /* dx, dy (nhwc), dbias */
    float *dw_oihw, *dbias_call;     /* (Cout, Cin, KH, KW), (Cout): this call's gradients */
    struct conv_prims *next;         /* the next less recently used */
} conv_prims;

struct ddp_cpu_conv_cache {
    pthread_mutex_t lock;
    dnnl_engine_t engine; /* made on first use, like the rest */
    dnnl_stream_t stream;
    void (*set_threads)(int); /* OpenMP's omp_set_num_threads as oneDNN sees it, or NULL */
    void *scratch;            /* the scratchpad of every primitive */
    size_t scratch_bytes;
    conv_prims *head; /* most recently used first */
    int count;
};

ddp_status ddp_cpu_conv_cache_create(ddp_cpu_conv_cache **out) {
    ddp_cpu_conv_cache *c = calloc(1, sizeof *c);
    if (!c) return DDP_FAIL(DDP_ERR_NOMEM, "cpu backend: no memory for the convolution cache");
    pthread_mutex_init(&c->lock, NULL);
    /* Found only when oneDNN runs on OpenMP (which loaded it); other builds of oneDNN size
     * their threads otherwise, and then nothing is set. */
    void *sym = dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    memcpy(&c->set_threads, &sym, sizeof sym);
    *out = c;
    return DDP_OK;
}

static void prim_free(prim *p) {
    if (p->p) dnnl_primitive_destroy(p->p);
    if (p->scratch) dnnl_memory_destroy(p->scratch);
    p->p = NULL;
    p->scratch = NULL;
}

static void layout_free(layout *l) {
    prim_free(&l->conv);
    if (l->user) dnnl_memory_destroy(l->user);
    if (l->side) dnnl_memory_destroy(l->side);
    free(l->buf);
}

static void prims_free(conv_prims *e) {
    if (!e) return;
    prim_free(&e->fwd);
    prim_free(&e->bwd_data);
    prim_free(&e->bwd_weights);
    layout_free(&e->w_fwd);
    layout_free(&e->w_bwd);
    layout_free(&e->dw);
    dnnl_memory_t m[6] = {e->src, e->dst, e->bias, e->dsrc, e->ddst, e->dbias};
    for (int i = 0; i < 6; i++)
        if (m[i]) dnnl_memory_destroy(m[i]);
    free(e->dw_oihw);
    free(e->dbias_call);
    free(e->x16);
    free(e->dy16);
    free(e->w16);
    free(e);
}

void ddp_cpu_conv_cache_free(ddp_cpu_conv_cache *c) {
    if (!c) return;
    while (c->head) {
        conv_prims *e = c->head;
        c->head = e->next;
        prims_free(e);
    }
    if (c->stream) dnnl_stream_destroy(c->stream);
    if (c->engine) dnnl_engine_destroy(c->engine);
    free(c->scratch);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* ---- making a shape's primitives ------------------------------------------------------ */

/* The primitive of pd, and its scratchpad's memory object; the cache's buffer grows to
 * hold the largest scratchpad. */
static ddp_status prim_create(ddp_cpu_conv_cache *c, prim *out, const_dnnl_primitive_desc_t pd) {
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t bytes = md ? dnnl_memory_desc_get_size(md) : 0;
    if (bytes > c->scratch_bytes) {
        size_t rounded = (bytes + 63) & ~(size_t)63;
        void *p = aligned_alloc(64, rounded);
        if (!p)
            return DDP_FAIL(DDP_ERR_NOMEM, "conv2d: no memory for a %zu-byte oneDNN scratchpad",
                            bytes);
        free(c->scratch);
        c->scratch = p;
        c->scratch_bytes = rounded;
    }
    if (bytes > 0) DNNL_CHECK(dnnl_memory_create(&out->scratch, md, c->engine, DNNL_MEMORY_NONE));
    DNNL_CHECK(dnnl_primitive_create(&out->p, pd));
    return DDP_OK;
}

/* Attributes that hand the scratchpad to the caller (the cache). */
static ddp_status user_scratchpad(dnnl_primitive_attr_t *attr) {
    DNNL_CHECK(dnnl_primitive_attr_create(attr));
    dnnl_status_t st = dnnl_primitive_attr_set_scratchpad_mode(*attr, dnnl_scratchpad_mode_user);
    if (st != dnnl_success) {
        dnnl_primitive_attr_destroy(*attr);
        return dnnl_failed(st, "dnnl_primitive_attr_set_scratchpad_mode", __FILE__, __LINE__);
    }
    return DDP_OK;
}

/* The primitive described by op_desc (with the forward's pd as hint for a backward). */
static ddp_status conv_prim(ddp_cpu_conv_cache *c, prim *out, const_dnnl_op_desc_t op_desc,
                            const_dnnl_primitive_desc_t hint, dnnl_primitive_desc_t *pd_out) {
    dnnl_primitive_attr_t attr;
    DDP_CHECK(user_scratchpad(&attr));
    dnnl_status_t st = dnnl_primitive_desc_create(pd_out, op_desc, attr, c->engine, hint);
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success)
        return dnnl_failed(st, "dnnl_primitive_desc_create (convolution)", __FILE__, __LINE__);
    ddp_status s = prim_create(c, out, *pd_out);
    if (s != DDP_OK) {
        dnnl_primitive_desc_destroy(*pd_out);
        *pd_out = NULL;
    }
    return s;
}

/* The weights' two layouts, and the reorder between them when they differ: user -> side
 * when to_side, else side -> user. */
static ddp_status layout_create(ddp_cpu_conv_cache *c, layout *l, const dnnl_memory_desc_t *user,
                                const dnnl_memory_desc_t *side, int to_side) {
    DNNL_CHECK(dnnl_memory_create(&l->user, user, c->engine, DNNL_MEMORY_NONE));
    DNNL_CHECK(dnnl_memory_create(&l->side, side, c->engine, DNNL_MEMORY_NONE));
    if (dnnl_memory_desc_equal(user, side)) return DDP_OK;
    size_t bytes = (dnnl_memory_desc_get_size(side) + 63) & ~(size_t)63;
    l->buf = aligned_alloc(64, bytes);
    if (!l->buf) return DDP_FAIL(DDP_ERR_NOMEM, "conv2d: no memory for reordered weights");
    dnnl_primitive_attr_t attr;
    dnnl_primitive_desc_t pd;
    DDP_CHECK(user_scratchpad(&attr));
    dnnl_status_t st = dnnl_reorder_primitive_desc_create(&pd, to_side ? user : side, c->engine,
                                                          to_side ? side : user, c->engine, attr);
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success)
        return dnnl_failed(st, "dnnl_reorder_primitive_desc_create", __FILE__, __LINE__);
    ddp_status s = prim_create(c, &l->conv, pd);
    dnnl_primitive_desc_destroy(pd);
    return s;
}

static ddp_status prims_build(ddp_cpu_conv_cache *c, conv_prims *e, dnnl_primitive_desc_t pds[3]) {
    const ddp_conv_shape *s = &e->s;
    int Ho = ddp_conv_out(s->H, s->KH, s->stride, s->pad);
    int Wo = ddp_conv_out(s->W, s->KW, s->stride, s->pad);
    /* oneDNN names dimensions in NCHW order whatever the layout; nhwc stores them as ddp
     * does. */
    dnnl_dims_t src_dims = {s->N, s->Cin, s->H, s->W}, dst_dims = {s->N, s->Cout, Ho, Wo};
    dnnl_dims_t w_dims = {s->Cout, s->Cin, s->KH, s->KW}, b_dims = {s->Cout};
    dnnl_dims_t strides = {s->stride, s->stride}, pad = {s->pad, s->pad};
    /* Native bf16: bf16 x, dy and weights in, fp32 y, dx and weight gradients out. */
    dnnl_data_type_t in = e->bf16 == 1 ? dnnl_bf16 : dnnl_f32;
    dnnl_memory_desc_t src_md, dst_md, src_in, dst_in, w_any, w_user, dw_any, b_md;
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&src_md, 4, src_dims, dnnl_f32, dnnl_nhwc));
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&dst_md, 4, dst_dims, dnnl_f32, dnnl_nhwc));
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&src_in, 4, src_dims, in, dnnl_nhwc));
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&dst_in, 4, dst_dims, in, dnnl_nhwc));
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&w_any, 4, w_dims, in, dnnl_format_tag_any));
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&dw_any, 4, w_dims, dnnl_f32, dnnl_format_tag_any));
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&w_user, 4, w_dims, dnnl_f32, dnnl_oihw));
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&b_md, 1, b_dims, dnnl_f32, dnnl_x));

    dnnl_convolution_desc_t fd, bdd, bwd;
    DNNL_CHECK(dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training,
                                                  dnnl_convolution_direct, &src_in, &w_any, &b_md,
                                                  &dst_md, strides, pad, pad));
    DNNL_CHECK(dnnl_convolution_backward_data_desc_init(&bdd, dnnl_convolution_direct, &src_md,
                                                        &w_any, &dst_in, strides, pad, pad));
    DNNL_CHECK(dnnl_convolution_backward_weights_desc_init(
        &bwd, dnnl_convolution_direct, &src_in, &dw_any, &b_md, &dst_in, strides, pad, pad));
    DDP_CHECK(conv_prim(c, &e->fwd, &fd, NULL, &pds[0]));
    DDP_CHECK(conv_prim(c, &e->bwd_data, &bdd, pds[0], &pds[1]));
    DDP_CHECK(conv_prim(c, &e->bwd_weights, &bwd, pds[0], &pds[2]));
    DDP_CHECK(layout_create(c, &e->w_fwd, &w_user,
                            dnnl_primitive_desc_query_md(pds[0], dnnl_query_weights_md, 0), 1));
    DDP_CHECK(layout_create(c, &e->w_bwd, &w_user,
                            dnnl_primitive_desc_query_md(pds[1], dnnl_query_weights_md, 0), 1));
    DDP_CHECK(layout_create(c, &e->dw, &w_user,
                            dnnl_primitive_desc_query_md(pds[2], dnnl_query_diff_weights_md, 0),
                            0));
    /* x and dy as the primitives read them, y and dx as they write them */
    DNNL_CHECK(dnnl_memory_create(&e->src, &src_in, c->engine, DNNL_MEMORY_NONE));
    DNNL_CHECK(dnnl_memory_create(&e->ddst, &dst_in, c->engine, DNNL_MEMORY_NONE));
    DNNL_CHECK(dnnl_memory_create(&e->dsrc, &src_md, c->engine, DNNL_MEMORY_NONE));
    DNNL_CHECK(dnnl_memory_create(&e->dst, &dst_md, c->engine, DNNL_MEMORY_NONE));
    if (e->bf16) {
        /* Per call: x and dy converted (or rounded), and w too when emulated. */
        size_t esize = e->bf16 == 1 ? 2 : 4;
        size_t nx = (size_t)s->N * s->H * s->W * s->Cin, ny = (size_t)s->N * Ho * Wo * s->Cout;
        e->x16 = malloc(nx * esize);
        e->dy16 = malloc(ny * esize);
        if (e->bf16 == 2) e->w16 = malloc((size_t)s->Cout * s->Cin * s->KH * s->KW * 4);
        if (!e->x16 || !e->dy16 || (e->bf16 == 2 && !e->w16))
            return DDP_FAIL(DDP_ERR_NOMEM, "conv2d: no memory for the bf16 copies of a batch");
    }
    DNNL_CHECK(dnnl_memory_create(&e->bias, &b_md, c->engine, DNNL_MEMORY_NONE));
    DNNL_CHECK(dnnl_memory_create(&e->dbias, &b_md, c->engine, DNNL_MEMORY_NONE));
    size_t nw = (size_t)s->Cout * s->Cin * s->KH * s->KW;
    e->dw_oihw = malloc(nw * sizeof *e->dw_oihw);
    e->dbias_call = malloc((size_t)s->Cout * sizeof *e->dbias_call);
    if (!e->dw_oihw || !e->dbias_call)
        return DDP_FAIL(DDP_ERR_NOMEM, "conv2d: no memory for %zu weight gradients", nw);
    return DDP_OK;
}

static int same_key(const conv_prims *e, const ddp_conv_shape *s, int threads, int bf16) {
    const ddp_conv_shape *k = &e->s;
    return e->threads == threads && e->bf16 == bf16 && k->N == s->N && k->H == s->H &&
           k->W == s->W && k->Cin == s->Cin && k->Cout == s->Cout && k->KH == s->KH &&
           k->KW == s->KW && k->stride == s->stride && k->pad == s->pad;
}

/* The primitives of shape s at `threads`, from the cache or made now, moved to the front. */
static ddp_status lookup(ddp_cpu_conv_cache *c, const ddp_conv_shape *s, int threads, int bf16,
                         conv_prims **out) {
    for (conv_prims **pp = &c->head; *pp; pp = &(*pp)->next)
        if (same_key(*pp, s, threads, bf16)) {
            conv_prims *e = *pp;
            *pp = e->next;
            e->next = c->head;
            c->head = e;
            *out = e;
            return DDP_OK;
        }
    if (!c->engine) {
        DNNL_CHECK(dnnl_engine_create(&c->engine, dnnl_cpu, 0));
        DNNL_CHECK(dnnl_stream_create(&c->stream, c->engine, dnnl_stream_default_flags));
    }
    conv_prims *e = calloc(1, sizeof *e);
    if (!e) return DDP_FAIL(DDP_ERR_NOMEM, "conv2d: no memory for a cache entry");
    e->s = *s;
    e->threads = threads;
    e->bf16 = bf16;
    dnnl_primitive_desc_t pds[3] = {NULL, NULL, NULL};
    ddp_status st = prims_build(c, e, pds);
    for (int i = 0; i < 3; i++)
        if (pds[i]) dnnl_primitive_desc_destroy(pds[i]);
    if (st != DDP_OK) {
        prims_free(e);
        DDP_CHECK(st);
    }
    e->next = c->head;
    c->head = e;
    if (++c->count > CACHE_MAX) {
        conv_prims **pp = &c->head;
        while ((*pp)->next)
            pp = &(*pp)->next;
        prims_free(*pp);
        *pp = NULL;
        c->count--;
    }
    *out = e;
    return DDP_OK;
}

/* ---- running them --------------------------------------------------------------------- */

/* Runs p on args (n of them, with room for one more: the scratchpad). */
static ddp_status run(ddp_cpu_conv_cache *c, prim *p, dnnl_exec_arg_t *args, int n) {
    if (p->scratch) {
        DNNL_CHECK(dnnl_memory_set_data_handle(p->scratch, c->scratch));
        args[n++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, p->scratch};
    }
    DNNL_CHECK(dnnl_primitive_execute(p->p, c->stream, n, args));
    return DDP_OK;
}

/* Points memory m at a caller's buffer. oneDNN takes a void * for inputs as well and
 * never writes them. */
static ddp_status bind(dnnl_memory_t m, const void *ptr) {
    DNNL_CHECK(dnnl_memory_set_data_handle(m, (void *)(uintptr_t)ptr));
    return DDP_OK;
}

/* The weights w (oihw) in a primitive's layout: the side of l, reordered into first
 * when the layouts differ. */
static ddp_status weights_in(ddp_cpu_conv_cache *c, layout *l, const float *w) {
    if (!l->conv.p) return bind(l->side, w);
    DDP_CHECK(bind(l->user, w));
    DDP_CHECK(bind(l->side, l->buf));
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, l->user}, {DNNL_ARG_TO, l->side}};
    return run(c, &l->conv, args, 2);
}

/* x, w (oihw) or dy as the entry's primitives read them: the caller's fp32 arrays, or in
 * bf16 mode copies in the entry (w's conversion to bf16 is the layout's reorder). */
static const void *as_computed(const conv_prims *e, const float *src, void *copy, size_t n) {
    if (!e->bf16 || !copy) return src;
    if (e->bf16 == 1)
        ddp_cpu_convert_bf16(src, copy, n);
    else
        ddp_cpu_round_to_bf16(src, copy, n);
    return copy;
}

static size_t x_count(const ddp_conv_shape *s) { return (size_t)s->N * s->H * s->W * s->Cin; }
static size_t w_count(const ddp_conv_shape *s) { return (size_t)s->Cout * s->Cin * s->KH * s->KW; }
static size_t y_count(const ddp_conv_shape *s) {
    return (size_t)s->N * ddp_conv_out(s->H, s->KH, s->stride, s->pad) *
           ddp_conv_out(s->W, s->KW, s->stride, s->pad) * s->Cout;
}

static ddp_status forward_locked(ddp_cpu_conv_cache *c, float *y, const float *x, const float *w,
                                 const float *bias, const ddp_conv_shape *s, int threads,
                                 int bf16) {
    conv_prims *e;
    DDP_CHECK(lookup(c, s, threads, bf16, &e));
    DDP_CHECK(weights_in(c, &e->w_fwd, as_computed(e, w, e->w16, w_count(s))));
    DDP_CHECK(bind(e->src, as_computed(e, x, e->x16, x_count(s))));
    DDP_CHECK(bind(e->bias, bias));
    DDP_CHECK(bind(e->dst, y));
    dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, e->src},
                               {DNNL_ARG_WEIGHTS, e->w_fwd.side},
                               {DNNL_ARG_BIAS, e->bias},
                               {DNNL_ARG_DST, e->dst}};
    DDP_CHECK(run(c, &e->fwd, args, 4));
    DNNL_CHECK(dnnl_stream_wait(c->stream));
    return DDP_OK;
}

static ddp_status backward_locked(ddp_cpu_conv_cache *c, float *dx, float *dw, float *dbias,
                                  const float *dy, const float *x, const float *w,
                                  const ddp_conv_shape *s, int threads, int bf16) {
    conv_prims *e;
    DDP_CHECK(lookup(c, s, threads, bf16, &e));
    /* This call's weight and bias gradients into the entry's buffers (the weights' in the
     * primitive's layout first when it has its own), then added to the caller's. x is
     * converted again: another layer of this shape may have used the entry since. */
    DDP_CHECK(bind(e->src, as_computed(e, x, e->x16, x_count(s))));
    DDP_CHECK(bind(e->ddst, as_computed(e, dy, e->dy16, y_count(s))));
    DDP_CHECK(bind(e->dbias, e->dbias_call));
    DDP_CHECK(bind(e->dw.side, e->dw.conv.p ? e->dw.buf : e->dw_oihw));
    dnnl_exec_arg_t wargs[5] = {{DNNL_ARG_SRC, e->src},
                                {DNNL_ARG_DIFF_DST, e->ddst},
                                {DNNL_ARG_DIFF_WEIGHTS, e->dw.side},
                                {DNNL_ARG_DIFF_BIAS, e->dbias}};
    DDP_CHECK(run(c, &e->bwd_weights, wargs, 4));
    if (e->dw.conv.p) {
        DDP_CHECK(bind(e->dw.user, e->dw_oihw));
        dnnl_exec_arg_t rargs[3] = {{DNNL_ARG_FROM, e->dw.side}, {DNNL_ARG_TO, e->dw.user}};
        DDP_CHECK(run(c, &e->dw.conv, rargs, 2));
    }
    if (dx) {
        DDP_CHECK(weights_in(c, &e->w_bwd, as_computed(e, w, e->w16, w_count(s))));
        DDP_CHECK(bind(e->dsrc, dx));
        dnnl_exec_arg_t dargs[4] = {{DNNL_ARG_DIFF_DST, e->ddst},
                                    {DNNL_ARG_WEIGHTS, e->w_bwd.side},
                                    {DNNL_ARG_DIFF_SRC, e->dsrc}};
        DDP_CHECK(run(c, &e->bwd_data, dargs, 3));
    }
    DNNL_CHECK(dnnl_stream_wait(c->stream));
    size_t nw = w_count(s);
    for (size_t i = 0; i < nw; i++)
        dw[i] += e->dw_oihw[i];
    for (int i = 0; i < s->Cout; i++)
        dbias[i] += e->dbias_call[i];
    return DDP_OK;
}

/* How this backend's convolutions compute: 0 fp32, 1 native bf16, 2 bf16 emulated. */
static int bf16_mode(ddp_backend *b) {
    if (b->opt.math != DDP_MATH_BF16) return 0;
    return ddp_cpu_matmul_native_bf16(((ddp_cpu_backend *)b)->matmul) ? 1 : 2;
}

/* The thread count of this call: the BLAS's, handed to oneDNN's OpenMP runtime. */
static int call_threads(ddp_cpu_conv_cache *c) {
    int threads = openblas_get_num_threads();
    if (threads < 1) threads = 1;
    if (c->set_threads) c->set_threads(threads);
    return threads;
}

ddp_status ddp_cpu_conv2d_forward(ddp_backend *b, float *y, const float *x, const float *w,
                                  const float *bias, float *work, const ddp_conv_shape *s) {
    ddp_cpu_conv_cache *c = ((ddp_cpu_backend *)b)->conv;
    int bf16 = bf16_mode(b);
    pthread_mutex_lock(&c->lock);
    ddp_status st = forward_locked(c, y, x, w, bias, s, call_threads(c), bf16);
    pthread_mutex_unlock(&c->lock);
    DDP_CHECK(st);
    return DDP_OK;
}

ddp_status ddp_cpu_conv2d_backward(ddp_backend *b, float *dx, float *dw, float *dbias,
                                   const float *dy, const float *x, const float *w, float *work,
                                   const ddp_conv_shape *s) {
    ddp_cpu_conv_cache *c = ((ddp_cpu_backend *)b)->conv;
    int bf16 = bf16_mode(b);
    pthread_mutex_lock(&c->lock);
    ddp_status st = backward_locked(c, dx, dw, dbias, dy, x, w, s, call_threads(c), bf16);
    pthread_mutex_unlock(&c->lock);
    DDP_CHECK(st);
    return DDP_OK;
}
