/*
 * The CUDA backend's creation and memory: what the op table (op_cases.c, run on the GPU by
 * test_ops_cuda.c) does not cover. Asking for a GPU where there is none must fail clearly;
 * a backend reports its device; copies in every direction and zeroing round-trip.
 *
 * Without a GPU only the first test runs (and the program exits 77, which ctest reports
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
    };
    int failed = cmocka_run_group_tests(tests, bt_setup, bt_teardown);
    if (failed == 0 && ddp_backend_cuda_device_count() == 0) return 77; /* all skipped */
    return failed;
}
