/*
 * backend: where the numbers are computed. One opaque handle per device; every call
 * goes through a table of function pointers chosen at run time (src/backend/), so one
 * binary runs on the CPU (CBLAS) or on a GPU (cuBLAS and our kernels), and the CUDA
 * backend can be checked against the CPU backend in the same process.
 *
 * Pointers named "device" below are in the backend's memory (plain host memory for the
 * CPU backend). Calls are asynchronous on the backend's compute stream unless they
 * say otherwise; ddp_backend_sync waits for all of them. Matrices are row-major.
 */
#ifndef DDP_BACKEND_H
#define DDP_BACKEND_H

#include "ddp/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where to compute. AUTO: CUDA when built and a GPU is present, else the CPU. */
#define DDP_DEVICE_KINDS(X)                                                                        \
    X(DDP_DEVICE_AUTO, "auto") X(DDP_DEVICE_CPU, "cpu") X(DDP_DEVICE_CUDA, "cuda")
typedef enum { DDP_DEVICE_KINDS(DDP_X_VALUE) DDP_DEVICE_COUNT } ddp_device_kind;
extern const char *const ddp_device_names[]; /* "auto", "cpu", "cuda", NULL */

/* Matrix-product precision. FP32 everywhere; TF32 and BF16 only on CUDA (BF16 keeps
 * fp32 master weights, optimizer state and gradient reduction). */
#define DDP_MATHS(X) X(DDP_MATH_FP32, "fp32") X(DDP_MATH_TF32, "tf32") X(DDP_MATH_BF16, "bf16")
typedef enum { DDP_MATHS(DDP_X_VALUE) DDP_MATH_COUNT } ddp_math;
extern const char *const ddp_math_names[];

/* Elementwise activations (act_forward, act_backward). Adding one: its line here, its case
 * in the CPU backend (backend_cpu.c) and in the CUDA backend (cuda/cuda_elementwise.cu),
 * and its double-precision reference (tests/backend/op_reference.c); the op tests, the
 * MLP's --act and its description take every value of the list. */
#define DDP_ACTS(X) X(DDP_ACT_RELU, "relu") X(DDP_ACT_GELU, "gelu")
typedef enum { DDP_ACTS(DDP_X_VALUE) DDP_ACT_COUNT } ddp_act;
extern const char *const ddp_act_names[];

typedef enum { DDP_COPY_H2D, DDP_COPY_D2H, DDP_COPY_D2D } ddp_copy_kind;

typedef struct ddp_backend ddp_backend;

typedef struct {
    ddp_device_kind device; /* AUTO: CUDA when built and a GPU is present, else CPU */
    int device_index;       /* CUDA device ordinal (local rank modulo visible GPUs) */
    int threads;            /* CPU BLAS threads; 0 = leave the library's default */
    ddp_math math;
} ddp_backend_options;

/* Creates a backend. With DDP_DEVICE_AUTO and no GPU, returns the CPU backend and
 * logs a one-line notice. DDP_DEVICE_CUDA without a GPU (or without CUDA built in)
 * fails with DDP_ERR_UNSUPPORTED. Not collective. */
ddp_status ddp_backend_create(const ddp_backend_options *opt, ddp_backend **out);
void ddp_backend_free(ddp_backend *b);

/* "cpu" or "cuda". */
const char *ddp_backend_name(const ddp_backend *b);
ddp_device_kind ddp_backend_device(const ddp_backend *b);
/* The precision of its matrix products. */
ddp_math ddp_backend_math(const ddp_backend *b);
/* Nonzero when device pointers are ordinary host memory (the CPU backend). */
int ddp_backend_is_host(const ddp_backend *b);
/* BLAS threads the CPU backend computes with (the options' threads, or the library's own
 * setting when they were 0); the options' value on other backends. */
int ddp_backend_threads(const ddp_backend *b);
/* Number of visible CUDA devices (0 when CUDA is not built in or there is none). */
int ddp_backend_cuda_device_count(void);

