/*
 * The CUDA backend against the CPU backend over every case of the op table (op_cases.c):
 * for each shape the same inputs go to both, the forward runs on each and every output
 * is compared, then the backward (for ops that have one) with the same output gradient r
 * and the same starting gradient buffers. Outputs and "=" gradients start as NaN on both
 * sides, so an element the GPU does not write fails. Bounds are relative to the largest
 * value: the case's own for fp32 (gpu_tol; 0 means bit for bit), and for the cases that
 * depend on the math mode (matrix products) also tf32 3e-3 and bf16 2e-2.
 *
 * Without a GPU every test is skipped (and the program exits 77, which ctest reports as
 * skipped).
 */
#include "cuda_pair.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bt_fixture *fix;

typedef struct {
    const op_case *c;
    const op_shape *s;
    ddp_backend *g;
    double tol;
    char what[200];
    void *h[OP_MAX_TENSORS];
    size_t n[OP_MAX_TENSORS];
    void *cpu[OP_MAX_TENSORS], *gpu[OP_MAX_TENSORS];
} pair_run;

static void *upload_or_null(ddp_backend *b, const void *h, size_t bytes) {
    return h ? bt_upload(b, h, bytes) : NULL;
}

static void compare(const pair_run *p, const char *part, const char *name, op_type type,
                    const void *c_dev, const void *g_dev, size_t n) {
    char what[300];
    snprintf(what, sizeof what, "%s: %s %s", p->what, part, name);
    bt_compare(fix, p->g, what, type, c_dev, g_dev, n, p->tol);
}

/* The backward on both backends from the state the forward left, and its gradients
 * compared. */
static void backward_pair(pair_run *p) {
    const op_case *c = p->c;
    void *cg[OP_MAX_TENSORS] = {0}, *gg[OP_MAX_TENSORS] = {0};
    for (int i = 0; i < c->n_tensors; i++) {
        int loss = c->t[i].loss, grad = op_has_grad(c, p->s, i);
        if (!loss && !grad) continue;
        float *h = bt_randn(fix, p->n[i], 1.0f);
        if (grad && c->t[i].grad == OP_GRAD_SET)
            for (size_t e = 0; e < p->n[i]; e++)
                h[e] = NAN;
        cg[i] = upload_or_null(fix->cpu, h, p->n[i] * sizeof(float));
        gg[i] = upload_or_null(p->g, h, p->n[i] * sizeof(float));
        free(h);
    }
    OK(c->backward(fix->cpu, p->cpu, cg, p->s));
    OK(c->backward(p->g, p->gpu, gg, p->s));
    for (int i = 0; i < c->n_tensors; i++) {
        if (op_has_grad(c, p->s, i))
            compare(p, "gradient of", c->t[i].name, OP_F32, cg[i], gg[i], p->n[i]);
        ddp_backend_dealloc(fix->cpu, cg[i]);
        ddp_backend_dealloc(p->g, gg[i]);
    }
}

static void run_pair(const op_case *c, const op_shape *s, int k, ddp_math math) {
    pair_run p = {.c = c, .s = s, .g = fix->gpu[math]};
    p.tol = math == DDP_MATH_FP32 ? c->gpu_tol : math == DDP_MATH_TF32 ? TOL_TF32 : TOL_BF16;
    char shape[160];
    snprintf(p.what, sizeof p.what, "%s, math %d", op_describe(c, s, shape, sizeof shape),
             (int)math);
    ddp_rng rng;
    ddp_rng_seed(&rng, 20240611, (uint64_t)(c - op_cases) * 100 + (uint64_t)k);
    for (int i = 0; i < c->n_tensors; i++) {
        size_t bytes = op_tensor_bytes(&c->t[i], s);
        p.n[i] = c->t[i].count(s);
        p.h[i] = malloc(bytes ? bytes : 1);
        assert_non_null(p.h[i]);
    }
    op_fill(c, s, p.h, &rng);
    for (int i = 0; i < c->n_tensors; i++) {
        size_t bytes = op_tensor_bytes(&c->t[i], s);
        p.cpu[i] = bt_upload(fix->cpu, p.h[i], bytes);
        p.gpu[i] = bt_upload(p.g, p.h[i], bytes);
    }
    OK(c->forward(fix->cpu, p.cpu, s));
    OK(c->forward(p.g, p.gpu, s));
    for (int i = 0; i < c->n_tensors; i++)
        if (op_is_output(&c->t[i]))
            compare(&p, "forward", c->t[i].name, c->t[i].type, p.cpu[i], p.gpu[i], p.n[i]);
    if (c->backward) backward_pair(&p);
    for (int i = 0; i < c->n_tensors; i++) {
        ddp_backend_dealloc(fix->cpu, p.cpu[i]);
        ddp_backend_dealloc(p.g, p.gpu[i]);
        free(p.h[i]);
    }
}

static void test_case(void **state) {
    const op_case *c = *state;
    if (!fix->gpu[DDP_MATH_FP32]) skip();
    for (int k = 0; k < c->n_shapes; k++)
        for (int m = DDP_MATH_FP32; m <= (c->uses_math ? DDP_MATH_BF16 : DDP_MATH_FP32); m++)
            run_pair(c, &c->shapes[k], k, (ddp_math)m);
}

static int group_setup(void **state) {
    void *f = NULL;
    int rc = bt_setup(&f);
    fix = f;
    return rc;
}

static int group_teardown(void **state) {
    void *f = fix;
    return bt_teardown(&f);
}

int main(void) {
    int failed = op_run_cases("test_ops_cuda", test_case, group_setup, group_teardown, NULL, NULL);
    if (failed == 0 && ddp_backend_cuda_device_count() == 0) return 77; /* all skipped */
    return failed;
}
