/*
 * Public comm wrappers: argument checks, then dispatch through the ops table. This thin
 * layer is the seam that every collective passes: the watchdog is armed around every
 * blocking call, tests inject faults here (inject.c), every collective is recorded by the
 * flight recorder with its sequence number on the communicator and its calling site
 * (flight.c), and with --check-collectives the ranks compare it before it runs
 * (comm_check.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm_impl.h"
#include "ddp/watchdog.h"

size_t ddp_dtype_size(ddp_dtype t) {
    switch (t) {
    case DDP_F32: return 4;
    case DDP_BF16: return 2;
    case DDP_F64: return 8;
    case DDP_I32: return 4;
    case DDP_I64: return 8;
    case DDP_U8: return 1;
    case DDP_U32: return 4;
    case DDP_U64: return 8;
    case DDP_DTYPE_COUNT: break;
    }
    return 0;
}

const char *ddp_comm_name(const ddp_comm *c) { return c->ops->name; }
ddp_comm_kind ddp_comm_kind_of(const ddp_comm *c) { return c->ops->kind; }
void ddp_comm_set_label(ddp_comm *c, const char *tag, const char *label) {
    snprintf(c->allreduce_tag, sizeof c->allreduce_tag, "%s_allreduce", tag);
    snprintf(c->allreduce_what, sizeof c->allreduce_what, "allreduce of the %s", label);
    ddp_flight_comm_rename(c->flight_id, tag);
}
void ddp_comm_set_name(ddp_comm *c, const char *name) {
    ddp_flight_comm_rename(c->flight_id, name);
}
unsigned ddp_comm_caps(const ddp_comm *c) {
    return c->ops->caps | (c->ops->dynamic_caps ? c->ops->dynamic_caps(c) : 0u);
}
int ddp_comm_rank(const ddp_comm *c) { return c->rank; }
int ddp_comm_size(const ddp_comm *c) { return c->size; }
int ddp_comm_local_rank(const ddp_comm *c) { return c->local_rank; }
int ddp_comm_local_size(const ddp_comm *c) { return c->local_size; }
int ddp_comm_sleeping_wait(const ddp_comm *c) { return c->sleeping_wait; }
int ddp_comm_hierarchical(const ddp_comm *c) { return c->hierarchical; }

void ddp_comm_free(ddp_comm *c) {
    if (!c) return;
    /* Collective (windows, communicators): watched like any other collective. */
    int wd = ddp_watchdog_arm("freeing a communicator");
    ddp_comm_check_free(c->check);
    c->check = NULL;
    c->ops->destroy(c);
    ddp_watchdog_disarm(wd);
}

static ddp_status check_type(ddp_dtype t) {
    if (ddp_dtype_size(t) == 0) return DDP_FAIL(DDP_ERR_INVALID_ARG, "unknown dtype %d", (int)t);
    return DDP_OK;
}

/* ---- each collective's way through --------------------------------------------------- */

/* The fault DDP_INJECT_FAULT makes of this call: an error returned at once, a skip (*skip
 * set: the call does nothing, as on a rank whose code took another path), or half the
 * count. */
static ddp_status inject(const ddp_comm *c, const char *op, size_t *count, int *skip) {
    *skip = 0;
    switch (ddp_comm_inject(c->rank, c->size, op)) {
    case DDP_INJECT_NONE: return DDP_OK;
    case DDP_INJECT_FAIL:
        return DDP_FAIL(DDP_ERR_COMM,
                        "%s: injected fault on rank %d at call %ld (DDP_INJECT_FAULT)", op, c->rank,
                        ddp_comm_inject_call());
    case DDP_INJECT_SKIP:
        ddp_log_warn("%s: call %ld skipped on rank %d (DDP_INJECT_FAULT)", op,
                     ddp_comm_inject_call(), c->rank);
        *skip = 1;
        return DDP_OK;
    case DDP_INJECT_COUNT:
        if (count && *count > 1) {
            ddp_log_warn("%s: call %ld on rank %d with %zu elements instead of %zu "
                         "(DDP_INJECT_FAULT)",
                         op, ddp_comm_inject_call(), c->rank, *count / 2, *count);
            *count /= 2;
        }
        return DDP_OK;
    }
    return DDP_OK;
}

/* Records the collective (its number on c, its fingerprint and site) and, under
 * --check-collectives, compares it over the ranks before the library sees it; *ticket
 * is the record's. The comparison failing ends the call. */
