/*
 * The CUDA backend against the CPU backend, op by op. Every op runs on both with the
 * same random inputs (odd sizes, transposes, strides, in-place variants) and the GPU
 * result must match the CPU's within a bound for its precision, relative to the size of
 * the values: fp32 1e-5, tf32 3e-3, bf16 2e-2. Outputs on the GPU start as NaN, so an
 * element the GPU forgets to write fails the test.
 *
 * Without a GPU every test is skipped (and the program exits 77, which ctest reports
 * as skipped).
 */
#include "cuda_pair.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Runs only where there is no GPU: asking for one must fail clearly, not fall back. */
static void test_cuda_create_without_gpu_is_unsupported(void **state) {
    if (ddp_backend_cuda_device_count() > 0) skip();
    ddp_backend *b = NULL;
    ddp_backend_options o = {.device = DDP_DEVICE_CUDA};
    assert_int_equal(ddp_backend_create(&o, &b), DDP_ERR_UNSUPPORTED);
    assert_null(b);
    assert_non_null(strstr(ddp_error_message(), "--device cpu"));
    ddp_error_clear();
}

static void test_cuda_create_reports_device(void **state) {
    bt_fixture *f = bt_need_gpu(state);
    assert_string_equal(ddp_backend_name(f->gpu[0]), "cuda");
    assert_int_equal(ddp_backend_device(f->gpu[0]), DDP_DEVICE_CUDA);
    assert_false(ddp_backend_is_host(f->gpu[0]));
    ddp_backend *b = NULL;
    ddp_backend_options bad = {.device = DDP_DEVICE_CUDA,
                               .device_index = ddp_backend_cuda_device_count()};
    assert_int_equal(ddp_backend_create(&bad, &b), DDP_ERR_INVALID_ARG);
    assert_null(b);
}

/* ---- gemm ------------------------------------------------------------------------- */

/* One product on the CPU and on the GPU backend of math mode m. pad > 0 makes every
 * leading dimension larger than its row; the padding must come back untouched. */
static void gemm_case(bt_fixture *f, ddp_math m, int ta, int tb, int M, int N, int K, float alpha,
                      float beta, int pad) {
    ddp_backend *g = f->gpu[m];
    int a_rows = ta ? K : M, a_cols = ta ? M : K;
    int b_rows = tb ? N : K, b_cols = tb ? K : N;
    int lda = a_cols + pad, ldb = b_cols + pad, ldc = N + pad;
    if (lda < 1) lda = 1;
    if (ldb < 1) ldb = 1;
    size_t na = (size_t)a_rows * lda, nb = (size_t)b_rows * ldb, nc = (size_t)M * ldc;
    float *hA = bt_randn(f, na, 1.0f), *hB = bt_randn(f, nb, 1.0f), *hC = bt_randn(f, nc, 1.0f);
    float *hC_gpu = malloc(nc * sizeof *hC_gpu);
    assert_non_null(hC_gpu);
    for (size_t i = 0; i < nc; i++) {
        int padding = (int)(i % (size_t)ldc) >= N;
        if (padding) hC[i] = 7.0f;
        /* With beta = 0, C is output only: start the GPU's at NaN. */
        hC_gpu[i] = padding || beta != 0.0f ? hC[i] : NAN;
    }
    float *cA = bt_upload(f->cpu, hA, na * 4), *cB = bt_upload(f->cpu, hB, nb * 4);
    float *cC = bt_upload(f->cpu, hC, nc * 4);
    float *gA = bt_upload(g, hA, na * 4), *gB = bt_upload(g, hB, nb * 4);
    float *gC = bt_upload(g, hC_gpu, nc * 4);
    OK(ddp_backend_gemm(f->cpu, ta, tb, M, N, K, alpha, cA, lda, cB, ldb, beta, cC, ldc));
    OK(ddp_backend_gemm(g, ta, tb, M, N, K, alpha, gA, lda, gB, ldb, beta, gC, ldc));
    char what[160];
    snprintf(what, sizeof what, "gemm math=%d ta=%d tb=%d M=%d N=%d K=%d alpha=%g beta=%g pad=%d",
             (int)m, ta, tb, M, N, K, (double)alpha, (double)beta, pad);
    double tol = m == DDP_MATH_FP32 ? TOL_FP32 : m == DDP_MATH_TF32 ? TOL_TF32 : TOL_BF16;
    bt_compare(f, g, what, cC, gC, nc, tol);
    ddp_backend_dealloc(f->cpu, cA);
    ddp_backend_dealloc(f->cpu, cB);
    ddp_backend_dealloc(f->cpu, cC);
    ddp_backend_dealloc(g, gA);
    ddp_backend_dealloc(g, gB);
    ddp_backend_dealloc(g, gC);
    free(hA);
    free(hB);
    free(hC);
    free(hC_gpu);
}

