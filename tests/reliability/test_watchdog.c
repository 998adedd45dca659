/*
 * The watchdog on its own, without MPI: an operation armed past the timeout fires it
 * once, with a message naming the rank, the operation and the step; operations that
 * finish in time never fire it, however long the run, even when they overlap on two
 * threads; a timeout of 0 turns it off. The expiry function here records instead of
 * aborting, so the tests can look at what happened.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ddp/watchdog.h"

static struct {
    pthread_mutex_t mu;
    int calls;
    char message[512];
    double at;
    void *ctx;
} seen = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void record(void *ctx, const char *message) {
    pthread_mutex_lock(&seen.mu);
    seen.calls++;
    snprintf(seen.message, sizeof seen.message, "%s", message);
    seen.at = ddp_time_now();
    seen.ctx = ctx;
    pthread_mutex_unlock(&seen.mu);
}

static int calls(void) {
    pthread_mutex_lock(&seen.mu);
    int n = seen.calls;
    pthread_mutex_unlock(&seen.mu);
    return n;
}

static void sleep_s(double s) {
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static int setup(void **state) {
    pthread_mutex_lock(&seen.mu);
    seen.calls = 0;
    seen.message[0] = '\0';
    seen.ctx = NULL;
    pthread_mutex_unlock(&seen.mu);
    ddp_watchdog_set_step(0);
    return 0;
}

static int teardown(void **state) {
    ddp_watchdog_free();
    return 0;
}

static void fires_once_naming_rank_operation_and_step(void **state) {
    int ctx = 0;
    assert_int_equal(ddp_watchdog_init(0.3, 3, record, &ctx), DDP_OK);
    ddp_watchdog_set_step(41);
    double t0 = ddp_time_now();
    int tok = ddp_watchdog_arm("allreduce");
    assert_true(tok >= 0);
    for (int i = 0; i < 500 && calls() == 0; i++)
        sleep_s(0.01);
    assert_int_equal(calls(), 1);
    assert_true(ddp_watchdog_fired());
    assert_ptr_equal(seen.ctx, &ctx);
    double took = seen.at - t0;
    /* Not before the timeout, and soon after it (one poll interval, plus scheduling). */
    assert_true(took >= 0.3);
    assert_true(took < 2.0);
    assert_non_null(strstr(seen.message, "rank 3: allreduce at step 41 did not complete within "
                                         "0.3 s: another rank died or stopped responding"));
    assert_non_null(strstr(seen.message, "aborting the job"));
    /* It fires once, even though the operation is still armed. */
    sleep_s(0.5);
    assert_int_equal(calls(), 1);
    ddp_watchdog_disarm(tok);
}

static void names_set_up_before_the_first_step(void **state) {
    assert_int_equal(ddp_watchdog_init(0.2, 0, record, NULL), DDP_OK);
    int tok = ddp_watchdog_arm("allgather");
    for (int i = 0; i < 500 && calls() == 0; i++)
        sleep_s(0.01);
    ddp_watchdog_disarm(tok);
    assert_int_equal(calls(), 1);
    assert_non_null(strstr(seen.message, "rank 0: allgather during set-up (before step 1)"));
}

/* A program without steps says where it is instead (ddp-bench allreduce: the size). */
static void names_where_set_instead_of_the_step(void **state) {
    assert_int_equal(ddp_watchdog_init(0.2, 2, record, NULL), DDP_OK);
    ddp_watchdog_set_step(7);
    ddp_watchdog_set_where("in the all-reduces of 4096 bytes");
    int tok = ddp_watchdog_arm("allreduce");
    for (int i = 0; i < 500 && calls() == 0; i++)
        sleep_s(0.01);
    ddp_watchdog_disarm(tok);
    ddp_watchdog_set_where(NULL);
    assert_int_equal(calls(), 1);
    assert_non_null(strstr(seen.message,
                           "rank 2: allreduce in the all-reduces of 4096 bytes did not complete"));
    assert_null(strstr(seen.message, "step 7"));
}

/* The oldest of several armed operations is the one named. */
static void names_the_oldest_armed_operation(void **state) {
    assert_int_equal(ddp_watchdog_init(0.4, 1, record, NULL), DDP_OK);
    ddp_watchdog_set_step(5);
    int outer = ddp_watchdog_arm("barrier");
    sleep_s(0.1);
    int inner = ddp_watchdog_arm("broadcast");
    for (int i = 0; i < 500 && calls() == 0; i++)
        sleep_s(0.01);
    ddp_watchdog_disarm(inner);
    ddp_watchdog_disarm(outer);
    assert_int_equal(calls(), 1);
    assert_non_null(strstr(seen.message, "rank 1: barrier at step 5"));
}

/* A slow but progressing run: each operation waits most of the timeout, and the run
 * lasts many timeouts. */
static void never_fires_on_a_slow_but_progressing_run(void **state) {
    /* 0.6 s of margin per operation: a loaded test machine may oversleep a little. */
    assert_int_equal(ddp_watchdog_init(1.0, 0, record, NULL), DDP_OK);
    double t0 = ddp_time_now();
    for (int step = 1; step <= 10; step++) {
        ddp_watchdog_set_step(step);
        int tok = ddp_watchdog_arm("allreduce");
        sleep_s(0.4);
        ddp_watchdog_disarm(tok);
        sleep_s(0.05);
    }
    assert_true(ddp_time_now() - t0 > 4 * 1.0);
    assert_int_equal(calls(), 0);
    assert_false(ddp_watchdog_fired());
}

