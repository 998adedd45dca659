/*
 * The default corpus: its path follows XDG_CACHE_HOME, then HOME, then /tmp; a missing
 * `bible` says how to install it; a `bible` that fails, is killed or prints the wrong
 * thing leaves no file; the file appears under its name only when complete, also when
 * several processes create it at once or the creating process is killed; and a file
 * that is there is reused without running `bible`. Stand-in `bible` scripts on PATH
 * drive those cases; the real program, when installed, is run too (skipped otherwise).
 */
#define _GNU_SOURCE /* setenv, fork, kill */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "data/idx_fixture.h"
#include "ddp/data.h"

/* What the stand-in writes between the first verse's words and the last "Amen.". */
#define FAKE_HEAD  "\nGenesis 1\n\n  1 In the beginning"
#define FAKE_BODY  4100000
#define FAKE_TAIL  " Amen.\n"
#define FAKE_BYTES (sizeof FAKE_HEAD - 1 + FAKE_BODY + sizeof FAKE_TAIL - 1)

/* The variables the tests change, restored after each. */
static const char *saved_names[] = {"XDG_CACHE_HOME", "HOME", "PATH", "COLUMNS"};
#define NSAVED (sizeof saved_names / sizeof saved_names[0])

typedef struct {
    char *dir;
    char *saved[NSAVED];
    char cache[512]; /* dir/cache, the XDG_CACHE_HOME of the test */
    char bin[512];   /* dir/bin, where stand-ins go */
    char kjv[512];   /* cache/ddp/kjv.txt */
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->dir = fx_tmpdir();
    for (size_t i = 0; i < NSAVED; i++) {
        const char *v = getenv(saved_names[i]);
        f->saved[i] = v ? strdup(v) : NULL;
    }
    fx_path(f->cache, sizeof f->cache, f->dir, "cache");
    fx_path(f->bin, sizeof f->bin, f->dir, "bin");
    fx_path(f->kjv, sizeof f->kjv, f->cache, "ddp/kjv.txt");
    assert_int_equal(mkdir(f->bin, 0700), 0);
    setenv("XDG_CACHE_HOME", f->cache, 1);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    for (size_t i = 0; i < NSAVED; i++) {
        if (f->saved[i])
            setenv(saved_names[i], f->saved[i], 1);
        else
            unsetenv(saved_names[i]);
        free(f->saved[i]);
    }
    fx_rmdir(f->dir);
    free(f);
    return 0;
}

/* Installs a stand-in `bible` running `body` (sh) and makes it the only one on PATH.
 * The stand-in gets a PATH of its own for the tools it uses. */
static void fake_bible(fixture *f, const char *body) {
    char path[600];
    fx_path(path, sizeof path, f->bin, "bible");
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fprintf(fp, "#!/bin/sh\nPATH=/usr/bin:/bin\n%s\n", body);
    assert_int_equal(fclose(fp), 0);
    assert_int_equal(chmod(path, 0755), 0);
    setenv("PATH", f->bin, 1);
}

/* Shell lines that print the stand-in text; `middle` runs half-way through. */
static void fake_text_body(char *buf, size_t cap, const char *middle) {
    snprintf(buf, cap,
             "printf '\\nGenesis 1\\n\\n  1 In the beginning'\n"
             "head -c %d /dev/zero | tr '\\0' x\n"
             "%s\n"
             "head -c %d /dev/zero | tr '\\0' y\n"
             "printf ' Amen.\\n'",
             FAKE_BODY / 2, middle, FAKE_BODY - FAKE_BODY / 2);
}

static long long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

/* Temporary files (".kjv.txt.*") left in the corpus directory. */
static int temporaries(const fixture *f) {
    char dir[600];
    fx_path(dir, sizeof dir, f->cache, "ddp");
    DIR *d = opendir(dir);
    if (d == NULL) return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += strncmp(e->d_name, ".kjv.txt.", 9) == 0;
    closedir(d);
    return n;
}

/* Waits up to 10 s for path to exist. */
static int wait_for(const char *path) {
    for (int i = 0; i < 1000; i++) {
        if (access(path, F_OK) == 0) return 1;
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    return 0;
}

/* Runs ddp_text_default_corpus in a child process; returns its pid. The child exits 0
 * on success and 1 on failure. */
static pid_t create_in_child(void) {
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char path[1024];
        _exit(ddp_text_default_corpus(path, sizeof path) == DDP_OK ? 0 : 1);
    }
    return pid;
}

