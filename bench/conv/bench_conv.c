/*
 * Times the layers of the Fashion-MNIST CNN on the CPU backend, one thread, for each batch
 * size given: the two convolutions (3x3, padding 1: 28x28, 1 -> 32 channels, then 14x14,
 * 32 -> 64) forward and backward, against im2col + OpenBLAS (im2col_conv.c), the
 * alternative to oneDNN measured and not taken, on the same buffers; and the batch norms
 * and 2x2 max poolings that follow them. bench/conv/torch_conv.py times PyTorch's, and
 * bench/conv/run.sh runs both programs and prints the tables of bench/results/convolutions.md.
 *
 *   bench_conv [reps [batch ...]]      (default 30 repetitions, batches 16 64 128)
 *
 * Prints one line per (implementation, op, layer, batch) with the median and the best of
 * the timed repetitions in milliseconds, and how far apart the two convolutions' results
 * are. The first layer's backward computes no input gradient (the images need none), as
 * in the network. The backend's first call of a shape (oneDNN compiling its kernels) is
 * one of the untimed ones. A batch norm's forward is bn_sums, bn_stats and bn_normalize;
 * its backward bn_backward_sums and bn_backward_input (no ranks to add the sums over),
 * the input gradient written over dy, as a network would (dy, the ReLU's gradient, is dead
 * by then): a third faster than into a separate dx, whose cache lines the CPU would read
 * before writing them.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/backend.h"
#include "im2col_conv.h"

typedef struct {
    const char *name;
    ddp_conv_shape s;
    int want_dx; /* the first layer's input is the images: no gradient */
    size_t nx, ny, nw;
    float *x, *w, *bias, *y, *dy, *dx, *dw, *dbias, *work;
} layer;

static void die(const char *what) {
    fprintf(stderr, "bench_conv: %s\n", what);
    exit(1);
}

static float *randn(ddp_rng *rng, size_t n, float scale) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) die("out of memory");
    for (size_t i = 0; i < n; i++)
        p[i] = scale * ddp_rng_normal(rng);
    return p;
}

static void layer_init(layer *l, const char *name, int N, int H, int Cin, int Cout, int want_dx,
                       ddp_rng *rng) {
    *l = (layer){.name = name,
                 .s = {.N = N,
                       .H = H,
                       .W = H,
                       .Cin = Cin,
                       .Cout = Cout,
                       .KH = 3,
                       .KW = 3,
                       .stride = 1,
                       .pad = 1},
                 .want_dx = want_dx};
    int Ho = ddp_conv_out(H, 3, 1, 1);
    l->nx = (size_t)N * H * H * Cin;
    l->ny = (size_t)N * Ho * Ho * Cout;
    l->nw = (size_t)Cout * Cin * 9;
    l->x = randn(rng, l->nx, 1.0f);
    l->w = randn(rng, l->nw, 0.1f);
    l->bias = randn(rng, (size_t)Cout, 0.1f);
    l->y = randn(rng, l->ny, 0.0f);
    l->dy = randn(rng, l->ny, 1.0f);
    l->dx = randn(rng, l->nx, 0.0f);
    l->dw = randn(rng, l->nw, 0.0f);
    l->dbias = randn(rng, (size_t)Cout, 0.0f);
    l->work = randn(rng, DDP_CONV_WORK(&l->s), 0.0f);
}

static void layer_free(layer *l) {
    free(l->x), free(l->w), free(l->bias), free(l->y), free(l->dy);
    free(l->dx), free(l->dw), free(l->dbias), free(l->work);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef void (*op_fn)(void *ctx);

/* Runs fn 3 times untimed, then reps times, and prints the median and the best. */
static void time_op(const char *impl, const char *op, const char *layer_name, int N, op_fn fn,
                    void *ctx, int reps) {
    double *ms = malloc((size_t)reps * sizeof *ms);
    if (!ms) die("out of memory");
    for (int i = -3; i < reps; i++) {
        double t0 = ddp_time_now();
        fn(ctx);
        if (i >= 0) ms[i] = (ddp_time_now() - t0) * 1e3;
    }
    qsort(ms, (size_t)reps, sizeof *ms, cmp_double);
    printf("%-6s %-8s %-5s N=%-4d median %8.3f ms   best %8.3f ms\n", impl, op, layer_name, N,
           ms[reps / 2], ms[0]);
    free(ms);
}

/* What the convolution timers get. */
typedef struct {
    ddp_backend *b;
    layer *l;
} conv_run;

/* ---- ddp ------------------------------------------------------------------------------ */

static void ddp_fwd(void *ctx) {
    conv_run *r = ctx;
    layer *l = r->l;
    if (ddp_backend_conv2d_forward(r->b, l->y, l->x, l->w, l->bias, l->work, &l->s) != DDP_OK)
        die(ddp_error_message());
}

static void ddp_bwd(void *ctx) {
    conv_run *r = ctx;
    layer *l = r->l;
    if (ddp_backend_conv2d_backward(r->b, l->want_dx ? l->dx : NULL, l->dw, l->dbias, l->dy, l->x,
                                    l->w, l->work, &l->s) != DDP_OK)
        die(ddp_error_message());
}

/* ---- im2col + OpenBLAS ---------------------------------------------------------------- */

static void im2col_fwd(void *ctx) {
    layer *l = ((conv_run *)ctx)->l;
    if (im2col_conv_forward(l->y, l->x, l->w, l->bias, l->work, &l->s)) die("out of memory");
}

static void im2col_bwd(void *ctx) {
    layer *l = ((conv_run *)ctx)->l;
    if (im2col_conv_backward(l->want_dx ? l->dx : NULL, l->dw, l->dbias, l->dy, l->x, l->w, l->work,
                             &l->s))
        die("out of memory");
}

/* The largest |a - b| relative to the largest |b|. */
static double rel_diff(const float *a, const float *b, size_t n) {
    double worst = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > worst) worst = d;
        if (fabs(b[i]) > scale) scale = fabs(b[i]);
    }
    return scale > 0 ? worst / scale : worst;
}

