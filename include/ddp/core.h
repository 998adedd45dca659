/*
 * core: status codes with an error trace, rank-prefixed logging, a seeded RNG, a
 * monotonic clock and small file helpers. Every other module depends on this one and
 * on nothing else.
 *
 * Errors: a fallible function returns ddp_status. The place that detects a failure
 * records a message with DDP_FAIL (the message says what was wrong and what to do);
 * each caller that passes the status up adds its file:line with DDP_CHECK, so the
 * trace reads from the root cause outward. The message and trace are per thread.
 */
#ifndef DDP_CORE_H
#define DDP_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    DDP_OK = 0,
    DDP_ERR_INVALID_ARG, /* a flag, a size or a combination of them is wrong */
    DDP_ERR_IO,          /* a file could not be opened, read or written */
    DDP_ERR_FORMAT,      /* a file was read but its contents are wrong */
    DDP_ERR_NOMEM,       /* host or device allocation failed */
    DDP_ERR_COMM,        /* a collective failed (MPI, NCCL) */
    DDP_ERR_BACKEND,     /* a compute call failed (BLAS, CUDA, cuBLAS) */
    DDP_ERR_MISMATCH,    /* ranks disagree (configuration, parameters) */
    DDP_ERR_NONFINITE,   /* a loss or gradient is NaN or infinite */
    DDP_ERR_TIMEOUT,     /* a rank did not answer in time */
    DDP_ERR_UNSUPPORTED, /* not built in, or no device present */
    DDP_ERR_REMOTE,      /* another rank failed; its message was reported there */
    DDP_ERR_INTERNAL,    /* a bug in ddp: please report it */
    DDP_STATUS_COUNT
} ddp_status;

/* The fixed name of a status ("invalid argument", ...). Never NULL. */
const char *ddp_status_str(ddp_status s);

/* Records the root cause of a failure in this thread's error state and returns s.
 * Use through DDP_FAIL so the location is filled in. */
