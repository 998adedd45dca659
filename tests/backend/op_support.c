/*
 * What the two drivers of the op table (test_ops_cpu.c, test_ops_cuda.c) share: sizes,
 * filling a case's tensors, describing a shape, comparing results, and running every case
 * as one cmocka group.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "op_cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t op_elem_size(op_type type) {
    switch (type) {
    case OP_F32:
    case OP_I32: return 4;
    case OP_U16: return 2;
    case OP_U8: return 1;
    case OP_F64: return 8;
    }
    return 0;
}

size_t op_tensor_bytes(const op_tensor *t, const op_shape *s) {
    return t->count(s) * op_elem_size(t->type);
}

int op_is_output(const op_tensor *t) { return t->role == OP_OUT || t->role == OP_INOUT; }

int op_has_grad(const op_case *c, const op_shape *s, int i) {
    if (c->t[i].grad == OP_NO_GRAD || !c->backward) return 0;
    return c->has_grad ? c->has_grad(s, i) : 1;
}

double op_get(op_type type, const void *h, size_t i) {
    switch (type) {
    case OP_F32: return ((const float *)h)[i];
    case OP_I32: return ((const int32_t *)h)[i];
    case OP_U16: return ((const uint16_t *)h)[i];
    case OP_U8: return ((const uint8_t *)h)[i];
    case OP_F64: return ((const double *)h)[i];
    }
    return 0.0;
}

/* Inputs lie on a grid of 2^-12, so that a finite-difference step of a power of two
 * from 2^-6 to 1 moves them exactly. */
static float on_grid(float x) { return nearbyintf(x * 4096.0f) / 4096.0f; }

/* Bit patterns that conversions must get right: zeros, infinities, NaNs (one with its
 * payload only in the low bits), the largest float, ties and near-ties of bf16 rounding,
 * subnormals and the float just below 1. */
static const uint32_t special_f32[] = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u,
                                       0x7fc00000u, 0xffc00001u, 0x7f800001u, 0x7f7fffffu,
                                       0x3f808000u, 0x3f818000u, 0x3f808001u, 0x00000001u,
                                       0x807fffffu, 0x7f7f8000u, 0xff7f7fffu, 0x3f7fffffu};

static void fill_tensor(const op_tensor *t, const op_shape *s, void *h, ddp_rng *rng) {
    size_t n = t->count(s);
    if (t->role == OP_OUT || t->role == OP_SCRATCH) {
        if (t->type == OP_F32)
            for (size_t i = 0; i < n; i++)
                ((float *)h)[i] = NAN;
        else if (t->type == OP_F64)
            for (size_t i = 0; i < n; i++)
                ((double *)h)[i] = NAN;
        else
            memset(h, 0xab, n * op_elem_size(t->type));
        return;
    }
    float *f = h;
    for (size_t i = 0; i < n; i++) {
        float z;
        switch (t->kind) {
        case OP_NORMAL: f[i] = on_grid(t->scale * ddp_rng_normal(rng)); break;
        case OP_AWAY_FROM_ZERO:
            z = ddp_rng_normal(rng);
            z = copysignf(fabsf(z) + 0.125f, z);
            f[i] = on_grid(t->scale * z);
            break;
        case OP_POSITIVE: f[i] = on_grid(t->scale * (fabsf(ddp_rng_normal(rng)) + 0.0625f)); break;
        case OP_INDEX:
            ((int32_t *)h)[i] =
                s->d[t->bound] > 0 ? (int32_t)ddp_rng_below(rng, (uint64_t)s->d[t->bound]) : 0;
            break;
        case OP_BYTES: ((uint8_t *)h)[i] = (uint8_t)ddp_rng_u64(rng); break;
        case OP_F32_SPECIAL:
            f[i] = t->scale * ddp_rng_normal(rng);
            if (i < sizeof special_f32 / sizeof special_f32[0])
                memcpy(&f[i], &special_f32[i], sizeof f[i]);
            break;
        case OP_U16_ALL: ((uint16_t *)h)[i] = (uint16_t)i; break;
        }
    }
}

void op_fill(const op_case *c, const op_shape *s, void *const *h, ddp_rng *rng) {
    for (int i = 0; i < c->n_tensors; i++)
        fill_tensor(&c->t[i], s, h[i], rng);
    if (c->prepare) c->prepare(s, h);
}

int op_run_cases(const char *group, void (*test)(void **state), int (*setup)(void **state),
                 int (*teardown)(void **state), const char *last_name, void (*last)(void **state)) {
    struct CMUnitTest *tests = calloc((size_t)op_case_count + 1, sizeof *tests);
    if (!tests) return 1;
    size_t n = 0;
    for (int i = 0; i < op_case_count; i++)
        tests[n++] = (struct CMUnitTest){
            .name = op_cases[i].name, .test_func = test, .initial_state = (void *)&op_cases[i]};
    if (last) tests[n++] = (struct CMUnitTest){.name = last_name, .test_func = last};
    int failed = _cmocka_run_group_tests(group, tests, n, setup, teardown);
    free(tests);
    return failed;
}

const char *op_describe(const op_case *c, const op_shape *s, char *buf, size_t size) {
    int used = snprintf(buf, size, "%s (", c->name);
    const char *p = c->dims;
    for (int k = 0; *p && k < OP_MAX_DIMS && used > 0 && (size_t)used < size; k++) {
        size_t len = strcspn(p, " ");
        used += snprintf(buf + used, size - (size_t)used, "%s%.*s=%d", k ? " " : "", (int)len, p,
                         s->d[k]);
        p += len;
        while (*p == ' ')
            p++;
    }
    if (used > 0 && (size_t)used < size) snprintf(buf + used, size - (size_t)used, ")");
    return buf;
}

void op_expect_close(const char *what, op_type type, const void *got, const void *want, size_t n,
                     double tol) {
    if (type != OP_F32 && type != OP_F64) {
        size_t size = op_elem_size(type);
        for (size_t i = 0; i < n; i++)
            if (memcmp((const char *)got + i * size, (const char *)want + i * size, size)) {
                print_error("%s: element %zu is %.0f, expected %.0f\n", what, i,
                            op_get(type, got, i), op_get(type, want, i));
                fail();
            }
        return;
    }
    double scale = 0.0, worst = 0.0;
    size_t worst_i = 0;
    for (size_t i = 0; i < n; i++) {
        double w = op_get(type, want, i);
        if (isfinite(w) && fabs(w) > scale) scale = fabs(w);
    }
    if (scale == 0.0) scale = 1.0;
    for (size_t i = 0; i < n; i++) {
        double g = op_get(type, got, i), w = op_get(type, want, i);
        if (isnan(g) != isnan(w) || (!isnan(w) && isinf(w) != isinf(g)) || (isinf(w) && g != w)) {
            print_error("%s: element %zu is %.9g, expected %.9g%s\n", what, i, g, w,
                        isnan(g) ? " (not written?)" : "");
            fail();
        }
        double d = isfinite(w) ? fabs(g - w) : 0.0;
        if (d > worst) {
            worst = d;
            worst_i = i;
        }
    }
    if (worst > tol * scale) {
        print_error("%s: element %zu is %.9g, expected %.9g; error %.3g exceeds %.3g relative to "
                    "the largest |value| %.6g\n",
                    what, worst_i, op_get(type, got, worst_i), op_get(type, want, worst_i),
                    worst / scale, tol, scale);
        fail();
    }
}
