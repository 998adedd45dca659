/*
 * Public backend wrappers: argument checks, then dispatch through the ops table.
 * Keeping checks here means every implementation sees only valid calls.
 */
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#include "backend/backend_impl.h"

const char *const ddp_device_names[] = {DDP_DEVICE_KINDS(DDP_X_NAME) NULL};
const char *const ddp_math_names[] = {DDP_MATHS(DDP_X_NAME) NULL};
const char *const ddp_act_names[] = {DDP_ACTS(DDP_X_NAME) NULL};

const char *ddp_backend_name(const ddp_backend *b) { return b->ops->name; }
ddp_device_kind ddp_backend_device(const ddp_backend *b) { return b->ops->device; }
int ddp_backend_is_host(const ddp_backend *b) { return b->ops->is_host; }
int ddp_backend_threads(const ddp_backend *b) { return b->opt.threads; }

void ddp_backend_free(ddp_backend *b) {
    if (!b) return;
    if (b->w16 && !b->w16_kept) b->ops->dealloc(b, b->w16);
    b->w16 = NULL;
    b->ops->destroy(b);
}

/* Nonzero when [p, p + bytes) overlaps the weights' array (a write there makes the copy
 * stale). */
static int touches_weights(const ddp_backend *b, const void *p, size_t bytes) {
    if (!b->w32) return 0;
    const char *lo = (const char *)b->w32, *hi = (const char *)(b->w32 + b->w_n);
    const char *a = (const char *)p;
    return a < hi && a + bytes > lo;
}

ddp_status ddp_backend_alloc(ddp_backend *b, size_t bytes, void **ptr) {
    *ptr = NULL;
    if (bytes == 0) bytes = 1; /* a valid, unique pointer even for empty buffers */
    return b->ops->alloc(b, bytes, ptr);
}

void ddp_backend_dealloc(ddp_backend *b, void *ptr) {
    if (!ptr) return;
    /* The weights' array going away takes its bf16 copy along: a later array at the same
     * address must not find it. */
    if ((const void *)b->w32 == ptr && ddp_backend_set_bf16_weights(b, NULL, 0) != DDP_OK)
        ddp_log_current_error("dropping the bf16 copy of the weights");
    b->ops->dealloc(b, ptr);
}

ddp_status ddp_backend_alloc_pages(ddp_backend *b, size_t bytes, void **ptr) {
    *ptr = NULL;
    if (bytes == 0) bytes = 1;
    if (b->ops->alloc_pages) return b->ops->alloc_pages(b, bytes, ptr);
    DDP_CHECK(b->ops->alloc(b, bytes, ptr));
    ddp_status s = b->ops->zero(b, *ptr, bytes);
    if (s != DDP_OK) {
        b->ops->dealloc(b, *ptr);
        *ptr = NULL;
        DDP_CHECK(s);
    }
    return DDP_OK;
}

void ddp_backend_free_pages(ddp_backend *b, void *ptr, size_t bytes) {
    if (!ptr) return;
    if ((const void *)b->w32 == ptr && ddp_backend_set_bf16_weights(b, NULL, 0) != DDP_OK)
        ddp_log_current_error("dropping the bf16 copy of the weights");
    if (b->ops->free_pages)
        b->ops->free_pages(b, ptr, bytes ? bytes : 1);
    else
        b->ops->dealloc(b, ptr);
}

ddp_status ddp_backend_release_pages(ddp_backend *b, void *ptr, size_t bytes, size_t *released) {
    if (released) *released = 0;
    if (!b->ops->release_pages || !ptr || bytes == 0) return DDP_OK;
    DDP_CHECK(b->ops->release_pages(b, ptr, bytes, released));
    return DDP_OK;
}

size_t ddp_backend_page_bytes(const ddp_backend *b) {
    (void)b;
    return (size_t)sysconf(_SC_PAGESIZE);
}

size_t ddp_backend_release_granule(const ddp_backend *b, const void *ptr, size_t bytes) {
    if (ddp_backend_is_host(b) && bytes >= DDP_HUGE_PAGE_BYTES &&
        (uintptr_t)ptr % DDP_HUGE_PAGE_BYTES == 0)
        return DDP_HUGE_PAGE_BYTES;
    return ddp_backend_page_bytes(b);
}

ddp_status ddp_backend_host_alloc(ddp_backend *b, size_t bytes, void **ptr) {
    *ptr = NULL;
    if (bytes == 0) bytes = 1;
    return b->ops->host_alloc(b, bytes, ptr);
}

void ddp_backend_host_dealloc(ddp_backend *b, void *ptr) {
    if (ptr) b->ops->host_dealloc(b, ptr);
}

