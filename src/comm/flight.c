/*
 * The flight recorder's ring (ddp/flight.h): the last N collectives of this process, the
 * names of its communicators, the sites built at run time, and the summary a rank sends
 * when another asks where it is.
 *
 * Why a lock-free ring: the wrappers record every collective, from the main thread and
 * from the reducer's communication thread at once, and a collective can be as short as a
 * few microseconds. A slot is claimed with one atomic add on the record counter; its
 * ticket (the counter's value) is stored last, so that a reader takes only slots whose
 * ticket is set, and a late completion of an overwritten slot is recognised and dropped.
 * Readers (a dump, a summary) may see a slot being written: it is for diagnostics, and
 * every field of a torn slot is still a value of the right kind.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/flight.h"

const char *const ddp_flight_op_names[] = {DDP_FLIGHT_OPS(DDP_X_NAME) NULL};
const char *const ddp_flight_state_names[] = {DDP_FLIGHT_STATES(DDP_X_NAME) NULL};
const char *const ddp_dtype_names[] = {DDP_DTYPES(DDP_X_NAME) NULL};
const char *const ddp_redop_names[] = {DDP_REDOPS(DDP_X_NAME) NULL};

/* The default ring needs no allocation, so recording works from the first collective,
 * before any option is read. */
static ddp_flight_entry default_ring[DDP_FLIGHT_DEFAULT_RING];
static ddp_flight_entry *ring = default_ring;
static size_t ring_cap = DDP_FLIGHT_DEFAULT_RING;
static atomic_uint_fast64_t ring_head; /* records so far; the next ticket is this + 1 */

ddp_status ddp_flight_configure(size_t entries) {
    if (entries > DDP_FLIGHT_MAX_RING)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "--flight-ring %zu: at most %d collectives", entries,
                        DDP_FLIGHT_MAX_RING);
    if (entries == ring_cap)
        return DDP_OK; /* the same ring: keep what it holds (the set-up's collectives) */
    ddp_flight_entry *fresh = default_ring;
    if (entries > DDP_FLIGHT_DEFAULT_RING) {
        fresh = calloc(entries, sizeof *fresh);
        if (!fresh)
            return DDP_FAIL(DDP_ERR_NOMEM, "--flight-ring %zu: out of memory for the ring",
                            entries);
    }
    ddp_flight_entry *old = ring;
    ring_cap = 0; /* nothing records while the ring changes */
    ring = fresh;
    memset(ring, 0, (fresh == default_ring ? DDP_FLIGHT_DEFAULT_RING : entries) * sizeof *ring);
    atomic_store(&ring_head, 0);
    ring_cap = entries;
    if (old != default_ring && old != fresh) free(old);
    return DDP_OK;
}

size_t ddp_flight_ring_size(void) { return ring_cap; }

void ddp_flight_reset(void) {
    size_t cap = ring_cap;
    ring_cap = 0;
    memset(ring, 0, (ring == default_ring ? DDP_FLIGHT_DEFAULT_RING : cap) * sizeof *ring);
    atomic_store(&ring_head, 0);
    ring_cap = cap;
}

uint64_t ddp_flight_record(const ddp_flight_entry *e) {
    size_t cap = ring_cap;
    if (cap == 0) return 0;
    uint64_t t = atomic_fetch_add_explicit(&ring_head, 1, memory_order_relaxed) + 1;
    ddp_flight_entry *s = &ring[(t - 1) % cap];
    __atomic_store_n(&s->ticket, 0, __ATOMIC_RELAXED);
    uint8_t state = e->t_start > 0.0 ? DDP_FLIGHT_STARTED : DDP_FLIGHT_ENQUEUED;
    s->seq = e->seq;
    s->count = e->count;
    s->site = e->site ? e->site : "?";
    s->step = e->step;
    s->t_enqueue = e->t_enqueue;
    s->t_start = e->t_start;
    s->t_end = 0.0;
    s->root = e->root;
    s->comm = e->comm;
    s->op = e->op;
    s->dtype = e->dtype;
    s->redop = e->redop;
    s->state = state;
    __atomic_store_n(&s->ticket, t, __ATOMIC_RELEASE);
    return t;
}

void ddp_flight_mark(uint64_t ticket, ddp_flight_state state, double t) {
    size_t cap = ring_cap;
    if (ticket == 0 || cap == 0) return;
    ddp_flight_entry *s = &ring[(ticket - 1) % cap];
    if (__atomic_load_n(&s->ticket, __ATOMIC_ACQUIRE) != ticket) return; /* reused since */
    uint8_t now = __atomic_load_n(&s->state, __ATOMIC_RELAXED);
    if (now == DDP_FLIGHT_DONE || now == DDP_FLIGHT_FAILED) return; /* a test saw it first */
    if (state == DDP_FLIGHT_STARTED)
        s->t_start = t;
    else
        s->t_end = t;
    __atomic_store_n(&s->state, (uint8_t)state, __ATOMIC_RELEASE);
}

size_t ddp_flight_snapshot(ddp_flight_entry *out, size_t cap) {
    size_t rc = ring_cap, n = 0;
    if (rc == 0) return 0;
    uint64_t head = atomic_load(&ring_head);
    /* Oldest first: the slot after the newest, around the ring. */
    for (size_t i = 0; i < rc && n < cap; i++) {
        const ddp_flight_entry *s = &ring[(head + i) % rc];
        if (__atomic_load_n(&s->ticket, __ATOMIC_ACQUIRE) == 0) continue;
        out[n++] = *s;
    }
    return n;
}

