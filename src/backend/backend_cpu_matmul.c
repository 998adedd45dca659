/*
 * Matrix products in bf16 on the CPU (math BF16): bf16 operands, fp32 accumulation and
 * output, through oneDNN's matmul primitive, the kernels PyTorch's CPU autocast runs on
 * (AVX512-BF16 and AMX where the CPU has them). Primitives are made once per shape and
 * number of threads and kept in a small cache of the backend, like the convolutions'
 * (backend_cpu_conv.c), with one shared scratchpad; a lock makes it safe from any thread.
 *
 * Where the CPU has no bf16 instructions, oneDNN either has no bf16 matmul (AVX2) or
 * emulates one at half OpenBLAS's fp32 rate (AVX-512 without BF16; measured in
 * bench/results/mixed-precision.md). There the products run on OpenBLAS with the
 * operands rounded to bf16 and held in fp32: a product of two bf16 numbers is exact in
 * fp32, so this computes what bf16 hardware computes, up to the order of summation, at
 * the fp32 rate. DDP_BF16_KERNELS=emulate chooses that path on any CPU (for tests).
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

enum { CACHE_MAX = 64 };

/* What a product's primitive depends on: the product with its operands as the
 * primitive reads them (strides in elements; pointers NULL), and the threads. */
typedef struct {
    ddp_cpu_mm mm;
    int threads;
} mm_key;

typedef struct mm_entry {
    mm_key k;
    dnnl_primitive_t p;
    dnnl_memory_t a, b, c, scratch;
    struct mm_entry *next; /* the next less recently used */
} mm_entry;

struct ddp_cpu_matmul_cache {
    pthread_mutex_t lock;
    int native;           /* 1: oneDNN has bf16 kernels here; 0: emulate; -1: not yet known */
    dnnl_engine_t engine; /* made on first use, like the rest */
    dnnl_stream_t stream;
    void (*set_threads)(int); /* OpenMP's omp_set_num_threads as oneDNN sees it, or NULL */
    void *scratch;
    size_t scratch_bytes;
    mm_entry *head;
    int count;
    /* bf16 copies of operands converted per call (native), or their bf16-rounded fp32
     * copies (emulated); slot 0 for A, 1 for B */
    void *ws[2];
    size_t ws_bytes[2];
};

static ddp_status dnnl_failed(dnnl_status_t st, const char *call, const char *file, int line) {
    return ddp_error_set(st == dnnl_out_of_memory ? DDP_ERR_NOMEM : DDP_ERR_BACKEND, file, line,
                         "bf16 matrix product: oneDNN call %s failed: %s", call,
                         dnnl_status2str(st));
}

