/*
 * The distributed sampler and ddp_split_range. The sampler is pure (its output depends
 * only on its arguments), so every rank of a world is simulated in this one process:
 * over an epoch the ranks together use each sample at most once and exactly
 * steps_per_epoch * B samples, rank r's slice is part r of the batch a single rank would
 * see, epochs are reshuffled, seeds reproduce, and seeking resumes the same stream.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include <stdlib.h>
#include <string.h>

#include "ddp/data.h"

static const int worlds[] = {1, 2, 3, 4, 8};
#define NWORLDS (sizeof worlds / sizeof worlds[0])

/* Runs one full epoch on every rank of the world and checks coverage, and that the
 * ranks' slices, concatenated, are the batches of a world of 1. */
static void check_epoch(size_t n, size_t B, int world, uint64_t seed, int shuffle) {
    ddp_sampler one;
    assert_int_equal(ddp_sampler_init(&one, n, B, 0, 1, seed, shuffle), DDP_OK);
    size_t steps = n / B;
    assert_int_equal(one.steps_per_epoch, steps);

    int32_t *global = malloc(steps * B * sizeof *global);
    int32_t *local = malloc(B * sizeof *local);
    unsigned char *seen = calloc(n, 1);
    uint32_t *order0 = malloc(n * sizeof *order0);
    assert_true(global && local && seen && order0);
    memcpy(order0, one.order, n * sizeof *order0);
    for (size_t t = 0; t < steps; t++) {
        uint64_t e = 99;
        assert_int_equal(ddp_sampler_next(&one, global + t * B, &e), DDP_OK);
        assert_int_equal(e, 0);
    }

    size_t used = 0;
    for (int r = 0; r < world; r++) {
        ddp_sampler s;
        assert_int_equal(ddp_sampler_init(&s, n, B, r, world, seed, shuffle), DDP_OK);
        size_t L = B / (size_t)world;
        assert_int_equal(s.local_batch, L);
        assert_int_equal(s.steps_per_epoch, steps);
        /* Every rank holds the very same order. */
        assert_memory_equal(s.order, order0, n * sizeof *order0);
        for (size_t t = 0; t < steps; t++) {
            uint64_t e = 99;
            assert_int_equal(ddp_sampler_next(&s, local, &e), DDP_OK);
            assert_int_equal(e, 0);
            assert_memory_equal(local, global + t * B + (size_t)r * L, L * sizeof *local);
            for (size_t i = 0; i < L; i++) {
                assert_in_range(local[i], 0, n - 1);
                assert_int_equal(seen[local[i]], 0);
                seen[local[i]] = 1;
                used++;
            }
        }
        /* After the last full batch the sampler has moved to the next epoch. */
        assert_int_equal(s.epoch, 1);
        assert_int_equal(s.step, 0);
        ddp_sampler_free(&s);
    }
    assert_int_equal(used, steps * B);
    size_t distinct = 0;
    for (size_t i = 0; i < n; i++)
        distinct += seen[i];
    assert_int_equal(distinct, steps * B);

    ddp_sampler_free(&one);
    free(global);
    free(local);
    free(seen);
    free(order0);
}

static void test_epoch_covers_each_sample_once_across_ranks(void **state) {
    const size_t sizes[] = {97, 100, 240};
    for (size_t w = 0; w < NWORLDS; w++) {
        int world = worlds[w];
        for (size_t k = 0; k < 3; k++) {
            size_t n = sizes[k];
            /* One sample per rank, a few in between, and the largest batch that fits. */
            size_t mults[] = {1, 2, 3, 5, n / (size_t)world};
            for (size_t m = 0; m < 5; m++) {
                size_t B = mults[m] * (size_t)world;
                if (B == 0 || B > n) continue;
                check_epoch(n, B, world, 1234 + k, 1);
                check_epoch(n, B, world, 1234 + k, 0);
            }
        }
    }
}

static void test_order_is_identical_on_every_rank(void **state) {
    for (size_t w = 0; w < NWORLDS; w++) {
        ddp_sampler s0, sr;
        assert_int_equal(ddp_sampler_init(&s0, 1000, 8 * 4 * 3, 0, worlds[w], 7, 1), DDP_OK);
        for (int r = 1; r < worlds[w]; r++) {
            assert_int_equal(ddp_sampler_init(&sr, 1000, 8 * 4 * 3, r, worlds[w], 7, 1), DDP_OK);
            assert_memory_equal(s0.order, sr.order, 1000 * sizeof *s0.order);
            ddp_sampler_free(&sr);
        }
        ddp_sampler_free(&s0);
    }
}

