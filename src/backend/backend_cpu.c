/*
 * The CPU backend: matrix products through CBLAS (OpenBLAS), everything else as plain
 * loops. It is the readable reference that the CUDA backend is tested against, so it
 * favours clarity (and double accumulators where sums are long) over speed outside
 * the GEMMs, which dominate the time anyway.
 */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backend/backend_impl.h"
#include "backend/cpu_math.h"

static void cpu_destroy(ddp_backend *b) {
    ddp_cpu_conv_cache_free(((ddp_cpu_backend *)b)->conv);
    ddp_cpu_matmul_cache_free(((ddp_cpu_backend *)b)->matmul);
    free(b);
}

static ddp_status cpu_alloc(ddp_backend *b, size_t bytes, void **ptr) {
    /* 64-byte alignment: cache lines, and AVX-512 loads in the BLAS. */
    size_t rounded = (bytes + 63) & ~(size_t)63;
    *ptr = aligned_alloc(64, rounded);
    if (!*ptr) return DDP_FAIL(DDP_ERR_NOMEM, "cpu backend: could not allocate %zu bytes", bytes);
    return DDP_OK;
}

static void cpu_dealloc(ddp_backend *b, void *ptr) { free(ptr); }

/* Huge pages where a buffer spans them: a buffer whose pages go back to the system and
 * come again every step (the ZeRO stages' gradients and parameters) then faults once per
 * 2 MB instead of once per 4 KB, where the releases keep them whole
 * (ddp_backend_release_granule; bench/results/zero.md). */
#define HUGE_PAGE DDP_HUGE_PAGE_BYTES

/* The mapping of a buffer of `bytes`: whole huge pages from one huge page up (the last one
 * whole too, so that it can be one), else whole small pages. */
static size_t mapped_len(size_t bytes) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE), len = (bytes + page - 1) / page * page;
    return len >= HUGE_PAGE ? (len + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE : len;
}

static ddp_status cpu_alloc_pages(ddp_backend *b, size_t bytes, void **ptr) {
    size_t len = mapped_len(bytes);
    int huge = len >= HUGE_PAGE;
    /* Room to start on a huge page's boundary, trimmed below. */
    size_t span = huge ? len + HUGE_PAGE : len;
    char *p = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return DDP_FAIL(DDP_ERR_NOMEM, "cpu backend: could not map %zu bytes: %s", bytes,
                        strerror(errno));
    if (huge) {
        char *start = (char *)(((uintptr_t)p + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE);
        if (start > p) munmap(p, (size_t)(start - p));
        size_t tail = span - (size_t)(start - p) - len;
        if (tail > 0) munmap(start + len, tail);
        p = start;
        /* Advice only: without transparent huge pages the buffer works on small ones. */
        (void)madvise(p, len, MADV_HUGEPAGE);
    }
    *ptr = p;
    return DDP_OK;
}

static void cpu_free_pages(ddp_backend *b, void *ptr, size_t bytes) {
    munmap(ptr, mapped_len(bytes));
}

static ddp_status cpu_release_pages(ddp_backend *b, void *ptr, size_t bytes, size_t *released) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)ptr + page - 1) / page * page;
    uintptr_t hi = ((uintptr_t)ptr + bytes) / page * page;
    if (released) *released = 0;
    if (hi <= lo) return DDP_OK;
    if (madvise((void *)lo, hi - lo, MADV_DONTNEED) != 0)
        return DDP_FAIL(DDP_ERR_INTERNAL, "cpu backend: giving back %zu bytes of pages failed: %s",
                        (size_t)(hi - lo), strerror(errno));
    if (released) *released = hi - lo;
    return DDP_OK;
}

static ddp_status cpu_copy(ddp_backend *b, void *dst, const void *src, size_t bytes,
                           ddp_copy_kind kind) {
    memmove(dst, src, bytes);
    return DDP_OK;
}

static ddp_status cpu_zero(ddp_backend *b, void *ptr, size_t bytes) {
    memset(ptr, 0, bytes);
    return DDP_OK;
}

static ddp_status cpu_sync(ddp_backend *b) { return DDP_OK; }
static int cpu_get_threads(ddp_backend *b) { return openblas_get_num_threads(); }
static int cpu_bf16_native(ddp_backend *b) {
    return ddp_cpu_matmul_native_bf16(((ddp_cpu_backend *)b)->matmul);
}
static void cpu_set_threads(ddp_backend *b, int threads) { openblas_set_num_threads(threads); }

