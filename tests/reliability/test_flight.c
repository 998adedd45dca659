/*
 * The flight recorder on its own, without MPI (src/comm/flight*.c):
 *  - the ring keeps the last N records, oldest first; a completion that arrives after its
 *    slot was reused is dropped; a ring of 0 records nothing;
 *  - the dump is valid JSON (read back with jansson) with every field, escaped sites and
 *    null for times not seen; it is written once per process;
 *  - a fatal signal writes the dump and still ends the process with that signal;
 *  - the summary keeps each communicator's newest records and its oldest one in flight;
 *  - the verdict names a desync of counts, a desync of collectives (ranks waiting in
 *    different ones), a rank that did not answer (stopped or dead), a rank busy outside
 *    communication, and a collective every rank is in.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ddp/flight.h"

static char dir[64];

static int setup(void **state) {
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/test_flight.XXXXXX");
    assert_non_null(mkdtemp(dir));
    assert_int_equal(ddp_flight_configure(DDP_FLIGHT_DEFAULT_RING), DDP_OK);
    ddp_flight_reset();
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static uint64_t record(int comm, uint64_t seq, ddp_flight_op op, uint64_t count, const char *site) {
    ddp_flight_entry e = {.seq = seq,
                          .count = count,
                          .site = site,
                          .step = (int64_t)seq,
                          .t_enqueue = 100.0 + (double)seq,
                          .t_start = 100.0 + (double)seq,
                          .root = -1,
                          .comm = (uint16_t)comm,
                          .op = (uint8_t)op,
                          .dtype = DDP_F32,
                          .redop = DDP_SUM};
    return ddp_flight_record(&e);
}

static void test_ring_keeps_the_last_n(void **state) {
    (void)state;
    assert_int_equal(ddp_flight_configure(8), DDP_OK);
    uint64_t first = record(0, 1, DDP_FLIGHT_ALLREDUCE, 10, "a");
    for (uint64_t s = 2; s <= 20; s++)
        ddp_flight_mark(record(0, s, DDP_FLIGHT_ALLREDUCE, 10, "a"), DDP_FLIGHT_DONE, 200.0);
    ddp_flight_entry out[16];
    size_t n = ddp_flight_snapshot(out, 16);
    assert_int_equal(n, 8);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(out[i].seq, 13 + i); /* oldest first */
        assert_int_equal(out[i].state, DDP_FLIGHT_DONE);
    }
    /* The first record's slot was reused: its completion changes nothing. */
    ddp_flight_mark(first, DDP_FLIGHT_FAILED, 300.0);
    n = ddp_flight_snapshot(out, 16);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(out[i].state, DDP_FLIGHT_DONE);
    /* Off: nothing recorded. */
    assert_int_equal(ddp_flight_configure(0), DDP_OK);
    assert_int_equal(record(0, 1, DDP_FLIGHT_ALLREDUCE, 1, "a"), 0);
    assert_int_equal(ddp_flight_snapshot(out, 16), 0);
    assert_int_not_equal(ddp_flight_configure(DDP_FLIGHT_MAX_RING + 1), DDP_OK);
    /* Larger than the default: allocated. */
    assert_int_equal(ddp_flight_configure(1000), DDP_OK);
    for (uint64_t s = 1; s <= 600; s++)
        record(0, s, DDP_FLIGHT_ALLREDUCE, 10, "a");
    assert_int_equal(ddp_flight_snapshot(out, 16), 16);
    assert_int_equal(out[0].seq, 1);
}

static void test_sites_are_kept(void **state) {
    (void)state;
    const char *a = ddp_flight_site("x", "reducer bucket %d", 3);
    const char *b = ddp_flight_site("x", "reducer bucket %d", 3);
    assert_string_equal(a, "reducer bucket 3");
    assert_ptr_equal(a, b);
    assert_ptr_not_equal(a, ddp_flight_site("x", "reducer bucket %d", 4));
}

static json_t *read_json(const char *path) {
    json_error_t err;
    json_t *j = json_load_file(path, 0, &err);
    if (!j) fprintf(stderr, "%s: %s (line %d)\n", path, err.text, err.line);
    return j;
}

