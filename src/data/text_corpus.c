/*
 * The default corpus: the King James Bible, printed by Debian's bible-kjv package and
 * cached as one text file, so that a text model trains out of the box.
 *
 * What `bible gen1:1-rev22:21` prints (bible-kjv 4.38): the whole text on stdout in
 * about 50 ms, without paging and without needing a terminal (stdin may be /dev/null).
 * Its default "pretty" layout gives each chapter a heading between blank lines
 * ("\nGenesis 1\n\n"), starts each verse on a new line with its number
 * ("  1 In the beginning God created the heaven and the earth.") and wraps lines between
 * words at a width taken from $COLUMNS, where an empty or non-numeric COLUMNS makes it
 * crash. We pass -l 79, its width when COLUMNS is unset, so the corpus is the same
 * 4,298,239 bytes in every environment. It looks for its data file in the current
 * directory before /usr/lib, so it runs in "/" to keep a stray bible.data out. And it
 * exits 0 even when it prints nothing (an unknown reference is reported on stderr with
 * status 0), so its output is checked before it is kept.
 */
#define _GNU_SOURCE /* posix_spawn_file_actions_addchdir_np, mkostemp */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ddp/data.h"

#define CORPUS_FILE "kjv.txt"
#define BIBLE_CMD   "bible -l 79 gen1:1-rev22:21"
#define BIBLE_HINT                                                                                 \
    "install it with 'apt-get install bible-kjv', or pass --text FILE to train on another text"
/* The text is 4,298,239 bytes; anything much shorter was cut off. */
#define KJV_MIN_BYTES ((off_t)4000000)
#define KJV_HEAD      "\nGenesis 1\n\n  1 In the beginning"
#define KJV_TAIL      "Amen.\n"

/* An environment variable holding an absolute path, or NULL: the XDG base directory
 * specification says relative values are to be ignored, and an empty one is unset. */
static const char *absolute_env(const char *name) {
    const char *v = getenv(name);
    return v != NULL && v[0] == '/' ? v : NULL;
}

/* The corpus path; *shared_tmp is set when it falls back to /tmp, where other users
 * could have made the directory first. */
static ddp_status corpus_path(char *path, size_t cap, int *shared_tmp) {
    if (path == NULL || cap == 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "default text: path is NULL or cap is 0");
    const char *base;
    int n;
    *shared_tmp = 0;
    if ((base = absolute_env("XDG_CACHE_HOME")) != NULL) {
        n = snprintf(path, cap, "%s/ddp/" CORPUS_FILE, base);
    } else if ((base = absolute_env("HOME")) != NULL) {
        n = snprintf(path, cap, "%s/.cache/ddp/" CORPUS_FILE, base);
    } else {
        n = snprintf(path, cap, "/tmp/ddp-%lu/" CORPUS_FILE, (unsigned long)getuid());
        *shared_tmp = 1;
    }
    if (n < 0 || (size_t)n >= cap)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "the default text's path under '%s' needs %d bytes, more than the %zu "
                        "given; set XDG_CACHE_HOME to a shorter directory or pass --text FILE",
                        base ? base : "/tmp", n, cap);
    return DDP_OK;
}

ddp_status ddp_text_corpus_path(char *path, size_t cap) {
    int shared_tmp = 0;
    DDP_CHECK(corpus_path(path, cap, &shared_tmp));
    return DDP_OK;
}

/* Makes the directory that will hold the corpus. Under /tmp it must be this user's own
 * and not a link, or another user could plant the file that training reads. */
static ddp_status prepare_dir(const char *dir, int shared_tmp) {
    if (!shared_tmp) {
        if (ddp_mkdirs(dir, "directory") == DDP_OK) return DDP_OK;
        /* The root cause, with what to do about it added. */
        char why[512];
        snprintf(why, sizeof why, "%s", ddp_error_message());
        return DDP_FAIL(ddp_error_status(),
                        "cannot keep the default text in %s (%s); set XDG_CACHE_HOME to a "
                        "writable directory or pass --text FILE",
                        dir, why);
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return DDP_FAIL(DDP_ERR_IO, "cannot create directory %s for the default text: %s", dir,
                        strerror(errno));
    struct stat st;
    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != getuid())
        return DDP_FAIL(DDP_ERR_IO,
                        "%s is not a directory of this user, so the default text cannot be "
                        "kept there safely; set XDG_CACHE_HOME or HOME, or pass --text FILE",
                        dir);
    return DDP_OK;
}