/* One forward and backward of each from zeroed gradients, their results compared. */
static void compare(conv_run *r) {
    layer *l = r->l;
    float *y = malloc(l->ny * sizeof *y), *dx = malloc(l->nx * sizeof *dx);
    float *dw = malloc(l->nw * sizeof *dw), *db = malloc((size_t)l->s.Cout * sizeof *db);
    if (!y || !dx || !dw || !db) die("out of memory");
    memset(l->dw, 0, l->nw * sizeof(float));
    memset(l->dbias, 0, (size_t)l->s.Cout * sizeof(float));
    ddp_fwd(r);
    ddp_bwd(r);
    memcpy(y, l->y, l->ny * sizeof *y);
    memcpy(dx, l->dx, l->nx * sizeof *dx);
    memcpy(dw, l->dw, l->nw * sizeof *dw);
    memcpy(db, l->dbias, (size_t)l->s.Cout * sizeof *db);
    memset(l->dw, 0, l->nw * sizeof(float));
    memset(l->dbias, 0, (size_t)l->s.Cout * sizeof(float));
    im2col_fwd(r);
    im2col_bwd(r);
    printf("%s N=%d: im2col's largest difference from ddp, relative to the largest value: "
           "y %.2g, dx %.2g, dw %.2g, dbias %.2g\n",
           l->name, l->s.N, rel_diff(l->y, y, l->ny), l->want_dx ? rel_diff(l->dx, dx, l->nx) : 0.0,
           rel_diff(l->dw, dw, l->nw), rel_diff(l->dbias, db, (size_t)l->s.Cout));
    free(y), free(dx), free(dw), free(db);
}

/* ---- batch norm and max pooling ------------------------------------------------------- */

/* The batch norm and the 2x2 pooling after a convolution to C channels at H x H. */
typedef struct {
    ddp_backend *b;
    int rows, C;
    ddp_pool_shape ps;
    float *x, *y, *dy, *dx;               /* (rows, C) */
    float *gamma, *beta, *dgamma, *dbeta; /* (C) */
    float *mean, *rstd, *running;         /* (C), (C), (2, C) */
    double *sums;                         /* (2, C) */
    float *py, *pdy;                      /* (N, H / 2, H / 2, C) */
    int32_t *arg;
} norm_pool;

static void ok(ddp_status s) {
    if (s != DDP_OK) die(ddp_error_message());
}

static void norm_pool_init(norm_pool *p, ddp_backend *b, int N, int H, int C, ddp_rng *rng) {
    size_t n = (size_t)N * H * H * C, np = (size_t)N * (H / 2) * (H / 2) * C;
    *p = (norm_pool){.b = b, .rows = N * H * H, .C = C};
    p->ps = (ddp_pool_shape){.N = N, .H = H, .W = H, .C = C, .K = 2, .stride = 2};
    p->x = randn(rng, n, 1.0f), p->y = randn(rng, n, 0.0f);
    p->dy = randn(rng, n, 1.0f), p->dx = randn(rng, n, 0.0f);
    /* gamma 1 and beta 0, as a network starts: the backward runs in place (below), and
     * with these each repetition's gradient keeps the size of the last one. */
    p->gamma = randn(rng, (size_t)C, 0.0f), p->beta = randn(rng, (size_t)C, 0.0f);
    for (int c = 0; c < C; c++)
        p->gamma[c] = 1.0f;
    p->dgamma = randn(rng, (size_t)C, 0.0f), p->dbeta = randn(rng, (size_t)C, 0.0f);
    p->mean = randn(rng, (size_t)C, 0.0f), p->rstd = randn(rng, (size_t)C, 0.0f);
    p->running = randn(rng, 2 * (size_t)C, 0.0f);
    p->sums = malloc(2 * (size_t)C * sizeof *p->sums);
    p->py = randn(rng, np, 0.0f), p->pdy = randn(rng, np, 1.0f);
    p->arg = malloc(np * sizeof *p->arg);
    if (!p->sums || !p->arg) die("out of memory");
}