static void test_dump_is_json(void **state) {
    (void)state;
    int id = ddp_flight_comm_register("grad\"ients");
    const char *odd = ddp_flight_site("x", "a \"quoted\" site\\with\ttab");
    uint64_t t1 = record(id, 811, DDP_FLIGHT_ALLREDUCE, 4096, odd);
    ddp_flight_mark(t1, DDP_FLIGHT_DONE, 1000.5);
    ddp_flight_entry e = {.seq = 812,
                          .count = 1024,
                          .site = "src/x.c:12",
                          .t_enqueue = 1001.0,
                          .root = 2,
                          .comm = (uint16_t)id,
                          .op = DDP_FLIGHT_BROADCAST,
                          .dtype = DDP_F64};
    ddp_flight_record(&e); /* enqueued, never started */
    ddp_flight_set_rank(3, 4);
    char path[128];
    snprintf(path, sizeof path, "%s/one.json", dir);
    assert_int_equal(ddp_flight_dump_to(path, "reason with \"quotes\"\n"), 1);
    json_t *j = read_json(path);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "flight_recorder")), 1);
    assert_int_equal(json_integer_value(json_object_get(j, "rank")), 3);
    assert_int_equal(json_integer_value(json_object_get(j, "world")), 4);
    assert_string_equal(json_string_value(json_object_get(j, "reason")),
                        "reason with \"quotes\"\n");
    assert_true(json_integer_value(json_object_get(j, "wall_us")) > 0);
    json_t *entries = json_object_get(j, "entries");
    assert_int_equal(json_array_size(entries), 2);
    json_t *a = json_array_get(entries, 0), *b = json_array_get(entries, 1);
    assert_string_equal(json_string_value(json_object_get(a, "comm")), "grad\"ients");
    assert_string_equal(json_string_value(json_object_get(a, "site")),
                        "a \"quoted\" site\\with\ttab");
    assert_string_equal(json_string_value(json_object_get(a, "op")), "allreduce");
    assert_string_equal(json_string_value(json_object_get(a, "state")), "done");
    assert_int_equal(json_integer_value(json_object_get(a, "count")), 4096);
    assert_int_equal(json_integer_value(json_object_get(a, "t_end_us")), 1000500000);
    assert_string_equal(json_string_value(json_object_get(b, "op")), "broadcast");
    assert_string_equal(json_string_value(json_object_get(b, "dtype")), "f64");
    assert_string_equal(json_string_value(json_object_get(b, "state")), "enqueued");
    assert_int_equal(json_integer_value(json_object_get(b, "root")), 2);
    assert_true(json_is_null(json_object_get(b, "t_start_us")));
    assert_true(json_is_null(json_object_get(b, "t_end_us")));
    json_decref(j);
    /* Once per process to the dump path. */
    assert_int_equal(ddp_flight_set_dir(dir), DDP_OK);
    assert_int_equal(ddp_flight_dump("first"), 1);
    assert_int_equal(ddp_flight_dump("second"), 0);
    j = read_json(ddp_flight_dump_path());
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "reason")), "first");
    json_decref(j);
}

/* A child that records, catches the fatal signals and gets `sig`; returns its status. */
static int child_with_signal(int sig, const char *sub) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char d[128];
        snprintf(d, sizeof d, "%s/%s", dir, sub);
        if (mkdir(d, 0777) != 0) _exit(90);
        ddp_flight_set_rank(1, 2);
        if (ddp_flight_set_dir(d) != DDP_OK) _exit(91);
        record(0, 7, DDP_FLIGHT_ALLGATHER, 5, "child site");
        /* The default action before: CMocka's own handler would recover from the signal. */
        signal(sig, SIG_DFL);
        ddp_flight_catch_signals();
        kill(getpid(), sig);
        _exit(92); /* not reached: the signal ends the process */
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

static void test_fatal_signal_dumps_and_ends(void **state) {
    (void)state;
    const struct {
        int sig;
        const char *name, *reason;
    } cases[] = {{SIGTERM, "term", "signal SIGTERM"}, {SIGSEGV, "segv", "signal SIGSEGV"}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int status = child_with_signal(cases[i].sig, cases[i].name);
        assert_true(WIFSIGNALED(status));
        assert_int_equal(WTERMSIG(status), cases[i].sig);
        char path[160];
        snprintf(path, sizeof path, "%s/%s/flight-rank1.json", dir, cases[i].name);
        json_t *j = read_json(path);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "reason")), cases[i].reason);
        json_t *e = json_array_get(json_object_get(j, "entries"), 0);
        assert_string_equal(json_string_value(json_object_get(e, "site")), "child site");
        json_decref(j);
    }
}

