/*
 * The CPU backend against every case of the op table (op_cases.c), shape by shape:
 *   - the forward against the case's double-precision reference (op_reference.c), every
 *     element, with "=" outputs starting as NaN so that an element the op does not write
 *     fails, and "+=" and in-place tensors starting with data that must be kept or added;
 *   - for ops with a backward, every gradient it computes against finite differences of
 *     L = sum(r * y) over the loss outputs, for a fixed random r; "+=" gradient buffers
 *     start with random values that must stay under the sum, "=" buffers as NaN;
 *   - forward and backward run twice give the same bits.
 * One test per case; each prints the largest finite-difference error it saw as a
 * fraction of its bound. Last, every op of the list (ddp/backend_ops.h) must have been
 * called by some case: an op added without a case fails there.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "backend/backend_impl.h"
#include "op_cases.h"
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Elements of each gradient checked by finite differences: all of a small tensor, else
 * the first and last few (where vector loops have their tails) and a random choice. */
enum { FD_SAMPLES = 24, FD_ENDS = 3 };

/* Unit roundoff of fp32. */
#define U_FP32 0x1p-24

static ddp_backend *cpu;

typedef struct {
    const op_case *c;
    const op_shape *s;
    char what[160];
    void *h[OP_MAX_TENSORS]; /* the inputs as generated, one host buffer per tensor */
    size_t n[OP_MAX_TENSORS];
} run;

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    assert_non_null(p);
    return p;
}

static void *host_copy(const void *src, size_t bytes) {
    void *p = xmalloc(bytes);
    memcpy(p, src, bytes);
    return p;
}

/* Fresh backend buffers dev[i] holding h[i], and the forward on them. */
static void forward_on(const run *r, void *const *h, void **dev) {
    const op_case *c = r->c;
    for (int i = 0; i < c->n_tensors; i++) {
        size_t bytes = op_tensor_bytes(&c->t[i], r->s);
        OK(ddp_backend_alloc(cpu, bytes, &dev[i]));
        OK(ddp_backend_copy(cpu, dev[i], h[i], bytes, DDP_COPY_H2D));
    }
    OK(c->forward(cpu, dev, r->s));
}

static void *download(const run *r, int i, const void *dev) {
    size_t bytes = op_tensor_bytes(&r->c->t[i], r->s);
    void *h = xmalloc(bytes);
    OK(ddp_backend_copy(cpu, h, dev, bytes, DDP_COPY_D2H));
    return h;
}

static void free_dev(const run *r, void **dev) {
    for (int i = 0; i < r->c->n_tensors; i++)
        ddp_backend_dealloc(cpu, dev[i]);
}

static void set_typed(op_type type, void *h, size_t i, double v) {
    switch (type) {
    case OP_F32: ((float *)h)[i] = (float)v; break;
    case OP_I32: ((int32_t *)h)[i] = (int32_t)v; break;
    case OP_U16: ((uint16_t *)h)[i] = (uint16_t)v; break;
    case OP_U8: ((uint8_t *)h)[i] = (uint8_t)v; break;
    case OP_F64: ((double *)h)[i] = v; break;
    }
}

/* ---- (a) forward against the reference, and repeatable ------------------------------------- */

static void check_forward(const run *r) {
    const op_case *c = r->c;
    void *dev[OP_MAX_TENSORS], *again[OP_MAX_TENSORS];
    double *x[OP_MAX_TENSORS];
    forward_on(r, r->h, dev);
    for (int i = 0; i < c->n_tensors; i++) {
        x[i] = xmalloc(r->n[i] * sizeof(double));
        for (size_t k = 0; k < r->n[i]; k++)
            x[i][k] = op_get(c->t[i].type, r->h[i], k);
    }
    c->reference(r->s, x);
    forward_on(r, r->h, again);
    for (int i = 0; i < c->n_tensors; i++) {
        const op_tensor *t = &c->t[i];
        if (!op_is_output(t)) continue;
        char what[256];
        snprintf(what, sizeof what, "%s: forward %s", r->what, t->name);
        size_t bytes = op_tensor_bytes(t, r->s);
        void *got = download(r, i, dev[i]), *want = xmalloc(bytes),
             *got2 = download(r, i, again[i]);
        for (size_t k = 0; k < r->n[i]; k++)
            set_typed(t->type, want, k, x[i][k]);
        op_expect_close(what, t->type, got, want, r->n[i], c->fwd_tol);
        if (memcmp(got, got2, bytes)) fail_msg("%s: a second run gave other bits", what);
        free(got);
        free(got2);
        free(want);
    }
    for (int i = 0; i < c->n_tensors; i++)
        free(x[i]);
    free_dev(r, dev);
    free_dev(r, again);
}

