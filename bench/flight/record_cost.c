/*
 * What the flight recorder adds to one collective, measured alone: the path of the comm
 * wrappers (src/comm/comm.c: the entry built, three clock reads, one record and two marks)
 * in a loop, on one thread and on two at once (the main thread and the reducer's both
 * record), against the same loop with the ring off (0 entries: one load and a branch).
 * Built and run by bench/flight/run.sh.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "ddp/flight.h"

#define N 2000000

static void *loop(void *arg) {
    uint64_t seq = 0;
    for (int i = 0; i < N; i++) {
        int on = ddp_flight_ring_size() > 0;
        ddp_flight_entry e = {.seq = ++seq,
                              .count = 4096,
                              .site = "reducer bucket 3",
                              .t_enqueue = on ? ddp_time_now() : 0.0,
                              .root = -1,
                              .comm = 1};
        uint64_t t = on ? ddp_flight_record(&e) : 0;
        if (on) ddp_flight_mark(t, DDP_FLIGHT_STARTED, ddp_time_now());
        if (t) ddp_flight_mark(t, DDP_FLIGHT_DONE, ddp_time_now());
    }
    *(uint64_t *)arg = seq;
    return NULL;
}

static double run(int threads) {
    pthread_t th[2];
    uint64_t seen[2];
    double t0 = ddp_time_now();
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, loop, &seen[i]);
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    return (ddp_time_now() - t0) / N * 1e9; /* ns per collective per thread */
}

int main(void) {
    for (int round = 0; round < 3; round++) {
        ddp_flight_configure(DDP_FLIGHT_DEFAULT_RING);
        double on1 = run(1), on2 = run(2);
        ddp_flight_configure(0);
        double off1 = run(1), off2 = run(2);
        printf("{\"round\": %d, \"ns_on_1thread\": %.1f, \"ns_off_1thread\": %.1f, "
               "\"ns_on_2threads\": %.1f, \"ns_off_2threads\": %.1f}\n",
               round + 1, on1, off1, on2, off2);
    }
    return 0;
}