static void test_summary_keeps_newest_and_oldest_open(void **state) {
    (void)state;
    ddp_flight_entry e[12];
    memset(e, 0, sizeof e);
    for (int i = 0; i < 10; i++) { /* comm 1: ten, #3 still in flight */
        e[i] = (ddp_flight_entry){.ticket = (uint64_t)i + 1,
                                  .seq = (uint64_t)i + 1,
                                  .site = "s",
                                  .t_enqueue = (double)i,
                                  .t_end = (double)i + 0.5,
                                  .comm = 1,
                                  .state = DDP_FLIGHT_DONE};
    }
    e[2].state = DDP_FLIGHT_ENQUEUED;
    e[10] = (ddp_flight_entry){.ticket = 11,
                               .seq = 1,
                               .site = "t",
                               .t_enqueue = 10.0,
                               .comm = 0,
                               .state = DDP_FLIGHT_STARTED};
    ddp_flight_summary s;
    ddp_flight_summarize_entries(5, e, 11, 20.0, &s);
    assert_int_equal(s.rank, 5);
    assert_int_equal(s.n, 1 + DDP_FLIGHT_PER_COMM);
    /* comm 0 is the most recently active: first; then comm 1's #3 (in flight), #8-#10. */
    assert_int_equal(s.e[0].comm, 0);
    assert_true(s.e[0].age > 9.99 && s.e[0].age < 10.01);
    assert_int_equal(s.e[1].seq, 3);
    assert_int_equal(s.e[1].state, DDP_FLIGHT_ENQUEUED);
    assert_int_equal(s.e[2].seq, 8);
    assert_int_equal(s.e[4].seq, 10);
    assert_true(s.e[4].age > 10.49 && s.e[4].age < 10.51); /* since it ended */
}

/* ---- the verdict ---------------------------------------------------------------------- */

static void brief(ddp_flight_summary *s, int comm, const char *comm_name, uint64_t seq,
                  ddp_flight_op op, uint64_t count, const char *site, int open, double age) {
    ddp_flight_brief *b = &s->e[s->n++];
    memset(b, 0, sizeof *b);
    b->seq = seq;
    b->count = count;
    b->age = age;
    b->comm = comm;
    b->root = -1;
    b->op = (uint8_t)op;
    b->dtype = DDP_F32;
    b->state = open ? DDP_FLIGHT_STARTED : DDP_FLIGHT_DONE;
    snprintf(b->site, sizeof b->site, "%s", site);
    snprintf(b->comm_name, sizeof b->comm_name, "%s", comm_name);
}

#define GRADS 1, "gradients"
#define CTRL  0, "control"

static void test_verdict_count_desync(void **state) {
    (void)state;
    ddp_flight_summary s[4];
    const ddp_flight_summary *all[4];
    for (int r = 0; r < 4; r++) {
        memset(&s[r], 0, sizeof s[r]);
        s[r].rank = r;
        brief(&s[r], GRADS, 811, DDP_FLIGHT_ALLREDUCE, 4096, "reducer bucket 3", 0, 1.0);
        brief(&s[r], GRADS, 812, DDP_FLIGHT_ALLREDUCE, r == 3 ? 1024 : 4096, "reducer bucket 3", 1,
              5.0);
        all[r] = &s[r];
    }
    char v[1024];
    assert_int_equal(ddp_flight_verdict(all, 4, 2.5, v, sizeof v), 1);
    assert_string_equal(v, "ranks 0-2 in allreduce #812 on gradients (reducer bucket 3) of 4,096 "
                           "f32, rank 3 in allreduce #812 on gradients (reducer bucket 3) of "
                           "1,024 f32: desync (the same call with other arguments on each rank)");
}