/* The full order of an epoch, as the concatenated batches of a world of 1 with B = n. */
static void epoch_order(uint64_t seed, uint64_t epoch, int shuffle, size_t n, int32_t *out) {
    ddp_sampler s;
    assert_int_equal(ddp_sampler_init(&s, n, n, 0, 1, seed, shuffle), DDP_OK);
    assert_int_equal(ddp_sampler_seek(&s, epoch, 0), DDP_OK);
    uint64_t e;
    assert_int_equal(ddp_sampler_next(&s, out, &e), DDP_OK);
    assert_int_equal(e, epoch);
    ddp_sampler_free(&s);
}

static void test_epochs_reshuffle_and_seeds_reproduce(void **state) {
    enum { N = 500 };
    int32_t a[N], b[N], c[N];
    epoch_order(42, 0, 1, N, a);
    epoch_order(42, 0, 1, N, b);
    assert_memory_equal(a, b, sizeof a);

    /* Each is a permutation, and no two epochs or seeds give the same one. */
    for (uint64_t e = 0; e < 5; e++) {
        epoch_order(42, e, 1, N, b);
        unsigned char seen[N] = {0};
        for (int i = 0; i < N; i++) {
            assert_in_range(b[i], 0, N - 1);
            assert_int_equal(seen[b[i]]++, 0);
        }
        if (e > 0) assert_memory_not_equal(a, b, sizeof a);
    }
    epoch_order(43, 0, 1, N, c);
    assert_memory_not_equal(a, c, sizeof a);

    /* The shuffle moves most samples (a broken shuffle that does nothing would not). */
    int fixed = 0;
    for (int i = 0; i < N; i++)
        fixed += a[i] == i;
    assert_true(fixed < N / 10);

    /* Without shuffling every epoch is 0, 1, 2, ... */
    for (uint64_t e = 0; e < 3; e++) {
        epoch_order(42, e, 0, N, b);
        for (int i = 0; i < N; i++)
            assert_int_equal(b[i], i);
    }
}

static void test_next_rolls_over_to_a_new_epoch(void **state) {
    /* n = 10, B = 4: two steps per epoch, samples 8 and 9's positions dropped. */
    ddp_sampler s;
    assert_int_equal(ddp_sampler_init(&s, 10, 4, 1, 2, 5, 1), DDP_OK);
    int32_t idx[2];
    uint64_t e;
    const uint64_t want_epoch[] = {0, 0, 1, 1, 2};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(ddp_sampler_next(&s, idx, &e), DDP_OK);
        assert_int_equal(e, want_epoch[i]);
    }
    assert_int_equal(ddp_sampler_next(&s, idx, NULL), DDP_OK); /* epoch_out may be NULL */
    assert_int_equal(s.epoch, 3);
    assert_int_equal(s.step, 0);
    ddp_sampler_free(&s);
}

static void test_seek_resumes_the_same_stream(void **state) {
    const size_t n = 103, B = 12;
    for (size_t w = 0; w < NWORLDS; w++) {
        int world = worlds[w];
        if (B % (size_t)world != 0) continue;
        size_t L = B / (size_t)world, steps = n / B, total = 4 * steps;
        for (int r = 0; r < world; r++) {
            ddp_sampler s;
            assert_int_equal(ddp_sampler_init(&s, n, B, r, world, 99, 1), DDP_OK);
            int32_t *ref = malloc(total * L * sizeof *ref);
            uint64_t *ref_epoch = malloc(total * sizeof *ref_epoch);
            assert_true(ref && ref_epoch);
            for (size_t t = 0; t < total; t++)
                assert_int_equal(ddp_sampler_next(&s, ref + t * L, &ref_epoch[t]), DDP_OK);

            /* From every position, seek in a used sampler and in a fresh one. */
            int32_t got[12];
            for (size_t t = 0; t < total; t++) {
                ddp_sampler f;
                assert_int_equal(ddp_sampler_init(&f, n, B, r, world, 99, 1), DDP_OK);
                assert_int_equal(ddp_sampler_seek(&f, t / steps, t % steps), DDP_OK);
                assert_int_equal(ddp_sampler_seek(&s, t / steps, t % steps), DDP_OK);
                for (size_t u = t; u < total && u < t + steps + 1; u++) {
                    uint64_t e;
                    assert_int_equal(ddp_sampler_next(&f, got, &e), DDP_OK);
                    assert_int_equal(e, ref_epoch[u]);
                    assert_memory_equal(got, ref + u * L, L * sizeof *got);
                    assert_int_equal(ddp_sampler_next(&s, got, &e), DDP_OK);
                    assert_memory_equal(got, ref + u * L, L * sizeof *got);
                }
                ddp_sampler_free(&f);
            }
            free(ref);
            free(ref_epoch);
            ddp_sampler_free(&s);
        }
    }
}

