/*
 * The straggler report (straggler.h): which rank has been slowing every step down, and in
 * which phase. In data parallelism every rank waits for the slowest at each all-reduce, so
 * one slow rank costs every rank its excess; its own forward, backward and data times are
 * where it shows (the others show it only as longer waits).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/core.h"
#include "train/straggler.h"

const char *const ddp_phase_names[] = {DDP_STRAGGLER_PHASES(DDP_X_NAME) NULL};

void ddp_straggler_init(ddp_straggler *s) {
    memset(s, 0, sizeof *s);
    s->rank = -1;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The lower median of v[0..n) (sorted in place). */
static double lower_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, by_value);
    return v[(n - 1) / 2];
}

int ddp_straggler_update(ddp_straggler *s, const double *times, const double *steps, int world) {
    if (world < 2) return 0;
    double *v = malloc((size_t)world * sizeof *v);
    if (!v) return 0;
    double median[DDP_PHASE_COUNT];
    for (int p = 0; p < DDP_PHASE_COUNT; p++) {
        for (int r = 0; r < world; r++)
            v[r] = times[r * DDP_PHASE_COUNT + p];
        median[p] = lower_median(v, world);
    }
    memcpy(v, steps, (size_t)world * sizeof *v);
    double step = lower_median(v, world);
    free(v);
    /* The largest excess over the median that passes both thresholds. */
    int rank = -1, phase = 0;
    double excess = 0.0;
    for (int r = 0; r < world; r++)
        for (int p = 0; p < DDP_PHASE_COUNT; p++) {
            double t = times[r * DDP_PHASE_COUNT + p], e = t - median[p];
            if (t > DDP_STRAGGLER_RATIO * median[p] && e > DDP_STRAGGLER_FLOOR * step &&
                e > DDP_STRAGGLER_MIN_S && e > excess) {
                rank = r;
                phase = p;
                excess = e;
            }
        }
    if (rank < 0) {
        ddp_straggler_init(s);
        return 0;
    }
    s->streak = rank == s->rank && phase == s->phase ? s->streak + 1 : 1;
    s->rank = rank;
    s->phase = phase;
    s->time = times[rank * DDP_PHASE_COUNT + phase];
    s->median = median[phase];
    return s->streak >= DDP_STRAGGLER_LOGS;
}

void ddp_straggler_text(const ddp_straggler *s, char *buf, size_t cap) {
    snprintf(buf, cap, "straggler: rank %d, %s %.1f ms vs %.1f ms (median), %d logging steps",
             s->rank, ddp_enum_name(ddp_phase_names, s->phase), 1e3 * s->time, 1e3 * s->median,
             s->streak);
}
