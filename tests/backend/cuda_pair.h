/*
 * Shared by the CUDA backend tests: a CPU backend and CUDA backends (one per math mode)
 * made once per group, random inputs, uploads (NaN-filled outputs), and the comparison
 * of a GPU buffer with the CPU's within a tolerance relative to the values' size.
 */
#ifndef DDP_TEST_CUDA_PAIR_H
#define DDP_TEST_CUDA_PAIR_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "ddp/backend.h"
#include "op_cases.h"
#include "test_util.h"

#define TOL_FP32 1e-5
#define TOL_TF32 3e-3 /* cuBLAS may truncate inputs to tf32 rather than round them */
#define TOL_BF16 2e-2

typedef struct {
    ddp_backend *cpu;
    ddp_backend *gpu[3]; /* indexed by ddp_math; NULL without a GPU */
    ddp_rng rng;
} bt_fixture;

/* Group set-up and tear-down: *state becomes a bt_fixture. Without a GPU the CUDA
 * backends stay NULL. */
int bt_setup(void **state);
int bt_teardown(void **state);
/* The fixture, skipping the calling test when there is no GPU. */
bt_fixture *bt_need_gpu(void **state);

/* n normal floats times scale (malloc'ed). */
float *bt_randn(bt_fixture *f, size_t n, float scale);
/* A backend buffer holding a copy of h. */
void *bt_upload(ddp_backend *b, const void *h, size_t bytes);
/* A backend buffer of n floats, all NaN: an element an op does not write stays NaN. */
float *bt_upload_nan(ddp_backend *b, size_t n);
/* A malloc'ed host copy of n floats of a backend buffer. */
float *bt_download(ddp_backend *b, const float *d, size_t n);
/* Compares n elements of a CPU buffer with a GPU buffer of backend g: within tol as
 * op_expect_close says, or bit for bit when tol is 0. */
void bt_compare(bt_fixture *f, ddp_backend *g, const char *what, op_type type, const void *c_dev,
                const void *g_dev, size_t n, double tol);

#endif
