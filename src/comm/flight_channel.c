/*
 * The flight recorder's side channel: how the rank that ends a failed job learns where
 * every other rank is, although the job's own communicators may be hung.
 *
 * The choice. A hung communicator cannot carry the question, and files in a shared
 * directory need a file system that every node shares (the checkpoint directory is only
 * rank 0's). So the channel is an MPI communicator of its own, duplicated at start-up and
 * used by nothing else, with non-blocking calls only and a deadline on every wait. Every
 * rank keeps one receive posted on it; its watchdog thread, which runs while the main
 * thread is blocked in a collective, tests that receive at every wake-up (at least once a
 * second, ddp_watchdog_set_tick) and answers a request with its summary (the newest
 * collectives of each communicator) after writing its ring to its file. A stopped rank
 * runs no thread and never answers: the deadline says so. This needs MPI_THREAD_MULTIPLE
 * (the watchdog thread calls MPI while the main thread is inside it), which ddp asks for;
 * without it, or without the watchdog, a failing rank still writes its own ring.
 *
 * Who gathers. Rank 0, so that the job's verdict is always in one place: a rank whose
 * watchdog fires, or that aborts, writes its ring and tells rank 0, which asks everyone,
 * prints the verdict and ends the job. If rank 0 has not ended the job when it should
 * have (it is the rank that is stopped or dead), the rank that told it gathers itself.
 * Every wait is bounded: a rank answers within its watchdog's wake-up interval, so the
 * gatherer waits that interval (the longest of the ranks') plus 1.5 s, at most 10 s.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_impl.h"

enum { TAG_MSG = 1, TAG_REPLY = 2 };
enum { MSG_REQUEST = 1, MSG_NOTICE = 2 };

typedef struct {
    int32_t kind, code, rank, pad;
    char reason[496];
} message;

#define MAX_SENDS 8 /* replies in flight at once (one per asking rank, normally one) */

static struct {
    pthread_mutex_t mu;
    int open, rank, world;
    MPI_Comm comm;
    MPI_Request in_req;
    message in;
    double *poll; /* (world) each rank's answering interval; 0: never answers */
    ddp_flight_summary out[MAX_SENDS];
    MPI_Request out_req[MAX_SENDS];
    int notice_from, notice_code; /* a rank that reported a failure to this one; -1: none */
    char notice_reason[496];
} ch = {.mu = PTHREAD_MUTEX_INITIALIZER, .notice_from = -1};

static atomic_int concluding;

static void sleep_ms(long ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

ddp_status ddp_flight_channel_open(double poll_s) {
    int world = 1, rank = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    ddp_flight_set_rank(rank, world);
    /* The same on every rank (MPI's thread level), so every rank skips alike. */
    if (world < 2 || !ddp_mpi_thread_multiple()) return DDP_OK;
    double *poll = calloc((size_t)world, sizeof *poll);
    ddp_status s = poll ? DDP_OK : DDP_FAIL(DDP_ERR_NOMEM, "flight recorder: out of memory");
    s = ddp_mpi_agree_local(MPI_COMM_WORLD, s, "preparing the flight recorder");
    if (s != DDP_OK) {
        free(poll);
        DDP_CHECK(s);
    }
    MPI_Comm comm;
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &comm);
    if (rc != MPI_SUCCESS) {
        free(poll);
        return ddp_mpi_fail(rc, "MPI_Comm_dup (flight recorder)", __FILE__, __LINE__);
    }
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    rc = MPI_Allgather(&poll_s, 1, MPI_DOUBLE, poll, 1, MPI_DOUBLE, comm);
    if (rc == MPI_SUCCESS)
        rc = MPI_Irecv(&ch.in, (int)sizeof ch.in, MPI_BYTE, MPI_ANY_SOURCE, TAG_MSG, comm,
                       &ch.in_req);
    if (rc != MPI_SUCCESS) {
        free(poll);
        MPI_Comm_free(&comm);
        return ddp_mpi_fail(rc, "the flight recorder's channel", __FILE__, __LINE__);
    }
    pthread_mutex_lock(&ch.mu);
    ch.comm = comm;
    ch.poll = poll;
    ch.rank = rank;
    ch.world = world;
    for (int i = 0; i < MAX_SENDS; i++)
        ch.out_req[i] = MPI_REQUEST_NULL;
    ch.open = 1;
    pthread_mutex_unlock(&ch.mu);
    return DDP_OK;
}

