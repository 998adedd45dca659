/*
 * Matrix products in bf16 on the CPU backend (math BF16), on oneDNN's bf16 kernels where
 * the CPU has them and emulated on fp32 kernels everywhere (DDP_BF16_KERNELS=emulate), so
 * that every CPU exercises the bf16 logic.
 *
 * The reference is the product in double of the operands rounded to bf16 (to nearest,
 * ties to even). What is left is fp32 accumulation: with products of bf16 numbers exact in
 * fp32, each of the K - 1 additions, the scaling by alpha and the addition of beta C
 * round by at most u = 2^-24 relative, so
 *     |C - ref| <= (K + 2) u (|alpha| sum_k |a'_ik b'_kj| + |beta c_ij|)      (TOL below)
 * elementwise (Higham, Accuracy and Stability, 3.1, to first order). Rounding the operands
 * wrongly moves each product by about 2^-8 of itself, thousands of times more: a check
 * that this bound rejects truncation (round toward zero) is part of every case.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend_impl.h"
#include "test_util.h"

#define U_FP32 0x1p-24

static ddp_backend *native, *emulated; /* math BF16: oneDNN where it can, emulated always */
static ddp_rng rng;

/* x rounded to bf16, to nearest (ties to even), or toward zero when `truncate`. */
static double bf16_of(float x, int truncate) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u = truncate ? u & 0xffff0000u : (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    float y;
    memcpy(&y, &u, 4);
    return y;
}

typedef struct {
    int ta, tb, M, N, K, batch;
    float alpha, beta;
} mm_shape;

/* Element (r, c) of an operand stored (rows, cols) with row stride ld, read transposed
 * when t. */
static float at(const float *x, int t, int ld, int r, int c) {
    return t ? x[(size_t)c * ld + r] : x[(size_t)r * ld + c];
}

/* One product of shape s on backend b against the reference; returns how many of the
 * elements a truncating implementation would have moved past the bound. */
static void check_product(ddp_backend *b, const char *which, const mm_shape *s) {
    int a_rows = s->ta ? s->K : s->M, a_cols = s->ta ? s->M : s->K;
    int b_rows = s->tb ? s->N : s->K, b_cols = s->tb ? s->K : s->N;
    int lda = a_cols + 3, ldb = b_cols + 1, ldc = s->N + 2; /* strides wider than the rows */
    size_t sa = (size_t)a_rows * lda, sb = (size_t)b_rows * ldb, sc = (size_t)s->M * ldc;
    size_t na = sa * s->batch, nb = sb * s->batch, nc = sc * s->batch;
    float *A = malloc(na * 4), *B = malloc(nb * 4), *C = malloc(nc * 4), *C0 = malloc(nc * 4);
    assert_true(A && B && C && C0);
    for (size_t i = 0; i < na; i++)
        A[i] = ddp_rng_normal(&rng);
    for (size_t i = 0; i < nb; i++)
        B[i] = 0.25f * ddp_rng_normal(&rng);
    for (size_t i = 0; i < nc; i++)
        C0[i] = s->beta == 0.0f ? NAN : ddp_rng_normal(&rng); /* beta 0: C is not read */
    memcpy(C, C0, nc * 4);
    if (s->batch == 1)
        OK(ddp_backend_gemm(b, s->ta, s->tb, s->M, s->N, s->K, s->alpha, A, lda, B, ldb, s->beta, C,
                            ldc));
    else {
        /* A batch of two dimensions (batch / 2, 2), as attention's (sequences, heads). */
        ddp_cpu_mm mm = {.b0 = s->batch / 2,
                         .b1 = 2,
                         .M = s->M,
                         .N = s->N,
                         .K = s->K,
                         .ta = s->ta,
                         .tb = s->tb,
                         .alpha = s->alpha,
                         .beta = s->beta,
                         .A = A,
                         .lda = lda,
                         .sa0 = 2 * sa,
                         .sa1 = sa,
                         .B = B,
                         .ldb = ldb,
                         .sb0 = 2 * sb,
                         .sb1 = sb,
                         .C = C,
                         .ldc = ldc,
                         .sc0 = 2 * sc,
                         .sc1 = sc};
        OK(ddp_cpu_matmul_bf16(b, &mm));
    }
    double worst = 0.0, trunc_worst = 0.0;
    for (int i = 0; i < s->batch; i++)
        for (int r = 0; r < s->M; r++)
            for (int c = 0; c < s->N; c++) {
                double ref = 0.0, trunc = 0.0, mag = 0.0;
                for (int k = 0; k < s->K; k++) {
                    float a = at(A + i * sa, s->ta, lda, r, k),
                          bb = at(B + i * sb, s->tb, ldb, k, c);
                    ref += bf16_of(a, 0) * bf16_of(bb, 0);
                    trunc += bf16_of(a, 1) * bf16_of(bb, 1);
                    mag += fabs(bf16_of(a, 0) * bf16_of(bb, 0));
                }
                size_t ci = i * sc + (size_t)r * ldc + c;
                double c0 = s->beta == 0.0f ? 0.0 : C0[ci];
                ref = s->alpha * ref + s->beta * c0;
                trunc = s->alpha * trunc + s->beta * c0;
                double tol = (s->K + 2) * U_FP32 * (fabs(s->alpha) * mag + fabs(s->beta * c0));
                double e = fabs(C[ci] - ref) / tol, et = fabs(trunc - ref) / tol;
                if (!(e <= 1.0)) {
                    print_error("%s ta %d tb %d %dx%dx%d batch %d: C[%d][%d][%d] = %.9g, "
                                "reference %.9g, bound %.3g\n",
                                which, s->ta, s->tb, s->M, s->N, s->K, s->batch, i, r, c, C[ci],
                                ref, tol);
                    fail();
                }
                if (e > worst) worst = e;
                if (et > trunc_worst) trunc_worst = et;
            }
    /* Elements of C's row padding are not written. */
    for (size_t i = 0; i < nc; i++)
        if ((int)(i % (size_t)ldc) >= s->N && memcmp(&C[i], &C0[i], 4) != 0)
            fail_msg("%s: an element outside C was written", which);
    /* The bound tells truncated operands apart: a truncating implementation fails it. */
    assert_true(trunc_worst > 1.0);
    print_message("%s ta %d tb %d %dx%dx%d batch %d: worst error %.2f of the bound "
                  "(truncation would be %.0f)\n",
                  which, s->ta, s->tb, s->M, s->N, s->K, s->batch, worst, trunc_worst);
    free(A);
    free(B);
    free(C);
    free(C0);
}

