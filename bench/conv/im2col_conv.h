/* Convolution as im2col + OpenBLAS (im2col_conv.c): the measured alternative to the CPU
 * backend's oneDNN convolutions, with the same semantics as the conv2d ops. Returns 0, or
 * -1 when out of memory. */
#ifndef DDP_BENCH_IM2COL_CONV_H
#define DDP_BENCH_IM2COL_CONV_H

#include "ddp/backend.h"

int im2col_conv_forward(float *y, const float *x, const float *w, const float *bias, float *work,
                        const ddp_conv_shape *s);
int im2col_conv_backward(float *dx, float *dw, float *dbias, const float *dy, const float *x,
                         const float *w, float *work, const ddp_conv_shape *s);

#endif
