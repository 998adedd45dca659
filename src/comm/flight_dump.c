/*
 * The flight recorder's dump: the ring as one JSON file per rank (flight-rankR.json), and
 * the fatal signals that write it.
 *
 * Why not jansson here, as everywhere else ddp writes JSON: the dump must also be written
 * from a fatal signal's handler (a segfault, mpirun's SIGTERM after another rank died),
 * where only async-signal-safe calls are allowed: no malloc (jansson builds a tree), no
 * stdio, no locks. So this writer formats into a buffer on the stack and calls write(2);
 * the readers (the tests, cluster/ddp-flight) parse the files with real JSON parsers, and
 * test_flight.c holds this writer to jansson's reading of it. Times are whole microseconds
 * on the monotonic clock (no floating-point formatting), with the monotonic and wall clocks
 * at the dump, so that a reader can put every rank on one time line.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm/comm_impl.h"
#include "ddp/watchdog.h"

static atomic_int dump_state; /* 0 not written, 1 being written, 2 written */
static int dump_rank, dump_world = 1;
static char dump_host[64] = "?";
#define PATH_CAP 4096
static char dump_dir[PATH_CAP] = ".";
static char dump_path[PATH_CAP + 32] = "./flight-rank0.json";

/* A new path is a new file: it may be written once again. */
static void make_paths(void) {
    snprintf(dump_path, sizeof dump_path, "%s/flight-rank%d.json", dump_dir, dump_rank);
    int written = 2;
    atomic_compare_exchange_strong(&dump_state, &written, 0);
}

void ddp_flight_set_rank(int rank, int world) {
    dump_rank = rank;
    dump_world = world;
    if (gethostname(dump_host, sizeof dump_host - 1) != 0) snprintf(dump_host, 2, "?");
    make_paths();
}

ddp_status ddp_flight_set_dir(const char *dir) {
    if (!dir || !dir[0]) dir = ".";
    if (strlen(dir) >= sizeof dump_dir)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "--flight-dir %s: the name is too long", dir);
    snprintf(dump_dir, sizeof dump_dir, "%s", dir);
    make_paths();
    return DDP_OK;
}

const char *ddp_flight_dump_path(void) { return dump_path; }

/* ---- an async-signal-safe JSON writer ------------------------------------------------- */

typedef struct {
    int fd, bad;
    size_t n;
    char buf[4096];
} writer;

static void flush(writer *w) {
    size_t off = 0;
    while (off < w->n && !w->bad) {
        ssize_t k = write(w->fd, w->buf + off, w->n - off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0)
            w->bad = 1;
        else
            off += (size_t)k;
    }
    w->n = 0;
}

static void put_char(writer *w, char c) {
    if (w->n == sizeof w->buf) flush(w);
    w->buf[w->n++] = c;
}

static void put_raw(writer *w, const char *s) {
    while (*s)
        put_char(w, *s++);
}

/* A JSON string: quotes, backslashes and control characters escaped; bytes >= 0x80 are
 * passed as they are (UTF-8 stays UTF-8). */
static void put_str(writer *w, const char *s) {
    static const char hex[] = "0123456789abcdef";
    put_char(w, '"');
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            put_char(w, '\\');
            put_char(w, (char)c);
        } else if (c < 0x20) {
            put_raw(w, "\\u00");
            put_char(w, hex[c >> 4]);
            put_char(w, hex[c & 15]);
        } else {
            put_char(w, (char)c);
        }
    }
    put_char(w, '"');
}