static int child_status(pid_t pid) {
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

/* Installs a stand-in that prints the whole stand-in text at once. */
static void fake_bible_whole(fixture *f) {
    char body[1024];
    fake_text_body(body, sizeof body, ":");
    fake_bible(f, body);
}

/* Starts a creation in a child process with a stand-in that stops half-way until
 * release_creation (10 s at most), and returns once it has stopped there. */
static pid_t start_paused_creation(fixture *f) {
    char started[600], go[600], body[2048], middle[1400];
    fx_path(started, sizeof started, f->dir, "started");
    fx_path(go, sizeof go, f->dir, "go");
    snprintf(middle, sizeof middle,
             "touch '%s'; i=0; while [ ! -e '%s' ] && [ $i -lt 1000 ]; do sleep 0.01; "
             "i=$((i+1)); done",
             started, go);
    fake_text_body(body, sizeof body, middle);
    fake_bible(f, body);
    pid_t pid = create_in_child();
    assert_true(wait_for(started));
    return pid;
}

/* Lets the paused stand-in finish. */
static void release_creation(fixture *f) {
    char go[600];
    fx_path(go, sizeof go, f->dir, "go");
    fx_write(go, "", 0, 0);
}

static void test_path_follows_xdg_then_home_then_tmp(void **state) {
    char path[1024], want[1024];
    setenv("XDG_CACHE_HOME", "/x/cache", 1);
    setenv("HOME", "/h", 1);
    assert_int_equal(ddp_text_corpus_path(path, sizeof path), DDP_OK);
    assert_string_equal(path, "/x/cache/ddp/kjv.txt");
    /* Relative and empty values are ignored, as the XDG specification says. */
    setenv("XDG_CACHE_HOME", "relative/cache", 1);
    assert_int_equal(ddp_text_corpus_path(path, sizeof path), DDP_OK);
    assert_string_equal(path, "/h/.cache/ddp/kjv.txt");
    setenv("XDG_CACHE_HOME", "", 1);
    assert_int_equal(ddp_text_corpus_path(path, sizeof path), DDP_OK);
    assert_string_equal(path, "/h/.cache/ddp/kjv.txt");
    unsetenv("XDG_CACHE_HOME");
    unsetenv("HOME");
    assert_int_equal(ddp_text_corpus_path(path, sizeof path), DDP_OK);
    snprintf(want, sizeof want, "/tmp/ddp-%lu/kjv.txt", (unsigned long)getuid());
    assert_string_equal(path, want);

    ddp_error_clear();
    setenv("XDG_CACHE_HOME", "/x/cache", 1);
    assert_int_equal(ddp_text_corpus_path(path, 10), DDP_ERR_INVALID_ARG);
    assert_msg_has("XDG_CACHE_HOME");
    assert_int_equal(ddp_text_default_corpus(path, 10), DDP_ERR_INVALID_ARG);
}

static void test_missing_bible_says_how_to_install_it(void **state) {
    fixture *f = *state;
    setenv("PATH", f->bin, 1); /* nothing in it */
    char path[1024];
    ddp_error_clear();
    assert_int_equal(ddp_text_default_corpus(path, sizeof path), DDP_ERR_UNSUPPORTED);
    assert_msg_has("'bible'");
    assert_msg_has("apt-get install bible-kjv");
    assert_msg_has("--text FILE");
    assert_string_equal(path, f->kjv);
    assert_int_equal(access(f->kjv, F_OK), -1);
    assert_int_equal(temporaries(f), 0);
}

/* A stand-in running `body` that fails leaves neither the corpus nor a temporary file, and
 * the message carries `what`. */
static void expect_failure(fixture *f, const char *body, ddp_status st, const char *what) {
    fake_bible(f, body);
    char path[1024];
    ddp_error_clear();
    assert_int_equal(ddp_text_default_corpus(path, sizeof path), st);
    assert_msg_has(what);
    assert_msg_has(f->kjv);
    assert_int_equal(access(f->kjv, F_OK), -1);
    assert_int_equal(temporaries(f), 0);
}

static void test_failed_bible_leaves_no_file(void **state) {
    fixture *f = *state;
    char body[1024];
    fake_text_body(body, sizeof body, "echo 'disk trouble' >&2; exit 3");
    expect_failure(f, body, DDP_ERR_IO, "exited with status 3");
    assert_msg_has("disk trouble");
    fake_text_body(body, sizeof body, "kill -9 $$");
    expect_failure(f, body, DDP_ERR_IO, "killed by signal 9");
    /* What bible does for a reference it does not know: a message, and status 0. */
    expect_failure(f, "echo \"Bad Book: 'gen1:1-rev22:21'\" >&2", DDP_ERR_FORMAT,
                   "printed 0 bytes");
    assert_msg_has("Bad Book");
    /* Long enough, but cut off before the end. */
    fake_text_body(body, sizeof body, "exit 0");
    expect_failure(f, body, DDP_ERR_FORMAT, "not the King James text");
}

/* While `bible` is half-way, the corpus is not under its name (only a temporary is);
 * when it is there, it is whole; a second call reuses it without running `bible`. */
static void test_corpus_appears_only_when_complete_and_is_reused(void **state) {
    fixture *f = *state;
    pid_t pid = start_paused_creation(f);
    assert_int_equal(access(f->kjv, F_OK), -1);
    assert_int_equal(temporaries(f), 1);
    release_creation(f);
    int status = child_status(pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(file_size(f->kjv), (long long)FAKE_BYTES);
    assert_int_equal(temporaries(f), 0);

    /* Reused: with no `bible` at all, the same file (same inode) is returned. */
    struct stat before, after;
    assert_int_equal(stat(f->kjv, &before), 0);
    char fake[600];
    fx_path(fake, sizeof fake, f->bin, "bible");
    assert_int_equal(unlink(fake), 0);
    char path[1024];
    assert_int_equal(ddp_text_default_corpus(path, sizeof path), DDP_OK);
    assert_string_equal(path, f->kjv);
    assert_int_equal(stat(f->kjv, &after), 0);
    assert_int_equal(before.st_ino, after.st_ino);
    assert_int_equal(before.st_mtime, after.st_mtime);

    /* An empty file under the name was not made by us: it is replaced. */
    fx_write(f->kjv, "", 0, 0);
    fake_bible_whole(f);
    assert_int_equal(ddp_text_default_corpus(path, sizeof path), DDP_OK);
    assert_int_equal(file_size(f->kjv), (long long)FAKE_BYTES);
}

/* The process creating the corpus is killed half-way: no corpus, and the next
 * creation succeeds. */
static void test_killed_creation_leaves_no_partial_corpus(void **state) {
    fixture *f = *state;
    pid_t pid = start_paused_creation(f);
    assert_int_equal(kill(pid, SIGKILL), 0);
    int status = child_status(pid);
    assert_true(WIFSIGNALED(status));
    /* Let the orphaned stand-in finish into its temporary file. */
    release_creation(f);
    nanosleep(&(struct timespec){0, 200 * 1000 * 1000}, NULL);
    assert_int_equal(access(f->kjv, F_OK), -1);

    fake_bible_whole(f);
    char path[1024];
    assert_int_equal(ddp_text_default_corpus(path, sizeof path), DDP_OK);
    assert_int_equal(file_size(f->kjv), (long long)FAKE_BYTES);
}

/* Several processes create the corpus at once (as ranks on one node might): all
 * succeed, and the one file is whole. */
static void test_concurrent_creations_agree(void **state) {
    fixture *f = *state;
    char body[1024];
    fake_text_body(body, sizeof body, "sleep 0.2");
    fake_bible(f, body);
    enum { N = 4 };
    pid_t pids[N];
    for (int i = 0; i < N; i++)
        pids[i] = create_in_child();
    for (int i = 0; i < N; i++) {
        int status = child_status(pids[i]);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    assert_int_equal(file_size(f->kjv), (long long)FAKE_BYTES);
    assert_int_equal(temporaries(f), 0);
    ddp_text t;
    assert_int_equal(ddp_text_load(f->kjv, &t), DDP_OK);
    assert_memory_equal(t.bytes, FAKE_HEAD, sizeof FAKE_HEAD - 1);
    ddp_text_free(&t);
}

/* Whether an executable `bible` is on PATH. */
static int have_bible(void) {
    const char *p = getenv("PATH");
    if (p == NULL) return 0;
    char *copy = strdup(p);
    assert_non_null(copy);
    int found = 0;
    for (char *save = NULL, *d = strtok_r(copy, ":", &save); d && !found;
         d = strtok_r(NULL, ":", &save)) {
        char exe[1024];
        snprintf(exe, sizeof exe, "%s/bible", d);
        found = access(exe, X_OK) == 0;
    }
    free(copy);
    return found;
}

static unsigned char *read_whole(const char *path, size_t *len) {
    ddp_text t;
    assert_int_equal(ddp_text_load(path, &t), DDP_OK);
    *len = t.n_train + t.n_val;
    unsigned char *b = t.bytes;
    free(t.path);
    return b;
}

/* The real program: the whole text, the same bytes whatever COLUMNS says (an empty
 * COLUMNS makes `bible` crash unless the width is given) and whatever the working
 * directory holds, lines of at most 79 characters, and reused the second time. */
static void test_real_bible_text(void **state) {
    fixture *f = *state;
    if (!have_bible()) {
        print_message("`bible` is not installed (apt-get install bible-kjv): the real "
                      "corpus is not tested\n");
        skip();
    }
    /* A stray data file in the working directory, which `bible` would read first. */
    char cwd[1024], junk[600];
    assert_non_null(getcwd(cwd, sizeof cwd));
    fx_path(junk, sizeof junk, f->dir, "bible.data");
    fx_write(junk, "not the data file", 17, 0);
    assert_int_equal(chdir(f->dir), 0);
    char path[1024];
    setenv("COLUMNS", "", 1);
    ddp_status s = ddp_text_default_corpus(path, sizeof path);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(s, DDP_OK);
    assert_string_equal(path, f->kjv);
    size_t len;
    unsigned char *text = read_whole(path, &len);
    assert_true(len > 4000000 && len < 5000000);
    static const char first[] = "\nGenesis 1\n\n  1 In the beginning God created the heaven and "
                                "the earth.\n";
    static const char last[] = "  21 The grace of our Lord Jesus Christ be with you all. "
                               "Amen.\n";
    assert_memory_equal(text, first, sizeof first - 1);
    assert_memory_equal(text + len - (sizeof last - 1), last, sizeof last - 1);
    size_t col = 0, widest = 0;
    for (size_t i = 0; i < len; i++) {
        col = text[i] == '\n' ? 0 : col + 1;
        if (col > widest) widest = col;
    }
    assert_true(widest <= 79);

    /* Another cache, another COLUMNS: the same bytes. */
    char other[600], other_path[1024];
    fx_path(other, sizeof other, f->dir, "cache2");
    setenv("XDG_CACHE_HOME", other, 1);
    setenv("COLUMNS", "40", 1);
    assert_int_equal(ddp_text_default_corpus(other_path, sizeof other_path), DDP_OK);
    size_t len2;
    unsigned char *text2 = read_whole(other_path, &len2);
    assert_int_equal(len2, len);
    assert_memory_equal(text2, text, len);
    free(text2);

    /* Reused without `bible`. */
    setenv("XDG_CACHE_HOME", f->cache, 1);
    setenv("PATH", f->bin, 1);
    assert_int_equal(ddp_text_default_corpus(path, sizeof path), DDP_OK);
    ddp_text t;
    assert_int_equal(ddp_text_load(path, &t), DDP_OK);
    assert_int_equal(t.n_train + t.n_val, len);
    assert_int_equal(t.n_val, (len + 5) / 10);
    assert_int_equal(ddp_text_check(&t, 1024), DDP_OK);
    ddp_text_free(&t);
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_path_follows_xdg_then_home_then_tmp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_bible_says_how_to_install_it, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_bible_leaves_no_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corpus_appears_only_when_complete_and_is_reused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_killed_creation_leaves_no_partial_corpus, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_creations_agree, setup, teardown),
        cmocka_unit_test_setup_teardown(test_real_bible_text, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