/* ---- memory (synchronous unless stated) --------------------------------------------- */
ddp_status ddp_backend_alloc(ddp_backend *b, size_t bytes, void **ptr);
void ddp_backend_dealloc(ddp_backend *b, void *ptr);
/* Large buffers whose memory may be given back piece by piece while they live (the flat
 * parameters and gradients, which the ZeRO stages hold only in part): zeroed, aligned to
 * a page, and on the host anonymous memory that takes physical pages on first touch, in
 * huge pages (2 MB) where the system offers them, so that a part given back and touched
 * again costs a few faults instead of one per 4 KB (bench/results/zero.md). Elsewhere an
 * ordinary allocation, zeroed. Free with ddp_backend_free_pages and the same size. */
ddp_status ddp_backend_alloc_pages(ddp_backend *b, size_t bytes, void **ptr);
void ddp_backend_free_pages(ddp_backend *b, void *ptr, size_t bytes);
/* The whole pages inside [ptr, ptr + bytes) of a buffer from ddp_backend_alloc_pages go
 * back to the system: they read as zeros afterwards, until written. *released (may be
 * NULL) gets the bytes given back; 0 on a backend whose memory cannot be (a GPU's, where
 * the buffer stays allocated). Not collective. */
ddp_status ddp_backend_release_pages(ddp_backend *b, void *ptr, size_t bytes, size_t *released);
/* The size of those pages: what a release gives back at the least. */
size_t ddp_backend_page_bytes(const ddp_backend *b);
/* Host buffers from ddp_backend_alloc_pages of at least this many bytes are mapped in whole
 * huge pages (the last one too) and advised to use them. */
#define DDP_HUGE_PAGE_BYTES ((size_t)2 << 20)
/* The pages to give back [ptr, ptr + bytes) of such a buffer in: huge pages where the
 * buffer spans them on the host, else ddp_backend_page_bytes. A release of part of a huge
 * page splits it into small pages for good, which then fault back one per 4 KB; a release in
 * whole huge pages keeps them whole (they fault back once per 2 MB). Not collective. */
size_t ddp_backend_release_granule(const ddp_backend *b, const void *ptr, size_t bytes);
/* Page-locked host memory for staging (plain malloc on the CPU backend). */
ddp_status ddp_backend_host_alloc(ddp_backend *b, size_t bytes, void **ptr);
void ddp_backend_host_dealloc(ddp_backend *b, void *ptr);
/* Ordered on the compute stream; D2H copies are complete when the call returns. D2D also
 * copies between host buffers (and host and device ones), for callers that cannot tell
 * where a buffer lives. */
ddp_status ddp_backend_copy(ddp_backend *b, void *dst, const void *src, size_t bytes,
                            ddp_copy_kind kind);
ddp_status ddp_backend_zero(ddp_backend *b, void *ptr, size_t bytes);
/* Waits for all work queued on the backend. */
ddp_status ddp_backend_sync(ddp_backend *b);

/* Checks run while the host waits for the backend's work (D2H copies, sumsq, sync) where
 * that work may be held up by a collective: the NCCL comm adds one that reports its
 * asynchronous errors (a failed peer) and aborts after a watchdog timeout. With any check
 * added, a CUDA backend's host waits poll an event instead of blocking in the driver, and
 * are under the watchdog. The first check to fail ends the wait with its error. At most
 * DDP_BACKEND_MAX_WAIT_CHECKS at once; the CPU backend, whose work never waits for a
 * collective, keeps them and never runs them. Not thread-safe against waits: add and
 * remove while no other thread uses the backend. */
#define DDP_BACKEND_MAX_WAIT_CHECKS 4
typedef ddp_status (*ddp_backend_wait_check_fn)(void *ctx);
ddp_status ddp_backend_add_wait_check(ddp_backend *b, ddp_backend_wait_check_fn fn, void *ctx);
/* Removes every check added with ctx. */
void ddp_backend_remove_wait_check(ddp_backend *b, void *ctx);
/* Runs the checks once, in the order they were added (for backends' waits). */
ddp_status ddp_backend_run_wait_checks(ddp_backend *b);
/* Nonzero when checks are added. */
int ddp_backend_has_wait_checks(const ddp_backend *b);

