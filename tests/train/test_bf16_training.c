/*
 * Mixed precision on the CPU (--precision bf16), under mpirun with 1, 2 and 4 ranks: the
 * MLP, the GPT and the CNN train in bf16 and
 *  - track their fp32 runs: the parameters within MATH_MARGIN u of the distance training
 *    moved them (u = 2^-8), the loss within the same fraction of its fall;
 *  - N ranks reach one process with the whole batch, and K micro-batches the whole batch,
 *    within SPREAD_MARGIN times the bf16 run's own rounding spread, bitwise identical on
 *    every rank; both with the products native and emulated (DDP_BF16_KERNELS=emulate);
 *  - so does ZeRO-3, whose gathers bring the weights' bf16 copy.
 *
 * Why those bounds. The weights stay fp32 masters and the products accumulate in fp32;
 * bf16 enters by rounding the products' operands to u relative, so each step's update is
 * off by a few u of itself, and over a run the parameters by a few u of how far they moved
 * (tests/train/test_gpu_training.c reasons the same way for the GPU). Another summation
 * order (ranks, micro-batches) is a rounding difference like a one-ulp change of the
 * start, which rounding_spread measures on this machine (test_util.h), bf16 roundings of
 * the operands included.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_util.h"

#include "ddp/train.h"
#include "synthetic.h"

#define U_BF16      0x1p-8
#define MATH_MARGIN 16.0

static ddp_backend *fp32, *bf16[2]; /* bf16[0]: native where the CPU can, [1]: emulated */
static ddp_comm *world_comm, *local_fp32, *local_bf16[2];
static ddp_dataset train_set, test_set, img_train, img_test;
static ddp_text text;
static int rank, world;

static ddp_train_config mlp(void) { return small_mlp_config(20, 5); }
static ddp_train_config gpt(void) { return tiny_gpt_config(12, 4); }
static ddp_train_config cnn(void) { return tiny_cnn_config(8, 4); }

static const ddp_dataset *train_of(const ddp_train_config *c) {
    return c->model.kind == DDP_MODEL_CNN ? &img_train : &train_set;
}
static const ddp_dataset *test_of(const ddp_train_config *c) {
    return c->model.kind == DDP_MODEL_CNN ? &img_test : &test_set;
}

/* The final parameters of cfg on b over comm (its own control comm), malloc'd. */
static float *train(ddp_train_config cfg, ddp_backend *b, ddp_comm *comm, size_t *n) {
    train_extra x = {.text = &text};
    return train_params_ex(cfg, b, comm, comm, train_of(&cfg), test_of(&cfg), &x, n);
}

/* The parameters cfg starts from. */
static float *initial(ddp_train_config cfg, size_t *n) {
    ddp_trainer *t = NULL;
    ddp_train_data data = {.train = *train_of(&cfg), .test = *test_of(&cfg), .text = text};
    if (ddp_trainer_create(&cfg, fp32, local_fp32, local_fp32, &data, &t) != DDP_OK)
        fail_msg("trainer_create: %s", ddp_error_trace_str());
    *n = ddp_model_num_params(ddp_trainer_model(t));
    float *p = malloc(*n * sizeof *p);
    assert_int_equal(ddp_trainer_get_params(t, p), DDP_OK);
    ddp_trainer_free(t);
    return p;
}

/* ---- bf16 tracks fp32 ----------------------------------------------------------------- */

static void tracks_fp32(const char *what, ddp_train_config c) {
    size_t n0, n;
    float *start = initial(c, &n0);
    float *ref = train(c, fp32, local_fp32, &n);
    double moved = rel_error(start, ref, n);
    for (int k = 0; k < 2; k++) {
        c.math = DDP_MATH_BF16;
        float *p = train(c, bf16[k], local_bf16[k], &n);
        double err = rel_error(p, ref, n), tol = MATH_MARGIN * U_BF16 * moved;
        if (rank == 0)
            print_message("%s in bf16 (%s): %.3g from fp32, parameters moved %.3g (bound %.3g)\n",
                          what, k ? "emulated" : "native", err, moved, tol);
        assert_true(err <= tol);
        assert_true(err > 0.0); /* bf16 was in effect */
        free(p);
    }
    free(ref);
    free(start);
}

static void mlp_tracks_fp32(void **state) { tracks_fp32("mlp", mlp()); }
static void gpt_tracks_fp32(void **state) { tracks_fp32("gpt", gpt()); }
static void cnn_tracks_fp32(void **state) { tracks_fp32("cnn", cnn()); }

/* ---- N ranks, K micro-batches --------------------------------------------------------- */

static void assert_identical_on_all_ranks(const float *p, size_t n) {
    uint32_t crc = ddp_crc32(0, p, n * sizeof(float)), *all = calloc((size_t)world, 4);
    assert_int_equal(ddp_comm_allgather(world_comm, &crc, all, 1, DDP_U32), DDP_OK);
    for (int r = 1; r < world; r++)
        assert_int_equal(all[r], all[0]);
    free(all);
}