static void test_rejects_invalid_batch_sizes(void **state) {
    ddp_sampler s;
    ddp_error_clear();
    assert_int_equal(ddp_sampler_init(&s, 100, 0, 0, 4, 1, 1), DDP_ERR_INVALID_ARG);
    assert_msg_has("global batch size is 0");
    assert_null(s.order);

    /* 10 over 4 ranks: the nearest batch sizes that split evenly are 8 and 12. */
    assert_int_equal(ddp_sampler_init(&s, 100, 10, 0, 4, 1, 1), DDP_ERR_INVALID_ARG);
    assert_msg_has("not divisible by the 4 ranks");
    assert_msg_has("8 or 12");
    /* Below one sample per rank only the multiple above is suggested. */
    assert_int_equal(ddp_sampler_init(&s, 100, 3, 0, 8, 1, 1), DDP_ERR_INVALID_ARG);
    assert_msg_has("such as 8");
    /* Near the size of the dataset only the multiple below fits. */
    assert_int_equal(ddp_sampler_init(&s, 100, 99, 0, 8, 1, 1), DDP_ERR_INVALID_ARG);
    assert_msg_has("such as 96");

    assert_int_equal(ddp_sampler_init(&s, 100, 104, 0, 8, 1, 1), DDP_ERR_INVALID_ARG);
    assert_msg_has("larger than the dataset (100 samples)");
    assert_msg_has("at most 96");

    assert_int_equal(ddp_sampler_init(&s, 3, 3, 0, 4, 1, 1), DDP_ERR_INVALID_ARG);
    assert_msg_has("only 3 samples");
    assert_int_equal(ddp_sampler_init(&s, 100, 8, 4, 4, 1, 1), DDP_ERR_INVALID_ARG);
    assert_msg_has("rank 4 of world 4");
    assert_int_equal(ddp_sampler_init(&s, 0, 8, 0, 1, 1, 1), DDP_ERR_INVALID_ARG);

    /* The batch of the whole dataset is fine: one step per epoch. */
    assert_int_equal(ddp_sampler_init(&s, 96, 96, 3, 8, 1, 1), DDP_OK);
    assert_int_equal(s.steps_per_epoch, 1);
    ddp_sampler_free(&s);
}

static void test_seek_rejects_step_past_the_epoch(void **state) {
    ddp_sampler s;
    assert_int_equal(ddp_sampler_init(&s, 100, 32, 0, 4, 1, 1), DDP_OK);
    assert_int_equal(ddp_sampler_seek(&s, 7, 2), DDP_OK);
    ddp_error_clear();
    assert_int_equal(ddp_sampler_seek(&s, 7, 3), DDP_ERR_INVALID_ARG);
    assert_msg_has("step 3 of epoch 7");
    assert_msg_has("steps 0 to 2");
    /* A failed seek leaves the cursor where it was. */
    assert_int_equal(s.epoch, 7);
    assert_int_equal(s.step, 2);
    ddp_sampler_free(&s);

    int32_t idx[8];
    assert_int_equal(ddp_sampler_next(&s, idx, NULL), DDP_ERR_INVALID_ARG);
    assert_int_equal(ddp_sampler_seek(&s, 0, 0), DDP_ERR_INVALID_ARG);
}

/* A batch that doubles within an epoch (the adaptive schedule): on every rank of each
 * world, over two epochs, each sample is used at most once per epoch; the batches of an
 * epoch tile its order from the start without gaps, so only a tail shorter than the
 * batch is left; and a sampler positioned at a saved cursor (ddp_sampler_seek_pos)
 * continues the same stream. */
