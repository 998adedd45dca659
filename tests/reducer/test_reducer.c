/*
 * The reducer's bucket layout: a small first bucket (the last layers, final first),
 * buckets of the regular size after it, and small buckets again over the tail that is
 * final last (the first layer, reported in slices), cut only where gradients are
 * reported ready. Sums through the buckets are checked under mpirun by
 * tests/train/test_equivalence.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ddp/reducer.h"
#include "test_util.h"

static void expect_buckets(const size_t *bounds, int nb, size_t n, size_t first, size_t cap,
                           size_t tail, const size_t (*want)[2], int n_want) {
    ddp_backend_options bo = {.device = DDP_DEVICE_CPU, .threads = 1};
    ddp_backend *b = NULL;
    ddp_comm *c = NULL;
    assert_int_equal(ddp_backend_create(&bo, &b), DDP_OK);
    assert_int_equal(ddp_comm_create(DDP_COMM_LOCAL, b, &c), DDP_OK);
    float *g = calloc(n, sizeof *g);
    assert_non_null(g);
    ddp_reducer_options o = {.bucket_bytes = cap * sizeof(float),
                             .first_bucket_bytes = first * sizeof(float),
                             .grad_dtype = DDP_F32,
                             .overlap = 1,
                             .progress = DDP_PROGRESS_TEST,
                             .tail_elems = tail};
    ddp_reducer *r = NULL;
    assert_int_equal(ddp_reducer_create(c, b, g, n, bounds, nb, &o, &r), DDP_OK);
    assert_int_equal(ddp_reducer_num_buckets(r), n_want);
    for (int i = 0; i < n_want; i++) {
        size_t begin, end;
        ddp_reducer_bucket(r, i, &begin, &end);
        if (begin != want[i][0] || end != want[i][1])
            fail_msg("bucket %d is [%zu, %zu), expected [%zu, %zu)", i, begin, end, want[i][0],
                     want[i][1]);
    }
    ddp_reducer_free(r);
    free(g);
    ddp_comm_free(c);
    ddp_backend_free(b);
}

static const size_t bounds[] = {0, 10, 20, 30, 40, 60, 80};

static void first_bucket_is_small_then_regular_size(void **state) {
    /* From the end: [80,100) reaches the first bucket's 15; then 35 each; the rest. */
    const size_t want[][2] = {{80, 100}, {40, 80}, {0, 40}};
    expect_buckets(bounds, 7, 100, 15, 35, 0, want, 3);
}

static void tail_that_is_final_last_gets_small_buckets(void **state) {
    /* [0, 40) is final last: cut at 15 like the first bucket, so that what is left to
     * send after backward is [0, 20) instead of [0, 40). */
    const size_t want[][2] = {{80, 100}, {40, 80}, {20, 40}, {0, 20}};
    expect_buckets(bounds, 7, 100, 15, 35, 40, want, 4);
}

static void a_tensor_larger_than_a_bucket_is_a_bucket_of_its_own(void **state) {
    const size_t big[] = {0, 5, 95};
    const size_t want[][2] = {{95, 100}, {5, 95}, {0, 5}};
    expect_buckets(big, 3, 100, 1, 20, 0, want, 3);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(first_bucket_is_small_then_regular_size),
        cmocka_unit_test(tail_that_is_final_last_gets_small_buckets),
        cmocka_unit_test(a_tensor_larger_than_a_bucket_is_a_bucket_of_its_own),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