/* What the program wrote on stderr, on one line, for messages. */
static void drain_stderr(int fd, char *msg, size_t cap) {
    size_t used = 0;
    char buf[512];
    for (;;) {
        ssize_t got = read(fd, buf, sizeof buf);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        /* Read to the end even when the message is full, so the program never blocks. */
        for (ssize_t i = 0; i < got && used + 1 < cap; i++)
            msg[used++] = buf[i] == '\n' || buf[i] == '\r' ? ' ' : buf[i];
    }
    while (used > 0 && msg[used - 1] == ' ')
        used--;
    msg[used] = '\0';
}

/* Runs `bible` with its stdout on fd and waits for it; *said receives its stderr. */
static ddp_status run_bible(int fd, const char *path, char *said, size_t said_cap) {
    char *argv[] = {"bible", "-l", "79", "gen1:1-rev22:21", NULL}; /* BIBLE_CMD */
    int err[2];
    said[0] = '\0';
    if (pipe2(err, O_CLOEXEC) != 0)
        return DDP_FAIL(DDP_ERR_IO, "cannot make a pipe to run '%s': %s", BIBLE_CMD,
                        strerror(errno));
    /* posix_spawn, not fork: a forked copy of an MPI process can upset the network
     * library's registered memory, and spawning does not copy the process. */
    posix_spawn_file_actions_t fa;
    int rc = posix_spawn_file_actions_init(&fa);
    if (rc == 0) rc = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&fa, fd, 1);
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    if (rc == 0) rc = posix_spawn_file_actions_addchdir_np(&fa, "/");
    pid_t pid = -1;
    if (rc == 0) rc = posix_spawnp(&pid, "bible", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(err[1]);
    if (rc != 0) {
        close(err[0]);
        if (rc == ENOENT)
            return DDP_FAIL(DDP_ERR_UNSUPPORTED,
                            "the program 'bible', which writes the default training text (the "
                            "King James Bible) to %s, is not installed (not found on PATH); "
                            "%s",
                            path, BIBLE_HINT);
        return DDP_FAIL(DDP_ERR_IO, "cannot run '%s' to create the default text %s: %s; %s",
                        BIBLE_CMD, path, strerror(rc), BIBLE_HINT);
    }
    drain_stderr(err[0], said, said_cap);
    close(err[0]);

    int status;
    pid_t got;
    do {
        got = waitpid(pid, &status, 0);
    } while (got < 0 && errno == EINTR);
    /* With SIGCHLD ignored the child is reaped for us and its status is lost; the
     * check of the output that follows still decides. */
    if (got < 0 && errno == ECHILD) return DDP_OK;
    if (got < 0)
        return DDP_FAIL(DDP_ERR_IO, "cannot wait for '%s': %s", BIBLE_CMD, strerror(errno));
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return DDP_OK;
    char how[64];
    if (WIFSIGNALED(status))
        snprintf(how, sizeof how, "was killed by signal %d", WTERMSIG(status));
    else
        snprintf(how, sizeof how, "exited with status %d", WEXITSTATUS(status));
    return DDP_FAIL(DDP_ERR_IO,
                    "'%s' %s while writing the default text %s%s%s%s; reinstall it "
                    "('apt-get install --reinstall bible-kjv bible-kjv-text') or pass "
                    "--text FILE",
                    BIBLE_CMD, how, path, said[0] ? " (it said: '" : "", said, said[0] ? "')" : "");
}

/* Whether what `bible` wrote into fd is the whole text: long enough, from the first
 * chapter heading to the last "Amen.". */