static void gemm_all(bt_fixture *f, ddp_math m) {
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            gemm_case(f, m, ta, tb, 37, 129, 65, 1.0f, 0.0f, 0);
            gemm_case(f, m, ta, tb, 37, 129, 65, 0.7f, 0.5f, 3);
            gemm_case(f, m, ta, tb, 1, 7, 300, -1.3f, 1.0f, 1);
        }
    gemm_case(f, m, 0, 0, 256, 384, 512, 1.0f, 0.0f, 0);
    gemm_case(f, m, 1, 0, 64, 96, 1000, 0.5f, 1.0f, 0);
    gemm_case(f, m, 0, 1, 9, 11, 0, 1.0f, 0.5f, 2); /* empty K: C = beta C */
}

static void test_cuda_gemm_fp32_matches_cpu(void **state) {
    gemm_all(bt_need_gpu(state), DDP_MATH_FP32);
}
static void test_cuda_gemm_tf32_matches_cpu(void **state) {
    gemm_all(bt_need_gpu(state), DDP_MATH_TF32);
}
static void test_cuda_gemm_bf16_matches_cpu(void **state) {
    gemm_all(bt_need_gpu(state), DDP_MATH_BF16);
}

/* ---- bias ------------------------------------------------------------------------- */

static void test_cuda_bias_add_matches_cpu(void **state) {
    bt_fixture *f = bt_need_gpu(state);
    ddp_backend *g = f->gpu[0];
    const int N = 37, C = 129;
    float *hy = bt_randn(f, (size_t)N * C, 1.0f), *hb = bt_randn(f, C, 1.0f);
    float *cy = bt_upload(f->cpu, hy, (size_t)N * C * 4), *cb = bt_upload(f->cpu, hb, C * 4);
    float *gy = bt_upload(g, hy, (size_t)N * C * 4), *gb = bt_upload(g, hb, C * 4);
    OK(ddp_backend_bias_add(f->cpu, cy, cb, N, C));
    OK(ddp_backend_bias_add(g, gy, gb, N, C));
    bt_compare(f, g, "bias_add", cy, gy, (size_t)N * C, TOL_FP32);
    ddp_backend_dealloc(f->cpu, cy);
    ddp_backend_dealloc(f->cpu, cb);
    ddp_backend_dealloc(g, gy);
    ddp_backend_dealloc(g, gb);
    free(hy);
    free(hb);
}

static void test_cuda_bias_grad_accumulates_column_sums(void **state) {
    bt_fixture *f = bt_need_gpu(state);
    ddp_backend *g = f->gpu[0];
    const int shapes[][2] = {{37, 129}, {1000, 10}, {1, 33}, {513, 64}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int N = shapes[s][0], C = shapes[s][1];
        float *hdy = bt_randn(f, (size_t)N * C, 1.0f), *hdb = bt_randn(f, C, 1.0f);
        float *cdy = bt_upload(f->cpu, hdy, (size_t)N * C * 4),
              *cdb = bt_upload(f->cpu, hdb, C * 4);
        float *gdy = bt_upload(g, hdy, (size_t)N * C * 4), *gdb = bt_upload(g, hdb, C * 4);
        OK(ddp_backend_bias_grad(f->cpu, cdb, cdy, N, C));
        OK(ddp_backend_bias_grad(g, gdb, gdy, N, C));
        char what[64];
        snprintf(what, sizeof what, "bias_grad N=%d C=%d", N, C);
        bt_compare(f, g, what, cdb, gdb, (size_t)C, TOL_FP32);
        ddp_backend_dealloc(f->cpu, cdy);
        ddp_backend_dealloc(f->cpu, cdb);
        ddp_backend_dealloc(g, gdy);
        ddp_backend_dealloc(g, gdb);
        free(hdy);
        free(hdb);
    }
}