ddp_status ddp_cpu_gemm(ddp_backend *b, int ta, int tb, int M, int N, int K, float alpha,
                        const float *A, int lda, const float *B, int ldb, float beta, float *C,
                        int ldc) {
    if (K == 0) {
        /* BLAS leaves C untouched when K = 0 only for beta = 1; make it explicit. With
         * beta 0, C is not read (it may hold NaN), as the op list promises. */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
        return DDP_OK;
    }
    if (b->opt.math == DDP_MATH_BF16) {
        ddp_cpu_mm mm = {.b0 = 1,
                         .b1 = 1,
                         .M = M,
                         .N = N,
                         .K = K,
                         .ta = ta,
                         .tb = tb,
                         .alpha = alpha,
                         .beta = beta,
                         .A = A,
                         .lda = lda,
                         .B = B,
                         .ldb = ldb,
                         .C = C,
                         .ldc = ldc};
        return ddp_cpu_matmul_bf16(b, &mm);
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
    return DDP_OK;
}

DDP_CPU_CLONES ddp_status ddp_cpu_bias_add(ddp_backend *b, float *y, const float *bias, int N,
                                           int C) {
    for (int i = 0; i < N; i++) {
        float *row = y + (size_t)i * C;
        for (int j = 0; j < C; j++)
            row[j] += bias[j];
    }
    return DDP_OK;
}

DDP_CPU_CLONES ddp_status ddp_cpu_bias_grad(ddp_backend *b, float *dbias, const float *dy, int N,
                                            int C) {
    /* Row-major walk with float partial sums per column: N is a micro-batch (small),
     * so the rounding matches the CUDA column reduction to well within tolerance. */
    for (int i = 0; i < N; i++) {
        const float *row = dy + (size_t)i * C;
        for (int j = 0; j < C; j++)
            dbias[j] += row[j];
    }
    return DDP_OK;
}

/* GELU, tanh approximation (as in GPT-2 and PyTorch's approximate="tanh"). */
#define GELU_K 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_C 0.044715f

/* With u = sqrt(2/pi) (x + 0.044715 x^3) and e = exp(2u): 0.5 (1 + tanh u) = e / (1 + e)
 * and 1 - tanh^2 u = 4 e / (1 + e)^2, so GELU and its derivative come from one exp
 * without the cancellation of 1 - tanh^2 near saturation. */
static inline float gelu_e(float x) {
    float u2 = 2.0f * GELU_K * (x + GELU_C * x * x * x);
    return ddp_expf(u2 < -80.0f ? -80.0f : u2 > 80.0f ? 80.0f : u2);
}

static inline float gelu(float x) {
    float e = gelu_e(x);
    return x * (e / (1.0f + e));
}

static inline float gelu_grad(float x) {
    float e = gelu_e(x), d = 1.0f + e;
    float du = GELU_K * (1.0f + 3.0f * GELU_C * x * x);
    /* (1 + e)^2 overflows to inf for large u, where the second term is 0 anyway. */
    return e / d + 2.0f * x * du * (e / (d * d));
}

/* One loop per activation of DDP_ACTS, each written for the vectorizer. */
DDP_CPU_CLONES ddp_status ddp_cpu_act_forward(ddp_backend *b, ddp_act act, const float *x, float *y,
                                              size_t n) {
    switch (act) {
    case DDP_ACT_RELU:
        for (size_t i = 0; i < n; i++)
            y[i] = x[i] > 0.0f ? x[i] : 0.0f;
        return DDP_OK;
    case DDP_ACT_GELU:
        for (size_t i = 0; i < n; i++)
            y[i] = gelu(x[i]);
        return DDP_OK;
    case DDP_ACT_COUNT: break;
    }
    return DDP_FAIL(DDP_ERR_INVALID_ARG, "act_forward: the CPU backend has no activation %d",
                    (int)act);
}

DDP_CPU_CLONES ddp_status ddp_cpu_act_backward(ddp_backend *b, ddp_act act, const float *x,
                                               const float *dy, float *dx, size_t n) {
    switch (act) {
    case DDP_ACT_RELU:
        for (size_t i = 0; i < n; i++)
            dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
        return DDP_OK;
    case DDP_ACT_GELU:
        for (size_t i = 0; i < n; i++)
            dx[i] = dy[i] * gelu_grad(x[i]);
        return DDP_OK;
    case DDP_ACT_COUNT: break;
    }
    return DDP_FAIL(DDP_ERR_INVALID_ARG, "act_backward: the CPU backend has no activation %d",
                    (int)act);
}

ddp_status ddp_cpu_softmax_xent(ddp_backend *b, const float *logits, const int32_t *labels, int N,
                                int C, float grad_scale, float *dlogits, float *stats) {
    double loss = 0.0;
    int correct = 0;
    for (int i = 0; i < N; i++) {
        const float *z = logits + (size_t)i * C;
        int label = labels[i];
        if (label < 0 || label >= C)
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "softmax_xent: label %d of row %d is outside [0, %d)", label, i, C);
        int arg = 0;
        for (int j = 1; j < C; j++)
            if (z[j] > z[arg]) arg = j;
        float zmax = z[arg];
        double sum = 0.0;
        for (int j = 0; j < C; j++)
            sum += exp((double)(z[j] - zmax));
        double logsum = log(sum);
        loss += logsum - (double)(z[label] - zmax);
        correct += arg == label;
        if (dlogits) {
            float *d = dlogits + (size_t)i * C;
            for (int j = 0; j < C; j++) {
                float p = (float)(exp((double)(z[j] - zmax) - logsum));
                d[j] = grad_scale * (p - (j == label ? 1.0f : 0.0f));
            }
        }
    }
    stats[0] += (float)loss;
    stats[1] += (float)correct;
    return DDP_OK;
}

