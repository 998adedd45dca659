/*
 * The straggler report (src/train/straggler.c) on its own:
 *  - a rank more than 20% slower than the median in one phase, by more than 10% of a step
 *    and 1 ms, is named with that phase at the third logging step in a row, not before;
 *  - the streak starts again when the slowest rank or phase changes, and ends when no rank
 *    is slow;
 *  - an even run (every rank within 20%, or slower by a negligible time) is never named;
 *  - with an even number of ranks the median is the lower middle one, so with two ranks
 *    the other rank is the reference, and a straggler does not raise it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "train/straggler.h"

#define MAX_RANKS 8

/* One logging step of `world` ranks: every rank has forward f, backward b, data d and a
 * step of 2 (f + b + d), but rank `slow` has `factor` times the time in `phase`. */
static int log_step(ddp_straggler *s, int world, int slow, int phase, double factor) {
    double times[MAX_RANKS * DDP_PHASE_COUNT], steps[MAX_RANKS];
    const double base[DDP_PHASE_COUNT] = {0.010, 0.020, 0.002};
    for (int r = 0; r < world; r++) {
        double sum = 0.0;
        for (int p = 0; p < DDP_PHASE_COUNT; p++) {
            times[r * DDP_PHASE_COUNT + p] = base[p] * (r == slow && p == phase ? factor : 1.0);
            sum += base[p];
        }
        steps[r] = 2.0 * sum;
    }
    return ddp_straggler_update(s, times, steps, world);
}

static void test_named_after_three_logging_steps(void **state) {
    (void)state;
    ddp_straggler s;
    ddp_straggler_init(&s);
    assert_int_equal(log_step(&s, 4, 2, DDP_PHASE_DATA, 5.0), 0);
    assert_int_equal(log_step(&s, 4, 2, DDP_PHASE_DATA, 5.0), 0);
    assert_int_equal(log_step(&s, 4, 2, DDP_PHASE_DATA, 5.0), 1);
    assert_int_equal(s.rank, 2);
    assert_int_equal(s.phase, DDP_PHASE_DATA);
    assert_int_equal(s.streak, 3);
    assert_true(s.time > 0.0099 && s.time < 0.0101);
    assert_true(s.median > 0.0019 && s.median < 0.0021);
    char text[160];
    ddp_straggler_text(&s, text, sizeof text);
    assert_string_equal(text,
                        "straggler: rank 2, data 10.0 ms vs 2.0 ms (median), 3 logging steps");
    /* It stays named while it lasts. */
    assert_int_equal(log_step(&s, 4, 2, DDP_PHASE_DATA, 5.0), 1);
    assert_int_equal(s.streak, 4);
}

static void test_streak_restarts_when_the_straggler_changes(void **state) {
    (void)state;
    ddp_straggler s;
    ddp_straggler_init(&s);
    log_step(&s, 4, 1, DDP_PHASE_BACKWARD, 1.5);
    log_step(&s, 4, 1, DDP_PHASE_BACKWARD, 1.5);
    /* Another rank: the count starts over. */
    assert_int_equal(log_step(&s, 4, 3, DDP_PHASE_BACKWARD, 1.5), 0);
    assert_int_equal(s.streak, 1);
    /* The same rank in another phase: over again too. */
    assert_int_equal(log_step(&s, 4, 3, DDP_PHASE_FORWARD, 2.0), 0);
    assert_int_equal(s.streak, 1);
    /* No straggler at all: nothing is carried. */
    assert_int_equal(log_step(&s, 4, 3, DDP_PHASE_FORWARD, 1.0), 0);
    assert_int_equal(s.rank, -1);
    assert_int_equal(s.streak, 0);
}

static void test_even_runs_are_not_named(void **state) {
    (void)state;
    ddp_straggler s;
    ddp_straggler_init(&s);
    /* 15% slower: within the 20%. */
    for (int i = 0; i < 10; i++)
        assert_int_equal(log_step(&s, 4, 1, DDP_PHASE_BACKWARD, 1.15), 0);
    /* Ten times slower, but by 1.8 ms in a step of 64 ms: less than 10% of it. */
    double times[2 * DDP_PHASE_COUNT] = {0.010, 0.020, 0.0002, 0.010, 0.020, 0.0020};
    double steps[2] = {0.064, 0.064};
    for (int i = 0; i < 10; i++)
        assert_int_equal(ddp_straggler_update(&s, times, steps, 2), 0);
    /* 50% slower by 10% of a short step, but by 0.2 ms: jitter. */
    double short_times[2 * DDP_PHASE_COUNT] = {2e-4, 4e-4, 4e-5, 2e-4, 6e-4, 4e-5};
    double short_steps[2] = {1.3e-3, 1.3e-3};
    for (int i = 0; i < 10; i++)
        assert_int_equal(ddp_straggler_update(&s, short_times, short_steps, 2), 0);
    /* One rank alone is never a straggler. */
    double one[DDP_PHASE_COUNT] = {1.0, 1.0, 1.0}, step1 = 3.0;
    assert_int_equal(ddp_straggler_update(&s, one, &step1, 1), 0);
}

static void test_two_ranks_compare_with_the_other(void **state) {
    (void)state;
    ddp_straggler s;
    ddp_straggler_init(&s);
    /* 1.7x the other, by 7 ms (more than 10% of the 64 ms step); against the mean of the two
     * it would be by only 3.5 ms. */
    for (int i = 0; i < 2; i++)
        assert_int_equal(log_step(&s, 2, 0, DDP_PHASE_FORWARD, 1.7), 0);
    assert_int_equal(log_step(&s, 2, 0, DDP_PHASE_FORWARD, 1.7), 1);
    assert_int_equal(s.rank, 0);
    assert_int_equal(s.phase, DDP_PHASE_FORWARD);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_named_after_three_logging_steps),
        cmocka_unit_test(test_streak_restarts_when_the_straggler_changes),
        cmocka_unit_test(test_even_runs_are_not_named),
        cmocka_unit_test(test_two_ranks_compare_with_the_other),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
