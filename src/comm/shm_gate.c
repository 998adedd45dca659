/*
 * The node arrival gate: per-rank sequence counters in an MPI shared window, with
 * futex sleeps (Linux) while a peer is late. See shm_gate.h for why.
 */
#include "comm/shm_gate.h"

#include <limits.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* One counter per cache line: a rank's store must not invalidate the line its peers
 * are sleeping on. */
typedef struct {
    _Atomic uint32_t seq;
    uint32_t unused;
    uint64_t a, b; /* the announcement of ddp_shm_gate_pass_compare */
    char pad[64 - 2 * sizeof(uint32_t) - 2 * sizeof(uint64_t)];
} gate_slot;

struct ddp_shm_gate {
    MPI_Win win;
    gate_slot *slots; /* (local_size), in the shared window */
    int me, n;
    uint32_t seq; /* passes made by this rank */
};

#ifdef __linux__
static void futex_wake_all(_Atomic uint32_t *w) {
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Sleeps while *w == seen, at most 50 ms: a bounded wait, so a missed wake-up costs a
 * little time, never the job. */
static void futex_wait_while(_Atomic uint32_t *w, uint32_t seen) {
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 50 * 1000 * 1000};
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT, seen, &ts, NULL, 0);
}
#endif

ddp_status ddp_shm_gate_create(MPI_Comm node, int want, ddp_shm_gate **out) {
    *out = NULL;
    int n = 1, me = 0;
    MPI_Comm_size(node, &n);
    MPI_Comm_rank(node, &me);
    if (n == 1) return DDP_OK; /* alone on the node: nobody to wait for */
#ifndef __linux__
    want = 0; /* futexes are Linux's */
#endif
    ddp_shm_gate *g = calloc(1, sizeof *g);
    int ok = want && g != NULL;
    /* Agree first: a rank that gates while a peer does not would wait for it forever. */
    if (MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, node) != MPI_SUCCESS)
        ok = -1; /* the node comm itself failed: give up without further collectives */
    if (ok <= 0) {
        free(g);
        return ok < 0 ? DDP_FAIL(DDP_ERR_COMM, "shm gate: agreement on the node failed") : DDP_OK;
    }
    g->me = me;
    g->n = n;
    void *mine = NULL;
    int rc = MPI_Win_allocate_shared((MPI_Aint)sizeof(gate_slot), (int)sizeof(gate_slot),
                                     MPI_INFO_NULL, node, &mine, &g->win);
    int made = rc == MPI_SUCCESS;
    if (made) {
        MPI_Aint size;
        int disp;
        /* Slots are contiguous (the default layout), so rank 0's base addresses them all. */
        rc = MPI_Win_shared_query(g->win, 0, &size, &disp, &g->slots);
        if (rc == MPI_SUCCESS) memset(mine, 0, sizeof(gate_slot));
    }
    ok = rc == MPI_SUCCESS;
    /* Also orders the zeroing before anyone's first pass. */
    if (MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, node) != MPI_SUCCESS) ok = -1;
    if (ok <= 0) {
        /* Freeing is collective: only when the node still communicates. */
        if (ok == 0 && made) MPI_Win_free(&g->win);
        free(g);
        return ok < 0 ? DDP_FAIL(DDP_ERR_COMM, "shm gate: agreement on the node failed") : DDP_OK;
    }
    *out = g;
    return DDP_OK;
}

int ddp_shm_gate_pass_compare(ddp_shm_gate *g, uint64_t a, uint64_t b, uint64_t *their_a,
                              uint64_t *their_b) {
    /* Written before the sequence number, whose release store publishes them. */
    g->slots[g->me].a = a;
    g->slots[g->me].b = b;
    ddp_shm_gate_pass(g);
    for (int j = 0; j < g->n; j++) {
        if (j == g->me || (g->slots[j].a == a && g->slots[j].b == b)) continue;
        *their_a = g->slots[j].a;
        *their_b = g->slots[j].b;
        return j;
    }
    return -1;
}

void ddp_shm_gate_pass(ddp_shm_gate *g) {
    uint32_t my = ++g->seq;
    atomic_store_explicit(&g->slots[g->me].seq, my, memory_order_release);
#ifdef __linux__
    futex_wake_all(&g->slots[g->me].seq);
#endif
    for (int j = 0; j < g->n; j++) {
        if (j == g->me) continue;
        uint32_t v;
        /* Serial arithmetic: counters may wrap around after 2^32 passes. */
        while ((int32_t)((v = atomic_load_explicit(&g->slots[j].seq, memory_order_acquire)) - my) <
               0) {
#ifdef __linux__
            futex_wait_while(&g->slots[j].seq, v);
#endif
        }
    }
}

void ddp_shm_gate_free(ddp_shm_gate *g) {
    if (!g) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Win_free(&g->win);
    free(g);
}