/* ---- (b) backward against finite differences ----------------------------------------------- */

/* x moved far (exactly): to see which outputs x reaches at all, even those it moves by
 * less than their rounding within the stencil. */
#define FAR 64.0f

/* The loss outputs of one forward run from h (host copies, NULL where not a loss). */
static void loss_outputs(const run *r, void *const *h, float **y) {
    void *dev[OP_MAX_TENSORS];
    forward_on(r, h, dev);
    for (int i = 0; i < r->c->n_tensors; i++)
        y[i] = r->c->t[i].loss ? download(r, i, dev[i]) : NULL;
    free_dev(r, dev);
}

static size_t loss_len(const run *r, int i) {
    const op_tensor *t = &r->c->t[i];
    return t->loss_count ? t->loss_count(r->s) : r->n[i];
}

/* The gradients of the backward after a forward from r->h, given dL/dy = rr[i] for the
 * loss outputs and the starting values g0[j] of the gradient buffers. */
static void backward_grads(const run *r, float *const *rr, float *const *g0, float **grad) {
    const op_case *c = r->c;
    void *dev[OP_MAX_TENSORS], *g[OP_MAX_TENSORS] = {0};
    forward_on(r, r->h, dev);
    for (int i = 0; i < c->n_tensors; i++) {
        float *src = c->t[i].loss ? rr[i] : op_has_grad(c, r->s, i) ? g0[i] : NULL;
        if (!src) continue;
        OK(ddp_backend_alloc(cpu, r->n[i] * sizeof(float), &g[i]));
        OK(ddp_backend_copy(cpu, g[i], src, r->n[i] * sizeof(float), DDP_COPY_H2D));
    }
    OK(c->backward(cpu, dev, g, r->s));
    for (int i = 0; i < c->n_tensors; i++) {
        grad[i] = op_has_grad(c, r->s, i) ? download(r, i, g[i]) : NULL;
        ddp_backend_dealloc(cpu, g[i]);
    }
    free_dev(r, dev);
}

/*
 * How the finite differences are taken, and their bound.
 *
 * Step: fourth-order central differences, (8 (L(x+h) - L(x-h)) - (L(x+2h) - L(x-2h))) /
 * (12 h). Their truncation error, h^4 / 30 |L^(5)|, is about 1e-9 for the smooth ops
 * (values and derivatives of order one) at h = 2^-6, far under fp32 rounding, and zero for
 * ops linear in the input, which take h = 1 to shrink the rounding terms 64-fold. Inputs
 * lie on a grid of 2^-12 (op_fill), so x +- 2h is exact.
 *
 * Rounding, with u = 2^-24 and fd_units per case (a few units of rounding per output,
 * more for ops with long reductions):
 *  - each output y_i of the fp32 forward is off by about fd_units u |y_i|, independently
 *    from one output to the next, so L is off by about fd_units u sqrt(sum r_i^2 (y_i^2 +
 *    rms^2)), rms (the output's root mean square) standing in for outputs that are small
 *    through cancellation. The sum runs over the outputs that x reaches: those that differ
 *    in any of the four runs or in a fifth with x moved by FAR; the others are the
 *    same bits in every run and cancel exactly. The stencil multiplies the error of L by
 *    (8 + 8 + 1 + 1) / (12 h) = 1.5 / h;
 *  - the backward sums the n reached terms r_i dy_i/dx in fp32: a random walk of n
 *    roundings, about fd_units u sqrt(n) sqrt(sum of the terms squared);
 *  - a "+=" buffer's sum rounds once more: 2 u (|g0| + |g|).
 */
