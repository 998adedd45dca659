/*
 * The flight recorder's verdict: from what the ranks report of their newest collectives
 * (ddp_flight_summary), one line saying which ranks are where when a job fails. Pure, so
 * that every case is tested without a job (test_flight.c).
 *
 * The reasoning. A collective has the same number on its communicator on every rank, so
 * two ranks' records of the same number must describe the same call: where they do not,
 * the ranks called different collectives (a desync), and the first such number is where
 * their code parted. Otherwise the job is stuck in the collective that some rank has
 * waited in longest, and each other rank either waits in it too, has passed it (a
 * collective may complete on some ranks first: those wait in a later one), has not entered
 * it (it waits in another collective: a desync, unless the ranks stuck have passed that
 * one; or in none: it is busy outside communication), or did not answer (stopped or dead).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ddp/flight.h"

void ddp_flight_count_text(uint64_t count, char *buf, size_t cap) {
    char d[32];
    int n = 0, k = 0;
    do {
        if (k > 0 && k % 3 == 0) d[n++] = ',';
        d[n++] = (char)('0' + count % 10);
        count /= 10;
        k++;
    } while (count);
    size_t i = 0;
    while (n > 0 && i + 1 < cap)
        buf[i++] = d[--n];
    if (cap) buf[i] = '\0';
}

int ddp_flight_rank_list(const int *flags, int world, char *buf, size_t cap) {
    size_t used = 0;
    int count = 0;
    if (cap) buf[0] = '\0';
    for (int r = 0; r < world; r++) {
        if (!flags[r]) continue;
        int e = r;
        while (e + 1 < world && flags[e + 1])
            e++;
        count += e - r + 1;
        if (used < cap) {
            const char *sep = used ? ", " : "";
            int n = e == r ? snprintf(buf + used, cap - used, "%s%d", sep, r)
                           : snprintf(buf + used, cap - used, "%s%d-%d", sep, r, e);
            used += n > 0 ? (size_t)n : 0;
        }
        r = e;
    }
    return count;
}

/* ---- reading the summaries ------------------------------------------------------------ */

static int is_open(const ddp_flight_brief *b) {
    return b->state == DDP_FLIGHT_ENQUEUED || b->state == DDP_FLIGHT_STARTED;
}

static int same_call(const ddp_flight_brief *a, const ddp_flight_brief *b) {
    return a->op == b->op && a->dtype == b->dtype && a->count == b->count && a->root == b->root &&
           a->redop == b->redop && strcmp(a->site, b->site) == 0;
}

static const ddp_flight_brief *find(const ddp_flight_summary *s, int comm, uint64_t seq) {
    for (int i = 0; s && i < s->n; i++)
        if (s->e[i].comm == comm && s->e[i].seq == seq) return &s->e[i];
    return NULL;
}

/* The newest record of a rank on comm, or NULL. */
static const ddp_flight_brief *newest_on(const ddp_flight_summary *s, int comm) {
    const ddp_flight_brief *best = NULL;
    for (int i = 0; s && i < s->n; i++)
        if (s->e[i].comm == comm && (!best || s->e[i].seq > best->seq)) best = &s->e[i];
    return best;
}

/* The collective a rank waits in longest, or NULL. */
static const ddp_flight_brief *longest_open(const ddp_flight_summary *s) {
    const ddp_flight_brief *best = NULL;
    for (int i = 0; s && i < s->n; i++)
        if (is_open(&s->e[i]) && (!best || s->e[i].age > best->age)) best = &s->e[i];
    return best;
}

/* The rank's most recent record of all, or NULL. */
static const ddp_flight_brief *latest(const ddp_flight_summary *s) {
    const ddp_flight_brief *best = NULL;
    for (int i = 0; s && i < s->n; i++)
        if (!best || s->e[i].age < best->age) best = &s->e[i];
    return best;
}