static void test_verdict_stopped_rank(void **state) {
    (void)state;
    ddp_flight_summary s[4];
    const ddp_flight_summary *all[4] = {NULL};
    for (int r = 0; r < 3; r++) {
        memset(&s[r], 0, sizeof s[r]);
        brief(&s[r], GRADS, 812, DDP_FLIGHT_ALLREDUCE, 4096, "reducer bucket 3", 1, 5.0 + r);
        all[r] = &s[r];
    }
    char v[1024];
    assert_int_equal(ddp_flight_verdict(all, 4, 2.5, v, sizeof v), 0);
    assert_string_equal(v, "ranks 0-2 in allreduce #812 on gradients (reducer bucket 3) for 7.0 "
                           "s; rank 3 did not answer within 2.5 s: stopped or dead");
    /* Rank 1 of 4 silent: the others in two runs. */
    all[1] = NULL;
    all[3] = &s[1];
    ddp_flight_verdict(all, 4, 2.5, v, sizeof v);
    assert_string_equal(v, "ranks 0, 2-3 in allreduce #812 on gradients (reducer bucket 3) for "
                           "7.0 s; rank 1 did not answer within 2.5 s: stopped or dead");
}

/* A collective can complete on some ranks before others: with rank 2 stopped, ranks 1 and 3
 * got all they needed of all-gather #29 and went on, rank 0 did not. Not a desync. */
static void test_verdict_stopped_rank_some_ahead(void **state) {
    (void)state;
    ddp_flight_summary s[4];
    const ddp_flight_summary *all[4] = {NULL};
    memset(s, 0, sizeof s);
    for (int r = 0; r < 4; r++) {
        if (r == 2) continue;
        brief(&s[r], GRADS, 61, DDP_FLIGHT_ALLREDUCE, 4096, "reducer bucket 0", 0, 5.2);
        brief(&s[r], CTRL, 29, DDP_FLIGHT_ALLGATHER, 5, "src/train/run.c:232", r == 0, 5.0);
        if (r != 0) brief(&s[r], GRADS, 62, DDP_FLIGHT_ALLREDUCE, 4096, "reducer bucket 0", 1, 4.9);
        all[r] = &s[r];
    }
    char v[1024];
    assert_int_equal(ddp_flight_verdict(all, 4, 2.5, v, sizeof v), 0);
    assert_string_equal(v, "rank 0 in allgather #29 on control (src/train/run.c:232) for 5.0 s; "
                           "ranks 1, 3 completed #29 and wait in the later allreduce #62 on "
                           "gradients (reducer bucket 0); rank 2 did not answer within 2.5 s: "
                           "stopped or dead");
    /* Rank 1 still waits in all-reduce #61, which rank 0 completed: ahead if #61 is the
     * older wait, behind if #29 is. */
    memset(s, 0, sizeof s);
    brief(&s[0], GRADS, 61, DDP_FLIGHT_ALLREDUCE, 4096, "reducer bucket 0", 0, 5.2);
    brief(&s[0], CTRL, 29, DDP_FLIGHT_ALLGATHER, 5, "src/train/run.c:232", 1, 5.0);
    brief(&s[1], GRADS, 61, DDP_FLIGHT_ALLREDUCE, 4096, "reducer bucket 0", 1, 5.3);
    const ddp_flight_summary *two[2] = {&s[0], &s[1]};
    assert_int_equal(ddp_flight_verdict(two, 2, 2.5, v, sizeof v), 0);
    assert_string_equal(v, "rank 1 in allreduce #61 on gradients (reducer bucket 0) for 5.3 s; "
                           "rank 0 completed #61 and waits in the later allgather #29 on control "
                           "(src/train/run.c:232)");
    s[1].e[0].age = 4.0;
    assert_int_equal(ddp_flight_verdict(two, 2, 2.5, v, sizeof v), 0);
    assert_string_equal(v, "rank 0 in allgather #29 on control (src/train/run.c:232) for 5.0 s; "
                           "rank 1 never entered #29 and waits in allreduce #61 on gradients "
                           "(reducer bucket 0), which rank 0 completed");
}

static void test_verdict_waiting_elsewhere(void **state) {
    (void)state;
    ddp_flight_summary s[2];
    memset(s, 0, sizeof s);
    brief(&s[0], GRADS, 21, DDP_FLIGHT_ALLREDUCE, 4096, "reducer bucket 0", 1, 5.0);
    brief(&s[0], CTRL, 19, DDP_FLIGHT_ALLGATHER, 5, "src/train/run.c:229", 0, 5.1);
    brief(&s[1], GRADS, 20, DDP_FLIGHT_ALLREDUCE, 4096, "reducer bucket 0", 0, 4.9);
    brief(&s[1], CTRL, 20, DDP_FLIGHT_ALLREDUCE, 4, "src/train/trainer.c:309", 1, 4.8);
    const ddp_flight_summary *all[2] = {&s[0], &s[1]};
    char v[1024];
    assert_int_equal(ddp_flight_verdict(all, 2, 2.5, v, sizeof v), 1);
    assert_string_equal(v, "rank 0 in allreduce #21 on gradients (reducer bucket 0) for 5.0 s; "
                           "rank 1 never entered #21 and waits in allreduce #20 on control "
                           "(src/train/trainer.c:309): desync (the ranks wait in different "
                           "collectives)");
}