/* ---- activations ------------------------------------------------------------------ */

static void act_case(bt_fixture *f, ddp_act act, int in_place) {
    ddp_backend *g = f->gpu[0];
    const size_t n = 10007;
    float *hx = bt_randn(f, n, 3.0f), *hdy = bt_randn(f, n, 1.0f);
    hx[0] = 0.0f; /* pins the convention at the kink: ReLU'(0) = 0 */
    hx[1] = -0.0f;
    hx[2] = 1e-30f;
    hx[3] = -12.0f;
    hx[4] = 12.0f;
    char what[64];

    /* forward: y = act(x), in place (y == x) or into a NaN-filled y */
    float *cx = bt_upload(f->cpu, hx, n * 4), *gx = bt_upload(g, hx, n * 4);
    float *cy = in_place ? cx : bt_upload(f->cpu, hx, n * 4);
    float *gy = in_place ? gx : bt_upload_nan(g, n);
    OK(ddp_backend_act_forward(f->cpu, act, cx, cy, n));
    OK(ddp_backend_act_forward(g, act, gx, gy, n));
    snprintf(what, sizeof what, "act_forward act=%d in_place=%d", (int)act, in_place);
    bt_compare(f, g, what, cy, gy, n, TOL_FP32);
    if (!in_place) {
        ddp_backend_dealloc(f->cpu, cy);
        ddp_backend_dealloc(g, gy);
    }
    ddp_backend_dealloc(f->cpu, cx);
    ddp_backend_dealloc(g, gx);

    /* backward: dx = dy * act'(x), in place (dx == dy) or into a NaN-filled dx */
    cx = bt_upload(f->cpu, hx, n * 4);
    gx = bt_upload(g, hx, n * 4);
    float *cdy = bt_upload(f->cpu, hdy, n * 4), *gdy = bt_upload(g, hdy, n * 4);
    float *cdx = in_place ? cdy : bt_upload(f->cpu, hdy, n * 4);
    float *gdx = in_place ? gdy : bt_upload_nan(g, n);
    OK(ddp_backend_act_backward(f->cpu, act, cx, cdy, cdx, n));
    OK(ddp_backend_act_backward(g, act, gx, gdy, gdx, n));
    snprintf(what, sizeof what, "act_backward act=%d in_place=%d", (int)act, in_place);
    bt_compare(f, g, what, cdx, gdx, n, TOL_FP32);
    if (!in_place) {
        ddp_backend_dealloc(f->cpu, cdx);
        ddp_backend_dealloc(g, gdx);
    }
    ddp_backend_dealloc(f->cpu, cx);
    ddp_backend_dealloc(g, gx);
    ddp_backend_dealloc(f->cpu, cdy);
    ddp_backend_dealloc(g, gdy);
    free(hx);
    free(hdy);
}

static void test_cuda_relu_matches_cpu(void **state) {
    bt_fixture *f = bt_need_gpu(state);
    act_case(f, DDP_ACT_RELU, 0);
    act_case(f, DDP_ACT_RELU, 1);
}

static void test_cuda_gelu_matches_cpu(void **state) {
    bt_fixture *f = bt_need_gpu(state);
    act_case(f, DDP_ACT_GELU, 0);
    act_case(f, DDP_ACT_GELU, 1);
}

/* ---- softmax cross-entropy -------------------------------------------------------- */

