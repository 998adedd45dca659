/*
 * The watchdog thread. Armed operations live in a small table of slots, one per
 * operation in flight (operations nest, e.g. an agreement is an all-reduce, and a
 * progress thread may wait while the main thread reduces), each with the time it was
 * armed. The thread sleeps until the oldest armed operation would reach the timeout,
 * or for a short poll interval when nothing is armed, and fires when one has.
 *
 * Why a thread and not a timed-out MPI call: blocking MPI collectives have no timeout,
 * and a rank that hangs (stopped, deadlocked, stuck in a driver) never closes its
 * connections, so the only sign of it is time passing on the ranks that wait for it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ddp/watchdog.h"

/* Operations in flight at once on one process; more than this are simply not watched. */
#define MAX_SLOTS 32

typedef struct {
    const char *what; /* NULL = free */
    double since;     /* ddp_time_now() when armed */
} slot;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* signalled to stop the thread */
    pthread_t thread;
    int running, stop, fired;
    double timeout;
    double started; /* ddp_time_now() at init */
    int rank;
    ddp_watchdog_expire_fn on_expire;
    void *ctx;
    slot slots[MAX_SLOTS];
    char where[96]; /* ddp_watchdog_set_where; "" = the step */
    double poll;    /* seconds between the thread's wake-ups (at most) */
    ddp_watchdog_tick_fn tick;
    void *tick_ctx;
} wd = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Read without the mutex on every arm, so that an idle watchdog costs one load. */
static atomic_int wd_enabled;
static _Atomic int64_t wd_step;

static struct timespec deadline_in(double seconds) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long ns = (long long)ts.tv_nsec + (long long)(seconds * 1e9);
    ts.tv_sec += (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    return ts;
}

/* The armed operation that has waited longest, or NULL. Called with the mutex held. */
static const slot *oldest_armed(void) {
    const slot *old = NULL;
    for (int i = 0; i < MAX_SLOTS; i++)
        if (wd.slots[i].what && (!old || wd.slots[i].since < old->since)) old = &wd.slots[i];
    return old;
}

static void describe_step(int64_t step, char *buf, size_t cap) {
    if (step > 0)
        snprintf(buf, cap, "at step %lld", (long long)step);
    else
        snprintf(buf, cap, "during set-up (before step 1)");
}

static void *watch(void *arg) {
    (void)arg;
    /* Polling while idle bounds how late a timeout is seen after a new arm: an arm does
     * not wake this thread, so that arming stays cheap. */
    double poll = wd.poll;
    /* This thread wakes at least every `poll` seconds; a much longer gap means the whole
     * process did not run (SIGSTOP, a suspended machine, extreme CPU starvation). Its
     * armed waits then say nothing about the other ranks: the late one is this process,
     * and if every rank was frozen alike, nobody is. So the clocks restart instead of
     * firing; if another rank has given up meanwhile, its abort ends this one. */
    double frozen_after = poll + (wd.timeout / 4.0 > 1.0 ? wd.timeout / 4.0 : 1.0);
    pthread_mutex_lock(&wd.mu);
    double last = wd.started; /* a thread that starts late has not been running either */
    while (!wd.stop) {
        const slot *s = oldest_armed();
        double now = ddp_time_now(), wait = poll;
        if (now - last > frozen_after) {
            int armed = 0;
            for (int i = 0; i < MAX_SLOTS; i++)
                if (wd.slots[i].what) {
                    wd.slots[i].since = now;
                    armed = 1;
                }
            if (armed) {
                pthread_mutex_unlock(&wd.mu); /* a blocked stderr must not block arming */
                ddp_log_warn("rank %d: this process did not run for %.1f s (stopped, suspended "
                             "or starved of CPU): restarting the %g s timeout of its waits",
                             wd.rank, now - last, wd.timeout);
                pthread_mutex_lock(&wd.mu);
                if (wd.stop) break;
            }
            s = oldest_armed();
        }
        last = now;
        if (s) {
            double left = s->since + wd.timeout - now;
            if (left <= 0.0) {
                char step[sizeof wd.where], msg[512];
                if (wd.where[0])
                    snprintf(step, sizeof step, "%s", wd.where);
                else
                    describe_step(atomic_load(&wd_step), step, sizeof step);
                /* Honest about what is known: this rank sees only that its own call did
                 * not return; the rank at fault is whichever one did not report this. */
                snprintf(msg, sizeof msg,
                         "rank %d: %s %s did not complete within %g s: another rank died or "
                         "stopped responding (this rank cannot tell which); aborting the job "
                         "(if a step can take this long, raise --timeout)",
                         wd.rank, s->what, step, wd.timeout);
                wd.fired = 1;
                atomic_store(&wd_enabled, 0);
                ddp_watchdog_expire_fn fn = wd.on_expire;
                void *ctx = wd.ctx;
                pthread_mutex_unlock(&wd.mu);
                ddp_log_error("%s", msg);
                if (fn) fn(ctx, msg);
                return NULL;
            }
            if (left < wait) wait = left;
        }
        if (wd.tick) {
            /* Outside the lock: the tick may talk to other ranks (the flight recorder's
             * side channel), and arming must never wait for that. */
            ddp_watchdog_tick_fn fn = wd.tick;
            void *ctx = wd.tick_ctx;
            pthread_mutex_unlock(&wd.mu);
            fn(ctx);
            pthread_mutex_lock(&wd.mu);
            if (wd.stop) break;
            last = ddp_time_now(); /* the tick's own time is not a frozen process */
        }
        struct timespec until = deadline_in(wait);
        int rc = pthread_cond_timedwait(&wd.cv, &wd.mu, &until);
        if (rc != 0 && rc != ETIMEDOUT) break; /* cannot happen with valid arguments */
    }
    pthread_mutex_unlock(&wd.mu);
    return NULL;
}