static ddp_status begin(ddp_comm *c, const char *site, ddp_flight_op op, size_t count, ddp_dtype t,
                        ddp_redop r, int root, uint64_t *ticket) {
    int on = ddp_flight_ring_size() > 0;
    ddp_flight_entry e = {
        .seq = ++c->flight_seq,
        .count = count,
        .site = site,
        .step = ddp_watchdog_step(),
        .t_enqueue = on ? ddp_time_now() : 0.0,
        .root = root,
        .comm = (uint16_t)c->flight_id,
        .op = (uint8_t)op,
        .dtype = (uint8_t)t,
        .redop = (uint8_t)r,
    };
    *ticket = on ? ddp_flight_record(&e) : 0;
    if (c->check) {
        ddp_status s = ddp_comm_check_compare(c, &e);
        if (s != DDP_OK) {
            ddp_flight_mark(*ticket, DDP_FLIGHT_FAILED, ddp_time_now());
            DDP_CHECK(s);
        }
    }
    if (on) ddp_flight_mark(*ticket, DDP_FLIGHT_STARTED, ddp_time_now());
    return DDP_OK;
}

/* The record's end: complete, or failed. */
static void end(uint64_t ticket, ddp_status s) {
    if (ticket)
        ddp_flight_mark(ticket, s == DDP_OK ? DDP_FLIGHT_DONE : DDP_FLIGHT_FAILED, ddp_time_now());
}

/* A non-blocking call's record: complete at once when there is no request, else left for
 * ddp_comm_wait or ddp_comm_test to complete. */
static void handed(uint64_t ticket, ddp_status s, ddp_comm_req *req) {
    if (s != DDP_OK || !req)
        end(ticket, s);
    else
        ((ddp_comm_req_head *)req)->flight_ticket = ticket;
}