static void xent_case(bt_fixture *f, int N, int C, int with_grad) {
    ddp_backend *g = f->gpu[0];
    size_t n = (size_t)N * C;
    float *hz = bt_randn(f, n, 3.0f);
    int32_t *hl = malloc((size_t)N * sizeof *hl);
    assert_non_null(hl);
    for (int i = 0; i < N; i++) {
        hl[i] = (int32_t)ddp_rng_below(&f->rng, (uint64_t)C);
        if (i % 3 == 0) hz[(size_t)i * C + hl[i]] += 8.0f; /* some predictions are right */
    }
    /* Ties: the first maximum is the prediction. Row 0 predicts its label 0, row 1 has
     * label 1 and does not (when there are two classes or more). */
    for (int i = 0; i < 2 && i < N; i++) {
        for (int j = 0; j < C; j++)
            hz[(size_t)i * C + j] = 0.25f;
        hl[i] = C > 1 ? i : 0;
    }
    float hstats[2] = {1.5f, 2.0f}; /* stats accumulate */
    float *cz = bt_upload(f->cpu, hz, n * 4), *gz = bt_upload(g, hz, n * 4);
    int32_t *cl = bt_upload(f->cpu, hl, (size_t)N * 4), *gl = bt_upload(g, hl, (size_t)N * 4);
    float *cs = bt_upload(f->cpu, hstats, 8), *gs = bt_upload(g, hstats, 8);
    float *cd = NULL, *gd = NULL;
    if (with_grad) {
        cd = bt_upload(f->cpu, hz, n * 4);
        gd = bt_upload_nan(g, n);
    }
    const float scale = 1.0f / 64.0f;
    OK(ddp_backend_softmax_xent(f->cpu, cz, cl, N, C, scale, cd, cs));
    OK(ddp_backend_softmax_xent(g, gz, gl, N, C, scale, gd, gs));

    char what[80];
    snprintf(what, sizeof what, "softmax_xent N=%d C=%d grad=%d", N, C, with_grad);
    float *sc = bt_download(f->cpu, cs, 2), *sg = bt_download(g, gs, 2);
    if (fabs((double)sg[0] - (double)sc[0]) > TOL_FP32 * fabs((double)sc[0]) || isnan(sg[0])) {
        print_error("%s: loss sum %.9g on the GPU, %.9g on the CPU\n", what, (double)sg[0],
                    (double)sc[0]);
        fail();
    }
    if (sg[1] != sc[1]) {
        print_error("%s: %g correct on the GPU, %g on the CPU\n", what, (double)sg[1],
                    (double)sc[1]);
        fail();
    }
    assert_true(sc[1] > 2.0f); /* the forced hits were counted */
    if (with_grad) {
        bt_compare(f, g, what, cd, gd, n, TOL_FP32);
        ddp_backend_dealloc(f->cpu, cd);
        ddp_backend_dealloc(g, gd);
    }
    free(sc);
    free(sg);
    ddp_backend_dealloc(f->cpu, cz);
    ddp_backend_dealloc(g, gz);
    ddp_backend_dealloc(f->cpu, cl);
    ddp_backend_dealloc(g, gl);
    ddp_backend_dealloc(f->cpu, cs);
    ddp_backend_dealloc(g, gs);
    free(hz);
    free(hl);
}

static void test_cuda_softmax_xent_matches_cpu(void **state) {
    bt_fixture *f = bt_need_gpu(state);
    const int shapes[][2] = {{37, 10}, {37, 129}, {5, 3000}, {64, 1}, {3, 50257}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        xent_case(f, shapes[s][0], shapes[s][1], 1);
        xent_case(f, shapes[s][0], shapes[s][1], 0); /* NULL dlogits: stats only */
    }
}

static void test_cuda_softmax_xent_in_place(void **state) {
    bt_fixture *f = bt_need_gpu(state);
    ddp_backend *g = f->gpu[0];
    const int N = 37, C = 129;
    size_t n = (size_t)N * C;
    float *hz = bt_randn(f, n, 3.0f);
    int32_t *hl = malloc((size_t)N * sizeof *hl);
    assert_non_null(hl);
    for (int i = 0; i < N; i++)
        hl[i] = (int32_t)ddp_rng_below(&f->rng, (uint64_t)C);
    float zero[2] = {0.0f, 0.0f};
    float *cz = bt_upload(f->cpu, hz, n * 4), *gz = bt_upload(g, hz, n * 4);
    float *cd = bt_upload(f->cpu, hz, n * 4);
    int32_t *cl = bt_upload(f->cpu, hl, (size_t)N * 4), *gl = bt_upload(g, hl, (size_t)N * 4);
    float *cs = bt_upload(f->cpu, zero, 8), *gs = bt_upload(g, zero, 8);
    OK(ddp_backend_softmax_xent(f->cpu, cz, cl, N, C, 0.5f, cd, cs));
    OK(ddp_backend_softmax_xent(g, gz, gl, N, C, 0.5f, gz, gs)); /* dlogits == logits */
    bt_compare(f, g, "softmax_xent in place", cd, gz, n, TOL_FP32);
    bt_compare(f, g, "softmax_xent in place stats", cs, gs, 1, TOL_FP32);
    ddp_backend_dealloc(f->cpu, cz);
    ddp_backend_dealloc(f->cpu, cd);
    ddp_backend_dealloc(f->cpu, cl);
    ddp_backend_dealloc(f->cpu, cs);
    ddp_backend_dealloc(g, gz);
    ddp_backend_dealloc(g, gl);
    ddp_backend_dealloc(g, gs);
    free(hz);
    free(hl);
}