static void norm_pool_free(norm_pool *p) {
    float *f[12] = {p->x,      p->y,     p->dy,   p->dx,   p->gamma,   p->beta,
                    p->dgamma, p->dbeta, p->mean, p->rstd, p->running, p->py};
    for (int i = 0; i < 12; i++)
        free(f[i]);
    free(p->pdy), free(p->sums), free(p->arg);
}

static void bn_fwd(void *ctx) {
    norm_pool *p = ctx;
    ok(ddp_backend_bn_sums(p->b, p->sums, p->x, p->rows, p->C));
    ok(ddp_backend_bn_stats(p->b, p->mean, p->rstd, p->running, p->sums, p->rows, 1e-5f, 0.1f,
                            p->C));
    ok(ddp_backend_bn_normalize(p->b, p->y, p->x, p->mean, p->rstd, p->gamma, p->beta, p->rows,
                                p->C));
}

static void bn_bwd(void *ctx) {
    norm_pool *p = ctx;
    ok(ddp_backend_bn_backward_sums(p->b, p->sums, p->dgamma, p->dbeta, p->dy, p->x, p->mean,
                                    p->rstd, p->rows, p->C));
    ok(ddp_backend_bn_backward_input(p->b, p->dy, p->dy, p->x, p->mean, p->rstd, p->gamma, p->sums,
                                     p->rows, p->rows, p->C));
}

static void pool_fwd(void *ctx) {
    norm_pool *p = ctx;
    ok(ddp_backend_maxpool_forward(p->b, p->py, p->arg, p->y, &p->ps));
}

static void pool_bwd(void *ctx) {
    norm_pool *p = ctx;
    ok(ddp_backend_maxpool_backward(p->b, p->dx, p->pdy, p->arg, &p->ps));
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 30;
    int batches[16] = {16, 64, 128}, nb = 3;
    if (argc > 2) {
        nb = 0;
        for (int i = 2; i < argc && nb < 16; i++)
            batches[nb++] = atoi(argv[i]);
    }
    if (reps <= 0) die("usage: bench_conv [reps [batch ...]]");
    for (int i = 0; i < nb; i++)
        if (batches[i] <= 0) die("usage: bench_conv [reps [batch ...]]: batches are positive");
    /* One thread: the comparison is per core, like PyTorch's set_num_threads(1). */
    ddp_backend_options opt = {.device = DDP_DEVICE_CPU, .threads = 1};
    ddp_backend *b = NULL;
    if (ddp_backend_create(&opt, &b) != DDP_OK) die(ddp_error_message());
    ddp_rng rng;
    ddp_rng_seed(&rng, 1234, 0);
    printf("bench_conv: %d repetitions, 1 thread\n", reps);
    for (int i = 0; i < nb; i++) {
        layer ls[2];
        layer_init(&ls[0], "conv1", batches[i], 28, 1, 32, 0, &rng);
        layer_init(&ls[1], "conv2", batches[i], 14, 32, 64, 1, &rng);
        for (int k = 0; k < 2; k++) {
            layer *l = &ls[k];
            conv_run r = {b, l};
            compare(&r);
            time_op("ddp", "forward", l->name, l->s.N, ddp_fwd, &r, reps);
            time_op("ddp", "backward", l->name, l->s.N, ddp_bwd, &r, reps);
            time_op("im2col", "forward", l->name, l->s.N, im2col_fwd, &r, reps);
            time_op("im2col", "backward", l->name, l->s.N, im2col_bwd, &r, reps);
            layer_free(l);
        }
        for (int k = 0; k < 2; k++) {
            norm_pool p;
            norm_pool_init(&p, b, batches[i], k ? 14 : 28, k ? 64 : 32, &rng);
            time_op("ddp", "forward", k ? "bn2" : "bn1", batches[i], bn_fwd, &p, reps);
            time_op("ddp", "backward", k ? "bn2" : "bn1", batches[i], bn_bwd, &p, reps);
            time_op("ddp", "forward", k ? "pool2" : "pool1", batches[i], pool_fwd, &p, reps);
            time_op("ddp", "backward", k ? "pool2" : "pool1", batches[i], pool_bwd, &p, reps);
            norm_pool_free(&p);
        }
    }
    ddp_backend_free(b);
    return 0;
}