ddp_status ddp_comm_allreduce_at(ddp_comm *c, const char *site, void *buf, size_t count,
                                 ddp_dtype t, ddp_redop op) {
    DDP_CHECK(check_type(t));
    int skip;
    DDP_CHECK(inject(c, c->allreduce_tag[0] ? c->allreduce_tag : "allreduce", &count, &skip));
    if (skip) return DDP_OK;
    uint64_t tk;
    DDP_CHECK(begin(c, site, DDP_FLIGHT_ALLREDUCE, count, t, op, -1, &tk));
    if (count == 0) {
        end(tk, DDP_OK);
        return DDP_OK;
    }
    /* Every blocking call is watched: a peer that died or hangs would block it forever. */
    int wd = ddp_watchdog_arm(c->allreduce_what[0] ? c->allreduce_what : "allreduce");
    ddp_status s = c->ops->allreduce(c, buf, count, t, op);
    ddp_watchdog_disarm(wd);
    end(tk, s);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_iallreduce_at(ddp_comm *c, const char *site, void *buf, size_t count,
                                  ddp_dtype t, ddp_redop op, ddp_comm_req **req) {
    *req = NULL;
    DDP_CHECK(check_type(t));
    int skip;
    DDP_CHECK(inject(c, "iallreduce", &count, &skip));
    if (skip) return DDP_OK;
    uint64_t tk;
    DDP_CHECK(begin(c, site, DDP_FLIGHT_IALLREDUCE, count, t, op, -1, &tk));
    ddp_status s = c->ops->iallreduce(c, buf, count, t, op, req);
    handed(tk, s, *req);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_test(ddp_comm *c, ddp_comm_req *req, int *done) {
    *done = 1;
    if (!req) return DDP_OK;
    uint64_t tk = ((ddp_comm_req_head *)req)->flight_ticket;
    ddp_status s = c->ops->test(c, req, done);
    if (s != DDP_OK || *done) end(tk, s);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_wait(ddp_comm *c, ddp_comm_req *req) {
    if (!req) return DDP_OK;
    uint64_t tk = ((ddp_comm_req_head *)req)->flight_ticket; /* wait frees req */
    int wd = ddp_watchdog_arm("wait (non-blocking collective)");
    ddp_status s = c->ops->wait(c, req);
    ddp_watchdog_disarm(wd);
    end(tk, s);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_broadcast_at(ddp_comm *c, const char *site, void *buf, size_t count,
                                 ddp_dtype t, int root) {
    DDP_CHECK(check_type(t));
    int skip;
    DDP_CHECK(inject(c, "broadcast", &count, &skip));
    if (skip) return DDP_OK;
    if (root < 0 || root >= c->size)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "broadcast: root %d outside [0, %d)", root, c->size);
    uint64_t tk;
    DDP_CHECK(begin(c, site, DDP_FLIGHT_BROADCAST, count, t, DDP_SUM, root, &tk));
    if (count == 0) {
        end(tk, DDP_OK);
        return DDP_OK;
    }
    int wd = ddp_watchdog_arm("broadcast");
    ddp_status s = c->ops->broadcast(c, buf, count, t, root);
    ddp_watchdog_disarm(wd);
    end(tk, s);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_allgather_at(ddp_comm *c, const char *site, const void *send, void *recv,
                                 size_t count, ddp_dtype t) {
    DDP_CHECK(check_type(t));
    int skip;
    DDP_CHECK(inject(c, "allgather", &count, &skip));
    if (skip) return DDP_OK;
    uint64_t tk;
    DDP_CHECK(begin(c, site, DDP_FLIGHT_ALLGATHER, count, t, DDP_SUM, -1, &tk));
    if (count == 0) {
        end(tk, DDP_OK);
        return DDP_OK;
    }
    int wd = ddp_watchdog_arm("allgather");
    ddp_status s = c->ops->allgather(c, send, recv, count, t);
    ddp_watchdog_disarm(wd);
    end(tk, s);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_reduce_scatter_at(ddp_comm *c, const char *site, const void *send, void *recv,
                                      size_t count, ddp_dtype t, ddp_redop op) {
    DDP_CHECK(check_type(t));
    uint64_t tk;
    DDP_CHECK(begin(c, site, DDP_FLIGHT_REDUCE_SCATTER, count, t, op, -1, &tk));
    if (count == 0) {
        end(tk, DDP_OK);
        return DDP_OK;
    }
    int wd = ddp_watchdog_arm("reduce_scatter");
    ddp_status s = c->ops->reduce_scatter(c, send, recv, count, t, op);
    ddp_watchdog_disarm(wd);
    end(tk, s);
    DDP_CHECK(s);
    return DDP_OK;
}

/* The total of counts, refusing a sum that wraps. */
static ddp_status total_count(const ddp_comm *c, const size_t *counts, const char *what,
                              size_t *total) {
    *total = 0;
    for (int r = 0; r < c->size; r++) {
        if (counts[r] > SIZE_MAX - *total)
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "%s: the blocks' sizes overflow", what);
        *total += counts[r];
    }
    return DDP_OK;
}

ddp_status ddp_comm_reduce_scatterv_at(ddp_comm *c, const char *site, const void *send, void *recv,
                                       const size_t *counts, ddp_dtype t, ddp_redop op) {
    DDP_CHECK(check_type(t));
    int skip;
    DDP_CHECK(inject(c, "reduce_scatter", NULL, &skip));
    if (skip) return DDP_OK;
    size_t total;
    DDP_CHECK(total_count(c, counts, "reduce-scatter", &total));
    uint64_t tk;
    DDP_CHECK(begin(c, site, DDP_FLIGHT_REDUCE_SCATTERV, total, t, op, -1, &tk));
    if (total == 0) {
        end(tk, DDP_OK);
        return DDP_OK;
    }
    int wd = ddp_watchdog_arm("reduce-scatter of the gradients");
    ddp_status s = c->ops->reduce_scatterv(c, send, recv, counts, t, op);
    ddp_watchdog_disarm(wd);
    end(tk, s);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_allgatherv_at(ddp_comm *c, const char *site, void *buf, const size_t *counts,
                                  ddp_dtype t) {
    DDP_CHECK(check_type(t));
    int skip;
    DDP_CHECK(inject(c, "allgather", NULL, &skip));
    if (skip) return DDP_OK;
    size_t total;
    DDP_CHECK(total_count(c, counts, "all-gather", &total));
    uint64_t tk;
    DDP_CHECK(begin(c, site, DDP_FLIGHT_ALLGATHERV, total, t, DDP_SUM, -1, &tk));
    if (total == 0) {
        end(tk, DDP_OK);
        return DDP_OK;
    }
    int wd = ddp_watchdog_arm("all-gather of the parameters");
    ddp_status s = c->ops->allgatherv(c, buf, counts, t);
    ddp_watchdog_disarm(wd);
    end(tk, s);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_ireduce_scatterv_at(ddp_comm *c, const char *site, const void *send, void *recv,
                                        const size_t *counts, ddp_dtype t, ddp_redop op,
                                        ddp_comm_req **req) {
    *req = NULL;
    if (!c->ops->ireduce_scatterv)
        return ddp_comm_reduce_scatterv_at(c, site, send, recv, counts, t, op);
    DDP_CHECK(check_type(t));
    int skip;
    DDP_CHECK(inject(c, "reduce_scatter", NULL, &skip));
    if (skip) return DDP_OK;
    size_t total;
    DDP_CHECK(total_count(c, counts, "reduce-scatter", &total));
    uint64_t tk;
    DDP_CHECK(begin(c, site, DDP_FLIGHT_IREDUCE_SCATTERV, total, t, op, -1, &tk));
    if (total == 0) {
        end(tk, DDP_OK);
        return DDP_OK;
    }
    ddp_status s = c->ops->ireduce_scatterv(c, send, recv, counts, t, op, req);
    handed(tk, s, *req);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_iallgatherv_at(ddp_comm *c, const char *site, void *buf, const size_t *counts,
                                   ddp_dtype t, ddp_comm_req **req) {
    *req = NULL;
    if (!c->ops->iallgatherv) return ddp_comm_allgatherv_at(c, site, buf, counts, t);
    DDP_CHECK(check_type(t));
    int skip;
    DDP_CHECK(inject(c, "allgather", NULL, &skip));
    if (skip) return DDP_OK;
    size_t total;
    DDP_CHECK(total_count(c, counts, "all-gather", &total));
    uint64_t tk;
    DDP_CHECK(begin(c, site, DDP_FLIGHT_IALLGATHERV, total, t, DDP_SUM, -1, &tk));
    if (total == 0) {
        end(tk, DDP_OK);
        return DDP_OK;
    }
    ddp_status s = c->ops->iallgatherv(c, buf, counts, t, req);
    handed(tk, s, *req);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_barrier_at(ddp_comm *c, const char *site) {
    int skip;
    DDP_CHECK(inject(c, "barrier", NULL, &skip));
    if (skip) return DDP_OK;
    uint64_t tk;
    DDP_CHECK(begin(c, site, DDP_FLIGHT_BARRIER, 0, DDP_U8, DDP_SUM, -1, &tk));
    int wd = ddp_watchdog_arm("barrier");
    ddp_status s = c->ops->barrier(c);
    ddp_watchdog_disarm(wd);
    end(tk, s);
    DDP_CHECK(s);
    return DDP_OK;
}

void ddp_comm_abort(ddp_comm *c, int code) { c->ops->abort(c, code); }

ddp_status ddp_comm_alloc_shared_at(ddp_comm *c, const char *site, size_t bytes, void **ptr) {
    *ptr = NULL;
    if (!c->ops->alloc_shared || bytes == 0) return DDP_OK;
    uint64_t tk;
    DDP_CHECK(begin(c, site, DDP_FLIGHT_ALLOC_SHARED, bytes, DDP_U8, DDP_SUM, -1, &tk));
    int wd = ddp_watchdog_arm("allocating shared memory");
    ddp_status s = c->ops->alloc_shared(c, bytes, ptr);
    ddp_watchdog_disarm(wd);
    end(tk, s);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_agree_at(ddp_comm *c, const char *site, ddp_status local, int *failed_rank) {
    /* After a failed collective the ranks may be one call apart: agreeing could pair this
     * all-reduce with another call and wait forever. The caller must abort the job. */
    if (local == DDP_ERR_COMM) {
        *failed_rank = c->rank;
        return local;
    }
    /* MIN over (rank if failed, else size): the lowest failing rank, or size if none. */
    int32_t v = local == DDP_OK ? c->size : c->rank;
    DDP_CHECK(ddp_comm_allreduce_at(c, site, &v, 1, DDP_I32, DDP_MIN));
    *failed_rank = v == c->size ? -1 : v;
    return DDP_OK;
}

ddp_status ddp_comm_compare_at(ddp_comm *c, const char *site, uint32_t value, int *first_differing,
                               int *n_differing, int *mine_differs) {
    uint32_t *all = calloc((size_t)c->size, sizeof *all);
    /* Agreed before the allgather: a rank that cannot take part must not leave the others
     * waiting in it. */
    int failed = -1;
    ddp_status s = all ? DDP_OK : DDP_FAIL(DDP_ERR_NOMEM, "comparing across ranks: out of memory");
    ddp_status agreed = ddp_comm_agree_at(c, site, s, &failed);
    if (s == DDP_OK && agreed == DDP_OK && failed >= 0)
        s = DDP_FAIL(DDP_ERR_REMOTE, "rank %d could not take part in a comparison", failed);
    if (s == DDP_OK) s = agreed;
    if (s == DDP_OK) s = ddp_comm_allgather_at(c, site, &value, all, 1, DDP_U32);
    if (s != DDP_OK) {
        free(all);
        DDP_CHECK(s);
    }
    *first_differing = -1;
    *n_differing = 0;
    *mine_differs = all[c->rank] != all[0];
    for (int r = 1; r < c->size; r++)
        if (all[r] != all[0]) {
            if (*first_differing < 0) *first_differing = r;
            (*n_differing)++;
        }
    free(all);
    return DDP_OK;
}
