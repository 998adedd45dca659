/*
 * The backend's table of operations, private to src/. Each implementation (cpu, cuda)
 * fills one ddp_backend_ops; the public wrappers in backend.c check arguments and
 * dispatch through it. See include/ddp/backend.h for what each operation means.
 */
#ifndef DDP_BACKEND_IMPL_H
#define DDP_BACKEND_IMPL_H

#include "ddp/backend.h"

typedef struct {
    const char *name;
    ddp_device_kind device;
    int is_host;
    void (*destroy)(ddp_backend *b);
    ddp_status (*alloc)(ddp_backend *b, size_t bytes, void **ptr);
    void (*dealloc)(ddp_backend *b, void *ptr);
    ddp_status (*host_alloc)(ddp_backend *b, size_t bytes, void **ptr);
    void (*host_dealloc)(ddp_backend *b, void *ptr);
    ddp_status (*copy)(ddp_backend *b, void *dst, const void *src, size_t bytes,
                       ddp_copy_kind kind);
    ddp_status (*zero)(ddp_backend *b, void *ptr, size_t bytes);
    /* ddp_backend_alloc_pages and its kin (NULL: alloc and zero, dealloc, nothing given
     * back); release_pages gives back the whole pages inside the range */
    ddp_status (*alloc_pages)(ddp_backend *b, size_t bytes, void **ptr);
    void (*free_pages)(ddp_backend *b, void *ptr, size_t bytes);
    ddp_status (*release_pages)(ddp_backend *b, void *ptr, size_t bytes, size_t *released);
    ddp_status (*sync)(ddp_backend *b);
    /* ddp_backend_bf16_native (NULL: always native) */
    int (*bf16_native)(ddp_backend *b);
    /* Threads of the matrix products (NULL: not a threaded host library). */
    int (*get_threads)(ddp_backend *b);
    void (*set_threads)(ddp_backend *b, int threads);
    /* one slot per compute op (ddp/backend_ops.h); NULL: not implemented here */
#define DDP_OP_SLOT(name, params, args, check, noop) ddp_status(*name) params;
    DDP_BACKEND_OPS(DDP_OP_SLOT)
#undef DDP_OP_SLOT
} ddp_backend_ops;

/* Every backend struct starts with this header; implementations extend it. */
struct ddp_backend {
    const ddp_backend_ops *ops;
    ddp_backend_options opt;
    struct {
        ddp_backend_wait_check_fn fn;
        void *ctx;
    } wait_checks[DDP_BACKEND_MAX_WAIT_CHECKS]; /* ddp_backend_add_wait_check, in order */
    int n_wait_checks;
    /* the bf16 copy of the weights (ddp_backend_set_bf16_weights; math BF16 only) */
    const float *w32; /* (w_n) the fp32 array, or NULL */
    size_t w_n;
    uint16_t *w16; /* (w_n) backend memory: its bf16 copy */
    int w16_stale; /* rewrite w16 from w32 before a product reads it */
    int w16_kept;  /* the caller's copy, kept current by the caller (ddp_backend_set_bf16_copy):
                    * never rewritten here, never freed here */
};

/* The bf16 copy of the n elements at p, when they lie inside the weights' array (NULL
 * otherwise): element p[i] is the copy's [i]. For the optimizer ops, which write it. */
uint16_t *ddp_backend_w16_of(ddp_backend *b, const float *p, size_t n);
/* For the products: *out = the bf16 copy of an operand stored (rows, cols) with row
 * stride ld at p when it lies inside the weights' array, rewritten first where stale
 * (queued on the backend's stream); NULL otherwise. */
ddp_status ddp_backend_w16_operand(ddp_backend *b, const float *p, int rows, int cols, int ld,
                                   const uint16_t **out);

/* The CPU backend (backend_cpu.c). Its convolutions keep oneDNN's primitives per shape in
 * a cache that it owns (backend_cpu_conv.c). */
typedef struct ddp_cpu_conv_cache ddp_cpu_conv_cache;
typedef struct ddp_cpu_matmul_cache ddp_cpu_matmul_cache;
typedef struct {
    struct ddp_backend base;
    ddp_cpu_conv_cache *conv;
    ddp_cpu_matmul_cache *matmul; /* bf16 products (math BF16), backend_cpu_matmul.c */
} ddp_cpu_backend;
ddp_status ddp_cpu_conv_cache_create(ddp_cpu_conv_cache **out);
void ddp_cpu_conv_cache_free(ddp_cpu_conv_cache *c);
ddp_status ddp_cpu_matmul_cache_create(ddp_cpu_matmul_cache **out);
void ddp_cpu_matmul_cache_free(ddp_cpu_matmul_cache *c);

/* A product in bf16 on the CPU (backend_cpu_matmul.c): for every (i, j) of a batch of
 * b0 x b1, C_ij (M, N) = alpha op(A_ij) op(B_ij) + beta C_ij, operands rounded to bf16,
 * fp32 accumulation and output. Matrices are row-major with row strides lda, ldb, ldc;
 * A_ij starts at A + i sa0 + j sa1 (likewise B and C). M, N, K positive; with beta 0, C
 * is not read. An operand inside the weights' array is read from their bf16 copy. */
typedef struct {
    int b0, b1, M, N, K, ta, tb;
    float alpha, beta;
    const float *A;
    int lda;
    size_t sa0, sa1;
    const float *B;
    int ldb;
    size_t sb0, sb1;
    float *C;
    int ldc;
    size_t sc0, sc1;
} ddp_cpu_mm;
ddp_status ddp_cpu_matmul_bf16(ddp_backend *b, const ddp_cpu_mm *mm);
/* Nonzero when the bf16 products run on the CPU's own bf16 instructions (oneDNN), zero
 * when they are emulated on fp32 kernels (DDP_BF16_KERNELS=emulate forces that). */
int ddp_cpu_matmul_native_bf16(ddp_cpu_matmul_cache *c);
/* y = x rounded to bf16, held in fp32 (n elements; y may equal x). */
void ddp_cpu_round_to_bf16(const float *x, float *y, size_t n);
/* y = the bf16 bits of x rounded (n elements). */
void ddp_cpu_convert_bf16(const float *x, uint16_t *y, size_t n);

/* The CPU backend's ops, ddp_cpu_<op>, one file per op family (backend_cpu*.c). */
#define DDP_CPU_DECLARE(name, params, args, check, noop) ddp_status ddp_cpu_##name params;
DDP_BACKEND_OPS(DDP_CPU_DECLARE)
#undef DDP_CPU_DECLARE

/* Constructors, called only by the registry (backend_registry.c). */
ddp_status ddp_backend_cpu_create(const ddp_backend_options *opt, ddp_backend **out);
#ifdef DDP_HAVE_CUDA
ddp_status ddp_backend_cuda_create(const ddp_backend_options *opt, ddp_backend **out);
int ddp_backend_cuda_count(void);
#endif

#endif
