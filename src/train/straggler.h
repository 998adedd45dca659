/* The straggler report: on every logging step each rank's forward, backward and data times
 * (means over the steps since the last logging step) are gathered, and a rank that has
 * been more than 20% slower than the median rank in one phase, by more than 10% of a step
 * and more than 1 ms, for DDP_STRAGGLER_LOGS logging steps in a row is named with that
 * phase. The floors keep the jitter of short steps quiet (ranks sharing cores differ by a
 * tenth of a millisecond or so in steps of one): what is named costs every rank a tenth of
 * its step. The median of
 * an even number of ranks is the lower middle one: the straggler must not raise the
 * reference it is compared to (with two ranks, the other rank is the reference). Pure, so
 * that every case is tested without a job (tests/train/test_straggler.c). */
#ifndef DDP_STRAGGLER_H
#define DDP_STRAGGLER_H

#include <stddef.h>

#include "ddp/core.h"

#define DDP_STRAGGLER_PHASES(X)                                                                    \
    X(DDP_PHASE_FORWARD, "forward") X(DDP_PHASE_BACKWARD, "backward") X(DDP_PHASE_DATA, "data")
typedef enum { DDP_STRAGGLER_PHASES(DDP_X_VALUE) DDP_PHASE_COUNT } ddp_phase;
extern const char *const ddp_phase_names[];

#define DDP_STRAGGLER_RATIO 1.2  /* slower than the median by more than this factor, */
#define DDP_STRAGGLER_FLOOR 0.10 /* and by more than this part of the median step */
#define DDP_STRAGGLER_MIN_S 1e-3 /* and more than this many seconds, */
#define DDP_STRAGGLER_LOGS  3    /* for this many logging steps in a row */

typedef struct {
    int rank, phase;     /* the slowest (rank, phase) of the last logging step; rank -1: none */
    int streak;          /* logging steps in a row that it was the same */
    double time, median; /* its mean time in that phase and the median rank's, seconds */
} ddp_straggler;

void ddp_straggler_init(ddp_straggler *s);
/* One logging step: times[r * DDP_PHASE_COUNT + p] is rank r's mean seconds per step in
 * phase p, steps[r] its mean seconds per step. Returns 1 when a rank is reported
 * (s->streak >= DDP_STRAGGLER_LOGS; s says who, where, and by how much), else 0. */
int ddp_straggler_update(ddp_straggler *s, const double *times, const double *steps, int world);
/* "straggler: rank 1, data 21.3 ms vs 0.1 ms (median), 3 logging steps" */
void ddp_straggler_text(const ddp_straggler *s, char *buf, size_t cap);

#endif
