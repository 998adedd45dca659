/*
 * The CUDA backend's creation and memory: what the op table (op_cases.c, run on the GPU by
 * test_ops_cuda.c) does not cover. Asking for a GPU where there is none must fail clearly;
 * a backend reports its device; copies in every direction and zeroing round-trip.
 *
 * Without a GPU only the first test runs (and the program exits 77, which ctest reports
 * as skipped); with one, all the others.
 */
#include "cuda_pair.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Runs only where there is no GPU: asking for one must fail clearly, not fall back. */
static void test_cuda_create_without_gpu_is_unsupported(void **state) {
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

/* ---- the bf16 copy of the weights -------------------------------------------------- */

/* y = x W^T in bf16 with W at w (inside the registered weights or not); downloaded. */
static float *product(bt_fixture *f, const float *x, const float *w, int M, int N, int K) {
    ddp_backend *g = f->gpu[DDP_MATH_BF16];
    float *y = bt_upload_nan(g, (size_t)M * N);
    OK(ddp_backend_gemm(g, 0, 1, M, N, K, 1.0f, x, K, w, K, 0.0f, y, N));
    float *h = bt_download(g, y, (size_t)M * N);
    ddp_backend_dealloc(g, y);
    return h;
}

/* The product reading W from the bf16 copy has the bits of the one converting W itself
 * (the same rounding), right after registration, after optimizer steps (which write the
 * copy in their own pass), after a copy into the weights (which makes it stale), and
 * after the copy is dropped. cuBLAS chooses its kernel (so its order of summation) by the
 * operands' alignment, which must match for the bits to: the W converted per call goes to
 * a workspace aligned to 256 bytes, so W sits at an offset that keeps its copy aligned as
 * much. */
static void test_bf16_weight_copy_gives_the_bits_of_conversion(void **state) {
    bt_fixture *f = bt_need_gpu(state);
    ddp_backend *g = f->gpu[DDP_MATH_BF16];
    /* off: a multiple of 128 elements, so that W's copy and the per-call conversion's
     * workspace share cuBLAS's alignment class (256 bytes and more). */
    const int M = 33, N = 40, K = 72, off = 128;
    const size_t total = (size_t)off + (size_t)N * K + 11;
    float *hw = bt_randn(f, total, 0.5f), *hx = bt_randn(f, (size_t)M * K, 1.0f);
    float *hg = bt_randn(f, total, 0.1f);
    float *weights = bt_upload(g, hw, total * 4), *x = bt_upload(g, hx, (size_t)M * K * 4);
    float *grad = bt_upload(g, hg, total * 4), *plain = bt_upload_nan(g, total);
    float *buf = bt_upload_nan(g, total), *m = bt_upload(g, hg, total * 4);
    float *v = bt_upload(g, hg, total * 4);
    OK(ddp_backend_zero(g, v, total * 4));
    OK(ddp_backend_set_bf16_weights(g, weights, total));
    for (int round = 0; round < 4; round++) {
        if (round == 1)
            OK(ddp_backend_sgd_step(g, weights, grad, buf, total, 0.1f, 0.9f, 1e-4f, 0, 1, 1.0f));
        if (round == 2)
            OK(ddp_backend_adamw_step(g, weights, grad, m, v, total, 1e-2f, 0.9f, 0.99f, 1e-8f,
                                      0.01f, 1, 1.0f));
        if (round == 3) {
            for (size_t i = 0; i < total; i++)
                hw[i] = -hw[i] * 0.75f;
            OK(ddp_backend_copy(g, weights, hw, total * 4, DDP_COPY_H2D));
        }
        /* The same W outside the registered array: converted per call. */
        OK(ddp_backend_copy(g, plain + off, weights + off, (size_t)N * K * 4, DDP_COPY_D2D));
        float *a = product(f, x, weights + off, M, N, K), *b = product(f, x, plain + off, M, N, K);
        if (memcmp(a, b, (size_t)M * N * 4) != 0) fail_msg("round %d: the copy is not W's", round);
        free(a);
        free(b);
    }
    OK(ddp_backend_set_bf16_weights(g, NULL, 0));
    float *a = product(f, x, weights + off, M, N, K), *b = product(f, x, plain + off, M, N, K);
    assert_memory_equal(a, b, (size_t)M * N * 4);
    free(a);
    free(b);
    void *bufs[] = {weights, x, grad, plain, buf, m, v};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        ddp_backend_dealloc(g, bufs[i]);
    free(hw);
    free(hx);
    free(hg);
}

int main(void) {
    /* Without a GPU only the first group runs (and the program exits 77: skipped); with
     * one only the second, so that a GPU machine sees no skip at all. */
    const struct CMUnitTest without_gpu[] = {
        cmocka_unit_test(test_cuda_create_without_gpu_is_unsupported),
    };
    const struct CMUnitTest with_gpu[] = {
        cmocka_unit_test(test_cuda_create_reports_device),
        cmocka_unit_test(test_cuda_zero_and_copies_round_trip),
        cmocka_unit_test(test_bf16_weight_copy_gives_the_bits_of_conversion),
    };
    if (ddp_backend_cuda_device_count() == 0) {
        int failed = cmocka_run_group_tests(without_gpu, NULL, NULL);
        return failed ? failed : 77;
    }
    return cmocka_run_group_tests(with_gpu, bt_setup, bt_teardown);
}
