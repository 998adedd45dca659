/*
 * The reducer's bucket layout: a small first bucket (the last layers, final first),
 * buckets of the regular size after it, and small buckets again over the tail that is
 * final last (the first layer, reported in slices), cut only where gradients are
 * reported ready. And when buckets start: only once every element is reported final,
 * whatever the order of the reports (out of order, a tied weight reported at the very
 * end), a range reported twice is an error, and finish() starts what was never reported.
 * Sums through the buckets are checked under mpirun by tests/train/test_equivalence.c.
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

/* A reducer over n gradients (all ones) on a world of one, tensors at `bounds`, buckets
 * of at least `cap` elements, in test-progress mode. */
typedef struct {
    ddp_backend *b;
    ddp_comm *c;
    float *g;
    ddp_reducer *r;
} pass_fixture;

static void pass_init(pass_fixture *f, const size_t *bnds, int nb, size_t n, size_t cap) {
    ddp_backend_options bo = {.device = DDP_DEVICE_CPU, .threads = 1};
    assert_int_equal(ddp_backend_create(&bo, &f->b), DDP_OK);
    assert_int_equal(ddp_comm_create(DDP_COMM_LOCAL, f->b, &f->c), DDP_OK);
    f->g = calloc(n, sizeof *f->g);
    assert_non_null(f->g);
    ddp_reducer_options o = {.bucket_bytes = cap * sizeof(float),
                             .first_bucket_bytes = cap * sizeof(float),
                             .grad_dtype = DDP_F32,
                             .overlap = 1,
                             .progress = DDP_PROGRESS_TEST};
    assert_int_equal(ddp_reducer_create(f->c, f->b, f->g, n, bnds, nb, &o, &f->r), DDP_OK);
    assert_int_equal(ddp_reducer_begin(f->r), DDP_OK);
}

static void pass_free(pass_fixture *f) {
    ddp_reducer_free(f->r);
    free(f->g);
    ddp_comm_free(f->c);
    ddp_backend_free(f->b);
}

static const size_t four[] = {0, 25, 50, 75}; /* four tensors of 25: buckets of 50 */

static void a_bucket_starts_only_when_all_its_elements_are_final(void **state) {
    pass_fixture f;
    pass_init(&f, four, 4, 100, 50);
    assert_int_equal(ddp_reducer_num_buckets(f.r), 2); /* [50, 100), [0, 50) */
    /* Out of order: the lower half of the last bucket first, then a piece of the other
     * bucket, then the rest in pieces. */
    assert_int_equal(ddp_reducer_ready(f.r, 50, 25), DDP_OK);
    assert_int_equal(ddp_reducer_num_launched(f.r), 0);
    assert_int_equal(ddp_reducer_ready(f.r, 0, 10), DDP_OK);
    assert_int_equal(ddp_reducer_num_launched(f.r), 0);
    assert_int_equal(ddp_reducer_ready(f.r, 75, 25), DDP_OK);
    assert_int_equal(ddp_reducer_num_launched(f.r), 1);
    assert_int_equal(ddp_reducer_ready(f.r, 30, 20), DDP_OK);
    assert_int_equal(ddp_reducer_num_launched(f.r), 1);
    assert_int_equal(ddp_reducer_ready(f.r, 10, 20), DDP_OK);
    assert_int_equal(ddp_reducer_num_launched(f.r), 2);
    assert_int_equal(ddp_reducer_finish(f.r, NULL), DDP_OK);
    pass_free(&f);
}

static void a_tied_weight_reported_last_holds_its_bucket_back(void **state) {
    /* The tied embedding sits at [0, 25) (first in the buffer) but receives gradient at
     * both ends of backward: the model reports it once, after the last contribution. The
     * old watermark rule (start a bucket once everything above the lowest report is final)
     * would have started [0, 50) when [25, 50) came in. */
    pass_fixture f;
    pass_init(&f, four, 4, 100, 50);
    assert_int_equal(ddp_reducer_ready(f.r, 75, 25), DDP_OK);
    assert_int_equal(ddp_reducer_ready(f.r, 50, 25), DDP_OK);
    assert_int_equal(ddp_reducer_num_launched(f.r), 1);
    assert_int_equal(ddp_reducer_ready(f.r, 25, 25), DDP_OK);
    assert_int_equal(ddp_reducer_num_launched(f.r), 1);
    assert_int_equal(ddp_reducer_ready(f.r, 0, 25), DDP_OK);
    assert_int_equal(ddp_reducer_num_launched(f.r), 2);
    assert_int_equal(ddp_reducer_finish(f.r, NULL), DDP_OK);
    pass_free(&f);
}

static void a_range_reported_twice_is_an_error(void **state) {
    pass_fixture f;
    pass_init(&f, four, 4, 100, 50);
    assert_int_equal(ddp_reducer_ready(f.r, 75, 25), DDP_OK);
    /* Overlapping the earlier report by one element. */
    assert_int_equal(ddp_reducer_ready(f.r, 50, 26), DDP_ERR_INTERNAL);
    assert_msg_has("reported final twice");
    /* Nothing was counted for the refused report: the bucket is still waiting. */
    assert_int_equal(ddp_reducer_num_launched(f.r), 0);
    /* Outside the buffer. */
    assert_int_equal(ddp_reducer_ready(f.r, 90, 20), DDP_ERR_INTERNAL);
    ddp_error_clear();
    /* A new pass forgets the reports of the last one. */
    assert_int_equal(ddp_reducer_finish(f.r, NULL), DDP_OK);
    assert_int_equal(ddp_reducer_begin(f.r), DDP_OK);
    assert_int_equal(ddp_reducer_ready(f.r, 75, 25), DDP_OK);
    assert_int_equal(ddp_reducer_finish(f.r, NULL), DDP_OK);
    pass_free(&f);
}

static void finish_starts_buckets_never_reported(void **state) {
    /* Parameters without gradients in a pass (an unused layer) are never reported; the
     * call to finish says every gradient is final, so their bucket goes too, and the
     * sums (a world of one: the values themselves) are intact. */
    pass_fixture f;
    pass_init(&f, four, 4, 100, 50);
    for (int i = 0; i < 100; i++)
        f.g[i] = (float)i;
    assert_int_equal(ddp_reducer_ready(f.r, 50, 50), DDP_OK);
    assert_int_equal(ddp_reducer_num_launched(f.r), 1);
    assert_int_equal(ddp_reducer_finish(f.r, NULL), DDP_OK);
    assert_int_equal(ddp_reducer_num_launched(f.r), 2);
    for (int i = 0; i < 100; i++)
        assert_true(f.g[i] == (float)i);
    pass_free(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(first_bucket_is_small_then_regular_size),
        cmocka_unit_test(tail_that_is_final_last_gets_small_buckets),
        cmocka_unit_test(a_tensor_larger_than_a_bucket_is_a_bucket_of_its_own),
        cmocka_unit_test(a_bucket_starts_only_when_all_its_elements_are_final),
        cmocka_unit_test(a_tied_weight_reported_last_holds_its_bucket_back),
        cmocka_unit_test(a_range_reported_twice_is_an_error),
        cmocka_unit_test(finish_starts_buckets_never_reported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
