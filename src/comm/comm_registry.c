/*
 * The comm registry: the one place that knows which communicators were built.
 */
#include <stdio.h>

#include "comm/comm_impl.h"

static ddp_status create_kind(ddp_comm_kind kind, ddp_backend *b, ddp_comm **out);

ddp_status ddp_comm_create(ddp_comm_kind kind, ddp_backend *b, ddp_comm **out) {
    DDP_CHECK(create_kind(kind, b, out));
    ddp_comm *c = *out;
    /* Every rank creates its communicators in the same order: the same id on every rank. */
    c->flight_id = ddp_flight_comm_register(NULL);
    char name[24];
    snprintf(name, sizeof name, "comm%d", c->flight_id);
    ddp_flight_comm_rename(c->flight_id, name);
    if (ddp_comm_check_all_on()) {
        ddp_status s = ddp_comm_check_collectives(c);
        if (s != DDP_OK) {
            ddp_comm_free(c);
            *out = NULL;
            DDP_CHECK(s);
        }
    }
    return DDP_OK;
}

static ddp_status create_kind(ddp_comm_kind kind, ddp_backend *b, ddp_comm **out) {
    *out = NULL;
    int on_gpu = b && !ddp_backend_is_host(b);
    (void)on_gpu; /* unused when NCCL is not built */
    if (kind == DDP_COMM_AUTO) {
#ifdef DDP_HAVE_NCCL
        kind = on_gpu ? DDP_COMM_NCCL : DDP_COMM_MPI;
#else
        kind = DDP_COMM_MPI;
#endif
    }
    switch (kind) {
    case DDP_COMM_MPI: DDP_CHECK(ddp_comm_mpi_create(b, out)); return DDP_OK;
    case DDP_COMM_LOCAL: DDP_CHECK(ddp_comm_local_create(b, out)); return DDP_OK;
    case DDP_COMM_NCCL:
#ifdef DDP_HAVE_NCCL
        if (!on_gpu)
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "--comm nccl needs the CUDA backend (--device cuda); on the CPU "
                            "use --comm mpi");
        DDP_CHECK(ddp_comm_nccl_create(b, out));
        return DDP_OK;
#else
        return DDP_FAIL(DDP_ERR_UNSUPPORTED,
                        "--comm nccl: this ddp was built without NCCL; use --comm mpi");
#endif
    case DDP_COMM_AUTO: break;
    }
    return DDP_FAIL(DDP_ERR_INVALID_ARG, "unknown comm kind %d", (int)kind);
}
