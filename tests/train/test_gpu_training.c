/*
 * Training on a GPU, under mpirun (skips with exit status 77 when there is no GPU; with
 * -DDDP_REQUIRE_GPU=ON that is a failure):
 *  - one rank, CUDA backend with the NCCL comm: the MLP, the GPT and the CNN (with
 *    --sync-bn) reach the parameters of the CPU backend (the reference); --grad-dtype
 *    bf16 over NCCL reaches the CPU's bf16-communicated run; --zero 1 and 2 over NCCL
 *    reach --zero 0; tf32 and bf16 matrix products track the fp32 run;
 *  - N ranks sharing one GPU with the MPI comm (host-staged; NCCL refuses two ranks on
 *    one GPU): the MLP, the GPT, the CNN with --sync-bn and --zero 1 and 2 reach the
 *    parameters of one GPU process with the whole batch, bitwise identical on every rank.
 *
 * Tolerances. A GPU sums in another order than the CPU, and training amplifies any
 * rounding difference step by step, so fp32 comparisons allow SPREAD_MARGIN times the
 * measured rounding spread of the reference run (rounding_spread, test_util.h), as the
 * CPU equivalence tests do. Reduced-precision matrix products round each operand to a
 * unit roundoff u (tf32 2^-11, bf16 2^-8) and accumulate in fp32; the weights stay fp32
 * masters, so the error enters through the updates only: each update is off by about
 * u times its size (a few u for a chain of layers), and the parameters by at most that
 * fraction of the distance training moved them. The bound is MATH_MARGIN u times that
 * distance (plus the fp32 allowance), which a wrongly scaled or lost update exceeds by
 * far.
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

/* Multiples of u allowed per unit of parameter movement (see the opening comment). */
#define MATH_MARGIN 16.0

static ddp_backend *cpu, *gpu[3]; /* gpu[m]: the GPU in math mode m (fp32, tf32, bf16) */
static ddp_comm *mpi_comm, *local_gpu, *local_cpu, *ctrl;
static ddp_dataset train_set, test_set; /* the MLP's */
static ddp_dataset img_train, img_test; /* the CNN's: 6 x 6 images */
static ddp_text text;                   /* the GPT's */
static int rank, world;

/* ---- configurations ------------------------------------------------------------------ */

static ddp_train_config mlp_config(void) {
    ddp_train_config c = small_mlp_config(20, 5);
    c.model.hidden.v[0] = 64;
    c.model.hidden.v[1] = 32;
    c.global_batch = 64;
    c.sched.base_lr = 0.05f;
    return c;
}

static ddp_train_config gpt_config(void) {
    ddp_train_config c = tiny_gpt_config(12, 4);
    c.model.dim = 32;
    c.model.ctx = 16;
    return c;
}

static ddp_train_config cnn_config(void) {
    ddp_train_config c = tiny_cnn_config(8, 4);
    c.model.sync_bn = 1;
    return c;
}

/* ---- running ------------------------------------------------------------------------- */

/* A trainer of cfg on backend b over comm; the control comm is the MPI world's, or comm
 * itself when that is a one-process (local) comm. */
static ddp_trainer *trainer_on(ddp_train_config cfg, ddp_backend *b, ddp_comm *comm) {
    const ddp_dataset *tr = cfg.model.kind == DDP_MODEL_CNN ? &img_train : &train_set;
    const ddp_dataset *te = cfg.model.kind == DDP_MODEL_CNN ? &img_test : &test_set;
    ddp_comm *control = ddp_comm_kind_of(comm) == DDP_COMM_LOCAL ? comm : ctrl;
    ddp_trainer *t = NULL;
    ddp_train_data data = {.train = *tr, .test = *te, .text = text};
    if (ddp_trainer_create(&cfg, b, comm, control, &data, &t) != DDP_OK)
        fail_msg("trainer_create: %s", ddp_error_trace_str());
    return t;
}

/* The final parameters of cfg on backend b over comm (malloc'd), and with the batch norm
 * buffers after them: *n counts both. */
static float *train_on(ddp_train_config cfg, ddp_backend *b, ddp_comm *comm, size_t *n) {
    ddp_trainer *t = trainer_on(cfg, b, comm);
    if (ddp_trainer_run(t, NULL) != DDP_OK) fail_msg("run: %s", ddp_error_trace_str());
    ddp_model *m = ddp_trainer_model(t);
    size_t np = ddp_model_num_params(m), nb = ddp_model_num_buffer_elems(m);
    float *p = malloc((np + nb) * sizeof *p);
    assert_non_null(p);
    assert_int_equal(ddp_trainer_get_params(t, p), DDP_OK);
    if (nb > 0)
        assert_int_equal(
            ddp_backend_copy(b, p + np, ddp_model_buffers(m), nb * sizeof *p, DDP_COPY_D2H),
            DDP_OK);
    *n = np + nb;
    ddp_trainer_free(t);
    return p;
}