ddp_status ddp_error_set(ddp_status s, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Appends one "at file:line" frame to the trace of the current error. */
void ddp_error_trace(const char *file, int line);
/* The message of the last recorded error ("" when none). */
const char *ddp_error_message(void);
/* The message followed by its trace, one frame per line. */
const char *ddp_error_trace_str(void);
/* The status of the last recorded error (DDP_OK when none). */
ddp_status ddp_error_status(void);
void ddp_error_clear(void);

/* An error carried from the thread that met it to another one (the error state is per
 * thread): ddp_error_save copies this thread's state, ddp_error_restore makes it the
 * calling thread's, adds one frame for file:line, and returns its status. */
typedef struct {
    ddp_status status;
    char message[1024];
    char frames[2048]; /* the "at file:line" lines that follow the message */
} ddp_error_saved;
void ddp_error_save(ddp_error_saved *e);
ddp_status ddp_error_restore(const ddp_error_saved *e, const char *file, int line);

#define DDP_FAIL(st, ...) ddp_error_set((st), __FILE__, __LINE__, __VA_ARGS__)

#define DDP_CHECK(expr)                                                                            \
    do {                                                                                           \
        ddp_status ddp_check_s_ = (expr);                                                          \
        if (ddp_check_s_ != DDP_OK) {                                                              \
            ddp_error_trace(__FILE__, __LINE__);                                                   \
            return ddp_check_s_;                                                                   \
        }                                                                                          \
    } while (0)

/* Like DDP_CHECK but jumps to a cleanup label with the status stored in `var`. */
#define DDP_CHECK_GOTO(expr, var, label)                                                           \
    do {                                                                                           \
        (var) = (expr);                                                                            \
        if ((var) != DDP_OK) {                                                                     \
            ddp_error_trace(__FILE__, __LINE__);                                                   \
            goto label;                                                                            \
        }                                                                                          \
    } while (0)

/* ---- enums ------------------------------------------------------------------------ */

/* An enum with names is a list L(X) that calls X(CONSTANT, "name") once per value, in
 * order from 0: `typedef enum { L(DDP_X_VALUE) COUNT } type;` declares it, and
 * `const char *const names[] = {L(DDP_X_NAME) NULL};` its table of names (the choices of
 * an option), so that a value added to the list has its name wherever names are used. A
 * switch over such an enum lists every value and no default (-Wswitch then fails the
 * build for a value without a case) and fails at run time on a value outside the list. */
#define DDP_X_VALUE(v, s) v,
#define DDP_X_NAME(v, s)  s,
/* names[v] when 0 <= v < the number of names (a NULL-terminated table), else "?". */
const char *ddp_enum_name(const char *const *names, int v);
/* The value whose name is s, or -1. */
int ddp_enum_find(const char *const *names, const char *s);

/* ---- logging ---------------------------------------------------------------------- */

typedef enum { DDP_LOG_ERROR = 0, DDP_LOG_WARN, DDP_LOG_INFO } ddp_log_level;

/* Sets the rank printed in every line's prefix and whether this rank prints info lines
 * (by default only rank 0 does; errors and warnings print on every rank). */
void ddp_log_init(int rank, int world, ddp_log_level level);
void ddp_log(ddp_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define ddp_log_error(...) ddp_log(DDP_LOG_ERROR, __VA_ARGS__)
#define ddp_log_warn(...)  ddp_log(DDP_LOG_WARN, __VA_ARGS__)
#define ddp_log_info(...)  ddp_log(DDP_LOG_INFO, __VA_ARGS__)
/* Prints the current error as one error line on this rank: what was being done, the
 * message, the status, host and pid. The trace ("at file:line" frames, one per line)
 * follows only when traces are on: DDP_DEBUG=1 in the environment, or
 * ddp_log_show_traces(1) (the programs' --verbose). */
void ddp_log_current_error(const char *what);
void ddp_log_show_traces(int on);

/* ---- random numbers --------------------------------------------------------------- */

/* xoshiro256** seeded through splitmix64: small, fast, and the same stream on every
 * platform, so that every rank derives identical replicated state from one seed. */
typedef struct {
    uint64_t s[4];
} ddp_rng;

/* Seeds from a base seed and a stream number (e.g. an epoch), so that independent
 * streams need no shared state. */
void ddp_rng_seed(ddp_rng *rng, uint64_t seed, uint64_t stream);
uint64_t ddp_rng_u64(ddp_rng *rng);
/* Uniform in [0, n) without modulo bias; n > 0. */
uint64_t ddp_rng_below(ddp_rng *rng, uint64_t n);
/* Uniform float in [0, 1). */
float ddp_rng_uniform(ddp_rng *rng);
/* Standard normal (Box-Muller; one value per call, deterministic). */
float ddp_rng_normal(ddp_rng *rng);

/* ---- time ------------------------------------------------------------------------- */

/* Seconds on a monotonic clock. */
double ddp_time_now(void);
/* CPU seconds the calling thread has run (its own, not the process's). */
double ddp_thread_cpu_time(void);
/* The process's peak resident set size so far in MiB (getrusage's ru_maxrss), to a
 * tenth; -1 if it cannot be read. */
double ddp_peak_rss_mb(void);
/* Its resident set size now in MiB (/proc/self/statm); -1 if it cannot be read. */
double ddp_rss_mb(void);

/* ---- tracing ---------------------------------------------------------------------- */

/* Chrome trace-event output (opens in Perfetto or chrome://tracing): one JSON file per
 * rank with complete ("X") events, pid = rank, tid = thread. While no trace is open the
 * calls below cost one branch. Times are host times: on a GPU they show when work was
 * queued unless the caller synchronizes. */
ddp_status ddp_trace_open(const char *path, int rank);
ddp_status ddp_trace_close(void);
/* Names this thread's track (tid 0 is the main thread). */
void ddp_trace_thread(int tid, const char *name);
/* Nested spans on this thread; name and cat must outlive the span (string literals or
 * stable storage). */
ddp_status ddp_trace_begin(const char *name, const char *cat);
ddp_status ddp_trace_end(void);
/* A span with explicit times (ddp_time_now seconds) on track tid (-1: this thread's). */
ddp_status ddp_trace_span(const char *name, const char *cat, double t_start, double t_end, int tid);

/* ---- files ------------------------------------------------------------------------ */

/* Creates dir and its missing parents (like mkdir -p) and checks that dir is a
 * directory. Messages start with `what` and the directory ("--checkpoint-dir /x: ..."). */
ddp_status ddp_mkdirs(const char *dir, const char *what);

/* ---- checksums -------------------------------------------------------------------- */

/* CRC-32 (zlib) of a byte range, continuing from `crc` (start with 0). */
uint32_t ddp_crc32(uint32_t crc, const void *data, size_t bytes);

#ifdef __cplusplus
}
#endif
#endif