ddp_status ddp_cpu_gather_rows(ddp_backend *b, void *dst, const void *src, const int32_t *idx,
                               size_t n, size_t row_bytes) {
    char *d = dst;
    const char *s = src;
    for (size_t i = 0; i < n; i++)
        memcpy(d + i * row_bytes, s + (size_t)idx[i] * row_bytes, row_bytes);
    return DDP_OK;
}

ddp_status ddp_cpu_scale(ddp_backend *b, float *x, size_t n, float alpha) {
    for (size_t i = 0; i < n; i++)
        x[i] *= alpha;
    return DDP_OK;
}

ddp_status ddp_cpu_transpose(ddp_backend *b, float *y, const float *x, int batch, int rows,
                             int cols) {
    /* Tiles of 16 x 16 keep both the reads and the writes within a few cache lines. */
    enum { TILE = 16 };
    for (int n = 0; n < batch; n++) {
        const float *xs = x + (size_t)n * rows * cols;
        float *ys = y + (size_t)n * rows * cols;
        for (int r0 = 0; r0 < rows; r0 += TILE)
            for (int c0 = 0; c0 < cols; c0 += TILE)
                for (int r = r0; r < r0 + TILE && r < rows; r++)
                    for (int c = c0; c < c0 + TILE && c < cols; c++)
                        ys[(size_t)c * rows + r] = xs[(size_t)r * cols + c];
    }
    return DDP_OK;
}

DDP_CPU_CLONES ddp_status ddp_cpu_add(ddp_backend *b, float *y, const float *a, const float *c,
                                      size_t n) {
    for (size_t i = 0; i < n; i++)
        y[i] = a[i] + c[i];
    return DDP_OK;
}

DDP_CPU_CLONES void ddp_cpu_convert_bf16(const float *x, uint16_t *y, size_t n) {
    for (size_t i = 0; i < n; i++)
        y[i] = ddp_bf16_bits(x[i]);
}

ddp_status ddp_cpu_f32_to_bf16(ddp_backend *b, const float *x, uint16_t *y, size_t n) {
    ddp_cpu_convert_bf16(x, y, n);
    return DDP_OK;
}

DDP_CPU_CLONES void ddp_cpu_round_to_bf16(const float *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i++)
        y[i] = ddp_bf16_round(x[i]);
}

ddp_status ddp_cpu_bf16_to_f32(ddp_backend *b, const uint16_t *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)x[i] << 16;
        memcpy(&y[i], &u, 4);
    }
    return DDP_OK;
}