/* ---- writing -------------------------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t cap, used;
} text;

static void add(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(text *t, const char *fmt, ...) {
    if (t->used >= t->cap) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->buf + t->used, t->cap - t->used, fmt, ap);
    va_end(ap);
    if (n > 0) t->used += (size_t)n;
    if (t->used >= t->cap) t->used = t->cap;
}

/* "allreduce #812 on gradients (reducer bucket 3)", with " of 4,096 f32" when asked. */
static void call_text(text *t, const ddp_flight_brief *b, int with_count) {
    add(t, "%s #%llu on %s (%s)", ddp_enum_name(ddp_flight_op_names, b->op),
        (unsigned long long)b->seq, b->comm_name, b->site);
    if (with_count) {
        char n[32];
        ddp_flight_count_text(b->count, n, sizeof n);
        add(t, " of %s %s", n, ddp_enum_name(ddp_dtype_names, b->dtype));
        if (b->root >= 0) add(t, " from root %d", (int)b->root);
    }
}

static void ranks_text(text *t, const int *flags, int world) {
    char list[256];
    int n = ddp_flight_rank_list(flags, world, list, sizeof list);
    add(t, "%s %s", n == 1 ? "rank" : "ranks", list);
}

static void silent_text(text *t, const int *silent, int world, double silent_s) {
    int any = 0;
    for (int r = 0; r < world; r++)
        any |= silent[r];
    if (!any) return;
    add(t, "; ");
    ranks_text(t, silent, world);
    add(t, " did not answer within %.1f s: stopped or dead", silent_s);
}

/* The first number at which two ranks' records of one communicator differ: 1 and its
 * communicator and number, else 0. */
static int first_difference(const ddp_flight_summary *const *all, int world, int *comm,
                            uint64_t *seq) {
    int found = 0;
    for (int r = 0; r < world; r++) {
        for (int i = 0; all[r] && i < all[r]->n; i++) {
            const ddp_flight_brief *a = &all[r]->e[i];
            for (int q = r + 1; q < world; q++) {
                const ddp_flight_brief *b = find(all[q], a->comm, a->seq);
                if (!b || same_call(a, b)) continue;
                if (!found || a->seq < *seq || (a->seq == *seq && a->comm < *comm)) {
                    *comm = a->comm;
                    *seq = a->seq;
                    found = 1;
                }
            }
        }
    }
    return found;
}

static void desync_text(text *t, const ddp_flight_summary *const *all, int world, int comm,
                        uint64_t seq, const int *silent, double silent_s) {
    int done[1024] = {0}, first = 1;
    int n = world < 1024 ? world : 1024;
    for (int r = 0; r < n; r++) {
        const ddp_flight_brief *a = find(all[r], comm, seq);
        if (!a || done[r]) continue;
        int group[1024] = {0};
        for (int q = r; q < n; q++) {
            const ddp_flight_brief *b = find(all[q], comm, seq);
            if (b && !done[q] && same_call(a, b)) group[q] = done[q] = 1;
        }
        add(t, "%s", first ? "" : ", ");
        ranks_text(t, group, n);
        add(t, " in ");
        call_text(t, a, 1);
        first = 0;
    }
    /* One call with other arguments, or different calls: where the code parted. */
    int same = 1;
    const ddp_flight_brief *ref = NULL;
    for (int r = 0; r < n; r++) {
        const ddp_flight_brief *b = find(all[r], comm, seq);
        if (!b) continue;
        if (!ref) ref = b;
        same &= b->op == ref->op && strcmp(b->site, ref->site) == 0;
    }
    add(t, same ? ": desync (the same call with other arguments on each rank)"
                : ": desync (the ranks called different collectives)");
    silent_text(t, silent, n, silent_s);
}

