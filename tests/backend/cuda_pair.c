/*
 * The helpers of cuda_pair.h: backends, buffers and comparisons for the CUDA tests.
 */
#include "cuda_pair.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bt_fixture *bt_need_gpu(void **state) {
    bt_fixture *f = *state;
    if (!f->gpu[DDP_MATH_FP32]) skip();
    return f;
}

/* ---- buffers ---------------------------------------------------------------------- */

float *bt_randn(bt_fixture *f, size_t n, float scale) {
    float *h = malloc((n ? n : 1) * sizeof *h);
    assert_non_null(h);
    for (size_t i = 0; i < n; i++)
        h[i] = scale * ddp_rng_normal(&f->rng);
    return h;
}

void *bt_upload(ddp_backend *b, const void *h, size_t bytes) {
    void *d = NULL;
    OK(ddp_backend_alloc(b, bytes, &d));
    OK(ddp_backend_copy(b, d, h, bytes, DDP_COPY_H2D));
    return d;
}

/* Device buffer of n floats, all NaN. */
float *bt_upload_nan(ddp_backend *b, size_t n) {
    float *h = malloc((n ? n : 1) * sizeof *h);
    assert_non_null(h);
    for (size_t i = 0; i < n; i++)
        h[i] = NAN;
    float *d = bt_upload(b, h, n * sizeof *h);
    free(h);
    return d;
}

float *bt_download(ddp_backend *b, const float *d, size_t n) {
    float *h = malloc((n ? n : 1) * sizeof *h);
    assert_non_null(h);
    OK(ddp_backend_copy(b, h, d, n * sizeof *h, DDP_COPY_D2H));
    return h;
}

void bt_compare(bt_fixture *f, ddp_backend *g, const char *what, op_type type, const void *c_dev,
                const void *g_dev, size_t n, double tol) {
    size_t bytes = n * op_elem_size(type);
    void *hc = malloc(bytes ? bytes : 1), *hg = malloc(bytes ? bytes : 1);
    assert_true(hc && hg);
    OK(ddp_backend_copy(f->cpu, hc, c_dev, bytes, DDP_COPY_D2H));
    OK(ddp_backend_copy(g, hg, g_dev, bytes, DDP_COPY_D2H));
    if (tol == 0.0 && memcmp(hg, hc, bytes)) {
        size_t size = op_elem_size(type), i = 0;
        while (!memcmp((char *)hg + i * size, (char *)hc + i * size, size))
            i++;
        print_error("%s: element %zu differs in its bits: %.9g on the GPU, %.9g on the CPU\n", what,
                    i, op_get(type, hg, i), op_get(type, hc, i));
        fail();
    }
    op_expect_close(what, type, hg, hc, n, tol);
    free(hc);
    free(hg);
}

/* ---- set-up ----------------------------------------------------------------------- */

int bt_setup(void **state) {
    bt_fixture *f = calloc(1, sizeof *f);
    if (!f) return -1;
    ddp_rng_seed(&f->rng, 20240611, 0);
    ddp_backend_options o = {.device = DDP_DEVICE_CPU, .math = DDP_MATH_FP32};
    if (ddp_backend_create(&o, &f->cpu) != DDP_OK) {
        fprintf(stderr, "CPU backend: %s\n", ddp_error_trace_str());
        return -1;
    }
    if (ddp_backend_cuda_device_count() > 0) {
        for (int m = DDP_MATH_FP32; m <= DDP_MATH_BF16; m++) {
            ddp_backend_options g = {
                .device = DDP_DEVICE_CUDA, .device_index = 0, .math = (ddp_math)m};
            if (ddp_backend_create(&g, &f->gpu[m]) != DDP_OK) {
                fprintf(stderr, "CUDA backend (math %d): %s\n", m, ddp_error_trace_str());
                return -1;
            }
        }
    }
    *state = f;
    return 0;
}

int bt_teardown(void **state) {
    bt_fixture *f = *state;
    if (!f) return 0;
    for (int m = 0; m < 3; m++)
        ddp_backend_free(f->gpu[m]);
    ddp_backend_free(f->cpu);
    free(f);
    return 0;
}