/* ---- gather ----------------------------------------------------------------------- */

/* row_bytes picks the 16-byte, 4-byte or byte path; dst_off misaligns the destination. */
static void gather_case(bt_fixture *f, size_t row_bytes, size_t dst_off) {
    ddp_backend *g = f->gpu[0];
    const size_t rows = 100, n = 53;
    unsigned char *hsrc = malloc(rows * row_bytes), *want = malloc(n * row_bytes);
    unsigned char *fill = malloc(n * row_bytes + dst_off);
    int32_t hidx[53];
    assert_true(hsrc && want && fill);
    for (size_t i = 0; i < rows * row_bytes; i++)
        hsrc[i] = (unsigned char)ddp_rng_u64(&f->rng);
    for (size_t i = 0; i < n; i++) {
        hidx[i] = (int32_t)ddp_rng_below(&f->rng, rows); /* repeats allowed */
        memcpy(want + i * row_bytes, hsrc + (size_t)hidx[i] * row_bytes, row_bytes);
    }
    hidx[n - 1] = (int32_t)rows - 1;
    memcpy(want + (n - 1) * row_bytes, hsrc + (rows - 1) * row_bytes, row_bytes);
    memset(fill, 0xAB, n * row_bytes + dst_off);

    unsigned char *csrc = bt_upload(f->cpu, hsrc, rows * row_bytes);
    unsigned char *gsrc = bt_upload(g, hsrc, rows * row_bytes);
    int32_t *cidx = bt_upload(f->cpu, hidx, sizeof hidx), *gidx = bt_upload(g, hidx, sizeof hidx);
    unsigned char *cdst = bt_upload(f->cpu, fill, n * row_bytes + dst_off);
    unsigned char *gdst = bt_upload(g, fill, n * row_bytes + dst_off);
    OK(ddp_backend_gather_rows(f->cpu, cdst + dst_off, csrc, cidx, n, row_bytes));
    OK(ddp_backend_gather_rows(g, gdst + dst_off, gsrc, gidx, n, row_bytes));
    unsigned char *hc = malloc(n * row_bytes + dst_off), *hg = malloc(n * row_bytes + dst_off);
    assert_true(hc && hg);
    OK(ddp_backend_copy(f->cpu, hc, cdst, n * row_bytes + dst_off, DDP_COPY_D2H));
    OK(ddp_backend_copy(g, hg, gdst, n * row_bytes + dst_off, DDP_COPY_D2H));
    assert_memory_equal(hc + dst_off, want, n * row_bytes);
    assert_memory_equal(hg, hc, n * row_bytes + dst_off); /* incl. untouched leading bytes */
    ddp_backend_dealloc(f->cpu, csrc);
    ddp_backend_dealloc(f->cpu, cidx);
    ddp_backend_dealloc(f->cpu, cdst);
    ddp_backend_dealloc(g, gsrc);
    ddp_backend_dealloc(g, gidx);
    ddp_backend_dealloc(g, gdst);
    free(hsrc);
    free(want);
    free(fill);
    free(hc);
    free(hg);
}

static void test_cuda_gather_rows_matches_cpu(void **state) {
    bt_fixture *f = bt_need_gpu(state);
    gather_case(f, 64, 0);   /* 16-byte words */
    gather_case(f, 3136, 0); /* an MNIST image of floats */
    gather_case(f, 12, 0);   /* 4-byte words */
    gather_case(f, 64, 4);   /* 16-byte rows, 4-aligned destination */
    gather_case(f, 37, 0);   /* bytes */
    gather_case(f, 64, 1);   /* misaligned destination */
}