/* `other` (over the world, or with accumulation) reaches `one` on one process, in bf16. */
static void matches_one_process(const char *what, ddp_train_config one, ddp_train_config other) {
    one.math = other.math = DDP_MATH_BF16;
    for (int k = 0; k < 2; k++) {
        size_t n1, n2;
        float *single = train(one, bf16[k], local_bf16[k], &n1);
        float *p = train(other, bf16[k], world_comm, &n2);
        assert_int_equal(n1, n2);
        train_extra x = {.text = &text};
        double tol = SPREAD_MARGIN * rounding_spread(one, bf16[k], local_bf16[k], train_of(&one),
                                                     test_of(&one), x.text, single);
        double err = rel_error(p, single, n1);
        if (rank == 0)
            print_message("%s, %d ranks (%s): %.3g from one process (bound %.3g)\n", what, world,
                          k ? "emulated" : "native", err, tol);
        assert_true(err <= tol);
        assert_identical_on_all_ranks(p, n2);
        free(single);
        free(p);
    }
}

static void mlp_n_ranks_equal_one(void **state) { matches_one_process("mlp", mlp(), mlp()); }
static void gpt_n_ranks_equal_one(void **state) { matches_one_process("gpt", gpt(), gpt()); }
static void gpt_accumulation_equals_whole_batch(void **state) {
    ddp_train_config acc = gpt();
    acc.accum = 2;
    acc.micro_batch = 0;
    if ((size_t)world * 2 > acc.global_batch) skip();
    matches_one_process("gpt --accum 2", gpt(), acc);
}

/* ZeRO-3 in bf16: each unit's bf16 copy is gathered (the fp32 values only of the tensors
 * read in fp32: biases, norms, embeddings, convolutions), and the products read it as
 * stage 0's read the copy the optimizer writes: the same numbers up to the order of the
 * sums, so the run reaches stage 0's on one process within its rounding spread. */
static void mlp_zero3_matches_stage0(void **state) {
    ddp_train_config z = mlp();
    z.zero = 3;
    matches_one_process("mlp --zero 3", mlp(), z);
}
static void gpt_zero3_matches_stage0(void **state) {
    ddp_train_config z = gpt();
    z.zero = 3;
    z.accum = 2;
    z.micro_batch = 0;
    if ((size_t)world * 2 > z.global_batch) skip();
    matches_one_process("gpt --zero 3 --accum 2", gpt(), z);
}
static void cnn_zero3_matches_stage0(void **state) {
    /* Batch norm over each rank's share: one process of as many micro-batches. */
    ddp_train_config one = cnn(), z = cnn();
    one.accum = world;
    one.micro_batch = 0;
    z.zero = 3;
    matches_one_process("cnn --zero 3", one, z);
}

int main(int argc, char **argv) {
    mpi_test_init(&argc, &argv, &fp32, &world_comm, &rank, &world);
    ddp_backend_options o = {.device = DDP_DEVICE_CPU, .threads = 1, .math = DDP_MATH_BF16};
    assert_int_equal(ddp_backend_create(&o, &bf16[0]), DDP_OK);
    setenv("DDP_BF16_KERNELS", "emulate", 1); /* read at a backend's first product */
    assert_int_equal(ddp_backend_create(&o, &bf16[1]), DDP_OK);
    assert_int_equal(ddp_backend_bf16_native(bf16[1]), 0);
    unsetenv("DDP_BF16_KERNELS");
    if (rank == 0)
        print_message("bf16 products here: %s\n", ddp_backend_bf16_native(bf16[0])
                                                      ? "native (oneDNN)"
                                                      : "emulated (no bf16 instructions)");
    assert_int_equal(ddp_comm_create(DDP_COMM_LOCAL, fp32, &local_fp32), DDP_OK);
    for (int k = 0; k < 2; k++)
        assert_int_equal(ddp_comm_create(DDP_COMM_LOCAL, bf16[k], &local_bf16[k]), DDP_OK);
    synthetic_dataset(&train_set, 640, 20, 4, 7);
    synthetic_dataset(&test_set, 333, 20, 4, 8);
    synthetic_text(&text, 6000, 9);
    synthetic_images(&img_train, &img_test);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(mlp_tracks_fp32),
        cmocka_unit_test(gpt_tracks_fp32),
        cmocka_unit_test(cnn_tracks_fp32),
        cmocka_unit_test(mlp_n_ranks_equal_one),
        cmocka_unit_test(gpt_n_ranks_equal_one),
        cmocka_unit_test(gpt_accumulation_equals_whole_batch),
        cmocka_unit_test(mlp_zero3_matches_stage0),
        cmocka_unit_test(gpt_zero3_matches_stage0),
        cmocka_unit_test(cnn_zero3_matches_stage0),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    ddp_dataset_free(&train_set);
    ddp_dataset_free(&test_set);
    ddp_dataset_free(&img_train);
    ddp_dataset_free(&img_test);
    ddp_text_free(&text);
    ddp_comm_free(local_fp32);
    for (int k = 0; k < 2; k++) {
        ddp_comm_free(local_bf16[k]);
        ddp_backend_free(bf16[k]);
    }
    return mpi_test_finish(failed, fp32, world_comm);
}