static ddp_status check_output(int fd, const char *path, const char *said) {
    struct stat st;
    if (fstat(fd, &st) != 0)
        return DDP_FAIL(DDP_ERR_IO, "cannot inspect the new default text for %s: %s", path,
                        strerror(errno));
    char head[sizeof KJV_HEAD - 1], tail[sizeof KJV_TAIL - 1];
    int whole =
        st.st_size >= KJV_MIN_BYTES && pread(fd, head, sizeof head, 0) == (ssize_t)sizeof head &&
        memcmp(head, KJV_HEAD, sizeof head) == 0 &&
        pread(fd, tail, sizeof tail, st.st_size - (off_t)sizeof tail) == (ssize_t)sizeof tail &&
        memcmp(tail, KJV_TAIL, sizeof tail) == 0;
    if (whole) return DDP_OK;
    return DDP_FAIL(DDP_ERR_FORMAT,
                    "'%s' printed %lld bytes, which are not the King James text (about 4.3 MB "
                    "from \"Genesis 1\" to \"Amen.\")%s%s%s, so %s was not created; check that "
                    "bible-kjv-text is installed ('apt-get install bible-kjv bible-kjv-text') "
                    "or pass --text FILE",
                    BIBLE_CMD, (long long)st.st_size, said[0] ? "; it said: '" : "", said,
                    said[0] ? "'" : "", path);
}

/* Writes the corpus to a temporary file next to path and renames it into place only
 * once it is complete, checked and on disk: rename is atomic, so a reader (another rank,
 * a concurrent creation) sees no file or the whole file, and two creations that race
 * both rename identical text. A creation killed half-way leaves only its temporary. */
static ddp_status create_corpus(const char *path, const char *dir) {
    char tmp[4096];
    int n = snprintf(tmp, sizeof tmp, "%s/." CORPUS_FILE ".XXXXXX", dir);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "cache directory name %s is too long; set XDG_CACHE_HOME to a shorter "
                        "one or pass --text FILE",
                        dir);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return DDP_FAIL(DDP_ERR_IO,
                        "cannot create a temporary file in %s for the default text: %s; set "
                        "XDG_CACHE_HOME to a writable directory or pass --text FILE",
                        dir, strerror(errno));
    /* mkostemp makes the file private; the text is public and others may share the
     * cache. */
    (void)fchmod(fd, 0644);
    char said[256];
    ddp_status s;
    DDP_CHECK_GOTO(run_bible(fd, path, said, sizeof said), s, fail);
    DDP_CHECK_GOTO(check_output(fd, path, said), s, fail);
    /* On disk before the rename, so that a power cut cannot leave a renamed but empty
     * or partial file. */
    if (fsync(fd) != 0) {
        s = DDP_FAIL(DDP_ERR_IO, "cannot write the default text %s: %s", tmp, strerror(errno));
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        s = DDP_FAIL(DDP_ERR_IO, "cannot write the default text %s: %s", tmp, strerror(errno));
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        s = DDP_FAIL(DDP_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        goto fail;
    }
    return DDP_OK;
fail:
    if (fd >= 0) close(fd);
    unlink(tmp);
    return s;
}

ddp_status ddp_text_default_corpus(char *path, size_t cap) {
    int shared_tmp = 0;
    DDP_CHECK(corpus_path(path, cap, &shared_tmp));
    struct stat st;
    if (stat(path, &st) == 0) {
        /* Only a complete file is ever renamed to this name, so one that is there is
         * whole; an empty one was made by hand and is replaced. */
        if (S_ISREG(st.st_mode) && st.st_size > 0) return DDP_OK;
        if (!S_ISREG(st.st_mode))
            return DDP_FAIL(DDP_ERR_IO,
                            "the default text %s is not a regular file; remove it, or pass "
                            "--text FILE",
                            path);
    }
    char dir[4096];
    int n = snprintf(dir, sizeof dir, "%s", path);
    if (n < 0 || (size_t)n >= sizeof dir)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "the default text's path %s is too long; set XDG_CACHE_HOME to a "
                        "shorter directory or pass --text FILE",
                        path);
    *strrchr(dir, '/') = '\0';
    DDP_CHECK(prepare_dir(dir, shared_tmp));
    DDP_CHECK(create_corpus(path, dir));
    return DDP_OK;
}