ddp_status ddp_backend_copy(ddp_backend *b, void *dst, const void *src, size_t bytes,
                            ddp_copy_kind kind) {
    if (bytes == 0) return DDP_OK;
    if (!dst || !src) return DDP_FAIL(DDP_ERR_INVALID_ARG, "backend copy: NULL pointer");
    if (kind != DDP_COPY_D2H && touches_weights(b, dst, bytes)) b->w16_stale = 1;
    return b->ops->copy(b, dst, src, bytes, kind);
}

ddp_status ddp_backend_zero(ddp_backend *b, void *ptr, size_t bytes) {
    if (bytes == 0) return DDP_OK;
    if (touches_weights(b, ptr, bytes)) b->w16_stale = 1;
    return b->ops->zero(b, ptr, bytes);
}

ddp_status ddp_backend_sync(ddp_backend *b) { return b->ops->sync(b); }

/* ---- the bf16 copy of the weights ------------------------------------------------------ */

ddp_status ddp_backend_set_bf16_weights(ddp_backend *b, const float *params, size_t n) {
    if (b->w16) {
        /* Queued products may still read the old copy. */
        DDP_CHECK(ddp_backend_sync(b));
        if (!b->w16_kept) b->ops->dealloc(b, b->w16);
    }
    b->w16 = NULL;
    b->w32 = NULL;
    b->w_n = 0;
    b->w16_kept = 0;
    if (!params || n == 0 || b->opt.math != DDP_MATH_BF16) return DDP_OK;
    DDP_CHECK(b->ops->alloc(b, n * sizeof(uint16_t), (void **)&b->w16));
    b->w32 = params;
    b->w_n = n;
    b->w16_stale = 1;
    return DDP_OK;
}

ddp_status ddp_backend_set_bf16_copy(ddp_backend *b, const float *params, uint16_t *copy,
                                     size_t n) {
    DDP_CHECK(ddp_backend_set_bf16_weights(b, NULL, 0));
    if (!params || !copy || n == 0 || b->opt.math != DDP_MATH_BF16) return DDP_OK;
    b->w32 = params;
    b->w16 = copy;
    b->w_n = n;
    b->w16_kept = 1;
    b->w16_stale = 0;
    return DDP_OK;
}

void ddp_backend_weights_changed(ddp_backend *b) { b->w16_stale = 1; }

ddp_math ddp_backend_math(const ddp_backend *b) { return b->opt.math; }

int ddp_backend_bf16_native(ddp_backend *b) {
    return b->ops->bf16_native ? b->ops->bf16_native(b) : 1;
}

uint16_t *ddp_backend_w16_of(ddp_backend *b, const float *p, size_t n) {
    if (!b->w32 || p < b->w32 || n > b->w_n || (size_t)(p - b->w32) > b->w_n - n) return NULL;
    return b->w16 + (p - b->w32);
}

ddp_status ddp_backend_w16_operand(ddp_backend *b, const float *p, int rows, int cols, int ld,
                                   const uint16_t **out) {
    *out = NULL;
    if (!b->w32 || rows <= 0 || cols <= 0) return DDP_OK;
    size_t extent = (size_t)(rows - 1) * (size_t)ld + (size_t)cols;
    const uint16_t *w = ddp_backend_w16_of(b, p, extent);
    if (!w) return DDP_OK;
    if (b->w16_stale && !b->w16_kept) {
        /* Ordered after whatever wrote the fp32 array. */
        DDP_CHECK(b->ops->f32_to_bf16(b, b->w32, b->w16, b->w_n));
        b->w16_stale = 0;
    }
    *out = w;
    return DDP_OK;
}

ddp_status ddp_backend_add_wait_check(ddp_backend *b, ddp_backend_wait_check_fn fn, void *ctx) {
    if (b->n_wait_checks == DDP_BACKEND_MAX_WAIT_CHECKS)
        return DDP_FAIL(DDP_ERR_INTERNAL,
                        "backend: more than %d wait checks (communicators on one backend); "
                        "this is a bug in ddp",
                        DDP_BACKEND_MAX_WAIT_CHECKS);
    b->wait_checks[b->n_wait_checks].fn = fn;
    b->wait_checks[b->n_wait_checks].ctx = ctx;
    b->n_wait_checks++;
    return DDP_OK;
}

void ddp_backend_remove_wait_check(ddp_backend *b, void *ctx) {
    int kept = 0;
    for (int i = 0; i < b->n_wait_checks; i++)
        if (b->wait_checks[i].ctx != ctx) b->wait_checks[kept++] = b->wait_checks[i];
    b->n_wait_checks = kept;
}