static const mm_shape shapes[] = {
    {0, 0, 1, 1, 1, 1, 1.0f, 0.0f},      {0, 1, 17, 9, 33, 1, 1.0f, 0.0f},
    {1, 0, 64, 48, 80, 1, 0.5f, 1.0f},   {1, 1, 5, 70, 129, 1, -2.0f, 0.5f},
    {0, 1, 128, 96, 256, 1, 1.0f, 1.0f}, {0, 0, 33, 31, 257, 1, 1.0f, 0.0f},
    {0, 1, 8, 8, 16, 12, 0.125f, 0.0f},  {1, 0, 16, 16, 8, 6, 1.0f, 1.0f},
};

static void products_match_rounded_operands(void **state) {
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        check_product(native, "native", &shapes[i]);
        check_product(emulated, "emulated", &shapes[i]);
    }
}

/* The weights' bf16 copy, written by the optimizer in its own pass and rewritten after
 * other writes, gives the products of the weights converted per call: the same bits. The
 * per-call copy of W sits at the same offset of a buffer of its own, as the kernels may
 * depend on alignment. */
static void weight_copy_gives_the_bits_of_conversion(void **state) {
    ddp_backend *bs[2] = {native, emulated};
    for (int w = 0; w < 2; w++) {
        ddp_backend *b = bs[w];
        const int M = 19, N = 24, K = 40, off = 13;
        const size_t total = off + (size_t)N * K + 5;
        float *weights = malloc(total * 4), *plain = malloc(total * 4), *grad = malloc(total * 4);
        float *buf = malloc(total * 4), *x = malloc((size_t)M * K * 4);
        float *y1 = malloc((size_t)M * N * 4), *y2 = malloc((size_t)M * N * 4);
        for (size_t i = 0; i < total; i++) {
            weights[i] = ddp_rng_normal(&rng);
            grad[i] = 0.1f * ddp_rng_normal(&rng);
        }
        for (int i = 0; i < M * K; i++)
            x[i] = ddp_rng_normal(&rng);
        OK(ddp_backend_set_bf16_weights(b, weights, total));
        for (int round = 0; round < 3; round++) {
            if (round == 1)
                OK(ddp_backend_sgd_step(b, weights, grad, buf, total, 0.1f, 0.9f, 1e-4f, 0, 1,
                                        1.0f));
            if (round == 2) {
                for (size_t i = 0; i < total; i++)
                    grad[i] = -weights[i];
                OK(ddp_backend_copy(b, weights, grad, total * 4, DDP_COPY_D2D));
            }
            memcpy(plain + off, weights + off, (size_t)N * K * 4);
            OK(ddp_backend_gemm(b, 0, 1, M, N, K, 1.0f, x, K, weights + off, K, 0.0f, y1, N));
            OK(ddp_backend_gemm(b, 0, 1, M, N, K, 1.0f, x, K, plain + off, K, 0.0f, y2, N));
            if (memcmp(y1, y2, (size_t)M * N * 4) != 0)
                fail_msg("%s, round %d: the copy is not W's", w ? "emulated" : "native", round);
        }
        OK(ddp_backend_set_bf16_weights(b, NULL, 0));
        free(weights);
        free(plain);
        free(grad);
        free(buf);
        free(x);
        free(y1);
        free(y2);
    }
}