#define DNNL_CHECK(call)                                                                           \
    do {                                                                                           \
        dnnl_status_t dnnl_st_ = (call);                                                           \
        if (dnnl_st_ != dnnl_success) return dnnl_failed(dnnl_st_, #call, __FILE__, __LINE__);     \
    } while (0)

ddp_status ddp_cpu_matmul_cache_create(ddp_cpu_matmul_cache **out) {
    ddp_cpu_matmul_cache *c = calloc(1, sizeof *c);
    if (!c) return DDP_FAIL(DDP_ERR_NOMEM, "cpu backend: no memory for the matmul cache");
    pthread_mutex_init(&c->lock, NULL);
    c->native = -1;
    void *sym = dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    memcpy(&c->set_threads, &sym, sizeof sym);
    *out = c;
    return DDP_OK;
}

static void entry_free(mm_entry *e) {
    if (e->p) dnnl_primitive_destroy(e->p);
    dnnl_memory_t m[4] = {e->a, e->b, e->c, e->scratch};
    for (int i = 0; i < 4; i++)
        if (m[i]) dnnl_memory_destroy(m[i]);
    free(e);
}

void ddp_cpu_matmul_cache_free(ddp_cpu_matmul_cache *c) {
    if (!c) return;
    while (c->head) {
        mm_entry *e = c->head;
        c->head = e->next;
        entry_free(e);
    }
    if (c->stream) dnnl_stream_destroy(c->stream);
    if (c->engine) dnnl_engine_destroy(c->engine);
    free(c->scratch);
    free(c->ws[0]);
    free(c->ws[1]);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* ---- primitives --------------------------------------------------------------------- */

/* The (b0, b1, rows, cols) descriptor of an operand stored row-major with row stride ld
 * and batch strides s0, s1, read transposed when t. */
static ddp_status operand_md(dnnl_memory_desc_t *md, const ddp_cpu_mm *m, int rows, int cols, int t,
                             int ld, size_t s0, size_t s1, dnnl_data_type_t dt) {
    dnnl_dims_t dims = {m->b0, m->b1, rows, cols};
    dnnl_dims_t strides = {(dnnl_dim_t)s0, (dnnl_dim_t)s1, t ? 1 : ld, t ? ld : 1};
    DNNL_CHECK(dnnl_memory_desc_init_by_strides(md, 4, dims, dt, strides));
    return DDP_OK;
}

/* The primitive descriptor of key k: alpha as the output scale, beta as a sum post-op. */
static ddp_status describe(ddp_cpu_matmul_cache *c, const mm_key *k, dnnl_primitive_desc_t *pd) {
    const ddp_cpu_mm *m = &k->mm;
    dnnl_memory_desc_t a, b, d;
    DDP_CHECK(operand_md(&a, m, m->M, m->K, m->ta, m->lda, m->sa0, m->sa1, dnnl_bf16));
    DDP_CHECK(operand_md(&b, m, m->K, m->N, m->tb, m->ldb, m->sb0, m->sb1, dnnl_bf16));
    DDP_CHECK(operand_md(&d, m, m->M, m->N, 0, m->ldc, m->sc0, m->sc1, dnnl_f32));
    dnnl_matmul_desc_t md;
    DNNL_CHECK(dnnl_matmul_desc_init(&md, &a, &b, NULL, &d));
    dnnl_primitive_attr_t attr;
    DNNL_CHECK(dnnl_primitive_attr_create(&attr));
    dnnl_post_ops_t po = NULL;
    dnnl_status_t st = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (st == dnnl_success && m->alpha != 1.0f)
        st = dnnl_primitive_attr_set_output_scales(attr, 1, 0, &m->alpha);
    if (st == dnnl_success && m->beta != 0.0f) {
        st = dnnl_post_ops_create(&po);
        if (st == dnnl_success) st = dnnl_post_ops_append_sum(po, m->beta);
        if (st == dnnl_success) st = dnnl_primitive_attr_set_post_ops(attr, po);
    }
    if (st == dnnl_success) st = dnnl_primitive_desc_create(pd, &md, attr, c->engine, NULL);
    if (po) dnnl_post_ops_destroy(po);
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success)
        return dnnl_failed(st, "dnnl_primitive_desc_create (matmul)", __FILE__, __LINE__);
    return DDP_OK;
}

static ddp_status build(ddp_cpu_matmul_cache *c, mm_entry *e) {
    dnnl_primitive_desc_t pd = NULL;
    DDP_CHECK(describe(c, &e->k, &pd));
    ddp_status s = DDP_OK;
    const dnnl_memory_desc_t *sp = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t bytes = sp ? dnnl_memory_desc_get_size(sp) : 0;
    if (bytes > c->scratch_bytes) {
        size_t rounded = (bytes + 63) & ~(size_t)63;
        void *p = aligned_alloc(64, rounded);
        if (!p) s = DDP_FAIL(DDP_ERR_NOMEM, "matmul: no memory for a %zu-byte scratchpad", bytes);
        if (p) {
            free(c->scratch);
            c->scratch = p;
            c->scratch_bytes = rounded;
        }
    }
    const dnnl_memory_desc_t *md[3] = {dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0),
                                       dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0),
                                       dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0)};
    dnnl_memory_t *mem[3] = {&e->a, &e->b, &e->c};
    dnnl_status_t st = dnnl_success;
    for (int i = 0; s == DDP_OK && st == dnnl_success && i < 3; i++)
        st = dnnl_memory_create(mem[i], md[i], c->engine, DNNL_MEMORY_NONE);
    if (s == DDP_OK && st == dnnl_success && bytes > 0)
        st = dnnl_memory_create(&e->scratch, sp, c->engine, DNNL_MEMORY_NONE);
    if (s == DDP_OK && st == dnnl_success) st = dnnl_primitive_create(&e->p, pd);
    dnnl_primitive_desc_destroy(pd);
    if (s == DDP_OK && st != dnnl_success)
        s = dnnl_failed(st, "making the matmul primitive", __FILE__, __LINE__);
    return s;
}

/* The entry of k, from the cache or made now, moved to the front. */
static ddp_status lookup(ddp_cpu_matmul_cache *c, const mm_key *k, mm_entry **out) {
    for (mm_entry **pp = &c->head; *pp; pp = &(*pp)->next)
        if (memcmp(&(*pp)->k, k, sizeof *k) == 0) {
            mm_entry *e = *pp;
            *pp = e->next;
            e->next = c->head;
            c->head = e;
            *out = e;
            return DDP_OK;
        }
    mm_entry *e = calloc(1, sizeof *e);
    if (!e) return DDP_FAIL(DDP_ERR_NOMEM, "matmul: no memory for a cache entry");
    e->k = *k;
    ddp_status s = build(c, e);
    if (s != DDP_OK) {
        entry_free(e);
        DDP_CHECK(s);
    }
    e->next = c->head;
    c->head = e;
    if (++c->count > CACHE_MAX) {
        mm_entry **pp = &c->head;
        while ((*pp)->next)
            pp = &(*pp)->next;
        entry_free(*pp);
        *pp = NULL;
        c->count--;
    }
    *out = e;
    return DDP_OK;
}