void ddp_flight_channel_close(void) {
    pthread_mutex_lock(&ch.mu);
    if (ch.open) {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) {
            MPI_Cancel(&ch.in_req);
            MPI_Wait(&ch.in_req, MPI_STATUS_IGNORE);
            for (int i = 0; i < MAX_SENDS; i++)
                if (ch.out_req[i] != MPI_REQUEST_NULL) MPI_Wait(&ch.out_req[i], MPI_STATUS_IGNORE);
            MPI_Comm_free(&ch.comm);
        }
        free(ch.poll);
        ch.poll = NULL;
        ch.open = 0;
    }
    pthread_mutex_unlock(&ch.mu);
}

/* Answers a request from `to`: the ring to its file first, then the summary. Called with
 * the lock held. */
static void answer(int to, const char *why) {
    char reason[600];
    snprintf(reason, sizeof reason, "asked by rank %d: %s", to, why);
    ddp_flight_dump(reason);
    for (int i = 0; i < MAX_SENDS; i++) {
        int done = 1;
        if (ch.out_req[i] != MPI_REQUEST_NULL) MPI_Test(&ch.out_req[i], &done, MPI_STATUS_IGNORE);
        if (!done) continue;
        ddp_flight_summarize(ch.rank, &ch.out[i]);
        MPI_Isend(&ch.out[i], (int)sizeof ch.out[i], MPI_BYTE, to, TAG_REPLY, ch.comm,
                  &ch.out_req[i]);
        return;
    }
}

/* Takes the messages that arrived. Called with the lock held. */
static void take_messages(void) {
    for (;;) {
        int flag = 0;
        MPI_Status st;
        if (MPI_Test(&ch.in_req, &flag, &st) != MPI_SUCCESS || !flag) return;
        message m = ch.in;
        m.reason[sizeof m.reason - 1] = '\0';
        if (m.kind == MSG_REQUEST) answer(st.MPI_SOURCE, m.reason);
        if (m.kind == MSG_NOTICE && ch.notice_from < 0) {
            ch.notice_from = st.MPI_SOURCE;
            ch.notice_code = m.code;
            snprintf(ch.notice_reason, sizeof ch.notice_reason, "%s", m.reason);
        }
        if (MPI_Irecv(&ch.in, (int)sizeof ch.in, MPI_BYTE, MPI_ANY_SOURCE, TAG_MSG, ch.comm,
                      &ch.in_req) != MPI_SUCCESS)
            return;
    }
}

int ddp_flight_channel_service(int *from, int *code, char *why, size_t cap) {
    /* Never waits for the lock: a rank that is gathering services the channel itself. */
    if (pthread_mutex_trylock(&ch.mu) != 0) return 0;
    int got = 0;
    if (ch.open) {
        take_messages();
        if (ch.notice_from >= 0) {
            got = 1;
            *from = ch.notice_from;
            *code = ch.notice_code;
            snprintf(why, cap, "%s", ch.notice_reason);
        }
    }
    pthread_mutex_unlock(&ch.mu);
    return got;
}

static void send_message(int to, int kind, int code, const char *reason, MPI_Request *req) {
    static message m[2]; /* one per kind, sent once each; live until the process ends */
    message *msg = &m[kind == MSG_REQUEST ? 0 : 1];
    memset(msg, 0, sizeof *msg);
    msg->kind = kind;
    msg->code = code;
    msg->rank = ch.rank;
    snprintf(msg->reason, sizeof msg->reason, "%s", reason ? reason : "");
    MPI_Isend(msg, (int)sizeof *msg, MPI_BYTE, to, TAG_MSG, ch.comm, req);
}

/* How long a gatherer waits for answers: every rank answers within its watchdog's
 * wake-up interval, so twice the longest of them and 1.5 s for a loaded machine; at most
 * 10 s. */
static double gather_deadline(void) {
    double longest = 0.0;
    for (int q = 0; q < ch.world; q++)
        if (ch.poll[q] > longest) longest = ch.poll[q];
    double d = 1.5 + 2.0 * longest;
    return d < 10.0 ? d : 10.0;
}

/* Asks every other rank but `skip` for its summary and waits for the answers up to the
 * deadline, answering requests meanwhile. all[q] stays NULL for a rank that did not
 * answer. Returns the deadline. */
