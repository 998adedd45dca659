/*
 * --check-collectives: before every collective on a communicator, its ranks compare the
 * collective's fingerprint (its number on the communicator, operation, type, count, root,
 * reduction and a hash of the calling site) in one small all-gather, and the first that
 * differs fails on every rank with a message naming both ranks and both sites.
 *
 * Why a communicator of its own per communicator: the comparison is itself a collective,
 * and it runs on the thread that calls the collective it checks (the reducer's thread for
 * the gradients, the main thread for the control communicator); one shared communicator
 * would pair one thread's comparison with the other's. Every communicator in ddp spans all
 * ranks of the job, so each comparison communicator is a duplicate of MPI_COMM_WORLD,
 * also for NCCL (the fingerprints are on the host).
 *
 * Why it catches a desync before it hangs: the comparison is an all-gather of the same
 * size on every rank whatever the collective, so ranks that are about to call different
 * collectives still meet in it, and see that they differ, instead of meeting in
 * collectives that do not match. A collective skipped among identical ones (the one
 * bucket of every step) shifts a rank by one call without changing any fingerprint it
 * compares; the shift shows where the sequence changes, or as a hang at the run's end,
 * which the flight recorder then explains.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm_impl.h"
#include "ddp/watchdog.h"

/* What is compared: the same bytes on every rank for the same call. */
typedef struct {
    uint64_t seq, count, site_hash;
    int32_t root;
    uint8_t op, dtype, redop, pad;
} fingerprint;

/* What a mismatch reports of each side. */
typedef struct {
    fingerprint f;
    char site[96];
} described;

struct ddp_comm_check {
    MPI_Comm comm;
    int size;
    fingerprint *all; /* (size) */
    described *both;  /* (size) */
};

static int checking_all;

void ddp_comm_check_all(int on) { checking_all = on; }
int ddp_comm_check_all_on(void) { return checking_all; }

ddp_status ddp_comm_check_collectives(ddp_comm *c) {
    if (c->check || c->size < 2) return DDP_OK;
    ddp_comm_check *k = calloc(1, sizeof *k);
    if (k) {
        k->size = c->size;
        k->all = calloc((size_t)c->size, sizeof *k->all);
        k->both = calloc((size_t)c->size, sizeof *k->both);
    }
    ddp_status s = k && k->all && k->both
                       ? DDP_OK
                       : DDP_FAIL(DDP_ERR_NOMEM, "--check-collectives: out of memory");
    /* Agreed before MPI_Comm_dup: a rank that cannot take part must not leave the others
     * waiting in it. */
    s = ddp_mpi_agree_local(MPI_COMM_WORLD, s, "preparing --check-collectives");
    int rc = MPI_SUCCESS;
    if (s == DDP_OK) {
        int wd = ddp_watchdog_arm("creating the communicator of --check-collectives");
        rc = MPI_Comm_dup(MPI_COMM_WORLD, &k->comm);
        ddp_watchdog_disarm(wd);
        if (rc != MPI_SUCCESS) s = ddp_mpi_fail(rc, "MPI_Comm_dup", __FILE__, __LINE__);
    }
    if (s != DDP_OK) {
        if (k) {
            free(k->all);
            free(k->both);
        }
        free(k);
        DDP_CHECK(s);
    }
    MPI_Comm_set_errhandler(k->comm, MPI_ERRORS_RETURN);
    c->check = k;
    return DDP_OK;
}

void ddp_comm_check_free(ddp_comm_check *k) {
    if (!k) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&k->comm);
    free(k->all);
    free(k->both);
    free(k);
}

/* FNV-1a: the site's text, not its address (the same literal may sit at different
 * addresses in processes that loaded the code differently). */
static uint64_t hash_text(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (; s && *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static void describe(const described *d, int rank, const char *comm, char *buf, size_t cap) {
    char count[32];
    ddp_flight_count_text(d->f.count, count, sizeof count);
    const char *op = ddp_enum_name(ddp_flight_op_names, d->f.op);
    const char *dtype = ddp_enum_name(ddp_dtype_names, d->f.dtype);
    int n = snprintf(buf, cap, "rank %d calls %s #%llu on %s of %s %s", rank, op,
                     (unsigned long long)d->f.seq, comm, count, dtype);
    if (d->f.root >= 0 && n > 0 && (size_t)n < cap)
        n += snprintf(buf + n, cap - (size_t)n, " from root %d", (int)d->f.root);
    if (n > 0 && (size_t)n < cap) snprintf(buf + n, cap - (size_t)n, " at %s", d->site);
}

ddp_status ddp_comm_check_compare(ddp_comm *c, const ddp_flight_entry *e) {
    ddp_comm_check *k = c->check;
    fingerprint mine;
    memset(&mine, 0, sizeof mine); /* the padding is compared too */
    mine.seq = e->seq;
    mine.count = e->count;
    mine.site_hash = hash_text(e->site);
    mine.root = e->root;
    mine.op = e->op;
    mine.dtype = e->dtype;
    mine.redop = e->redop;
    /* Collective over every rank of c, which reaches it before each collective on c. */
    int wd = ddp_watchdog_arm("comparison of collectives (--check-collectives)");
    int rc = MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, k->all, (int)sizeof mine, MPI_BYTE,
                           k->comm);
    ddp_watchdog_disarm(wd);
    if (rc != MPI_SUCCESS)
        return ddp_mpi_fail(rc, "MPI_Allgather (--check-collectives)", __FILE__, __LINE__);
    int first = -1, n_diff = 0;
    for (int r = 1; r < k->size; r++)
        if (memcmp(&k->all[r], &k->all[0], sizeof mine) != 0) {
            if (first < 0) first = r;
            n_diff++;
        }
    if (first < 0) return DDP_OK;
    /* Every rank saw the same difference: all of them gather the sites to name it. */
    described me;
    memset(&me, 0, sizeof me);
    me.f = mine;
    snprintf(me.site, sizeof me.site, "%s", e->site ? e->site : "?");
    wd = ddp_watchdog_arm("comparison of collectives (--check-collectives)");
    rc = MPI_Allgather(&me, (int)sizeof me, MPI_BYTE, k->both, (int)sizeof me, MPI_BYTE, k->comm);
    ddp_watchdog_disarm(wd);
    if (rc != MPI_SUCCESS)
        return ddp_mpi_fail(rc, "MPI_Allgather (--check-collectives)", __FILE__, __LINE__);
    const char *comm = ddp_flight_comm_name(c->flight_id);
    char a[256], b[256];
    describe(&k->both[0], 0, comm, a, sizeof a);
    describe(&k->both[first], first, comm, b, sizeof b);
    int same_site = strcmp(k->both[0].site, k->both[first].site) == 0;
    return DDP_FAIL(DDP_ERR_MISMATCH,
                    "--check-collectives: %s, %s%s: a desync (%s), stopped before the "
                    "collectives could hang or mix unrelated data",
                    a, b, n_diff > 1 ? " (and more ranks differ from rank 0)" : "",
                    same_site ? "the same call with other arguments on each rank"
                              : "the ranks took different paths through the code");
}
