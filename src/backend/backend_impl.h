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
    ddp_status (*sync)(ddp_backend *b);
    /* The bf16 copy of the weights (NULL: products in fp32 or tf32 only); see backend.h. */
    ddp_status (*set_bf16_weights)(ddp_backend *b, const float *params, size_t n);
    void (*weights_changed)(ddp_backend *b);
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
};

/* The CPU backend (backend_cpu.c). Its convolutions keep oneDNN's primitives per shape in
 * a cache that it owns (backend_cpu_conv.c). */
typedef struct ddp_cpu_conv_cache ddp_cpu_conv_cache;
typedef struct {
    struct ddp_backend base;
    ddp_cpu_conv_cache *conv;
} ddp_cpu_backend;
ddp_status ddp_cpu_conv_cache_create(ddp_cpu_conv_cache **out);
void ddp_cpu_conv_cache_free(ddp_cpu_conv_cache *c);

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