/* Mixed precision, the bf16 copy of the weights. On a backend whose matrix products run in
 * bf16 (CUDA, math BF16), ddp_backend_set_bf16_weights(b, params, n) keeps a bf16 copy of
 * the fp32 array params (n elements: the model's flat parameter buffer); a product whose
 * operand lies inside the array reads the copy instead of converting the operand on every
 * call. The optimizer ops write the copy in the same pass as the fp32 values they update.
 * Anything else that writes the array must say so with ddp_backend_weights_changed (the
 * backend's own copies and zeroing into it count themselves): the next product that reads
 * it first rewrites the whole copy (one conversion pass). set(b, NULL, 0) drops the copy
 * (before the array is freed). No-ops elsewhere. Not collective. */
ddp_status ddp_backend_set_bf16_weights(ddp_backend *b, const float *params, size_t n);
/* The same with a copy that the caller allocates and keeps current (ZeRO-3, which gathers
 * it unit by unit into copy and writes only a part of params): the products read it
 * wherever their operand lies in params, and it is never rewritten from params nor freed
 * here (ddp_backend_weights_changed does nothing to it). set_bf16_weights(b, NULL, 0)
 * forgets it. No-op unless the backend computes in bf16. Not collective. */
ddp_status ddp_backend_set_bf16_copy(ddp_backend *b, const float *params, uint16_t *copy, size_t n);
/* Nonzero when b's bf16 products run on bf16 hardware (tensor cores, AVX512-BF16, AMX);
 * zero where the CPU has none and they are emulated on fp32 kernels (the same numbers up
 * to the order of summation, at the fp32 rate). */
int ddp_backend_bf16_native(ddp_backend *b);
void ddp_backend_weights_changed(ddp_backend *b);

/* OpenBLAS kernels. A program calls ddp_blas_choose_kernels(argv) before anything else:
 * when OpenBLAS took generic kernels for a CPU it does not know although the CPU runs
 * AVX2 or AVX-512, and OPENBLAS_CORETYPE is not set, the program replaces itself (exec)
 * with OPENBLAS_CORETYPE set to the supported family; otherwise it returns.
 * ddp_blas_kernels_note gives the line to log about it afterwards (NULL when nothing was
 * changed). ddp_blas_better_core is the decision: the family to use instead of the
 * detected core, or NULL. */
void ddp_blas_choose_kernels(char **argv);
const char *ddp_blas_kernels_note(char *buf, size_t cap);
const char *ddp_blas_better_core(const char *detected, int avx512, int avx2, int amd);

/* The rate of matrix products C (M, N) = A (M, K) B (K, N) on b, in FLOP/s, in b's
 * precision and with its threads: the product repeated on random data in blocks of about
 * 50 ms until two blocks in a row agree within 3% (at most `seconds`), the best block's
 * rate. The denominator of model FLOPs utilisation. Synchronizes. */
ddp_status ddp_backend_gemm_peak(ddp_backend *b, int M, int N, int K, double seconds,
                                 double *flops);

/* ---- compute ------------------------------------------------------------------------ */

/* The shape of a 2-D convolution over images in channels-last layout (N, H, W, C). */
typedef struct {
    int N, H, W, Cin, Cout, KH, KW, stride, pad;
} ddp_conv_shape;
/* The shape of a max pooling over (N, H, W, C): K x K windows, no padding. */
typedef struct {
    int N, H, W, C, K, stride;
} ddp_pool_shape;
/* Output size of a convolution or pooling along one axis: (in + 2 pad - k) / stride + 1,
 * or 0 when the kernel does not fit. */
static inline int ddp_conv_out(int in, int k, int stride, int pad) {
    return stride > 0 && in + 2 * pad >= k ? (in + 2 * pad - k) / stride + 1 : 0;
}

/* ddp_status ddp_backend_<op>(ddp_backend *b, ...) for every op of the list in
 * ddp/backend_ops.h, where each is documented. Invalid arguments fail with
 * DDP_ERR_INVALID_ARG and a message; an op the backend lacks with DDP_ERR_UNSUPPORTED. */
#include "ddp/backend_ops.h"
#define DDP_DECLARE_OP(name, params, args, check, noop) ddp_status ddp_backend_##name params;
DDP_BACKEND_OPS(DDP_DECLARE_OP)
#undef DDP_DECLARE_OP

#ifdef __cplusplus
}
#endif
#endif
