/*
 * MPI itself for every MPI communicator: start-up and finalization, the thread level, MPI
 * errors as statuses, the agreement of set-up steps and the node's local rank.
 */
#include <limits.h>
#include <stdio.h>
#include <mpi.h>

#include "comm/comm_impl.h"

static int we_initialized_mpi = 0;
/* The thread level the job runs at (ddp_mpi_init): the lowest any rank got; -1 before. */
static int job_level = -1;

static const char *level_name(int level) {
    return level == MPI_THREAD_MULTIPLE     ? "MPI_THREAD_MULTIPLE"
           : level == MPI_THREAD_SERIALIZED ? "MPI_THREAD_SERIALIZED"
           : level == MPI_THREAD_FUNNELED   ? "MPI_THREAD_FUNNELED"
                                            : "MPI_THREAD_SINGLE";
}

ddp_status ddp_mpi_init(int *argc, char ***argv) {
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
    /* A library that gives less than it gave the others, as one installed apart would:
     * DDP_INJECT_FAULT="thread_single:RANK:1". */
    if (world > 1 && ddp_comm_inject_due(rank, "thread_single")) provided = MPI_THREAD_SINGLE;
    /* Every rank runs at the lowest level any rank got. Ranks at different levels would
     * progress the gradients' all-reduces differently (a communication thread's blocking
     * calls on some, non-blocking ones tested by the trainer on others), and blocking and
     * non-blocking collectives never match each other: the job would hang in its first
     * step. (The standard orders the levels: SINGLE < FUNNELED < SERIALIZED < MULTIPLE.)
     * One all-reduce finds the lowest level with the lowest rank at it (level * world +
     * rank) and the highest level (negated), so that rank 0 can name the rank. */
    int mine[2] = {provided * world + rank, -provided}, all[2];
    if (MPI_Allreduce(mine, all, 2, MPI_INT, MPI_MIN, MPI_COMM_WORLD) != MPI_SUCCESS)
        return DDP_FAIL(DDP_ERR_COMM, "agreeing on MPI's thread level failed");
    job_level = all[0] / world;
    if (rank == 0 && job_level < -all[1])
        fprintf(stderr,
                "[rank 0] warning: MPI gave rank %d only %s and other ranks up to %s: every "
                "rank runs at %s%s; give every rank the same MPI library\n",
                all[0] % world, level_name(job_level), level_name(-all[1]), level_name(job_level),
                job_level < MPI_THREAD_MULTIPLE
                    ? ", without a communication thread (--progress test)"
                    : "");
    return DDP_OK;
}

int ddp_mpi_thread_multiple(void) {
    if (job_level >= 0) return job_level == MPI_THREAD_MULTIPLE;
    /* MPI started by someone else and ddp_mpi_init not called: this process's level. */
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

int ddp_mpi_yields_when_idle(void) {
    int inited = 0, level = MPI_THREAD_SINGLE, provided = 0, idx = 0, count = 0, answer = -1;
    MPI_Initialized(&inited);
    if (!inited) return -1;
    /* At the level MPI runs at: Open MPI's MPI_T_init_thread sets the level that
     * MPI_Query_thread reports afterwards, so a lower one would turn the reducer's
     * communication thread off on this rank alone. */
    MPI_Query_thread(&level);
    if (MPI_T_init_thread(level, &provided) != MPI_SUCCESS) return -1;
    /* Open MPI's own name; other libraries do not have it (answer stays unknown). It is a
     * bool of one byte there, which Open MPI sets itself on a node it counts
     * oversubscribed. */
    if (MPI_T_cvar_get_index("mpi_yield_when_idle", &idx) == MPI_SUCCESS) {
        char name[64], desc[8];
        int name_len = sizeof name, desc_len = sizeof desc, verbosity, bind, scope;
        MPI_Datatype type;
        MPI_T_enum enumtype;
        MPI_T_cvar_handle h;
        if (MPI_T_cvar_get_info(idx, name, &name_len, &verbosity, &type, &enumtype, desc, &desc_len,
                                &bind, &scope) == MPI_SUCCESS &&
            MPI_T_cvar_handle_alloc(idx, NULL, &h, &count) == MPI_SUCCESS) {
            int size = 0;
            unsigned char value[16] = {0};
            if (count == 1 && MPI_Type_size(type, &size) == MPI_SUCCESS && size >= 1 &&
                size <= (int)sizeof value && MPI_T_cvar_read(h, value) == MPI_SUCCESS) {
                answer = 0;
                for (int i = 0; i < size; i++)
                    if (value[i]) answer = 1;
            }
            MPI_T_cvar_handle_free(&h);
        }
    }
    MPI_T_finalize();
    return answer;
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
