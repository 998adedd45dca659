/*
 * Logging with a rank prefix. Info and debug lines print on rank 0 only (the others
 * would repeat them); warnings and errors print on every rank, to stderr, so that the
 * rank that failed is the one that says why.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ddp/core.h"

static int log_rank = 0;
static int log_world = 1;
static ddp_log_level log_level = DDP_LOG_INFO;
static int log_traces = 0;

void ddp_log_init(int rank, int world, ddp_log_level level) {
    log_rank = rank;
    log_world = world;
    log_level = level;
}

void ddp_log(ddp_log_level level, const char *fmt, ...) {
    if (level > log_level) return;
    if (level >= DDP_LOG_INFO && log_rank != 0) return;
    static const char *const tags[] = {"error", "warning", ""};
    FILE *f = level <= DDP_LOG_WARN ? stderr : stdout;
    char line[2048];
    int off;
    if (log_world > 1)
        off = snprintf(line, sizeof line, "[rank %d] ", log_rank);
    else
        off = 0;
    if (tags[level][0]) off += snprintf(line + off, sizeof line - (size_t)off, "%s: ", tags[level]);
    va_list ap;
    va_start(ap, fmt);
    if (off < (int)sizeof line) vsnprintf(line + off, sizeof line - (size_t)off, fmt, ap);
    va_end(ap);
    /* One write per line keeps lines of different ranks from interleaving mid-line. */
    fprintf(f, "%s\n", line);
    fflush(f);
}

void ddp_log_show_traces(int on) { log_traces = on; }

/* A user needs the reason, not where in ddp it was found; the frames are for whoever
 * debugs ddp itself, so they show only when asked for. */
static int traces_wanted(void) {
    const char *env = getenv("DDP_DEBUG");
    return log_traces || (env && env[0] && strcmp(env, "0") != 0);
}

void ddp_log_current_error(const char *what) {
    char host[256] = "?";
    gethostname(host, sizeof host - 1);
    /* The trace starts with the message; what follows it are the "at file:line" frames. */
    const char *msg = ddp_error_message(), *trace = ddp_error_trace_str();
    size_t n = strlen(msg);
    const char *frames = strncmp(trace, msg, n) == 0 && traces_wanted() ? trace + n : "";
    ddp_log(DDP_LOG_ERROR, "%s: %s (%s; on %s, pid %d)%s", what, msg,
            ddp_status_str(ddp_error_status()), host, (int)getpid(), frames);
}