ddp_status ddp_watchdog_init(double timeout_s, int rank, ddp_watchdog_expire_fn on_expire,
                             void *ctx) {
    if (!(timeout_s >= 0.0) || timeout_s > 1e7)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "watchdog: timeout %g s is not a number of seconds from 0 (off) to 1e7",
                        timeout_s);
    if (timeout_s == 0.0) return DDP_OK;
    pthread_mutex_lock(&wd.mu);
    if (wd.running) {
        pthread_mutex_unlock(&wd.mu);
        return DDP_FAIL(DDP_ERR_INTERNAL, "watchdog: already running; call ddp_watchdog_free "
                                          "before starting it again");
    }
    memset(wd.slots, 0, sizeof wd.slots);
    wd.timeout = timeout_s;
    wd.rank = rank;
    wd.on_expire = on_expire;
    wd.ctx = ctx;
    wd.stop = 0;
    wd.fired = 0;
    wd.started = ddp_time_now();
    wd.poll = timeout_s / 10.0;
    if (wd.poll > 1.0) wd.poll = 1.0;
    if (wd.poll < 0.01) wd.poll = 0.01;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    /* The deadline is on the monotonic clock, like every armed time: a wall-clock jump
     * must neither fire the watchdog nor delay it. */
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&wd.cv, &attr);
    pthread_condattr_destroy(&attr);
    if (rc == 0) {
        rc = pthread_create(&wd.thread, NULL, watch, NULL);
        if (rc != 0) pthread_cond_destroy(&wd.cv);
    }
    if (rc != 0) {
        pthread_mutex_unlock(&wd.mu);
        return DDP_FAIL(DDP_ERR_INTERNAL,
                        "watchdog: cannot start its thread: %s; run with --timeout 0 to go "
                        "without failure detection",
                        strerror(rc));
    }
    wd.running = 1;
    atomic_store(&wd_enabled, 1);
    pthread_mutex_unlock(&wd.mu);
    return DDP_OK;
}

void ddp_watchdog_free(void) {
    pthread_mutex_lock(&wd.mu);
    if (!wd.running) {
        pthread_mutex_unlock(&wd.mu);
        return;
    }
    atomic_store(&wd_enabled, 0);
    wd.stop = 1;
    pthread_cond_signal(&wd.cv);
    pthread_mutex_unlock(&wd.mu);
    pthread_join(wd.thread, NULL);
    pthread_mutex_lock(&wd.mu);
    pthread_cond_destroy(&wd.cv);
    wd.running = 0;
    pthread_mutex_unlock(&wd.mu);
}

void ddp_watchdog_set_step(int64_t step) { atomic_store(&wd_step, step); }

int64_t ddp_watchdog_step(void) { return atomic_load_explicit(&wd_step, memory_order_relaxed); }

double ddp_watchdog_poll_s(void) {
    pthread_mutex_lock(&wd.mu);
    double p = wd.running ? wd.poll : 0.0;
    pthread_mutex_unlock(&wd.mu);
    return p;
}

void ddp_watchdog_set_tick(ddp_watchdog_tick_fn fn, void *ctx) {
    pthread_mutex_lock(&wd.mu);
    wd.tick = fn;
    wd.tick_ctx = ctx;
    pthread_mutex_unlock(&wd.mu);
}

void ddp_watchdog_set_where(const char *where) {
    pthread_mutex_lock(&wd.mu);
    snprintf(wd.where, sizeof wd.where, "%s", where ? where : "");
    pthread_mutex_unlock(&wd.mu);
}

int ddp_watchdog_arm(const char *what) {
    if (!atomic_load_explicit(&wd_enabled, memory_order_relaxed)) return -1;
    int token = -1;
    pthread_mutex_lock(&wd.mu);
    for (int i = 0; i < MAX_SLOTS; i++)
        if (!wd.slots[i].what) {
            wd.slots[i].what = what ? what : "operation";
            wd.slots[i].since = ddp_time_now();
            token = i;
            break;
        }
    pthread_mutex_unlock(&wd.mu);
    return token;
}

void ddp_watchdog_disarm(int token) {
    if (token < 0 || token >= MAX_SLOTS) return;
    pthread_mutex_lock(&wd.mu);
    wd.slots[token].what = NULL;
    pthread_mutex_unlock(&wd.mu);
}

int ddp_watchdog_fired(void) {
    pthread_mutex_lock(&wd.mu);
    int fired = wd.fired;
    pthread_mutex_unlock(&wd.mu);
    return fired;
}