static double check_gradient(const run *r, int j, float *const *rr, const float *g0,
                             const float *grad, float *const *y0, ddp_rng *rng) {
    const op_case *c = r->c;
    const double h = c->fd_step, units = c->fd_units, k_of[4] = {1, -1, 2, -2};
    double rms[OP_MAX_TENSORS] = {0}, worst = 0.0;
    for (int i = 0; i < c->n_tensors; i++)
        if (y0[i]) {
            for (size_t e = 0; e < r->n[i]; e++)
                rms[i] += (double)y0[i][e] * y0[i][e];
            rms[i] = sqrt(rms[i] / (double)(r->n[i] ? r->n[i] : 1));
        }
    void *hp[OP_MAX_TENSORS];
    memcpy(hp, r->h, sizeof hp);
    float *x = host_copy(r->h[j], r->n[j] * sizeof(float));
    hp[j] = x;
    size_t n = r->n[j], samples = n <= FD_SAMPLES ? n : FD_SAMPLES;
    for (size_t s = 0; s < samples; s++) {
        size_t e = n <= FD_SAMPLES   ? s
                   : s < FD_ENDS     ? s
                   : s < 2 * FD_ENDS ? n - 1 - (s - FD_ENDS)
                                     : (size_t)ddp_rng_below(rng, n);
        float *y[5][OP_MAX_TENSORS];
        float x0 = x[e];
        for (int k = 0; k < 5; k++) {
            x[e] = k < 4 ? (float)(x0 + k_of[k] * h) : x0 + FAR;
            loss_outputs(r, hp, y[k]);
        }
        x[e] = x0;
        double fd = 0.0, s2 = 0.0, t2 = 0.0, reached = 0.0;
        for (int i = 0; i < c->n_tensors; i++) {
            if (!y0[i]) continue;
            for (size_t o = 0; o < loss_len(r, i); o++) {
                int changed = 0;
                for (int k = 0; k < 5; k++)
                    changed |= y[k][i][o] != y0[i][o];
                if (!changed) continue;
                double d1 = (double)y[0][i][o] - y[1][i][o], d2 = (double)y[2][i][o] - y[3][i][o];
                double term = rr[i][o] * (8.0 * d1 - d2) / (12.0 * h);
                fd += term;
                t2 += term * term;
                s2 += (double)rr[i][o] * rr[i][o] * ((double)y0[i][o] * y0[i][o] + rms[i] * rms[i]);
                reached += 1.0;
            }
        }
        for (int k = 0; k < 5; k++)
            for (int i = 0; i < c->n_tensors; i++)
                free(y[k][i]);
        int add = c->t[j].grad == OP_GRAD_ADD;
        double got = add ? (double)grad[e] - g0[e] : grad[e];
        double tol = 1.5 / h * units * U_FP32 * sqrt(s2) + units * U_FP32 * sqrt(reached * t2) +
                     (add ? 2.0 * U_FP32 * (fabs(g0[e]) + fabs(grad[e])) : 0.0);
        double err = fabs(got - fd);
        if (!(err <= tol))
            fail_msg("%s: d L / d %s[%zu] is %.9g by the backward, %.9g by finite differences "
                     "(error %.3g, bound %.3g)",
                     r->what, c->t[j].name, e, got, fd, err, tol);
        if (tol > 0.0 && err / tol > worst) worst = err / tol;
    }
    free(x);
    return worst;
}

static double check_backward(const run *r, ddp_rng *rng) {
    const op_case *c = r->c;
    float *rr[OP_MAX_TENSORS] = {0}, *g0[OP_MAX_TENSORS] = {0}, *y0[OP_MAX_TENSORS];
    float *grad[OP_MAX_TENSORS], *grad2[OP_MAX_TENSORS];
    for (int i = 0; i < c->n_tensors; i++) {
        if (c->t[i].loss) {
            rr[i] = xmalloc(r->n[i] * sizeof(float));
            for (size_t e = 0; e < r->n[i]; e++)
                rr[i][e] = e < loss_len(r, i) ? ddp_rng_normal(rng) : 0.0f;
        }
        if (op_has_grad(c, r->s, i)) {
            g0[i] = xmalloc(r->n[i] * sizeof(float));
            for (size_t e = 0; e < r->n[i]; e++)
                g0[i][e] = c->t[i].grad == OP_GRAD_ADD ? ddp_rng_normal(rng) : NAN;
        }
    }
    backward_grads(r, rr, g0, grad);
    backward_grads(r, rr, g0, grad2);
    loss_outputs(r, r->h, y0);
    double worst = 0.0;
    for (int j = 0; j < c->n_tensors; j++) {
        if (!grad[j]) continue;
        if (memcmp(grad[j], grad2[j], r->n[j] * sizeof(float)))
            fail_msg("%s: a second backward gave other bits for d %s", r->what, c->t[j].name);
        for (size_t e = 0; c->t[j].grad == OP_GRAD_SET && e < r->n[j]; e++)
            if (isnan(grad[j][e]))
                fail_msg("%s: d %s[%zu] was not written (still NaN)", r->what, c->t[j].name, e);
        double w = check_gradient(r, j, rr, g0[j], grad[j], y0, rng);
        if (w > worst) worst = w;
    }
    for (int i = 0; i < c->n_tensors; i++) {
        free(rr[i]);
        free(g0[i]);
        free(y0[i]);
        free(grad[i]);
        free(grad2[i]);
    }
    return worst;
}

