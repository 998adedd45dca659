/*
 * Status strings and the per-thread error state: the root-cause message recorded by
 * DDP_FAIL and the "at file:line" frames added by DDP_CHECK on the way up.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ddp/core.h"

static const char *const status_names[DDP_STATUS_COUNT] = {
    [DDP_OK] = "ok",
    [DDP_ERR_INVALID_ARG] = "invalid argument",
    [DDP_ERR_IO] = "I/O error",
    [DDP_ERR_FORMAT] = "bad file format",
    [DDP_ERR_NOMEM] = "out of memory",
    [DDP_ERR_COMM] = "communication error",
    [DDP_ERR_BACKEND] = "compute backend error",
    [DDP_ERR_MISMATCH] = "ranks disagree",
    [DDP_ERR_NONFINITE] = "non-finite value",
    [DDP_ERR_TIMEOUT] = "timeout",
    [DDP_ERR_UNSUPPORTED] = "not supported",
    [DDP_ERR_REMOTE] = "another rank failed",
    [DDP_ERR_INTERNAL] = "internal error",
};

const char *ddp_status_str(ddp_status s) {
    if ((int)s < 0 || s >= DDP_STATUS_COUNT) return "unknown status";
    return status_names[s];
}

#define MSG_CAP   ((int)sizeof(((ddp_error_saved *)0)->message))
#define TRACE_CAP ((int)sizeof(((ddp_error_saved *)0)->frames))

static _Thread_local ddp_status err_status;
static _Thread_local char err_msg[MSG_CAP];
static _Thread_local char err_trace[MSG_CAP + TRACE_CAP];
static _Thread_local size_t err_trace_len;

ddp_status ddp_error_set(ddp_status s, const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    err_status = s;
    int n = snprintf(err_trace, sizeof err_trace, "%s\n  at %s:%d", err_msg, file, line);
    err_trace_len = n < 0 ? 0 : ((size_t)n >= sizeof err_trace ? sizeof err_trace - 1 : (size_t)n);
    return s;
}

void ddp_error_trace(const char *file, int line) {
    if (err_trace_len + 1 >= sizeof err_trace) return;
    int n = snprintf(err_trace + err_trace_len, sizeof err_trace - err_trace_len, "\n  at %s:%d",
                     file, line);
    if (n > 0) {
        err_trace_len += (size_t)n;
        if (err_trace_len >= sizeof err_trace) err_trace_len = sizeof err_trace - 1;
    }
}

const char *ddp_error_message(void) { return err_msg; }
const char *ddp_error_trace_str(void) { return err_trace; }
ddp_status ddp_error_status(void) { return err_status; }

void ddp_error_clear(void) {
    err_status = DDP_OK;
    err_msg[0] = '\0';
    err_trace[0] = '\0';
    err_trace_len = 0;
}

void ddp_error_save(ddp_error_saved *e) {
    e->status = err_status;
    snprintf(e->message, sizeof e->message, "%s", err_msg);
    /* The trace starts with the message; the frames are what follows it. */
    size_t n = strlen(err_msg);
    const char *frames = strncmp(err_trace, err_msg, n) == 0 ? err_trace + n : "";
    snprintf(e->frames, sizeof e->frames, "%s", frames);
}

ddp_status ddp_error_restore(const ddp_error_saved *e, const char *file, int line) {
    snprintf(err_msg, sizeof err_msg, "%s", e->message);
    err_status = e->status;
    int n = snprintf(err_trace, sizeof err_trace, "%s%s", err_msg, e->frames);
    err_trace_len = n < 0 ? 0 : ((size_t)n >= sizeof err_trace ? sizeof err_trace - 1 : (size_t)n);
    ddp_error_trace(file, line);
    return e->status;
}