DDP_CPU_CLONES ddp_status ddp_cpu_sumsq(ddp_backend *b, const float *x, size_t n, double *out) {
    /* The gradient norm, from which every rank computes the same clip coefficient: it must
     * be the same bits on every CPU of a job, which the BLAS's dsdot is not (OpenBLAS's
     * Haswell and SkylakeX kernels round each product to float, others do not). Here the
     * products are exact (a float squared fits a double's 53 bits) and 16 double lanes add
     * them in a fixed order, lane j the elements i = j mod 16 in index order, the lanes
     * then in a fixed tree: the same on every instruction set, vectorized all the same.
     * NaN and inf propagate. */
    enum { LANES = 16 };
    double lane[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            lane[j] += (double)x[i + j] * (double)x[i + j];
    for (int j = 0; i < n; i++, j++)
        lane[j] += (double)x[i] * (double)x[i];
    for (int w = LANES / 2; w >= 1; w /= 2)
        for (int j = 0; j < w; j++)
            lane[j] += lane[j + w];
    *out = lane[0];
    return DDP_OK;
}

ddp_status ddp_cpu_sumsq_add(ddp_backend *b, const float *x, size_t n, double *acc) {
    double sq;
    DDP_CHECK(ddp_cpu_sumsq(b, x, n, &sq));
    *acc += sq;
    return DDP_OK;
}

ddp_status ddp_cpu_sgd_step(ddp_backend *b, float *p, const float *g, float *buf, size_t n,
                            float lr, float momentum, float wd, int nesterov, int first,
                            float gscale) {
    /* Mixed precision: the weights' bf16 copy, written in the same pass. */
    uint16_t *p16 = ddp_backend_w16_of(b, p, n);
    for (size_t i = 0; i < n; i++) {
        float d = gscale * g[i] + wd * p[i];
        float m = first ? d : momentum * buf[i] + d;
        buf[i] = m;
        p[i] -= lr * (nesterov ? d + momentum * m : m);
        if (p16) p16[i] = ddp_bf16_bits(p[i]);
    }
    return DDP_OK;
}

ddp_status ddp_cpu_adamw_step(ddp_backend *b, float *p, const float *g, float *m, float *v,
                              size_t n, float lr, float b1, float b2, float eps, float wd,
                              int64_t t, float gscale) {
    /* Bias corrections folded into the step size and denominator, as PyTorch does. */
    float bc1 = 1.0f - powf(b1, (float)t);
    float bc2_sqrt = sqrtf(1.0f - powf(b2, (float)t));
    float step = lr / bc1;
    uint16_t *p16 = ddp_backend_w16_of(b, p, n); /* as in sgd_step */
    for (size_t i = 0; i < n; i++) {
        p[i] -= lr * wd * p[i];
        float gi = gscale * g[i];
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        p[i] -= step * m[i] / (sqrtf(v[i]) / bc2_sqrt + eps);
        if (p16) p16[i] = ddp_bf16_bits(p[i]);
    }
    return DDP_OK;
}

static const ddp_backend_ops cpu_ops = {.name = "cpu",
                                        .device = DDP_DEVICE_CPU,
                                        .is_host = 1,
                                        .destroy = cpu_destroy,
                                        .alloc = cpu_alloc,
                                        .dealloc = cpu_dealloc,
                                        .host_alloc = cpu_alloc,
                                        .host_dealloc = cpu_dealloc,
                                        .copy = cpu_copy,
                                        .zero = cpu_zero,
                                        .alloc_pages = cpu_alloc_pages,
                                        .free_pages = cpu_free_pages,
                                        .release_pages = cpu_release_pages,
                                        .sync = cpu_sync,
                                        .bf16_native = cpu_bf16_native,
                                        .get_threads = cpu_get_threads,
                                        .set_threads = cpu_set_threads,
#define DDP_CPU_ENTRY(name, params, args, check, noop) .name = ddp_cpu_##name,
                                        DDP_BACKEND_OPS(DDP_CPU_ENTRY)
#undef DDP_CPU_ENTRY
};

ddp_status ddp_backend_cpu_create(const ddp_backend_options *opt, ddp_backend **out) {
    ddp_cpu_backend *b = calloc(1, sizeof *b);
    if (!b) return DDP_FAIL(DDP_ERR_NOMEM, "cpu backend: out of memory");
    ddp_status s = ddp_cpu_conv_cache_create(&b->conv);
    if (s == DDP_OK) s = ddp_cpu_matmul_cache_create(&b->matmul);
    if (s != DDP_OK) {
        ddp_cpu_conv_cache_free(b->conv);
        free(b);
        DDP_CHECK(s);
    }
    b->base.ops = &cpu_ops;
    b->base.opt = *opt;
    b->base.opt.device = DDP_DEVICE_CPU;
    /* BLAS threads are per process; with several ranks on a node each gets its share of
     * the cores (set by the caller), or they oversubscribe and fight. */
    if (opt->threads > 0) openblas_set_num_threads(opt->threads);
    /* What BLAS runs with, also when it was left to its own setting (OPENBLAS_NUM_THREADS). */
    b->base.opt.threads = openblas_get_num_threads();
    *out = &b->base;
    return DDP_OK;
}
