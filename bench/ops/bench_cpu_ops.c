/*
 * Times the CPU backend's transformer ops one by one at a GPT training shape (default
 * B=32 sequences, T=128 positions, C=256 channels, NH=4 heads, V=256 tokens) on one
 * thread, for comparison with bench/ops/torch_ops.py, which times PyTorch's versions of
 * the same ops. Prints one line per op: its name, the median and the best of the timed
 * repetitions in milliseconds.
 *
 *   bench_cpu_ops [B T C NH [reps]]
 *
 * Run it under OPENBLAS_CORETYPE set to the CPU's family when OpenBLAS does not know the
 * CPU (bench/ops/run.sh does), or the BLAS falls back to its slowest kernels.
 */
#include <stdio.h>
#include <stdlib.h>

#include "ddp/backend.h"

typedef struct {
    ddp_backend *b;
    int B, T, C, NH, V;
    int32_t *tokens;
    float *wte, *wpe, *dwte, *dwpe;           /* (V, C), (T, C) */
    float *x, *y, *dy, *dx;                   /* (B, T, C) */
    float *lw, *lb, *dlw, *dlb, *mean, *rstd; /* (C) x4, (B, T) x2 */
    float *qkv, *dqkv, *att, *work;           /* (B, T, 3C) x2, (B, NH, T, T), work */
} bench;

static void *alloc_or_die(ddp_backend *b, size_t floats) {
    void *p = NULL;
    if (ddp_backend_alloc(b, floats * sizeof(float), &p) != DDP_OK) {
        fprintf(stderr, "bench_cpu_ops: %s\n", ddp_error_message());
        exit(1);
    }
    return p;
}

static float *randn(bench *s, ddp_rng *rng, size_t n, float scale) {
    float *p = alloc_or_die(s->b, n);
    for (size_t i = 0; i < n; i++)
        p[i] = scale * ddp_rng_normal(rng);
    return p;
}