/* The parameters cfg's run starts from (malloc'd), *n of them. */
static float *initial_params(ddp_train_config cfg, size_t *n) {
    ddp_trainer *t = trainer_on(cfg, cpu, local_cpu);
    *n = ddp_model_num_params(ddp_trainer_model(t));
    float *p = malloc(*n * sizeof *p);
    assert_non_null(p);
    assert_int_equal(ddp_trainer_get_params(t, p), DDP_OK);
    ddp_trainer_free(t);
    return p;
}

/* SPREAD_MARGIN times how far one-ulp changes of the start move cfg's run on backend b
 * (over local), whose parameters are `ref`: the allowance for another summation order. */
static double fp32_tolerance(ddp_train_config cfg, ddp_backend *b, ddp_comm *local,
                             const float *ref) {
    const ddp_dataset *tr = cfg.model.kind == DDP_MODEL_CNN ? &img_train : &train_set;
    const ddp_dataset *te = cfg.model.kind == DDP_MODEL_CNN ? &img_test : &test_set;
    return SPREAD_MARGIN * rounding_spread(cfg, b, local, tr, te, &text, ref);
}

/* ---- one rank: the GPU over NCCL against the CPU ------------------------------------- */

static ddp_comm *nccl_or_fail(void) {
    ddp_comm *nccl = NULL;
    /* A GPU is present (the tests skip otherwise): NCCL missing is a failure, not a skip,
     * so that a build without it cannot pass. */
    if (ddp_comm_create(DDP_COMM_NCCL, gpu[DDP_MATH_FP32], &nccl) != DDP_OK)
        fail_msg("the NCCL comm is unavailable on a machine with a GPU: %s (build with "
                 "-DDDP_NCCL=ON where NCCL is installed)",
                 ddp_error_trace_str());
    return nccl;
}

/* cfg on the GPU over NCCL reaches cfg on the CPU within the fp32 allowance. */
static void gpu_nccl_matches_cpu(const char *what, ddp_train_config cfg) {
    ddp_comm *nccl = nccl_or_fail();
    size_t n1, n2;
    float *on_cpu = train_on(cfg, cpu, local_cpu, &n2);
    cfg.comm = DDP_COMM_NCCL;
    float *on_gpu = train_on(cfg, gpu[DDP_MATH_FP32], nccl, &n1);
    assert_int_equal(n1, n2);
    cfg.comm = DDP_COMM_AUTO;
    double tol = fp32_tolerance(cfg, cpu, local_cpu, on_cpu), err = rel_error(on_gpu, on_cpu, n1);
    print_message("%s: CUDA+NCCL vs CPU relative error %.3g (tolerance %.3g)\n", what, err, tol);
    assert_true(err <= tol);
    free(on_gpu);
    free(on_cpu);
    ddp_comm_free(nccl);
}

static void mlp_on_nccl_matches_cpu(void **state) { gpu_nccl_matches_cpu("mlp", mlp_config()); }
static void gpt_on_nccl_matches_cpu(void **state) { gpu_nccl_matches_cpu("gpt", gpt_config()); }
static void cnn_sync_bn_on_nccl_matches_cpu(void **state) {
    gpu_nccl_matches_cpu("cnn --sync-bn", cnn_config());
}
static void bf16_gradients_on_nccl_match_cpu(void **state) {
    /* Both round the gradients to bf16 before the (one-rank) all-reduce and back. */
    ddp_train_config c = mlp_config();
    c.reducer.grad_dtype = DDP_BF16;
    gpu_nccl_matches_cpu("mlp --grad-dtype bf16", c);
}

/* --zero 1 and 2 over NCCL (a one-rank reduce-scatter and all-gather) reach --zero 0. */
static void zero_on_nccl_matches_zero_0(void **state) {
    ddp_comm *nccl = nccl_or_fail();
    ddp_train_config c = gpt_config();
    c.comm = DDP_COMM_NCCL;
    size_t n0, n;
    float *plain = train_on(c, gpu[DDP_MATH_FP32], nccl, &n0);
    double tol = fp32_tolerance(c, gpu[DDP_MATH_FP32], local_gpu, plain);
    for (int stage = 1; stage <= 2; stage++) {
        c.zero = stage;
        float *sharded = train_on(c, gpu[DDP_MATH_FP32], nccl, &n);
        assert_int_equal(n, n0);
        double err = rel_error(sharded, plain, n);
        print_message("gpt --zero %d over NCCL vs --zero 0: relative error %.3g (tolerance "
                      "%.3g)\n",
                      stage, err, tol);
        assert_true(err <= tol);
        free(sharded);
    }
    free(plain);
    ddp_comm_free(nccl);
}