/* ---- scale, conversion, sum of squares ------------------------------------------- */

static void test_cuda_scale_matches_cpu(void **state) {
    bt_fixture *f = bt_need_gpu(state);
    ddp_backend *g = f->gpu[0];
    const size_t n = 10007;
    float *hx = bt_randn(f, n, 2.0f);
    float *cx = bt_upload(f->cpu, hx, n * 4), *gx = bt_upload(g, hx, n * 4);
    OK(ddp_backend_scale(f->cpu, cx, n, -0.37f));
    OK(ddp_backend_scale(g, gx, n, -0.37f));
    bt_compare(f, g, "scale", cx, gx, n, TOL_FP32);
    ddp_backend_dealloc(f->cpu, cx);
    ddp_backend_dealloc(g, gx);
    free(hx);
}

/* Bit-exact agreement with the CPU, including ties, overflow to infinity and NaNs. */
static void test_cuda_bf16_conversion_is_bit_exact(void **state) {
    bt_fixture *f = bt_need_gpu(state);
    ddp_backend *g = f->gpu[0];
    const size_t n = 70000;
    float *hx = bt_randn(f, n, 100.0f);
    const uint32_t special[] = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u,
                                0x7fc00000u, 0xffc00001u, 0x7f800001u, 0x7f7fffffu,
                                0x3f808000u, 0x3f818000u, 0x3f808001u, 0x00000001u,
                                0x807fffffu, 0x7f7f8000u, 0xff7f7fffu, 0x3f7fffffu};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++)
        memcpy(&hx[i], &special[i], 4);
    float *cx = bt_upload(f->cpu, hx, n * 4), *gx = bt_upload(g, hx, n * 4);
    uint16_t *cy = NULL, *gy = NULL;
    OK(ddp_backend_alloc(f->cpu, n * 2, (void **)&cy));
    OK(ddp_backend_alloc(g, n * 2, (void **)&gy));
    OK(ddp_backend_f32_to_bf16(f->cpu, cx, cy, n));
    OK(ddp_backend_f32_to_bf16(g, gx, gy, n));
    uint16_t *hc = malloc(n * 2), *hg = malloc(n * 2);
    assert_true(hc && hg);
    OK(ddp_backend_copy(f->cpu, hc, cy, n * 2, DDP_COPY_D2H));
    OK(ddp_backend_copy(g, hg, gy, n * 2, DDP_COPY_D2H));
    assert_memory_equal(hg, hc, n * 2);

    /* Back to fp32: every one of the 65536 bf16 patterns. */
    for (size_t i = 0; i < 65536; i++)
        hc[i] = (uint16_t)i;
    OK(ddp_backend_copy(f->cpu, cy, hc, 65536 * 2, DDP_COPY_H2D));
    OK(ddp_backend_copy(g, gy, hc, 65536 * 2, DDP_COPY_H2D));
    float *gz = bt_upload_nan(g, 65536), *cz = NULL;
    OK(ddp_backend_alloc(f->cpu, 65536 * 4, (void **)&cz));
    OK(ddp_backend_bf16_to_f32(f->cpu, cy, cz, 65536));
    OK(ddp_backend_bf16_to_f32(g, gy, gz, 65536));
    float *zc = bt_download(f->cpu, cz, 65536), *zg = bt_download(g, gz, 65536);
    assert_memory_equal(zg, zc, 65536 * 4);
    ddp_backend_dealloc(f->cpu, cx);
    ddp_backend_dealloc(f->cpu, cy);
    ddp_backend_dealloc(f->cpu, cz);
    ddp_backend_dealloc(g, gx);
    ddp_backend_dealloc(g, gy);
    ddp_backend_dealloc(g, gz);
    free(hx);
    free(hc);
    free(hg);
    free(zc);
    free(zg);
}

static double sumsq_on(ddp_backend *b, const float *h, size_t n) {
    float *d = bt_upload(b, h, n * 4);
    double out = -1.0;
    OK(ddp_backend_sumsq(b, d, n, &out));
    ddp_backend_dealloc(b, d);
    return out;
}