static ddp_status op_encoder_forward(bench *s) {
    return ddp_backend_encoder_forward(s->b, s->y, s->tokens, s->wte, s->wpe, s->B, s->T, s->C);
}
static ddp_status op_encoder_backward(bench *s) {
    return ddp_backend_encoder_backward(s->b, s->dwte, s->dwpe, s->dy, s->tokens, s->B, s->T, s->C);
}
static ddp_status op_layernorm_forward(bench *s) {
    return ddp_backend_layernorm_forward(s->b, s->y, s->mean, s->rstd, s->x, s->lw, s->lb,
                                         s->B * s->T, s->C);
}
static ddp_status op_layernorm_backward(bench *s) {
    return ddp_backend_layernorm_backward(s->b, s->dx, s->dlw, s->dlb, s->dy, s->x, s->lw, s->mean,
                                          s->rstd, s->B * s->T, s->C);
}
static ddp_status op_attention_forward(bench *s) {
    return ddp_backend_attention_forward(s->b, s->y, s->att, s->qkv, s->work, s->B, s->T, s->C,
                                         s->NH);
}
static ddp_status op_attention_backward(bench *s) {
    return ddp_backend_attention_backward(s->b, s->dqkv, s->dy, s->qkv, s->att, s->work, s->B, s->T,
                                          s->C, s->NH);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Runs op 3 times untimed (caches, first-touch pages), then reps times. */
static void time_op(bench *s, const char *name, ddp_status (*op)(bench *), int reps) {
    double *ms = malloc((size_t)reps * sizeof *ms);
    if (!ms) exit(1);
    for (int i = -3; i < reps; i++) {
        double t0 = ddp_time_now();
        if (op(s) != DDP_OK) {
            fprintf(stderr, "bench_cpu_ops: %s: %s\n", name, ddp_error_message());
            exit(1);
        }
        if (i >= 0) ms[i] = (ddp_time_now() - t0) * 1e3;
    }
    qsort(ms, (size_t)reps, sizeof *ms, cmp_double);
    printf("%-20s median %8.3f ms   best %8.3f ms\n", name, ms[reps / 2], ms[0]);
    free(ms);
}

int main(int argc, char **argv) {
    bench s = {.B = 32, .T = 128, .C = 256, .NH = 4, .V = 256};
    int reps = 50;
    if (argc >= 5) {
        s.B = atoi(argv[1]);
        s.T = atoi(argv[2]);
        s.C = atoi(argv[3]);
        s.NH = atoi(argv[4]);
    }
    if (argc >= 6) reps = atoi(argv[5]);
    if (s.B <= 0 || s.T <= 0 || s.C <= 0 || s.NH <= 0 || s.C % s.NH || reps <= 0) {
        fprintf(stderr, "usage: bench_cpu_ops [B T C NH [reps]] (C a multiple of NH)\n");
        return 2;
    }
    /* One BLAS thread: the comparison is per core, like PyTorch's set_num_threads(1). */
    ddp_backend_options opt = {.device = DDP_DEVICE_CPU, .threads = 1};
    if (ddp_backend_create(&opt, &s.b) != DDP_OK) {
        fprintf(stderr, "bench_cpu_ops: %s\n", ddp_error_message());
        return 1;
    }
    ddp_rng rng;
    ddp_rng_seed(&rng, 1234, 0);
    size_t btc = (size_t)s.B * s.T * s.C;
    s.tokens = alloc_or_die(s.b, (size_t)s.B * s.T);
    for (size_t i = 0; i < (size_t)s.B * s.T; i++)
        s.tokens[i] = (int32_t)ddp_rng_below(&rng, (uint64_t)s.V);
    s.wte = randn(&s, &rng, (size_t)s.V * s.C, 0.02f);
    s.wpe = randn(&s, &rng, (size_t)s.T * s.C, 0.01f);
    s.dwte = randn(&s, &rng, (size_t)s.V * s.C, 0.0f);
    s.dwpe = randn(&s, &rng, (size_t)s.T * s.C, 0.0f);
    s.x = randn(&s, &rng, btc, 1.0f);
    s.y = randn(&s, &rng, btc, 0.0f);
    s.dy = randn(&s, &rng, btc, 1.0f);
    s.dx = randn(&s, &rng, btc, 0.0f);
    s.lw = randn(&s, &rng, (size_t)s.C, 1.0f);
    s.lb = randn(&s, &rng, (size_t)s.C, 1.0f);
    s.dlw = randn(&s, &rng, (size_t)s.C, 0.0f);
    s.dlb = randn(&s, &rng, (size_t)s.C, 0.0f);
    s.mean = randn(&s, &rng, (size_t)s.B * s.T, 0.0f);
    s.rstd = randn(&s, &rng, (size_t)s.B * s.T, 0.0f);
    s.qkv = randn(&s, &rng, 3 * btc, 1.0f);
    s.dqkv = randn(&s, &rng, 3 * btc, 0.0f);
    s.att = randn(&s, &rng, (size_t)s.B * s.NH * s.T * s.T, 0.0f);
    s.work = alloc_or_die(s.b, DDP_ATTENTION_WORK(s.B, s.T, s.C, s.NH));

    printf("ddp cpu ops, B=%d T=%d C=%d NH=%d V=%d, 1 thread, %d repetitions\n", s.B, s.T, s.C,
           s.NH, s.V, reps);
    time_op(&s, "encoder_forward", op_encoder_forward, reps);
    time_op(&s, "encoder_backward", op_encoder_backward, reps);
    /* The forwards first: they leave mean, rstd and att for the backwards. */
    time_op(&s, "layernorm_forward", op_layernorm_forward, reps);
    time_op(&s, "layernorm_backward", op_layernorm_backward, reps);
    time_op(&s, "attention_forward", op_attention_forward, reps);
    time_op(&s, "attention_backward", op_attention_backward, reps);
    ddp_backend_free(s.b);
    return 0;
}