ddp_status ddp_backend_run_wait_checks(ddp_backend *b) {
    for (int i = 0; i < b->n_wait_checks; i++)
        DDP_CHECK(b->wait_checks[i].fn(b->wait_checks[i].ctx));
    return DDP_OK;
}

int ddp_backend_has_wait_checks(const ddp_backend *b) { return b->n_wait_checks > 0; }

/* Runs the product `reps` times and waits for it: the seconds it took. */
static ddp_status time_products(ddp_backend *b, int M, int N, int K, const float *a, const float *w,
                                float *c, int reps, double *seconds) {
    double t0 = ddp_time_now();
    for (int r = 0; r < reps; r++)
        DDP_CHECK(ddp_backend_gemm(b, 0, 0, M, N, K, 1.0f, a, K, w, N, 0.0f, c, N));
    DDP_CHECK(ddp_backend_sync(b));
    *seconds = ddp_time_now() - t0;
    return DDP_OK;
}

ddp_status ddp_backend_gemm_peak(ddp_backend *b, int M, int N, int K, double seconds,
                                 double *flops) {
    *flops = 0.0;
    if (M <= 0 || N <= 0 || K <= 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "matrix-product peak of %dx%dx%d: sizes must be "
                        "positive",
                        M, N, K);
    size_t na = (size_t)M * K, nw = (size_t)K * N, nc = (size_t)M * N;
    float *h = malloc((na > nw ? na : nw) * sizeof *h);
    float *a = NULL, *w = NULL, *c = NULL;
    ddp_status s = h ? DDP_OK : DDP_FAIL(DDP_ERR_NOMEM, "matrix-product peak: out of memory");
    if (s == DDP_OK) s = ddp_backend_alloc(b, na * sizeof(float), (void **)&a);
    if (s == DDP_OK) s = ddp_backend_alloc(b, nw * sizeof(float), (void **)&w);
    if (s == DDP_OK) s = ddp_backend_alloc(b, nc * sizeof(float), (void **)&c);
    /* Random data: zeros can run at another speed than real numbers. */
    ddp_rng rng;
    ddp_rng_seed(&rng, 0x9eac, 0);
    for (size_t i = 0; s == DDP_OK && i < (na > nw ? na : nw); i++)
        h[i] = ddp_rng_normal(&rng);
    if (s == DDP_OK) s = ddp_backend_copy(b, a, h, na * sizeof(float), DDP_COPY_H2D);
    if (s == DDP_OK) s = ddp_backend_copy(b, w, h, nw * sizeof(float), DDP_COPY_H2D);
    /* The first products (cold caches, threads starting, kernels chosen) are not timed;
     * they also size a block of about 50 ms. */
    double t = 0.0, per = 2.0 * (double)M * N * K, best = 0.0, last = 0.0, spent = 0.0;
    if (s == DDP_OK) s = time_products(b, M, N, K, a, w, c, 2, &t);
    int reps = s == DDP_OK && t > 0.0 ? (int)(0.05 / (t / 2)) : 1;
    if (reps < 1) reps = 1;
    while (s == DDP_OK && spent < seconds) {
        s = time_products(b, M, N, K, a, w, c, reps, &t);
        if (s != DDP_OK || t <= 0.0) break;
        spent += t;
        double rate = per * reps / t;
        if (rate > best) best = rate;
        if (last > 0.0 && fabs(rate - last) <= 0.03 * last) break;
        last = rate;
    }
    ddp_backend_dealloc(b, a);
    ddp_backend_dealloc(b, w);
    ddp_backend_dealloc(b, c);
    free(h);
    DDP_CHECK(s);
    *flops = best;
    return DDP_OK;
}

/* ---- argument checks of the op list (ddp/backend_ops.h) ---------------------------- */

static ddp_status check_gemm(int trans_a, int trans_b, int M, int N, int K, int lda, int ldb,
                             int ldc) {
    if (M < 0 || N < 0 || K < 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "gemm: negative size M=%d N=%d K=%d", M, N, K);
    if (M == 0 || N == 0) return DDP_OK;
    int min_lda = trans_a ? M : K, min_ldb = trans_b ? K : N;
    if (lda < (min_lda > 1 ? min_lda : 1) || ldb < (min_ldb > 1 ? min_ldb : 1) || ldc < N)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "gemm: leading dimension too small (lda=%d ldb=%d ldc=%d for M=%d N=%d "
                        "K=%d, trans_a=%d trans_b=%d)",
                        lda, ldb, ldc, M, N, K, trans_a, trans_b);
    return DDP_OK;
}

static ddp_status check_act(ddp_act act) {
    if ((int)act < 0 || act >= DDP_ACT_COUNT)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "unknown activation %d", (int)act);
    return DDP_OK;
}