static void test_cuda_sumsq_matches_cpu(void **state) {
    bt_fixture *f = bt_need_gpu(state);
    ddp_backend *g = f->gpu[0];
    const size_t sizes[] = {1, 31, 1000, 100003, 3000017};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        float *hx = bt_randn(f, sizes[s], 1.5f);
        double c = sumsq_on(f->cpu, hx, sizes[s]), gg = sumsq_on(g, hx, sizes[s]);
        if (fabs(gg - c) > 1e-9 * c) {
            print_error("sumsq n=%zu: %.17g on the GPU, %.17g on the CPU\n", sizes[s], gg, c);
            fail();
        }
        free(hx);
    }
    float *hx = bt_randn(f, 1000, 1.0f);
    hx[500] = INFINITY;
    assert_true(isinf(sumsq_on(g, hx, 1000)));
    hx[501] = NAN;
    assert_true(isnan(sumsq_on(g, hx, 1000)));
    free(hx);
}

/* ---- optimizers ------------------------------------------------------------------- */

static void test_cuda_sgd_step_matches_cpu(void **state) {
    bt_fixture *f = bt_need_gpu(state);
    ddp_backend *g = f->gpu[0];
    const size_t n = 1001;
    for (int nesterov = 0; nesterov < 2; nesterov++)
        for (int first = 0; first < 2; first++) {
            float *hp = bt_randn(f, n, 1.0f), *hg = bt_randn(f, n, 1.0f),
                  *hb = bt_randn(f, n, 1.0f);
            float *cp = bt_upload(f->cpu, hp, n * 4), *cg = bt_upload(f->cpu, hg, n * 4);
            float *cb = bt_upload(f->cpu, hb, n * 4);
            float *gp = bt_upload(g, hp, n * 4), *gg = bt_upload(g, hg, n * 4);
            /* On the first step the buffer is output only. */
            float *gb = first ? bt_upload_nan(g, n) : bt_upload(g, hb, n * 4);
            OK(ddp_backend_sgd_step(f->cpu, cp, cg, cb, n, 0.1f, 0.9f, 0.01f, nesterov, first, 1.0f));
            OK(ddp_backend_sgd_step(g, gp, gg, gb, n, 0.1f, 0.9f, 0.01f, nesterov, first, 1.0f));
            char what[64];
            snprintf(what, sizeof what, "sgd p nesterov=%d first=%d", nesterov, first);
            bt_compare(f, g, what, cp, gp, n, TOL_FP32);
            snprintf(what, sizeof what, "sgd buf nesterov=%d first=%d", nesterov, first);
            bt_compare(f, g, what, cb, gb, n, TOL_FP32);
            ddp_backend_dealloc(f->cpu, cp);
            ddp_backend_dealloc(f->cpu, cg);
            ddp_backend_dealloc(f->cpu, cb);
            ddp_backend_dealloc(g, gp);
            ddp_backend_dealloc(g, gg);
            ddp_backend_dealloc(g, gb);
            free(hp);
            free(hg);
            free(hb);
        }
}

