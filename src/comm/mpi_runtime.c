/*
 * MPI itself for every MPI communicator: start-up and finalization, the thread level, MPI
 * errors as statuses, the agreement of set-up steps and the node's local rank.
 */
#include <limits.h>
#include <mpi.h>

#include "comm/comm_impl.h"

static int we_initialized_mpi = 0;

ddp_status ddp_mpi_init(int *argc, char ***argv, int *thread_level) {
    int inited = 0, provided = MPI_THREAD_SINGLE;
    MPI_Initialized(&inited);
    if (!inited) {
        /* MULTIPLE lets a progress thread drive non-blocking collectives while the main
         * thread computes; take what the library offers and report it. */
        if (MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
            return DDP_FAIL(DDP_ERR_COMM, "MPI_Init_thread failed: is this started by mpirun?");
        we_initialized_mpi = 1;
    } else {
        MPI_Query_thread(&provided);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    /* A dump of the flight recorder names its rank from the first collective on. */
    int rank = 0, world = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    ddp_flight_set_rank(rank, world);
    if (thread_level) *thread_level = provided;
    return DDP_OK;
}

int ddp_mpi_thread_multiple(void) {
    int inited = 0, level = MPI_THREAD_SINGLE;
    MPI_Initialized(&inited);
    if (inited) MPI_Query_thread(&level);
    return level == MPI_THREAD_MULTIPLE;
}

void ddp_mpi_finalize(void) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (we_initialized_mpi && !finalized) MPI_Finalize();
}

ddp_status ddp_mpi_fail(int rc, const char *what, const char *file, int line) {
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return ddp_error_set(DDP_ERR_COMM, file, line, "%s failed: %s", what, msg);
}

#define MPI_TRY(call, what)                                                                        \
    do {                                                                                           \
        int mpi_rc_ = (call);                                                                      \
        if (mpi_rc_ != MPI_SUCCESS) return ddp_mpi_fail(mpi_rc_, (what), __FILE__, __LINE__);      \
    } while (0)

ddp_status ddp_mpi_agree_local(MPI_Comm comm, ddp_status local, const char *what) {
    int world_rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    /* MIN over (world rank if failed, else INT_MAX): the lowest failing rank, if any. */
    int lowest = local == DDP_OK ? INT_MAX : world_rank;
    int rc = MPI_Allreduce(MPI_IN_PLACE, &lowest, 1, MPI_INT, MPI_MIN, comm);
    if (local != DDP_OK) return local;
    if (rc != MPI_SUCCESS) return ddp_mpi_fail(rc, "MPI_Allreduce (agreement)", __FILE__, __LINE__);
    if (lowest == INT_MAX) return DDP_OK;
    return DDP_FAIL(DDP_ERR_REMOTE, "%s failed on rank %d (see its message)", what, lowest);
}

ddp_status ddp_mpi_local_rank(int *local_rank, int *local_size) {
    static int cached = 0, lr = 0, ls = 1;
    if (!cached) {
        MPI_Comm node;
        MPI_TRY(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
                "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)");
        MPI_Comm_rank(node, &lr);
        MPI_Comm_size(node, &ls);
        MPI_Comm_free(&node);
        cached = 1;
    }
    *local_rank = lr;
    *local_size = ls;
    return DDP_OK;
}
