/*
 * watchdog: ends the job when a rank stops answering. A rank that dies or hangs leaves
 * every other rank blocked in its next collective forever; MPI itself never gives up.
 * The comm layer arms the watchdog on entry to every blocking collective and disarms it
 * on return; a background thread checks that nothing stays armed longer than the
 * timeout, and if something does, it logs one error line that names the operation and
 * the training step and calls the expiry function, which ends the job.
 *
 * There is one watchdog per process. Arming and disarming are cheap (a mutex, no system
 * call) and do nothing while the watchdog is not running, so library code arms it
 * unconditionally. All functions are thread-safe.
 */
#ifndef DDP_WATCHDOG_H
#define DDP_WATCHDOG_H

#include <stdint.h>

#include "ddp/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Called once, on the watchdog's thread, after the error line has been logged. `message`
 * is that line without the log prefix. Meant not to return (it aborts the job); if it
 * returns, the watchdog stops watching and ddp_watchdog_fired() is 1. */
typedef void (*ddp_watchdog_expire_fn)(void *ctx, const char *message);

/* Starts the watchdog thread: an operation armed for more than timeout_s seconds makes
 * it fire. timeout_s == 0 leaves the watchdog off (and returns DDP_OK). `rank` is named
 * in the message. Fails if it is already running or the thread cannot be created.
 * Not collective. */
ddp_status ddp_watchdog_init(double timeout_s, int rank, ddp_watchdog_expire_fn on_expire,
                             void *ctx);
/* Stops and joins the thread. Safe to call when it never started. */
void ddp_watchdog_free(void);

/* The training step the process is working on (1-based; 0 = before the first step),
 * named in the message. */
void ddp_watchdog_set_step(int64_t step);
/* The step last set (0 before the first). Lock-free: the flight recorder reads it for
 * every collective, and a signal handler for its dump. */
int64_t ddp_watchdog_step(void);

/* Where the process is, for programs without training steps (copied, up to 95 bytes; NULL
 * or "" = back to the step): "in the all-reduces of 1048576 bytes" is named in the
 * message instead of the step. Takes the watchdog's lock: not for every collective. */
void ddp_watchdog_set_where(const char *where);

/* Marks the start of a blocking operation named `what` (a string literal: it is kept,
 * not copied). Returns a token for ddp_watchdog_disarm, or -1 when nothing is watched
 * (watchdog off, or more operations in flight at once than it tracks). Operations may
 * nest and may run on several threads; the oldest armed one is what times out. */
int ddp_watchdog_arm(const char *what);
/* Marks the end of the operation; token -1 is ignored. */
void ddp_watchdog_disarm(int token);

/* Seconds between the thread's wake-ups at most (a tenth of the timeout, from 0.01 to 1),
 * or 0 when the watchdog is not running. */
double ddp_watchdog_poll_s(void);

/* Called on the watchdog's thread at every wake-up (at least every ddp_watchdog_poll_s()
 * seconds), outside its lock: how a rank whose main thread is blocked in a collective
 * still answers the others (the flight recorder's side channel). It may end the process;
 * it must not take long otherwise. NULL removes it. */
typedef void (*ddp_watchdog_tick_fn)(void *ctx);
void ddp_watchdog_set_tick(ddp_watchdog_tick_fn fn, void *ctx);

/* 1 once the watchdog has fired (for tests, where the expiry function returns). */
int ddp_watchdog_fired(void);

#ifdef __cplusplus
}
#endif
#endif