static void test_cuda_adamw_step_matches_cpu(void **state) {
    bt_fixture *f = bt_need_gpu(state);
    ddp_backend *g = f->gpu[0];
    const size_t n = 1001;
    const int64_t steps[] = {1, 7, 1000};
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        float *hp = bt_randn(f, n, 1.0f), *hg = bt_randn(f, n, 1.0f), *hm = bt_randn(f, n, 0.1f);
        float *hv = bt_randn(f, n, 0.1f);
        for (size_t i = 0; i < n; i++)
            hv[i] = hv[i] * hv[i]; /* second moments are >= 0 */
        float *cp = bt_upload(f->cpu, hp, n * 4), *cg = bt_upload(f->cpu, hg, n * 4);
        float *cm = bt_upload(f->cpu, hm, n * 4), *cv = bt_upload(f->cpu, hv, n * 4);
        float *gp = bt_upload(g, hp, n * 4), *gg = bt_upload(g, hg, n * 4);
        float *gm = bt_upload(g, hm, n * 4), *gv = bt_upload(g, hv, n * 4);
        OK(ddp_backend_adamw_step(f->cpu, cp, cg, cm, cv, n, 0.05f, 0.9f, 0.999f, 1e-8f, 0.1f,
                                  steps[s], 1.0f));
        OK(ddp_backend_adamw_step(g, gp, gg, gm, gv, n, 0.05f, 0.9f, 0.999f, 1e-8f, 0.1f,
                                  steps[s], 1.0f));
        char what[64];
        snprintf(what, sizeof what, "adamw p t=%lld", (long long)steps[s]);
        bt_compare(f, g, what, cp, gp, n, TOL_FP32);
        snprintf(what, sizeof what, "adamw m t=%lld", (long long)steps[s]);
        bt_compare(f, g, what, cm, gm, n, TOL_FP32);
        snprintf(what, sizeof what, "adamw v t=%lld", (long long)steps[s]);
        bt_compare(f, g, what, cv, gv, n, TOL_FP32);
        float *ptrs_c[] = {cp, cg, cm, cv}, *ptrs_g[] = {gp, gg, gm, gv};
        for (int i = 0; i < 4; i++) {
            ddp_backend_dealloc(f->cpu, ptrs_c[i]);
            ddp_backend_dealloc(g, ptrs_g[i]);
        }
        free(hp);
        free(hg);
        free(hm);
        free(hv);
    }
}

/* ---- memory ----------------------------------------------------------------------- */

static void test_cuda_zero_and_copies_round_trip(void **state) {
    bt_fixture *f = bt_need_gpu(state);
    ddp_backend *g = f->gpu[0];
    const size_t n = 4099;
    float *hx = bt_randn(f, n, 1.0f);
    float *a = bt_upload(g, hx, n * 4), *b = bt_upload_nan(g, n);
    OK(ddp_backend_copy(g, b, a, n * 4, DDP_COPY_D2D));
    float *back = bt_download(g, b, n);
    assert_memory_equal(back, hx, n * 4);
    free(back);
    OK(ddp_backend_zero(g, b + 1, (n - 2) * 4));
    back = bt_download(g, b, n);
    assert_true(back[0] == hx[0] && back[n - 1] == hx[n - 1]);
    for (size_t i = 1; i + 1 < n; i++)
        assert_true(back[i] == 0.0f);
    free(back);
    void *pinned = NULL;
    OK(ddp_backend_host_alloc(g, n * 4, &pinned));
    OK(ddp_backend_copy(g, pinned, a, n * 4, DDP_COPY_D2H));
    assert_memory_equal(pinned, hx, n * 4);
    OK(ddp_backend_sync(g));
    ddp_backend_host_dealloc(g, pinned);
    ddp_backend_dealloc(g, a);
    ddp_backend_dealloc(g, b);
    free(hx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cuda_create_without_gpu_is_unsupported),
        cmocka_unit_test(test_cuda_create_reports_device),
        cmocka_unit_test(test_cuda_zero_and_copies_round_trip),
        cmocka_unit_test(test_cuda_gemm_fp32_matches_cpu),
        cmocka_unit_test(test_cuda_gemm_tf32_matches_cpu),
        cmocka_unit_test(test_cuda_gemm_bf16_matches_cpu),
        cmocka_unit_test(test_cuda_bias_add_matches_cpu),
        cmocka_unit_test(test_cuda_bias_grad_accumulates_column_sums),
        cmocka_unit_test(test_cuda_relu_matches_cpu),
        cmocka_unit_test(test_cuda_gelu_matches_cpu),
        cmocka_unit_test(test_cuda_softmax_xent_matches_cpu),
        cmocka_unit_test(test_cuda_softmax_xent_in_place),
        cmocka_unit_test(test_cuda_gather_rows_matches_cpu),
        cmocka_unit_test(test_cuda_scale_matches_cpu),
        cmocka_unit_test(test_cuda_bf16_conversion_is_bit_exact),
        cmocka_unit_test(test_cuda_sumsq_matches_cpu),
        cmocka_unit_test(test_cuda_sgd_step_matches_cpu),
        cmocka_unit_test(test_cuda_adamw_step_matches_cpu),
    };
    int failed = cmocka_run_group_tests(tests, bt_setup, bt_teardown);
    if (failed == 0 && ddp_backend_cuda_device_count() == 0) return 77; /* all skipped */
    return failed;
}
