/*
 * Creating a communicator when one rank fails before the first collective (a local
 * failure injected with DDP_INJECT_FAULT=comm_create:1:1, as a failed allocation would
 * be): every rank returns an error at once, the failing rank its own and the others one
 * that names it, instead of waiting in MPI_Comm_dup for a rank that never comes; and the
 * ranks stay in step, so the next creation works on all of them.
 */
#include <mpi.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>

#include <cmocka.h>

#include "ddp/comm.h"
#include "test_util.h"

static int rank;

static void local_failure_fails_creation_on_every_rank(void **state) {
    ddp_comm *c = NULL;
    ddp_status s = ddp_comm_create(DDP_COMM_MPI, NULL, &c);
    assert_null(c);
    if (rank == 1) {
        assert_int_equal(s, DDP_ERR_NOMEM);
        assert_msg_has("injected local failure on rank 1");
    } else {
        assert_int_equal(s, DDP_ERR_REMOTE);
        assert_msg_has("creating the MPI communicator failed on rank 1");
    }
}

static void ranks_stay_in_step_after_the_failure(void **state) {
    ddp_comm *c = NULL;
    if (ddp_comm_create(DDP_COMM_MPI, NULL, &c) != DDP_OK) fail_msg("%s", ddp_error_trace_str());
    int32_t v = 1;
    assert_int_equal(ddp_comm_allreduce(c, &v, 1, DDP_I32, DDP_SUM), DDP_OK);
    assert_int_equal(v, ddp_comm_size(c));
    ddp_comm_free(c);
}

int main(int argc, char **argv) {
    /* Read once, at the first creation: set before it. */
    setenv("DDP_INJECT_FAULT", "comm_create:1:1", 1);
    if (ddp_mpi_init(&argc, &argv) != DDP_OK) return 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(local_failure_fails_creation_on_every_rank),
        cmocka_unit_test(ranks_stay_in_step_after_the_failure),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    ddp_mpi_finalize();
    return failed;
}