int ddp_flight_verdict(const ddp_flight_summary *const *all, int world, double silent_s, char *buf,
                       size_t cap) {
    text t = {.buf = buf, .cap = cap};
    if (cap) buf[0] = '\0';
    if (world > 1024) world = 1024; /* the verdict names ranks of the first 1024 */
    int silent[1024] = {0};
    for (int r = 0; r < world; r++)
        silent[r] = all[r] == NULL;

    int comm = 0;
    uint64_t seq = 0;
    if (first_difference(all, world, &comm, &seq)) {
        desync_text(&t, all, world, comm, seq, silent, silent_s);
        return 1;
    }

    /* The collective waited in longest. */
    const ddp_flight_brief *stuck = NULL;
    for (int r = 0; r < world; r++) {
        const ddp_flight_brief *b = longest_open(all[r]);
        if (b && (!stuck || b->age > stuck->age)) stuck = b;
    }
    if (!stuck) {
        int answered[1024] = {0}, any = 0;
        for (int r = 0; r < world; r++)
            any |= answered[r] = all[r] != NULL;
        if (any) {
            ranks_text(&t, answered, world);
            add(&t, " answered and %s in no collective", world > 1 ? "are" : "is");
        } else {
            add(&t, "no rank answered");
        }
        silent_text(&t, silent, world, silent_s);
        return 0;
    }

    /* Each other rank's place: whether it passed the stuck collective, and the collective
     * it waits in, or else its last one (NULL: none recorded). */
    int waiting[1024] = {0}, passed[1024] = {0};
    const ddp_flight_brief *place[1024] = {NULL};
    double waited = 0.0;
    for (int r = 0; r < world; r++) {
        if (!all[r]) continue;
        const ddp_flight_brief *b = find(all[r], stuck->comm, stuck->seq);
        const ddp_flight_brief *last = newest_on(all[r], stuck->comm);
        if (b && is_open(b)) {
            waiting[r] = 1;
            if (b->age > waited) waited = b->age;
            continue;
        }
        passed[r] = b || (last && last->seq > stuck->seq);
        place[r] = longest_open(all[r]);
        if (!place[r]) place[r] = latest(all[r]);
    }
    ranks_text(&t, waiting, world);
    add(&t, " in ");
    call_text(&t, stuck, 0);
    add(&t, " for %.1f s", waited);
    /* The other ranks, those in the same place named together. */
    int desync = 0, told[1024] = {0};
    for (int r = 0; r < world; r++) {
        if (told[r] || !all[r] || waiting[r]) continue;
        const ddp_flight_brief *at = place[r];
        const ddp_flight_brief *now = at && is_open(at) ? at : NULL, *last = now ? NULL : at;
        int group[1024] = {0}, n = 0;
        double youngest = last ? last->age : 0.0;
        for (int q = r; q < world; q++) {
            const ddp_flight_brief *b = place[q];
            if (told[q] || !all[q] || waiting[q] || passed[q] != passed[r] || !at != !b) continue;
            if (at && (is_open(at) != is_open(b) || at->comm != b->comm || at->seq != b->seq ||
                       at->op != b->op || strcmp(at->site, b->site) != 0))
                continue;
            group[q] = told[q] = 1;
            n++;
            if (last && b->age < youngest) youngest = b->age;
        }
        const int one = n == 1;
        add(&t, "; ");
        ranks_text(&t, group, world);
        add(&t, passed[r] ? " completed #%llu" : " never entered #%llu",
            (unsigned long long)stuck->seq);
        if (now && passed[r]) {
            /* Ahead: a collective can complete on some ranks before others (a ring passes
             * the last pieces on), and those go on to the next one. */
            add(&t, " and %s in the later ", one ? "waits" : "wait");
            call_text(&t, now, 0);
        } else if (now) {
            /* Behind: consistent if a waiting rank completed the call it waits in. */
            int done[1024] = {0}, any = 0;
            for (int q = 0; q < world; q++) {
                const ddp_flight_brief *w = waiting[q] ? find(all[q], now->comm, now->seq) : NULL;
                any |= done[q] = w && !is_open(w);
            }
            add(&t, " and %s in ", one ? "waits" : "wait");
            call_text(&t, now, 0);
            if (any) {
                add(&t, ", which ");
                ranks_text(&t, done, world);
                add(&t, " completed");
            } else {
                desync = 1;
            }
        } else {
            add(&t, " and %s in no collective", one ? "is" : "are");
            if (last) {
                add(&t, one ? " (its last, " : " (their last, ");
                call_text(&t, last, 0);
                add(&t, ", ended %.1f s ago%s): busy outside communication", youngest,
                    one ? "" : " or earlier");
            }
        }
    }
    silent_text(&t, silent, world, silent_s);
    int all_in = 1;
    for (int r = 0; r < world; r++)
        all_in &= waiting[r];
    if (desync)
        add(&t, ": desync (the ranks wait in different collectives)");
    else if (all_in)
        add(&t, ": every rank is in it, and it does not complete (the network, the library, or "
                "a rank stopped inside it)");
    return desync;
}