/* Attention in bf16 tracks attention in fp32 (the same qkv and output gradient). Every
 * output is at most two products deep in bf16 (forward: the scores, then P V; backward: dP
 * = dout V^T, then dS K, dS^T q or P^T dout), each rounding its operands by at most u =
 * 2^-8, and the softmax between them does not amplify relative error: so norm-wise the
 * outputs are within 2 x 2u of fp32's, the gradients within 2 x 2 x 2u (TOL_ATT_*). */
#define U_BF16      0x1p-8
#define TOL_ATT_FWD (4 * U_BF16)
#define TOL_ATT_BWD (8 * U_BF16)
static void attention_tracks_fp32(void **state) {
    ddp_backend *fp32 = NULL;
    ddp_backend_options o = {.device = DDP_DEVICE_CPU, .threads = 1};
    assert_int_equal(ddp_backend_create(&o, &fp32), DDP_OK);
    const int B = 2, T = 48, C = 32, NH = 4;
    size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C, natt = (size_t)B * NH * T * T;
    size_t nwork = DDP_ATTENTION_WORK(B, T, C, NH);
    float *qkv = malloc(nqkv * 4), *dout = malloc(nout * 4), *work = malloc(nwork * 4);
    float *out[3], *att[3], *dqkv[3];
    for (size_t i = 0; i < nqkv; i++)
        qkv[i] = ddp_rng_normal(&rng);
    for (size_t i = 0; i < nout; i++)
        dout[i] = ddp_rng_normal(&rng);
    ddp_backend *bs[3] = {fp32, native, emulated};
    for (int w = 0; w < 3; w++) {
        out[w] = malloc(nout * 4);
        att[w] = malloc(natt * 4);
        dqkv[w] = malloc(nqkv * 4);
        OK(ddp_backend_attention_forward(bs[w], out[w], att[w], qkv, work, B, T, C, NH));
        OK(ddp_backend_attention_backward(bs[w], dqkv[w], dout, qkv, att[w], work, B, T, C, NH));
    }
    for (int w = 1; w < 3; w++) {
        double ef = rel_error(out[w], out[0], nout), eb = rel_error(dqkv[w], dqkv[0], nqkv);
        print_message("attention %s: forward %.2g, backward %.2g of fp32 (bounds %.2g, %.2g)\n",
                      w == 1 ? "native" : "emulated", ef, eb, TOL_ATT_FWD, TOL_ATT_BWD);
        assert_true(ef <= TOL_ATT_FWD && ef > 0.0);
        assert_true(eb <= TOL_ATT_BWD && eb > 0.0);
    }
    for (int w = 0; w < 3; w++) {
        free(out[w]);
        free(att[w]);
        free(dqkv[w]);
    }
    free(qkv);
    free(dout);
    free(work);
    ddp_backend_free(fp32);
}

/* Convolutions in bf16 track fp32: every output and gradient is one product of rounded
 * operands deep (y = x * w, dx = dy * w, dw = x * dy; dbias the sum of the rounded dy), so
 * norm-wise within 2u of fp32 (TOL_CONV: twice that). */