/* ---- the cases ---------------------------------------------------------------------------- */

static void test_case(void **state) {
    const op_case *c = *state;
    double worst = 0.0;
    for (int k = 0; k < c->n_shapes; k++) {
        run r = {.c = c, .s = &c->shapes[k]};
        op_describe(c, r.s, r.what, sizeof r.what);
        ddp_rng rng;
        ddp_rng_seed(&rng, 20240611, (uint64_t)(c - op_cases) * 100 + (uint64_t)k);
        for (int i = 0; i < c->n_tensors; i++) {
            r.n[i] = c->t[i].count(r.s);
            r.h[i] = xmalloc(op_tensor_bytes(&c->t[i], r.s));
        }
        op_fill(c, r.s, r.h, &rng);
        check_forward(&r);
        if (c->backward) {
            double w = check_backward(&r, &rng);
            if (w > worst) worst = w;
        }
        for (int i = 0; i < c->n_tensors; i++)
            free(r.h[i]);
    }
    if (c->backward)
        print_message("%s: largest finite-difference error %.2f of its bound\n", c->name, worst);
}

/* ---- every op has a case ------------------------------------------------------------ */

/* The CPU backend's table with every op wrapped so that a call marks its op: the cases
 * run through it, and the op that none of them called is one without a case. */
enum {
#define OP_INDEX_(name, params, args, check, noop) OP_INDEX_##name,
    DDP_BACKEND_OPS(OP_INDEX_) OP_COUNT
#undef OP_INDEX_
};
static const char *const op_names[] = {
#define OP_NAME_(name, params, args, check, noop) #name,
    DDP_BACKEND_OPS(OP_NAME_)
#undef OP_NAME_
};
static const ddp_backend_ops *cpu_ops;
static ddp_backend_ops recording;
static int called[OP_COUNT];
#define OP_RECORD_(name, params, args, check, noop)                                                \
    static ddp_status record_##name params {                                                       \
        called[OP_INDEX_##name] = 1;                                                               \
        return cpu_ops->name args;                                                                 \
    }
DDP_BACKEND_OPS(OP_RECORD_)
#undef OP_RECORD_

static void every_op_of_the_list_has_a_case(void **state) {
    int missing = 0;
    for (int i = 0; i < OP_COUNT; i++)
        if (!called[i]) {
            print_error("op %s: no case of tests/backend/op_cases.c calls it\n", op_names[i]);
            missing++;
        }
    assert_int_equal(missing, 0);
}

static int group_setup(void **state) {
    ddp_backend_options opt = {.device = DDP_DEVICE_CPU};
    if (ddp_backend_create(&opt, &cpu) != DDP_OK) return -1;
    cpu_ops = cpu->ops;
    recording = *cpu_ops;
#define OP_INSTALL_(name, params, args, check, noop) recording.name = record_##name;
    DDP_BACKEND_OPS(OP_INSTALL_)
#undef OP_INSTALL_
    cpu->ops = &recording;
    return 0;
}

static int group_teardown(void **state) {
    cpu->ops = cpu_ops;
    ddp_backend_free(cpu);
    return 0;
}

int main(void) {
    return op_run_cases("test_ops_cpu", test_case, group_setup, group_teardown,
                        "every_op_of_the_list_has_a_case", every_op_of_the_list_has_a_case);
}