/* NCCL runs on the GPU: a communication thread would only race with the main thread on
 * the events that order the streams, so asking for one is refused with the way out. */
static void progress_thread_on_nccl_is_refused(void **state) {
    ddp_comm *nccl = nccl_or_fail();
    ddp_train_config c = mlp_config();
    c.comm = DDP_COMM_NCCL;
    c.reducer.progress = DDP_PROGRESS_THREAD;
    ddp_trainer *t = NULL;
    ddp_train_data data = {.train = train_set, .test = test_set};
    assert_int_equal(ddp_trainer_create(&c, gpu[DDP_MATH_FP32], nccl, ctrl, &data, &t),
                     DDP_ERR_UNSUPPORTED);
    assert_msg_has("--progress auto");
    ddp_error_clear();
    ddp_comm_free(nccl);
}

/* tf32 and bf16 products track the fp32 run (see the opening comment), and differ from
 * it: the mode is in effect. */
static void reduced_precision_tracks_fp32(const char *what, ddp_train_config cfg) {
    size_t n0, n;
    float *start = initial_params(cfg, &n0);
    float *ref = train_on(cfg, gpu[DDP_MATH_FP32], local_gpu, &n);
    double moved = rel_error(start, ref, n0);
    double fp32_tol = fp32_tolerance(cfg, gpu[DDP_MATH_FP32], local_gpu, ref);
    const double u[3] = {0.0, 0x1p-11, 0x1p-8};
    for (int m = DDP_MATH_TF32; m <= DDP_MATH_BF16; m++) {
        cfg.math = (ddp_math)m;
        float *p = train_on(cfg, gpu[m], local_gpu, &n);
        /* The parameters only: the CNN's running statistics are not trained. */
        double err = rel_error(p, ref, n0), tol = MATH_MARGIN * u[m] * moved + fp32_tol;
        print_message("%s, math %s: relative error %.3g vs fp32 (parameters moved %.3g; "
                      "tolerance %.3g)\n",
                      what, m == DDP_MATH_TF32 ? "tf32" : "bf16", err, moved, tol);
        assert_true(err <= tol);
        assert_true(err > fp32_tol / SPREAD_MARGIN);
        free(p);
    }
    free(ref);
    free(start);
}

static void mlp_tf32_and_bf16_track_fp32(void **state) {
    reduced_precision_tracks_fp32("mlp", mlp_config());
}
static void gpt_tf32_and_bf16_track_fp32(void **state) {
    reduced_precision_tracks_fp32("gpt", gpt_config());
}
static void cnn_tf32_and_bf16_track_fp32(void **state) {
    reduced_precision_tracks_fp32("cnn", cnn_config());
}

/* ---- N ranks sharing the GPU over MPI ------------------------------------------------ */

/* N ranks with B/N samples each reach one GPU process with all B, bitwise identical on
 * every rank. */
static void ranks_sharing_gpu_match_one(const char *what, ddp_train_config single_cfg,
                                        ddp_train_config dist_cfg) {
    size_t n1, n2;
    dist_cfg.comm = DDP_COMM_MPI;
    float *dist = train_on(dist_cfg, gpu[DDP_MATH_FP32], mpi_comm, &n1);
    float *single = train_on(single_cfg, gpu[DDP_MATH_FP32], local_gpu, &n2);
    assert_int_equal(n1, n2);
    double tol = fp32_tolerance(single_cfg, gpu[DDP_MATH_FP32], local_gpu, single);
    double err = rel_error(dist, single, n1);
    if (rank == 0)
        print_message("%s: %d ranks on one GPU (MPI) vs one: relative error %.3g (tolerance "
                      "%.3g)\n",
                      what, world, err, tol);
    assert_true(err <= tol);
    assert_same_on_all_ranks(ctrl, dist, n1);
    free(dist);
    free(single);
}

