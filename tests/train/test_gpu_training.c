/*
 * Training on a GPU, under mpirun (skips with exit status 77 when there is no GPU):
 *  - one rank: the CUDA backend with the NCCL comm reaches the parameters of the CPU
 *    backend (the reference) within float tolerance;
 *  - N ranks sharing one GPU with the MPI comm (host-staged) reach the parameters of one
 *    GPU process with the whole batch, and are bitwise identical on every rank.
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

static ddp_backend *cpu, *gpu;
static ddp_comm *mpi_comm, *local_gpu, *local_cpu, *ctrl;
static ddp_dataset train_set, test_set;
static int rank, world;

/* The training tests' small MLP, wider, at a lower rate. */
static ddp_train_config config(void) {
    ddp_train_config c = small_mlp_config(20, 5);
    c.model.hidden.v[0] = 64;
    c.model.hidden.v[1] = 32;
    c.global_batch = 64;
    c.sched.base_lr = 0.05f;
    return c;
}

static void nccl_rank_matches_cpu_reference(void **state) {
    if (world != 1) skip();
    ddp_comm *nccl = NULL;
    if (ddp_comm_create(DDP_COMM_NCCL, gpu, &nccl) != DDP_OK) {
        print_message("NCCL comm unavailable (%s): skipped\n", ddp_error_message());
        skip();
    }
    size_t n1, n2;
    float *on_gpu = train_params(config(), gpu, nccl, ctrl, &train_set, &test_set, &n1);
    float *on_cpu = train_params(config(), cpu, local_cpu, local_cpu, &train_set, &test_set, &n2);
    double err = rel_error(on_gpu, on_cpu, n1);
    print_message("CUDA+NCCL vs CPU: relative error %.3g\n", err);
    assert_true(err < 1e-4);
    free(on_gpu);
    free(on_cpu);
    ddp_comm_free(nccl);
}

static void ranks_sharing_a_gpu_over_mpi_match_one_rank(void **state) {
    size_t n1, n2;
    ddp_train_config c = config();
    c.comm = DDP_COMM_MPI;
    float *dist = train_params(c, gpu, mpi_comm, ctrl, &train_set, &test_set, &n1);
    float *single = train_params(config(), gpu, local_gpu, local_gpu, &train_set, &test_set, &n2);
    double err = rel_error(dist, single, n1);
    if (rank == 0)
        print_message("%d ranks on one GPU (MPI) vs one: relative error %.3g\n", world, err);
    assert_true(err < 1e-5);
    assert_same_on_all_ranks(ctrl, dist, n1);
    free(dist);
    free(single);
}

int main(int argc, char **argv) {
    assert_int_equal(ddp_mpi_init(&argc, &argv, NULL), DDP_OK);
    if (ddp_backend_cuda_device_count() == 0) {
        printf("no GPU: skipped\n");
        ddp_mpi_finalize();
        return 77;
    }
    ddp_backend_options co = {.device = DDP_DEVICE_CPU, .threads = 1};
    ddp_backend_options go = {.device = DDP_DEVICE_CUDA, .device_index = 0};
    assert_int_equal(ddp_backend_create(&co, &cpu), DDP_OK);
    assert_int_equal(ddp_backend_create(&go, &gpu), DDP_OK);
    assert_int_equal(ddp_comm_create(DDP_COMM_MPI, NULL, &ctrl), DDP_OK);
    assert_int_equal(ddp_comm_create(DDP_COMM_MPI, gpu, &mpi_comm), DDP_OK);
    assert_int_equal(ddp_comm_create(DDP_COMM_LOCAL, gpu, &local_gpu), DDP_OK);
    assert_int_equal(ddp_comm_create(DDP_COMM_LOCAL, cpu, &local_cpu), DDP_OK);
    rank = ddp_comm_rank(ctrl);
    world = ddp_comm_size(ctrl);
    ddp_log_init(rank, world, DDP_LOG_WARN);
    synthetic_dataset(&train_set, 1024, 32, 5, 11);
    synthetic_dataset(&test_set, 257, 32, 5, 12);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(nccl_rank_matches_cpu_reference),
        cmocka_unit_test(ranks_sharing_a_gpu_over_mpi_match_one_rank),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    int any = failed;
    ddp_comm_allreduce(ctrl, &any, 1, DDP_I32, DDP_MAX);
    ddp_dataset_free(&train_set);
    ddp_dataset_free(&test_set);
    ddp_comm_free(local_cpu);
    ddp_comm_free(local_gpu);
    ddp_comm_free(mpi_comm);
    ddp_comm_free(ctrl);
    ddp_backend_free(gpu);
    ddp_backend_free(cpu);
    ddp_mpi_finalize();
    return any ? 1 : 0;
}