/* Whether oneDNN runs bf16 products on this CPU's own bf16 instructions: asked once, of a
 * small product's implementation ("brg:avx512_core_bf16", "brg:avx512_core_amx", ...;
 * an emulation names no bf16 instruction set, and AVX2 has no bf16 matmul at all). */
static int native_bf16(ddp_cpu_matmul_cache *c) {
    if (c->native >= 0) return c->native;
    c->native = 0;
    const char *force = getenv("DDP_BF16_KERNELS");
    if (force && strcmp(force, "emulate") == 0) return 0;
    if (!c->engine) {
        if (dnnl_engine_create(&c->engine, dnnl_cpu, 0) != dnnl_success) return 0;
        if (dnnl_stream_create(&c->stream, c->engine, dnnl_stream_default_flags) != dnnl_success)
            return 0;
    }
    mm_key k;
    memset(&k, 0, sizeof k);
    k.mm = (ddp_cpu_mm){.b0 = 1,
                        .b1 = 1,
                        .M = 64,
                        .N = 64,
                        .K = 64,
                        .alpha = 1.0f,
                        .lda = 64,
                        .sa0 = 4096,
                        .sa1 = 4096,
                        .ldb = 64,
                        .sb0 = 4096,
                        .sb1 = 4096,
                        .ldc = 64,
                        .sc0 = 4096,
                        .sc1 = 4096};
    k.threads = 1;
    dnnl_primitive_desc_t pd = NULL;
    if (describe(c, &k, &pd) != DDP_OK) {
        ddp_error_clear();
        return 0;
    }
    const char *impl = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl)
        c->native = strstr(impl, "bf16") != NULL || strstr(impl, "amx") != NULL;
    dnnl_primitive_desc_destroy(pd);
    return c->native;
}

int ddp_cpu_matmul_native_bf16(ddp_cpu_matmul_cache *c) {
    pthread_mutex_lock(&c->lock);
    int native = native_bf16(c);
    pthread_mutex_unlock(&c->lock);
    return native;
}

/* ---- products ----------------------------------------------------------------------- */

/* Workspace slot `slot` of at least `bytes`. */
static ddp_status workspace(ddp_cpu_matmul_cache *c, int slot, size_t bytes, void **out) {
    if (c->ws_bytes[slot] < bytes) {
        size_t want = ((bytes + bytes / 2) + 63) & ~(size_t)63;
        void *p = aligned_alloc(64, want);
        if (!p)
            return DDP_FAIL(DDP_ERR_NOMEM, "matmul: no memory for %zu bytes of operands", bytes);
        free(c->ws[slot]);
        c->ws[slot] = p;
        c->ws_bytes[slot] = want;
    }
    *out = c->ws[slot];
    return DDP_OK;
}

/* An operand stored (rows, cols) with row stride ld, a b0 x b1 batch of them s0 and s1
 * apart, as the product reads it: the weights' bf16 copy when it lies inside the weights
 * (native), else a compact copy in workspace `slot`, rounded to bf16 and kept as bf16
 * (native) or as fp32 (emulated). *o describes what it points at. */
typedef struct {
    const void *p;
    int ld;
    size_t s0, s1;
} view;

static ddp_status operand(ddp_backend *b, ddp_cpu_matmul_cache *c, int native, int slot,
                          const ddp_cpu_mm *m, const float *x, int rows, int cols, int ld,
                          size_t s0, size_t s1, view *o) {
    const uint16_t *w16 = NULL;
    if (m->b0 == 1 && m->b1 == 1) DDP_CHECK(ddp_backend_w16_operand(b, x, rows, cols, ld, &w16));
    if (w16 && native) {
        *o = (view){w16, ld, (size_t)rows * (size_t)ld, (size_t)rows * (size_t)ld};
        return DDP_OK;
    }
    size_t one = (size_t)rows * (size_t)cols, n = one * (size_t)m->b0 * (size_t)m->b1;
    void *ws = NULL;
    DDP_CHECK(workspace(c, slot, (n > 0 ? n : 1) * (native ? 2 : 4), &ws));
    if (w16) {
        /* Emulated, an operand in the weights: their bf16 copy widened, the numbers that
         * rounding the fp32 values gives (and all there is of them under ZeRO-3, whose
         * gathers bring only the copy of the tensors that products alone read). */
        for (int r = 0; r < rows; r++)
            DDP_CHECK(ddp_cpu_bf16_to_f32(b, w16 + (size_t)r * (size_t)ld,
                                          (float *)ws + (size_t)r * (size_t)cols, (size_t)cols));
        *o = (view){ws, cols, one, one};
        return DDP_OK;
    }
    size_t at = 0;
    for (int i = 0; i < m->b0; i++)
        for (int j = 0; j < m->b1; j++)
            for (int r = 0; r < rows; r++, at += (size_t)cols) {
                const float *src = x + i * s0 + j * s1 + (size_t)r * (size_t)ld;
                if (native)
                    ddp_cpu_convert_bf16(src, (uint16_t *)ws + at, (size_t)cols);
                else
                    ddp_cpu_round_to_bf16(src, (float *)ws + at, (size_t)cols);
            }
    *o = (view){ws, cols, one * (size_t)m->b1, one};
    return DDP_OK;
}