static void mlp_ranks_sharing_gpu_match_one(void **state) {
    ranks_sharing_gpu_match_one("mlp", mlp_config(), mlp_config());
}
static void gpt_ranks_sharing_gpu_match_one(void **state) {
    ranks_sharing_gpu_match_one("gpt", gpt_config(), gpt_config());
}
static void cnn_sync_bn_ranks_sharing_gpu_match_one(void **state) {
    ranks_sharing_gpu_match_one("cnn --sync-bn", cnn_config(), cnn_config());
}
static void zero_ranks_sharing_gpu_match_one(void **state) {
    ddp_train_config c = gpt_config();
    for (int stage = 1; stage <= 2; stage++) {
        c.zero = stage;
        ranks_sharing_gpu_match_one(stage == 1 ? "gpt --zero 1" : "gpt --zero 2", gpt_config(), c);
    }
}

int main(int argc, char **argv) {
    assert_int_equal(ddp_mpi_init(&argc, &argv), DDP_OK);
    if (ddp_backend_cuda_device_count() == 0) {
        printf("no GPU: skipped\n");
        ddp_mpi_finalize();
        return 77;
    }
    ddp_backend_options co = {.device = DDP_DEVICE_CPU, .threads = 1};
    assert_int_equal(ddp_backend_create(&co, &cpu), DDP_OK);
    for (int m = DDP_MATH_FP32; m <= DDP_MATH_BF16; m++) {
        ddp_backend_options go = {.device = DDP_DEVICE_CUDA, .device_index = 0, .math = m};
        assert_int_equal(ddp_backend_create(&go, &gpu[m]), DDP_OK);
    }
    assert_int_equal(ddp_comm_create(DDP_COMM_MPI, NULL, &ctrl), DDP_OK);
    assert_int_equal(ddp_comm_create(DDP_COMM_MPI, gpu[DDP_MATH_FP32], &mpi_comm), DDP_OK);
    assert_int_equal(ddp_comm_create(DDP_COMM_LOCAL, gpu[DDP_MATH_FP32], &local_gpu), DDP_OK);
    assert_int_equal(ddp_comm_create(DDP_COMM_LOCAL, cpu, &local_cpu), DDP_OK);
    rank = ddp_comm_rank(ctrl);
    world = ddp_comm_size(ctrl);
    ddp_log_init(rank, world, DDP_LOG_WARN);
    synthetic_dataset(&train_set, 1024, 32, 5, 11);
    synthetic_dataset(&test_set, 257, 32, 5, 12);
    synthetic_images(&img_train, &img_test);
    synthetic_text(&text, 6000, 9);
    /* One rank: the NCCL and math-mode cases; any number: the ranks sharing the GPU. */
    const struct CMUnitTest one_rank[] = {
        cmocka_unit_test(mlp_on_nccl_matches_cpu),
        cmocka_unit_test(gpt_on_nccl_matches_cpu),
        cmocka_unit_test(cnn_sync_bn_on_nccl_matches_cpu),
        cmocka_unit_test(bf16_gradients_on_nccl_match_cpu),
        cmocka_unit_test(zero_on_nccl_matches_zero_0),
        cmocka_unit_test(progress_thread_on_nccl_is_refused),
        cmocka_unit_test(mlp_tf32_and_bf16_track_fp32),
        cmocka_unit_test(gpt_tf32_and_bf16_track_fp32),
        cmocka_unit_test(cnn_tf32_and_bf16_track_fp32),
    };
    const struct CMUnitTest sharing[] = {
        cmocka_unit_test(mlp_ranks_sharing_gpu_match_one),
        cmocka_unit_test(gpt_ranks_sharing_gpu_match_one),
        cmocka_unit_test(cnn_sync_bn_ranks_sharing_gpu_match_one),
        cmocka_unit_test(zero_ranks_sharing_gpu_match_one),
    };
    int failed = world == 1 ? cmocka_run_group_tests(one_rank, NULL, NULL) : 0;
    failed += cmocka_run_group_tests(sharing, NULL, NULL);
    int any = failed;
    ddp_comm_allreduce(ctrl, &any, 1, DDP_I32, DDP_MAX);
    ddp_dataset_free(&train_set);
    ddp_dataset_free(&test_set);
    ddp_dataset_free(&img_train);
    ddp_dataset_free(&img_test);
    ddp_text_free(&text);
    ddp_comm_free(local_cpu);
    ddp_comm_free(local_gpu);
    ddp_comm_free(mpi_comm);
    ddp_comm_free(ctrl);
    for (int m = 0; m < 3; m++)
        ddp_backend_free(gpu[m]);
    ddp_backend_free(cpu);
    ddp_mpi_finalize();
    return any ? 1 : 0;
}