static void *overlapping_waits(void *arg) {
    (void)arg;
    for (int i = 0; i < 10; i++) {
        int tok = ddp_watchdog_arm("wait (non-blocking all-reduce)");
        sleep_s(0.2);
        ddp_watchdog_disarm(tok);
    }
    return NULL;
}

/* Two threads whose operations overlap so that one is always armed (a progress thread
 * waiting while the main thread reduces): each operation is short, so no timeout,
 * though "something is armed" stays true for the whole run. */
static void overlapping_operations_on_two_threads_do_not_add_up(void **state) {
    assert_int_equal(ddp_watchdog_init(0.6, 0, record, NULL), DDP_OK);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, overlapping_waits, NULL), 0);
    sleep_s(0.1);
    for (int i = 0; i < 10; i++) {
        int tok = ddp_watchdog_arm("allreduce");
        sleep_s(0.2);
        ddp_watchdog_disarm(tok);
    }
    pthread_join(th, NULL);
    assert_int_equal(calls(), 0);
}

static int fired_pipe = -1;

static void write_to_pipe(void *ctx, const char *message) {
    (void)ctx;
    (void)message;
    if (write(fired_pipe, "F", 1) != 1) _exit(3);
    _exit(0);
}

/* Waits up to `s` seconds for one byte from fd; returns it, or 0 on timeout. */
static char read_byte(int fd, double s) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char c = 0;
    if (poll(&p, 1, (int)(s * 1000)) == 1 && read(fd, &c, 1) == 1) return c;
    return 0;
}

/* A process that was itself stopped (SIGSTOP) past the timeout is the late one, not its
 * peers: after SIGCONT it restarts the clock and fires only if its wait then lasts a
 * whole timeout more, instead of at once. Runs the watchdog in a child process, which
 * the test stops and continues. */
static void a_stopped_process_restarts_its_clock_instead_of_firing(void **state) {
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        fired_pipe = fds[1];
        if (ddp_watchdog_init(1.0, 1, write_to_pipe, NULL) != DDP_OK) _exit(2);
        ddp_watchdog_arm("allreduce");
        if (write(fired_pipe, "A", 1) != 1) _exit(3);
        sleep_s(30.0);
        _exit(4);
    }
    close(fds[1]);
    assert_int_equal(read_byte(fds[0], 10.0), 'A');
    kill(pid, SIGSTOP);
    sleep_s(3.0);
    double resumed = ddp_time_now();
    kill(pid, SIGCONT);
    char c = read_byte(fds[0], 10.0);
    double took = ddp_time_now() - resumed;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(fds[0]);
    assert_int_equal(c, 'F');
    /* Fired a whole timeout after it ran again, not at once for the 3 s it was stopped. */
    assert_true(took >= 0.9);
    assert_true(took < 5.0);
}

static void timeout_zero_turns_it_off(void **state) {
    assert_int_equal(ddp_watchdog_init(0.0, 0, record, NULL), DDP_OK);
    assert_int_equal(ddp_watchdog_arm("allreduce"), -1);
    ddp_watchdog_disarm(-1);
    sleep_s(0.1);
    assert_int_equal(calls(), 0);
    /* Arming with no watchdog running is a no-op too. */
    ddp_watchdog_free();
    assert_int_equal(ddp_watchdog_arm("allreduce"), -1);
}

static void rejects_bad_timeouts_and_a_second_start(void **state) {
    ddp_error_clear();
    assert_int_equal(ddp_watchdog_init(-1.0, 0, record, NULL), DDP_ERR_INVALID_ARG);
    assert_non_null(strstr(ddp_error_message(), "timeout"));
    assert_int_equal(ddp_watchdog_init(NAN, 0, record, NULL), DDP_ERR_INVALID_ARG);
    assert_int_equal(ddp_watchdog_init(10.0, 0, record, NULL), DDP_OK);
    assert_int_equal(ddp_watchdog_init(10.0, 0, record, NULL), DDP_ERR_INTERNAL);
    /* Stopping is prompt, not a wait for the next poll of a 10 s timeout. */
    double t0 = ddp_time_now();
    ddp_watchdog_free();
    assert_true(ddp_time_now() - t0 < 0.5);
    /* And it can start again after a stop. */
    assert_int_equal(ddp_watchdog_init(10.0, 0, record, NULL), DDP_OK);
    assert_true(ddp_watchdog_arm("barrier") >= 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(fires_once_naming_rank_operation_and_step, setup, teardown),
        cmocka_unit_test_setup_teardown(names_set_up_before_the_first_step, setup, teardown),
        cmocka_unit_test_setup_teardown(names_where_set_instead_of_the_step, setup, teardown),
        cmocka_unit_test_setup_teardown(names_the_oldest_armed_operation, setup, teardown),
        cmocka_unit_test_setup_teardown(never_fires_on_a_slow_but_progressing_run, setup, teardown),
        cmocka_unit_test_setup_teardown(overlapping_operations_on_two_threads_do_not_add_up, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(a_stopped_process_restarts_its_clock_instead_of_firing,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(timeout_zero_turns_it_off, setup, teardown),
        cmocka_unit_test_setup_teardown(rejects_bad_timeouts_and_a_second_start, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