static ddp_status product_locked(ddp_backend *b, ddp_cpu_matmul_cache *c, const ddp_cpu_mm *m) {
    int native = native_bf16(c);
    int a_rows = m->ta ? m->K : m->M, a_cols = m->ta ? m->M : m->K;
    int b_rows = m->tb ? m->N : m->K, b_cols = m->tb ? m->K : m->N;
    view a, bv;
    DDP_CHECK(operand(b, c, native, 0, m, m->A, a_rows, a_cols, m->lda, m->sa0, m->sa1, &a));
    DDP_CHECK(operand(b, c, native, 1, m, m->B, b_rows, b_cols, m->ldb, m->sb0, m->sb1, &bv));
    if (!native) {
        for (int i = 0; i < m->b0; i++)
            for (int j = 0; j < m->b1; j++)
                cblas_sgemm(CblasRowMajor, m->ta ? CblasTrans : CblasNoTrans,
                            m->tb ? CblasTrans : CblasNoTrans, m->M, m->N, m->K, m->alpha,
                            (const float *)a.p + i * a.s0 + j * a.s1, a.ld,
                            (const float *)bv.p + i * bv.s0 + j * bv.s1, bv.ld, m->beta,
                            m->C + i * m->sc0 + j * m->sc1, m->ldc);
        return DDP_OK;
    }
    int threads = openblas_get_num_threads();
    if (threads < 1) threads = 1;
    if (c->set_threads) c->set_threads(threads);
    mm_key k;
    memset(&k, 0, sizeof k); /* the padding too: keys are compared as bytes */
    k.mm = *m;
    k.mm.A = k.mm.B = NULL;
    k.mm.C = NULL;
    k.mm.lda = a.ld;
    k.mm.sa0 = a.s0;
    k.mm.sa1 = a.s1;
    k.mm.ldb = bv.ld;
    k.mm.sb0 = bv.s0;
    k.mm.sb1 = bv.s1;
    /* oneDNN wants real strides also for batch dimensions of one */
    if (m->b1 == 1) k.mm.sc1 = (size_t)m->M * (size_t)m->ldc;
    if (m->b0 == 1) k.mm.sc0 = k.mm.sc1 * (size_t)m->b1;
    k.threads = threads;
    mm_entry *e = NULL;
    DDP_CHECK(lookup(c, &k, &e));
    DNNL_CHECK(dnnl_memory_set_data_handle(e->a, (void *)(uintptr_t)a.p));
    DNNL_CHECK(dnnl_memory_set_data_handle(e->b, (void *)(uintptr_t)bv.p));
    DNNL_CHECK(dnnl_memory_set_data_handle(e->c, m->C));
    dnnl_exec_arg_t args[4] = {
        {DNNL_ARG_SRC, e->a}, {DNNL_ARG_WEIGHTS, e->b}, {DNNL_ARG_DST, e->c}};
    int n = 3;
    if (e->scratch) {
        DNNL_CHECK(dnnl_memory_set_data_handle(e->scratch, c->scratch));
        args[n++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, e->scratch};
    }
    DNNL_CHECK(dnnl_primitive_execute(e->p, c->stream, n, args));
    DNNL_CHECK(dnnl_stream_wait(c->stream));
    return DDP_OK;
}

ddp_status ddp_cpu_matmul_bf16(ddp_backend *b, const ddp_cpu_mm *mm) {
    ddp_cpu_matmul_cache *c = ((ddp_cpu_backend *)b)->matmul;
    pthread_mutex_lock(&c->lock);
    ddp_status s = product_locked(b, c, mm);
    pthread_mutex_unlock(&c->lock);
    DDP_CHECK(s);
    return DDP_OK;
}
