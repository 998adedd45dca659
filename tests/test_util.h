/* Helpers shared by the CMocka unit tests: include after <cmocka.h>. */
#ifndef DDP_TEST_UTIL_H
#define DDP_TEST_UTIL_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/backend.h"
#include "ddp/comm.h"
#include "ddp/train.h"

/* The last error message contains s. */
#define assert_msg_has(s) assert_non_null(strstr(ddp_error_message(), (s)))
#define assert_near(got, want, tol)                                                                \
    assert_near_at((double)(got), (double)(want), (tol), #got, __FILE__, __LINE__)

/* Fails, printing both values, unless |got - want| <= tol (NaN never passes). */
static inline void assert_near_at(double got, double want, double tol, const char *what,
                                  const char *file, int line) {
    if (!(fabs(got - want) <= tol)) {
        print_error("%s = %.9g, expected %.9g (tolerance %g)\n", what, got, want, tol);
        _fail(file, line);
    }
}

/* ||a - b|| / ||b|| over n floats, in double. */
static inline double rel_error(const float *a, const float *b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return sqrt(num / den);
}

/* Trains cfg to the end and returns the final parameters (malloc'd) and their number;
 * fails the test with the library's message if anything fails. */
static inline float *train_params(ddp_train_config cfg, ddp_backend *b, ddp_comm *comm,
                                  ddp_comm *control, const ddp_dataset *train,
                                  const ddp_dataset *test, size_t *n) {
    ddp_trainer *t = NULL;
    if (ddp_trainer_create(&cfg, b, comm, control, train, test, &t) != DDP_OK)
        fail_msg("trainer_create: %s", ddp_error_trace_str());
    if (ddp_trainer_run(t, NULL) != DDP_OK) fail_msg("run: %s", ddp_error_trace_str());
    *n = ddp_model_num_params(ddp_trainer_model(t));
    float *p = malloc(*n * sizeof(float));
    assert_non_null(p);
    assert_int_equal(ddp_trainer_get_params(t, p), DDP_OK);
    ddp_trainer_free(t);
    return p;
}

/* Group setup and teardown: *state is a CPU backend. */
static inline int cpu_backend_setup(void **state) {
    ddp_backend_options opt = {.device = DDP_DEVICE_CPU};
    ddp_backend *b = NULL;
    if (ddp_backend_create(&opt, &b) != DDP_OK) return -1;
    *state = b;
    return 0;
}

static inline int cpu_backend_teardown(void **state) {
    ddp_backend_free(*state);
    return 0;
}

/* MPI tests: MPI, a CPU backend with one BLAS thread, the MPI comm over all ranks, and
 * rank-prefixed warnings. */
static inline void mpi_test_init(int *argc, char ***argv, ddp_backend **b, ddp_comm **world_comm,
                                 int *rank, int *world) {
    assert_int_equal(ddp_mpi_init(argc, argv, NULL), DDP_OK);
    ddp_backend_options bo = {.device = DDP_DEVICE_CPU, .threads = 1};
    assert_int_equal(ddp_backend_create(&bo, b), DDP_OK);
    assert_int_equal(ddp_comm_create(DDP_COMM_MPI, *b, world_comm), DDP_OK);
    *rank = ddp_comm_rank(*world_comm);
    *world = ddp_comm_size(*world_comm);
    ddp_log_init(*rank, *world, DDP_LOG_WARN);
}

/* The exit status of an MPI test: nonzero on every rank when cmocka failed on any (a
 * test that failed on one rank only must fail the job, not hang the others). Frees the
 * comm and backend and finalizes MPI. */
static inline int mpi_test_finish(int failed, ddp_backend *b, ddp_comm *world_comm) {
    int any = failed;
    ddp_comm_allreduce(world_comm, &any, 1, DDP_I32, DDP_MAX);
    ddp_comm_free(world_comm);
    ddp_backend_free(b);
    ddp_mpi_finalize();
    return any ? 1 : 0;
}

#endif
