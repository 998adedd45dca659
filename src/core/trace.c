/*
 * Chrome trace-event JSON writer (jansson). Events are written as they end, one per line
 * inside a JSON array, so a crashed run still leaves a file that Perfetto can read (the
 * format allows the closing bracket to be missing).
 */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "ddp/core.h"

#define MAX_DEPTH 32

static FILE *trace_file;
static int trace_rank;
static double trace_t0;
static int trace_first = 1;
static pthread_mutex_t trace_mu = PTHREAD_MUTEX_INITIALIZER;

static _Thread_local int tid;
static _Thread_local int depth;
static _Thread_local struct {
    const char *name, *cat;
    double t;
} stack[MAX_DEPTH];

static ddp_status emit(json_t *ev) {
    if (!ev) return DDP_FAIL(DDP_ERR_INTERNAL, "trace: could not build an event");
    char *text = json_dumps(ev, JSON_COMPACT);
    json_decref(ev);
    if (!text) return DDP_FAIL(DDP_ERR_INTERNAL, "trace: could not encode an event");
    pthread_mutex_lock(&trace_mu);
    int bad = 0;
    if (trace_file) {
        bad = fprintf(trace_file, "%s%s", trace_first ? "[\n" : ",\n", text) < 0;
        trace_first = 0;
    }
    pthread_mutex_unlock(&trace_mu);
    free(text);
    if (bad) return DDP_FAIL(DDP_ERR_IO, "trace: write failed");
    return DDP_OK;
}

static ddp_status thread_name_event(int t, const char *name) {
    return emit(json_pack("{s:s, s:s, s:i, s:i, s:{s:s}}", "name", "thread_name", "ph", "M", "pid",
                          trace_rank, "tid", t, "args", "name", name));
}

ddp_status ddp_trace_open(const char *path, int rank) {
    if (trace_file) return DDP_FAIL(DDP_ERR_INVALID_ARG, "trace: already open");
    trace_file = fopen(path, "w");
    if (!trace_file) return DDP_FAIL(DDP_ERR_IO, "--trace %s: cannot open for writing", path);
    trace_rank = rank;
    trace_t0 = ddp_time_now();
    trace_first = 1;
    char pname[32];
    snprintf(pname, sizeof pname, "rank %d", rank);
    DDP_CHECK(emit(json_pack("{s:s, s:s, s:i, s:{s:s}}", "name", "process_name", "ph", "M", "pid",
                             rank, "args", "name", pname)));
    DDP_CHECK(thread_name_event(0, "main"));
    return DDP_OK;
}

ddp_status ddp_trace_close(void) {
    if (!trace_file) return DDP_OK;
    pthread_mutex_lock(&trace_mu);
    int bad = fprintf(trace_file, "%s]\n", trace_first ? "[" : "\n") < 0;
    bad |= fclose(trace_file) != 0;
    trace_file = NULL;
    pthread_mutex_unlock(&trace_mu);
    if (bad) return DDP_FAIL(DDP_ERR_IO, "trace: could not finish the file");
    return DDP_OK;
}

void ddp_trace_thread(int t, const char *name) {
    tid = t;
    if (trace_file) thread_name_event(t, name);
}

ddp_status ddp_trace_span(const char *name, const char *cat, double t_start, double t_end,
                          int on_tid) {
    if (!trace_file) return DDP_OK;
    /* Microseconds since the trace opened. */
    return emit(json_pack("{s:s, s:s, s:s, s:f, s:f, s:i, s:i}", "name", name, "cat", cat, "ph",
                          "X", "ts", (t_start - trace_t0) * 1e6, "dur", (t_end - t_start) * 1e6,
                          "pid", trace_rank, "tid", on_tid >= 0 ? on_tid : tid));
}

ddp_status ddp_trace_begin(const char *name, const char *cat) {
    if (!trace_file) return DDP_OK;
    if (depth >= MAX_DEPTH) return DDP_FAIL(DDP_ERR_INTERNAL, "trace: spans nested too deep");
    stack[depth].name = name;
    stack[depth].cat = cat;
    stack[depth].t = ddp_time_now();
    depth++;
    return DDP_OK;
}

ddp_status ddp_trace_end(void) {
    if (!trace_file) return DDP_OK;
    if (depth == 0) return DDP_FAIL(DDP_ERR_INTERNAL, "trace: end without begin");
    depth--;
    return ddp_trace_span(stack[depth].name, stack[depth].cat, stack[depth].t, ddp_time_now(), -1);
}