static double gather(const char *reason, int skip, ddp_flight_summary *got,
                     const ddp_flight_summary **all) {
    int world = ch.world;
    double deadline_s = gather_deadline();
    if (world < 2) return deadline_s;
    MPI_Request *recv = calloc((size_t)world, sizeof *recv);
    MPI_Request *send = calloc((size_t)world, sizeof *send);
    int *have = calloc((size_t)world, sizeof *have);
    if (!recv || !send || !have) {
        free(recv);
        free(send);
        free(have);
        return 0.0;
    }
    pthread_mutex_lock(&ch.mu);
    int waiting = 0;
    for (int q = 0; q < world; q++) {
        recv[q] = send[q] = MPI_REQUEST_NULL;
        if (q == ch.rank || q == skip || ch.poll[q] <= 0.0) continue; /* no watchdog: mute */
        MPI_Irecv(&got[q], (int)sizeof got[q], MPI_BYTE, q, TAG_REPLY, ch.comm, &recv[q]);
        static message req; /* the same request to every rank */
        memset(&req, 0, sizeof req);
        req.kind = MSG_REQUEST;
        req.rank = ch.rank;
        snprintf(req.reason, sizeof req.reason, "%s", reason);
        MPI_Isend(&req, (int)sizeof req, MPI_BYTE, q, TAG_MSG, ch.comm, &send[q]);
        waiting++;
    }
    pthread_mutex_unlock(&ch.mu);
    double t0 = ddp_time_now();
    while (waiting > 0 && ddp_time_now() - t0 < deadline_s) {
        pthread_mutex_lock(&ch.mu);
        take_messages();
        for (int q = 0; q < world; q++) {
            int flag = 0;
            if (recv[q] == MPI_REQUEST_NULL || have[q]) continue;
            if (MPI_Test(&recv[q], &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS && flag) {
                have[q] = 1;
                all[q] = &got[q];
                waiting--;
            }
        }
        pthread_mutex_unlock(&ch.mu);
        if (waiting > 0) sleep_ms(2);
    }
    /* Whatever did not come is left posted: the job ends next. */
    free(recv);
    free(send);
    free(have);
    return deadline_s;
}

void ddp_flight_conclude(const char *reason, int code, ddp_flight_outcome *out) {
    memset(out, 0, sizeof *out);
    out->code = code;
    int expect = 0;
    if (!atomic_compare_exchange_strong(&concluding, &expect, 1)) {
        /* Another thread of this process is ending the job: let it finish. */
        for (int i = 0; i < 300; i++)
            sleep_ms(100);
        return;
    }
    ddp_flight_dump(reason);
    out->dumped = 1;
    pthread_mutex_lock(&ch.mu);
    int open = ch.open, rank = ch.rank, world = ch.world;
    double poll0 = open ? ch.poll[0] : 0.0;
    int notice = ch.notice_from;
    pthread_mutex_unlock(&ch.mu);
    double waited = 0.0;
    if (!open || world < 2) return;
    if (rank != 0 && poll0 > 0.0 && notice < 0) {
        /* Rank 0 gathers and ends the job; until it does, this rank answers. */
        MPI_Request req = MPI_REQUEST_NULL;
        pthread_mutex_lock(&ch.mu);
        send_message(0, MSG_NOTICE, code, reason, &req);
        pthread_mutex_unlock(&ch.mu);
        /* Rank 0 answers within its interval, gathers, and aborts; the lower ranks take
         * over first when it does not. */
        int stagger = rank - 1 < 4 ? rank - 1 : 4;
        double wait_s = poll0 + gather_deadline() + 1.0 + 0.25 * stagger, t0 = ddp_time_now();
        while (ddp_time_now() - t0 < wait_s) {
            pthread_mutex_lock(&ch.mu);
            take_messages();
            pthread_mutex_unlock(&ch.mu);
            sleep_ms(5);
        }
        out->rank0_silent = 1;
        waited = wait_s;
    }
    /* This rank gathers: rank 0, or the rank that told it and was not ended. */
    ddp_flight_summary *got = calloc((size_t)world, sizeof *got);
    const ddp_flight_summary **all = calloc((size_t)world, sizeof *all);
    ddp_flight_summary *mine = malloc(sizeof *mine);
    if (got && all && mine) {
        ddp_flight_summarize(rank, mine);
        all[rank] = mine;
        /* Rank 0 did not end the job as told: it is not waited for again. */
        double silent_s = gather(reason, out->rank0_silent ? 0 : -1, got, all);
        if (waited > silent_s) silent_s = waited; /* what rank 0 had to answer */
        out->desync = ddp_flight_verdict(all, world, silent_s, out->verdict, sizeof out->verdict);
        int *answered = calloc((size_t)world, sizeof *answered);
        for (int q = 0; answered && q < world; q++)
            answered[q] = all[q] != NULL;
        if (answered) ddp_flight_rank_list(answered, world, out->answered, sizeof out->answered);
        free(answered);
        out->gathered = 1;
    }
    free(got);
    free(all);
    free(mine);
}