static void put_u64(writer *w, uint64_t v) {
    char d[24];
    int n = 0;
    do {
        d[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        put_char(w, d[--n]);
}

static void put_i64(writer *w, int64_t v) {
    if (v < 0) {
        put_char(w, '-');
        put_u64(w, (uint64_t)0 - (uint64_t)v);
    } else {
        put_u64(w, (uint64_t)v);
    }
}

/* Seconds as whole microseconds; null for 0 (not seen). */
static void put_us(writer *w, double t) {
    if (!(t > 0.0)) {
        put_raw(w, "null");
        return;
    }
    put_i64(w, (int64_t)(t * 1e6));
}

static void key(writer *w, const char *k) {
    put_str(w, k);
    put_char(w, ':');
}

static int64_t clock_us(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static const char *name_of(const char *const *names, int count, int v) {
    return v >= 0 && v < count ? names[v] : "?";
}

static void put_entry(writer *w, const ddp_flight_entry *e) {
    put_char(w, '{');
    key(w, "seq");
    put_u64(w, e->seq);
    put_char(w, ',');
    key(w, "comm");
    put_str(w, ddp_flight_comm_name(e->comm));
    put_char(w, ',');
    key(w, "comm_id");
    put_u64(w, e->comm);
    put_char(w, ',');
    key(w, "op");
    put_str(w, name_of(ddp_flight_op_names, DDP_FLIGHT_OP_COUNT, e->op));
    put_char(w, ',');
    key(w, "dtype");
    put_str(w, name_of(ddp_dtype_names, DDP_DTYPE_COUNT, e->dtype));
    put_char(w, ',');
    key(w, "count");
    put_u64(w, e->count);
    put_char(w, ',');
    key(w, "redop");
    put_str(w, name_of(ddp_redop_names, DDP_REDOP_COUNT, e->redop));
    put_char(w, ',');
    key(w, "root");
    put_i64(w, e->root);
    put_char(w, ',');
    key(w, "site");
    put_str(w, e->site);
    put_char(w, ',');
    key(w, "step");
    put_i64(w, e->step);
    put_char(w, ',');
    key(w, "state");
    put_str(w, name_of(ddp_flight_state_names, DDP_FLIGHT_STATE_COUNT, e->state));
    put_char(w, ',');
    key(w, "t_enqueue_us");
    put_us(w, e->t_enqueue);
    put_char(w, ',');
    key(w, "t_start_us");
    put_us(w, e->t_start);
    put_char(w, ',');
    key(w, "t_end_us");
    put_us(w, e->t_end);
    put_char(w, '}');
}

/* The whole document. Reads the ring in place (no copy: no memory to copy it into). */
static int write_dump(int fd, const char *reason) {
    writer w = {.fd = fd};
    put_char(&w, '{');
    key(&w, "flight_recorder");
    put_u64(&w, 1);
    put_char(&w, ',');
    key(&w, "rank");
    put_i64(&w, dump_rank);
    put_char(&w, ',');
    key(&w, "world");
    put_i64(&w, dump_world);
    put_char(&w, ',');
    key(&w, "host");
    put_str(&w, dump_host);
    put_char(&w, ',');
    key(&w, "pid");
    put_i64(&w, (int64_t)getpid());
    put_char(&w, ',');
    key(&w, "reason");
    put_str(&w, reason ? reason : "");
    put_char(&w, ',');
    key(&w, "step");
    put_i64(&w, ddp_watchdog_step());
    put_char(&w, ',');
    key(&w, "mono_us");
    put_i64(&w, clock_us(CLOCK_MONOTONIC));
    put_char(&w, ',');
    key(&w, "wall_us");
    put_i64(&w, clock_us(CLOCK_REALTIME));
    put_char(&w, ',');
    key(&w, "ring_size");
    put_u64(&w, ddp_flight_ring_size());
    put_char(&w, ',');
    key(&w, "entries");
    put_char(&w, '[');
    /* One slot at a time, oldest first: a copy of the whole ring would need memory. */
    int first = 1;
    for (size_t i = 0;; i++) {
        ddp_flight_entry e;
        if (ddp_flight_snapshot_slot(i, &e) < 0) break;
        if (e.ticket == 0) continue;
        if (!first) put_char(&w, ',');
        put_char(&w, '\n');
        put_entry(&w, &e);
        first = 0;
    }
    put_raw(&w, "]}\n");
    flush(&w);
    return !w.bad;
}

int ddp_flight_dump_to(const char *path, const char *reason) {
    char tmp[PATH_CAP + 48];
    size_t n = strlen(path);
    if (n + 5 >= sizeof tmp) return 0;
    memcpy(tmp, path, n);
    memcpy(tmp + n, ".tmp", 5);
    /* Written aside and renamed: a reader never sees half a file. */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return 0;
    int ok = write_dump(fd, reason);
    ok &= close(fd) == 0;
    if (ok) ok = rename(tmp, path) == 0;
    if (!ok) unlink(tmp);
    return ok;
}

int ddp_flight_dump(const char *reason) {
    if (ddp_flight_ring_size() == 0) return 0;
    int expect = 0;
    if (!atomic_compare_exchange_strong(&dump_state, &expect, 1)) return 0;
    int ok = ddp_flight_dump_to(dump_path, reason);
    atomic_store(&dump_state, ok ? 2 : 0);
    return ok;
}

/* ---- fatal signals -------------------------------------------------------------------- */

static const struct {
    int sig;
    const char *reason;
} caught[] = {
    {SIGSEGV, "signal SIGSEGV"}, {SIGBUS, "signal SIGBUS"},   {SIGFPE, "signal SIGFPE"},
    {SIGILL, "signal SIGILL"},   {SIGABRT, "signal SIGABRT"}, {SIGTERM, "signal SIGTERM"},
    {SIGINT, "signal SIGINT"},
};
#define N_CAUGHT (sizeof caught / sizeof *caught)
static struct sigaction before[N_CAUGHT];

static void on_fatal_signal(int sig, siginfo_t *info, void *uctx) {
    (void)uctx;
    int saved = errno;
    /* A fault (si_code > 0 for SIGSEGV, SIGBUS, SIGFPE, SIGILL) happens again when its
     * instruction runs again; a signal that was sent has to be raised. */
    int fault = (sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE || sig == SIGILL) && info &&
                info->si_code > 0;
    for (size_t i = 0; i < N_CAUGHT; i++) {
        if (caught[i].sig != sig) continue;
        ddp_flight_dump(caught[i].reason);
        /* The handler that was there before (MPI's, a sanitizer's) or the default action
         * gets the signal: raised now, it is delivered when this handler returns. */
        sigaction(sig, &before[i], NULL);
        if (!fault) raise(sig);
    }
    errno = saved;
}

void ddp_flight_catch_signals(void) {
    for (size_t i = 0; i < N_CAUGHT; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fatal_signal;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESTART | SA_SIGINFO;
        sigaction(caught[i].sig, &sa, &before[i]);
    }
}