static void test_verdict_busy_and_all_in(void **state) {
    (void)state;
    ddp_flight_summary s[3];
    memset(s, 0, sizeof s);
    for (int r = 0; r < 2; r++)
        brief(&s[r], GRADS, 9, DDP_FLIGHT_BARRIER, 0, "src/a.c:1", 1, 6.0);
    brief(&s[2], GRADS, 8, DDP_FLIGHT_ALLREDUCE, 10, "src/a.c:2", 0, 3.0);
    const ddp_flight_summary *all[3] = {&s[0], &s[1], &s[2]};
    char v[1024];
    assert_int_equal(ddp_flight_verdict(all, 3, 2.5, v, sizeof v), 0);
    assert_string_equal(v, "ranks 0-1 in barrier #9 on gradients (src/a.c:1) for 6.0 s; rank 2 "
                           "never entered #9 and is in no collective (its last, allreduce #8 on "
                           "gradients (src/a.c:2), ended 3.0 s ago): busy outside communication");
    /* Two busy ranks after the same last collective: one group, the more recent end. */
    ddp_flight_summary s4[4];
    memcpy(s4, s, sizeof s);
    s4[3] = s[2];
    s4[3].e[0].age = 2.0;
    const ddp_flight_summary *all4[4] = {&s4[0], &s4[1], &s4[2], &s4[3]};
    assert_int_equal(ddp_flight_verdict(all4, 4, 2.5, v, sizeof v), 0);
    assert_string_equal(v, "ranks 0-1 in barrier #9 on gradients (src/a.c:1) for 6.0 s; ranks "
                           "2-3 never entered #9 and are in no collective (their last, allreduce "
                           "#8 on gradients (src/a.c:2), ended 2.0 s ago or earlier): busy outside "
                           "communication");
    brief(&s[2], GRADS, 9, DDP_FLIGHT_BARRIER, 0, "src/a.c:1", 1, 6.0);
    assert_int_equal(ddp_flight_verdict(all, 3, 2.5, v, sizeof v), 0);
    assert_string_equal(v, "ranks 0-2 in barrier #9 on gradients (src/a.c:1) for 6.0 s: every "
                           "rank is in it, and it does not complete (the network, the library, or "
                           "a rank stopped inside it)");
    /* Nobody in a collective (a failure outside communication). */
    ddp_flight_summary idle[2];
    memset(idle, 0, sizeof idle);
    const ddp_flight_summary *none[2] = {&idle[0], &idle[1]};
    ddp_flight_verdict(none, 2, 2.5, v, sizeof v);
    assert_string_equal(v, "ranks 0-1 answered and are in no collective");
}

static void test_texts(void **state) {
    (void)state;
    char b[64];
    ddp_flight_count_text(1234567, b, sizeof b);
    assert_string_equal(b, "1,234,567");
    ddp_flight_count_text(0, b, sizeof b);
    assert_string_equal(b, "0");
    ddp_flight_count_text(999, b, sizeof b);
    assert_string_equal(b, "999");
    int flags[7] = {1, 0, 1, 1, 1, 0, 1};
    assert_int_equal(ddp_flight_rank_list(flags, 7, b, sizeof b), 5);
    assert_string_equal(b, "0, 2-4, 6");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ring_keeps_the_last_n, setup, teardown),
        cmocka_unit_test(test_sites_are_kept),
        cmocka_unit_test_setup_teardown(test_dump_is_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fatal_signal_dumps_and_ends, setup, teardown),
        cmocka_unit_test(test_summary_keeps_newest_and_oldest_open),
        cmocka_unit_test(test_verdict_count_desync),
        cmocka_unit_test(test_verdict_stopped_rank),
        cmocka_unit_test(test_verdict_stopped_rank_some_ahead),
        cmocka_unit_test(test_verdict_waiting_elsewhere),
        cmocka_unit_test(test_verdict_busy_and_all_in),
        cmocka_unit_test(test_texts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
