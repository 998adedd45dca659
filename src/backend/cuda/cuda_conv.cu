/*
 * The CUDA backend's convolutional-network ops: 2-D convolution, max pooling and batch
 * normalization (ddp/backend_ops.h says what each computes).
 */
#include "backend/cuda/cuda_internal.h"

#define NOT_YET(op) DDP_FAIL(DDP_ERR_UNSUPPORTED, op ": not written yet for the CUDA backend")

extern "C" ddp_status ddp_cuda_conv2d_forward(ddp_backend *b, float *y, const float *x,
                                              const float *w, const float *bias, float *work,
                                              const ddp_conv_shape *s) {
    return NOT_YET("conv2d_forward");
}
extern "C" ddp_status ddp_cuda_conv2d_backward(ddp_backend *b, float *dx, float *dw, float *dbias,
                                               const float *dy, const float *x, const float *w,
                                               float *work, const ddp_conv_shape *s) {
    return NOT_YET("conv2d_backward");
}
extern "C" ddp_status ddp_cuda_maxpool_forward(ddp_backend *b, float *y, int32_t *arg,
                                               const float *x, const ddp_pool_shape *s) {
    return NOT_YET("maxpool_forward");
}
extern "C" ddp_status ddp_cuda_maxpool_backward(ddp_backend *b, float *dx, const float *dy,
                                                const int32_t *arg, const ddp_pool_shape *s) {
    return NOT_YET("maxpool_backward");
}
extern "C" ddp_status ddp_cuda_bn_sums(ddp_backend *b, double *sums, const float *x, int rows,
                                       int C) {
    return NOT_YET("bn_sums");
}
extern "C" ddp_status ddp_cuda_bn_stats(ddp_backend *b, float *mean, float *rstd, float *running,
                                        const double *sums, double count, float eps, float momentum,
                                        int C) {
    return NOT_YET("bn_stats");
}
extern "C" ddp_status ddp_cuda_bn_normalize(ddp_backend *b, float *y, const float *x,
                                            const float *mean, const float *rstd,
                                            const float *gamma, const float *beta, int rows,
                                            int C) {
    return NOT_YET("bn_normalize");
}
extern "C" ddp_status ddp_cuda_bn_backward_sums(ddp_backend *b, double *sums, float *dgamma,
                                                float *dbeta, const float *dy, const float *x,
                                                const float *mean, const float *rstd, int rows,
                                                int C) {
    return NOT_YET("bn_backward_sums");
}
extern "C" ddp_status ddp_cuda_bn_backward_input(ddp_backend *b, float *dx, const float *dy,
                                                 const float *x, const float *mean,
                                                 const float *rstd, const float *gamma,
                                                 const double *sums, double count, int rows,
                                                 int C) {
    return NOT_YET("bn_backward_input");
}