#define TOL_CONV (4 * U_BF16)
static void convolution_tracks_fp32(void **state) {
    ddp_backend *fp32 = NULL;
    ddp_backend_options o = {.device = DDP_DEVICE_CPU, .threads = 1};
    assert_int_equal(ddp_backend_create(&o, &fp32), DDP_OK);
    ddp_conv_shape s = {
        .N = 4, .H = 9, .W = 7, .Cin = 3, .Cout = 8, .KH = 3, .KW = 3, .stride = 1, .pad = 1};
    size_t nx = (size_t)s.N * s.H * s.W * s.Cin, nw = (size_t)s.Cout * s.Cin * 9;
    size_t ny = (size_t)s.N * s.H * s.W * s.Cout;
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *bias = malloc(s.Cout * 4);
    float *dy = malloc(ny * 4), *work = malloc(DDP_CONV_WORK(&s) * 4);
    for (size_t i = 0; i < nx; i++)
        x[i] = ddp_rng_normal(&rng);
    for (size_t i = 0; i < nw; i++)
        w[i] = 0.3f * ddp_rng_normal(&rng);
    for (int i = 0; i < s.Cout; i++)
        bias[i] = ddp_rng_normal(&rng);
    for (size_t i = 0; i < ny; i++)
        dy[i] = ddp_rng_normal(&rng);
    ddp_backend *bs[3] = {fp32, native, emulated};
    float *y[3], *dx[3], *dw[3], *db[3];
    for (int k = 0; k < 3; k++) {
        y[k] = malloc(ny * 4);
        dx[k] = malloc(nx * 4);
        dw[k] = calloc(nw, 4);
        db[k] = calloc(s.Cout, 4);
        OK(ddp_backend_conv2d_forward(bs[k], y[k], x, w, bias, work, &s));
        OK(ddp_backend_conv2d_backward(bs[k], dx[k], dw[k], db[k], dy, x, w, work, &s));
    }
    for (int k = 1; k < 3; k++) {
        /* The bias gradient sums the output gradient as the weights' does: rounded too. */
        double e[4] = {rel_error(y[k], y[0], ny), rel_error(dx[k], dx[0], nx),
                       rel_error(dw[k], dw[0], nw), rel_error(db[k], db[0], s.Cout)};
        print_message("conv2d %s: y %.2g, dx %.2g, dw %.2g, dbias %.2g of fp32 (bound %.2g)\n",
                      k == 1 ? "native" : "emulated", e[0], e[1], e[2], e[3], TOL_CONV);
        for (int i = 0; i < 4; i++)
            assert_true(e[i] <= TOL_CONV && e[i] > 0.0);
    }
    for (int k = 0; k < 3; k++) {
        free(y[k]);
        free(dx[k]);
        free(dw[k]);
        free(db[k]);
    }
    free(x);
    free(w);
    free(bias);
    free(dy);
    free(work);
    ddp_backend_free(fp32);
}

int main(void) {
    ddp_rng_seed(&rng, 20261204, 0);
    ddp_backend_options o = {.device = DDP_DEVICE_CPU, .threads = 1, .math = DDP_MATH_BF16};
    assert_int_equal(ddp_backend_create(&o, &native), DDP_OK);
    /* Read once per backend, at its first product. */
    setenv("DDP_BF16_KERNELS", "emulate", 1);
    assert_int_equal(ddp_backend_create(&o, &emulated), DDP_OK);
    OK(ddp_backend_gemm(emulated, 0, 0, 1, 1, 1, 1.0f, &(float){1}, 1, &(float){1}, 1, 0.0f,
                        &(float){0}, 1));
    unsetenv("DDP_BF16_KERNELS");
    printf("bf16 products on this CPU: %s\n",
           ddp_backend_bf16_native(native) ? "native (oneDNN)" : "emulated (no bf16 kernels)");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(products_match_rounded_operands),
        cmocka_unit_test(weight_copy_gives_the_bits_of_conversion),
        cmocka_unit_test(attention_tracks_fp32),
        cmocka_unit_test(convolution_tracks_fp32),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    ddp_backend_free(native);
    ddp_backend_free(emulated);
    return failed;
}