static ddp_status check_positive(const char *what, int v) {
    if (v <= 0) return DDP_FAIL(DDP_ERR_INVALID_ARG, "%d %s: must be positive", v, what);
    return DDP_OK;
}

static ddp_status zero_double(double *out) {
    *out = 0.0;
    return DDP_OK;
}

static ddp_status check_adam_step(int64_t t) {
    if (t < 1) return DDP_FAIL(DDP_ERR_INVALID_ARG, "adamw: step %lld must be >= 1", (long long)t);
    return DDP_OK;
}

static ddp_status check_dims2(int N, int C) {
    if (N < 0 || C <= 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "shape (%d, %d): rows must not be negative and "
                        "channels must be positive",
                        N, C);
    return DDP_OK;
}

static ddp_status check_counts3(int n0, int n1, int n2) {
    if (n0 < 0 || n1 < 0 || n2 < 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "shape (%d, %d, %d): sizes must not be negative", n0,
                        n1, n2);
    return DDP_OK;
}

static ddp_status check_dims3(int B, int T, int C) {
    if (B < 0 || T <= 0 || C <= 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "shape (B %d, T %d, C %d): B must not be negative, T and C positive", B, T,
                        C);
    return DDP_OK;
}

static ddp_status check_heads(int B, int T, int C, int NH) {
    DDP_CHECK(check_dims3(B, T, C));
    if (NH <= 0 || C % NH != 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "attention: %d channels do not split into %d heads", C,
                        NH);
    return DDP_OK;
}

static ddp_status check_conv(const ddp_conv_shape *s) {
    if (s->N < 0 || s->H < 1 || s->W < 1 || s->Cin < 1 || s->Cout < 1 || s->KH < 1 || s->KW < 1 ||
        s->stride < 1 || s->pad < 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "conv2d: impossible shape (N %d, H %d, W %d, Cin %d, Cout %d, kernel "
                        "%dx%d, stride %d, pad %d)",
                        s->N, s->H, s->W, s->Cin, s->Cout, s->KH, s->KW, s->stride, s->pad);
    if (ddp_conv_out(s->H, s->KH, s->stride, s->pad) < 1 ||
        ddp_conv_out(s->W, s->KW, s->stride, s->pad) < 1)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "conv2d: a %dx%d kernel does not fit an input of %dx%d with padding %d",
                        s->KH, s->KW, s->H, s->W, s->pad);
    return DDP_OK;
}

static ddp_status check_pool(const ddp_pool_shape *s) {
    if (s->N < 0 || s->C < 1 || s->K < 1 || s->stride < 1 || s->H < s->K || s->W < s->K)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "maxpool: a %dx%d window (stride %d) does not fit an input of %dx%d "
                        "with %d channels",
                        s->K, s->K, s->stride, s->H, s->W, s->C);
    /* arg holds indices into x as int32. */
    if ((double)s->N * s->H * s->W * s->C > (double)INT32_MAX)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "maxpool: an input of %d x %d x %d x %d elements is too large for the "
                        "int32 indices of arg; pool smaller batches",
                        s->N, s->H, s->W, s->C);
    return DDP_OK;
}

/* count 0 is evaluation; a batch needs two rows for its unbiased variance. */
static ddp_status check_bn_stats(double count, int C) {
    DDP_CHECK(check_positive("channels", C));
    if (!(count == 0.0 || count >= 2.0))
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "bn_stats: count %g: a batch needs at least 2 rows per channel (its "
                        "unbiased variance divides by count - 1), or count 0 for evaluation",
                        count);
    return DDP_OK;
}

static ddp_status check_bn_input(int rows, int C, double count) {
    DDP_CHECK(check_dims2(rows, C));
    if (!(count >= 1.0))
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "bn_backward_input: count %g: the rows behind the sums must number at "
                        "least one (the backward of training-mode statistics)",
                        count);
    return DDP_OK;
}

/* ddp_backend_<op>: check, skip when there is nothing to do, dispatch. */
#define DDP_OP_WRAPPER(name, params, args, check, noop)                                            \
    ddp_status ddp_backend_##name params {                                                         \
        ddp_status check_s_ = (check);                                                             \
        if (check_s_ != DDP_OK) return check_s_;                                                   \
        if (noop) return DDP_OK;                                                                   \
        if (!b->ops->name)                                                                         \
            return DDP_FAIL(DDP_ERR_UNSUPPORTED, #name ": not implemented by the %s backend",      \
                            ddp_backend_name(b));                                                  \
        return b->ops->name args;                                                                  \
    }
DDP_BACKEND_OPS(DDP_OP_WRAPPER)
#undef DDP_OP_WRAPPER