static void test_batch_change_keeps_each_sample_once_per_epoch(void **state) {
    const size_t n = 1000, B0 = 24;
    /* The batch before each of the first 40 steps: 24 doubling every 9 steps to 192. */
    for (size_t w = 0; w < NWORLDS; w++) {
        int world = worlds[w];
        size_t b0 = B0 / (size_t)world * (size_t)world;
        unsigned char *seen = calloc(2 * n, 1);
        for (int r = 0; r < world; r++) {
            ddp_sampler s, resumed;
            assert_int_equal(ddp_sampler_init(&s, n, b0, r, world, 7, 1), DDP_OK);
            assert_int_equal(ddp_sampler_init(&resumed, n, b0, r, world, 7, 1), DDP_OK);
            int32_t idx[256], again[256];
            size_t B = b0, pos_in_epoch = 0;
            uint64_t epoch = 0;
            for (int t = 0; epoch < 2; t++) {
                if (t > 0 && t % 9 == 0 && B < 8 * b0) {
                    B *= 2;
                    assert_int_equal(ddp_sampler_set_batch(&s, B), DDP_OK);
                    if (t > 20) assert_int_equal(ddp_sampler_set_batch(&resumed, B), DDP_OK);
                    assert_int_equal(s.local_batch, B / (size_t)world);
                    if (pos_in_epoch + B > n) { /* no full batch left: a new epoch */
                        assert_int_equal(s.pos, 0);
                        epoch++;
                        pos_in_epoch = 0;
                        if (epoch == 2) break;
                    }
                }
                /* Resume from a copy of the cursor at step 20. */
                if (t == 20) {
                    assert_int_equal(ddp_sampler_set_batch(&resumed, B), DDP_OK);
                    assert_int_equal(ddp_sampler_seek_pos(&resumed, s.epoch, s.step, s.pos),
                                     DDP_OK);
                }
                assert_int_equal(s.pos, pos_in_epoch);
                uint64_t e = 99;
                assert_int_equal(ddp_sampler_next(&s, idx, &e), DDP_OK);
                assert_int_equal(e, epoch);
                if (t >= 20) {
                    assert_int_equal(ddp_sampler_next(&resumed, again, NULL), DDP_OK);
                    assert_memory_equal(again, idx, s.local_batch * sizeof *idx);
                }
                for (size_t i = 0; i < B / (size_t)world; i++) {
                    unsigned char *mark = &seen[epoch * n + (size_t)idx[i]];
                    assert_int_equal(*mark, 0);
                    *mark = 1;
                }
                pos_in_epoch += B;
                if (pos_in_epoch + B > n) {
                    epoch++;
                    pos_in_epoch = 0;
                }
            }
            ddp_sampler_free(&s);
            ddp_sampler_free(&resumed);
        }
        /* Epoch 0 ran 9 steps at b0, 9 at 2 b0, then 4 b0 until less than a batch was
         * left: everything but that tail was used, by exactly one rank. */
        size_t used = 0;
        for (size_t i = 0; i < n; i++)
            used += seen[i];
        size_t rest = n - 9 * b0 - 9 * 2 * b0;
        assert_int_equal(used, 9 * b0 + 9 * 2 * b0 + rest / (4 * b0) * (4 * b0));
        free(seen);
    }
    assert_int_equal(ddp_sampler_set_batch(NULL, 8), DDP_ERR_INVALID_ARG);
    ddp_sampler s;
    assert_int_equal(ddp_sampler_init(&s, 100, 8, 0, 2, 1, 1), DDP_OK);
    assert_int_equal(ddp_sampler_set_batch(&s, 7), DDP_ERR_INVALID_ARG);
    assert_msg_has("not divisible by the 2 ranks");
    assert_int_equal(ddp_sampler_set_batch(&s, 102), DDP_ERR_INVALID_ARG);
    assert_int_equal(ddp_sampler_seek_pos(&s, 0, 0, 96), DDP_ERR_INVALID_ARG);
    assert_msg_has("no full batch");
    /* A damaged checkpoint's position may be anything; it must not wrap around. */
    assert_int_equal(ddp_sampler_seek_pos(&s, 0, 0, SIZE_MAX - 2), DDP_ERR_INVALID_ARG);
    ddp_sampler_free(&s);
}

static void test_split_range_covers_every_item_once(void **state) {
    for (size_t n = 0; n <= 200; n += (n < 40 ? 1 : 17)) {
        for (int world = 1; world <= 17; world++) {
            size_t next = 0, min = (size_t)-1, max = 0;
            for (int r = 0; r < world; r++) {
                size_t b, c;
                ddp_split_range(n, r, world, &b, &c);
                /* Contiguous, in rank order, so that together they tile 0..n. */
                assert_int_equal(b, next);
                next = b + c;
                if (c < min) min = c;
                if (c > max) max = c;
            }
            assert_int_equal(next, n);
            assert_true(max - min <= 1);
        }
    }
    size_t b = 1, c = 1;
    ddp_split_range(10000, 3, 3, &b, &c);
    assert_int_equal(c, 0);
    ddp_split_range(60000, 7, 8, &b, &c);
    assert_int_equal(b, 52500);
    assert_int_equal(c, 7500);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_epoch_covers_each_sample_once_across_ranks),
        cmocka_unit_test(test_order_is_identical_on_every_rank),
        cmocka_unit_test(test_epochs_reshuffle_and_seeds_reproduce),
        cmocka_unit_test(test_next_rolls_over_to_a_new_epoch),
        cmocka_unit_test(test_seek_resumes_the_same_stream),
        cmocka_unit_test(test_rejects_invalid_batch_sizes),
        cmocka_unit_test(test_seek_rejects_step_past_the_epoch),
        cmocka_unit_test(test_batch_change_keeps_each_sample_once_per_epoch),
        cmocka_unit_test(test_split_range_covers_every_item_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