int ddp_flight_snapshot_slot(size_t i, ddp_flight_entry *out) {
    size_t rc = ring_cap;
    if (i >= rc) return -1;
    const ddp_flight_entry *s = &ring[(atomic_load(&ring_head) + i) % rc];
    *out = *s;
    out->ticket = __atomic_load_n(&s->ticket, __ATOMIC_ACQUIRE);
    return 0;
}

/* ---- communicators and sites ---------------------------------------------------------- */

#define MAX_COMMS 64
static char comm_names[MAX_COMMS][24];
static int n_comms;

int ddp_flight_comm_register(const char *name) {
    int id = n_comms++ % MAX_COMMS;
    snprintf(comm_names[id], sizeof comm_names[id], "%s", name ? name : "comm");
    return id;
}

void ddp_flight_comm_rename(int id, const char *name) {
    if (id < 0 || id >= MAX_COMMS) return;
    snprintf(comm_names[id], sizeof comm_names[id], "%s", name ? name : "comm");
}

const char *ddp_flight_comm_name(int id) {
    return id >= 0 && id < MAX_COMMS && comm_names[id][0] ? comm_names[id] : "?";
}

static struct {
    pthread_mutex_t mu;
    char text[16384];
    size_t used;
} sites = {.mu = PTHREAD_MUTEX_INITIALIZER};

const char *ddp_flight_site(const char *fallback, const char *fmt, ...) {
    char want[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(want, sizeof want, fmt, ap);
    va_end(ap);
    size_t len = strlen(want) + 1;
    const char *found = fallback;
    pthread_mutex_lock(&sites.mu);
    /* Few sites, each made once at set-up: a linear search is enough. */
    size_t off = 0;
    while (off < sites.used && strcmp(sites.text + off, want) != 0)
        off += strlen(sites.text + off) + 1;
    if (off < sites.used) {
        found = sites.text + off;
    } else if (sites.used + len <= sizeof sites.text) {
        memcpy(sites.text + sites.used, want, len);
        found = sites.text + sites.used;
        sites.used += len;
    }
    pthread_mutex_unlock(&sites.mu);
    return found;
}

/* ---- the summary ---------------------------------------------------------------------- */

static void brief_of(const ddp_flight_entry *e, double now, ddp_flight_brief *b) {
    memset(b, 0, sizeof *b);
    b->seq = e->seq;
    b->count = e->count;
    b->step = e->step;
    int done = e->state == DDP_FLIGHT_DONE || e->state == DDP_FLIGHT_FAILED;
    b->age = now - (done && e->t_end > 0.0 ? e->t_end : e->t_enqueue);
    b->comm = e->comm;
    b->root = e->root;
    b->op = e->op;
    b->dtype = e->dtype;
    b->redop = e->redop;
    b->state = e->state;
    snprintf(b->site, sizeof b->site, "%s", e->site ? e->site : "?");
    snprintf(b->comm_name, sizeof b->comm_name, "%s", ddp_flight_comm_name(e->comm));
}

void ddp_flight_summarize_entries(int rank, const ddp_flight_entry *entries, size_t n, double now,
                                  ddp_flight_summary *out) {
    memset(out, 0, sizeof *out);
    out->rank = rank;
    /* Communicators by their newest record, newest first: walk from the newest. */
    int order[MAX_COMMS], n_order = 0;
    for (size_t i = n; i-- > 0;) {
        int c = entries[i].comm % MAX_COMMS, seen = 0;
        for (int k = 0; k < n_order; k++)
            seen |= order[k] == c;
        if (!seen && n_order < DDP_FLIGHT_BRIEFS / DDP_FLIGHT_PER_COMM) order[n_order++] = c;
    }
    for (int k = 0; k < n_order; k++) {
        int c = order[k];
        /* Its newest, but the oldest one still in flight among them: that is where a
         * rank waits when its requests pile up. */
        const ddp_flight_entry *pick[DDP_FLIGHT_PER_COMM];
        int np = 0;
        const ddp_flight_entry *oldest_open = NULL;
        for (size_t i = n; i-- > 0;) {
            const ddp_flight_entry *e = &entries[i];
            if (e->comm % MAX_COMMS != c) continue;
            int open = e->state == DDP_FLIGHT_ENQUEUED || e->state == DDP_FLIGHT_STARTED;
            if (open) oldest_open = e;
            if (np < DDP_FLIGHT_PER_COMM) pick[np++] = e;
        }
        if (oldest_open && np == DDP_FLIGHT_PER_COMM) {
            int in = 0;
            for (int j = 0; j < np; j++)
                in |= pick[j] == oldest_open;
            if (!in) pick[np - 1] = oldest_open;
        }
        for (int j = np; j-- > 0 && out->n < DDP_FLIGHT_BRIEFS;)
            brief_of(pick[j], now, &out->e[out->n++]);
    }
}

void ddp_flight_summarize(int rank, ddp_flight_summary *out) {
    size_t cap = ring_cap ? ring_cap : 1;
    ddp_flight_entry *copy = malloc(cap * sizeof *copy);
    if (!copy) {
        memset(out, 0, sizeof *out);
        out->rank = rank;
        return;
    }
    size_t n = ddp_flight_snapshot(copy, cap);
    ddp_flight_summarize_entries(rank, copy, n, ddp_time_now(), out);
    free(copy);
}
