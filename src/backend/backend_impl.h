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
    ddp_status (*gemm)(ddp_backend *b, int ta, int tb, int M, int N, int K, float alpha,
                       const float *A, int lda, const float *B, int ldb, float beta, float *C,
                       int ldc);
    ddp_status (*bias_add)(ddp_backend *b, float *y, const float *bias, int N, int C);
    ddp_status (*bias_grad)(ddp_backend *b, float *dbias, const float *dy, int N, int C);
    ddp_status (*act_forward)(ddp_backend *b, ddp_act act, const float *x, float *y, size_t n);
    ddp_status (*act_backward)(ddp_backend *b, ddp_act act, const float *x, const float *dy,
                               float *dx, size_t n);
    ddp_status (*softmax_xent)(ddp_backend *b, const float *logits, const int32_t *labels, int N,
                               int C, float grad_scale, float *dlogits, float *stats);
    ddp_status (*gather_rows)(ddp_backend *b, void *dst, const void *src, const int32_t *idx,
                              size_t n, size_t row_bytes);
    ddp_status (*scale)(ddp_backend *b, float *x, size_t n, float alpha);
    ddp_status (*f32_to_bf16)(ddp_backend *b, const float *x, uint16_t *y, size_t n);
    ddp_status (*bf16_to_f32)(ddp_backend *b, const uint16_t *x, float *y, size_t n);
    ddp_status (*sumsq)(ddp_backend *b, const float *x, size_t n, double *out);
    ddp_status (*sgd_step)(ddp_backend *b, float *p, const float *g, float *buf, size_t n, float lr,
                           float momentum, float wd, int nesterov, int first, float gscale);
    ddp_status (*adamw_step)(ddp_backend *b, float *p, const float *g, float *m, float *v, size_t n,
                             float lr, float b1, float b2, float eps, float wd, int64_t t,
                             float gscale);
} ddp_backend_ops;

/* Every backend struct starts with this header; implementations extend it. */
struct ddp_backend {
    const ddp_backend_ops *ops;
    ddp_backend_options opt;
};

/* Constructors, called only by the registry (backend_registry.c). */
ddp_status ddp_backend_cpu_create(const ddp_backend_options *opt, ddp_backend **out);
#ifdef DDP_HAVE_CUDA
ddp_status ddp_backend_cuda_create(const ddp_backend_options *opt, ddp_backend **out);
int ddp_backend_cuda_count(void);
#endif

#endif
