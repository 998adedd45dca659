/*
 * ddp-bench: measurements of the communication and of whole training steps, one process
 * per rank under mpirun.
 *
 *   ddp-bench allreduce [--comm mpi|nccl] [--min-bytes 8] [--max-bytes 256M] [--iters N]
 *                       [--warmup N] [--reducer] [--tensor-mb 1] [--bucket-mb 25]
 *                       [--first-bucket-mb 1] [--progress auto|thread|test] [--json FILE]
 *   ddp-bench train [ddp-train options] [--warmup-steps W] [--bench-steps S] [--json FILE]
 *
 * allreduce follows nccl-tests: every size is checked (inputs are small integers, so the
 * sums are exact and each rank verifies its own result), the time of a size is the mean
 * over the timed iterations, maximum over ranks, and bandwidth is reported as algbw =
 * bytes / time and busbw = algbw * 2(n-1)/n, the bytes a ring moves through each link.
 * With --reducer the same total size also goes through the gradient reducer (tensors of
 * --tensor-mb, buckets as in training), and the table gives its busbw and its ratio to
 * the plain all-reduce.
 *
 * train runs ddp_trainer_step on a synthetic in-memory dataset with the shape of
 * Fashion-MNIST (784 features, 10 classes, 60000 samples), or on the real data when
 * --data is given, and reports throughput and per-phase step times as JSON.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ddp/cli.h"

#define EXIT_USAGE 2

/* Bytes of a size argument: a number with an optional K, M or G suffix (powers of 2). */
static int parse_bytes(const char *s, size_t *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0) return -1;
    double mul = 1;
    switch (*end) {
    case 'k':
    case 'K': mul = 1024.0, end++; break;
    case 'm':
    case 'M': mul = 1024.0 * 1024.0, end++; break;
    case 'g':
    case 'G': mul = 1024.0 * 1024.0 * 1024.0, end++; break;
    default: break;
    }
    if (*end == 'B' || *end == 'b') end++;
    if (*end != '\0') return -1;
    *out = (size_t)(v * mul);
    return 0;
}

static int parse_int(const char *s, int lo, int *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < lo || v > 1000000000L) return -1;
    *out = (int)v;
    return 0;
}

static void format_bytes(size_t b, char *buf, size_t cap) {
    if (b >= (1u << 30) && b % (1u << 30) == 0)
        snprintf(buf, cap, "%zuG", b >> 30);
    else if (b >= (1u << 20) && b % (1u << 20) == 0)
        snprintf(buf, cap, "%zuM", b >> 20);
    else if (b >= (1u << 10) && b % (1u << 10) == 0)
        snprintf(buf, cap, "%zuK", b >> 10);
    else
        snprintf(buf, cap, "%zu", b);
}

/* The maximum over ranks of a time. COLLECTIVE over ctrl. */
static ddp_status max_over_ranks(ddp_comm *ctrl, double *t) {
    DDP_CHECK(ddp_comm_allreduce(ctrl, t, 1, DDP_F64, DDP_MAX));
    return DDP_OK;
}

static ddp_status write_json(json_t *o, const char *path) {
    if (json_dump_file(o, path, JSON_INDENT(2) | JSON_REAL_PRECISION(6)) != 0)
        return DDP_FAIL(DDP_ERR_IO, "--json %s: could not write the results", path);
    return DDP_OK;
}

/* ==== allreduce ======================================================================= */

typedef struct {
    ddp_comm_kind comm;
    size_t min_bytes, max_bytes;
    int iters, warmup;
    int reducer;
    int shared;          /* buffers in node-shared memory (the trainer's CPU path) */
    size_t tensor_bytes; /* --reducer: tensor boundaries every this many bytes */
    ddp_reducer_options ropt;
    const char *json;
} allreduce_args;

static const char allreduce_usage[] =
    "usage: ddp-bench allreduce [--comm mpi|nccl] [--min-bytes 8] [--max-bytes 256M]\n"
    "                           [--iters 20] [--warmup 5] [--reducer] [--tensor-mb 1]\n"
    "                           [--bucket-mb 25] [--first-bucket-mb 1]\n"
    "                           [--progress auto|thread|test] [--shared] [--json FILE]\n"
    "--shared puts the buffer in memory shared by the node's ranks, as the trainer does\n"
    "with its gradients on the CPU: sums of 64 KiB and more then need no MPI message.\n";

static ddp_status parse_allreduce(int argc, char **argv, allreduce_args *a) {
    *a = (allreduce_args){.comm = DDP_COMM_MPI,
                          .min_bytes = 8,
                          .max_bytes = 256u << 20,
                          .iters = 20,
                          .warmup = 5,
                          .tensor_bytes = 1u << 20,
                          .ropt = {.bucket_bytes = 25u << 20,
                                   .first_bucket_bytes = 1u << 20,
                                   .grad_dtype = DDP_F32,
                                   .overlap = 1,
                                   .progress = DDP_PROGRESS_AUTO}};
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        double mb;
        if (strcmp(o, "--reducer") == 0) {
            a->reducer = 1;
            continue;
        }
        if (strcmp(o, "--shared") == 0) {
            a->shared = 1;
            continue;
        }
        if (!v) return DDP_FAIL(DDP_ERR_INVALID_ARG, "%s: unknown option or missing value", o);
        i++;
        if (strcmp(o, "--comm") == 0) {
            if (strcmp(v, "mpi") == 0)
                a->comm = DDP_COMM_MPI;
            else if (strcmp(v, "nccl") == 0)
                a->comm = DDP_COMM_NCCL;
            else
                bad = 1;
        } else if (strcmp(o, "--min-bytes") == 0) {
            bad = parse_bytes(v, &a->min_bytes);
        } else if (strcmp(o, "--max-bytes") == 0) {
            bad = parse_bytes(v, &a->max_bytes);
        } else if (strcmp(o, "--iters") == 0) {
            bad = parse_int(v, 1, &a->iters);
        } else if (strcmp(o, "--warmup") == 0) {
            bad = parse_int(v, 0, &a->warmup);
        } else if (strcmp(o, "--tensor-mb") == 0) {
            mb = atof(v);
            bad = !(mb > 0);
            a->tensor_bytes = (size_t)(mb * 1024 * 1024);
        } else if (strcmp(o, "--bucket-mb") == 0) {
            mb = atof(v);
            bad = !(mb > 0);
            a->ropt.bucket_bytes = (size_t)(mb * 1024 * 1024);
        } else if (strcmp(o, "--first-bucket-mb") == 0) {
            mb = atof(v);
            bad = !(mb > 0);
            a->ropt.first_bucket_bytes = (size_t)(mb * 1024 * 1024);
        } else if (strcmp(o, "--progress") == 0) {
            if (strcmp(v, "auto") == 0)
                a->ropt.progress = DDP_PROGRESS_AUTO;
            else if (strcmp(v, "thread") == 0)
                a->ropt.progress = DDP_PROGRESS_THREAD;
            else if (strcmp(v, "test") == 0)
                a->ropt.progress = DDP_PROGRESS_TEST;
            else
                bad = 1;
        } else if (strcmp(o, "--json") == 0) {
            a->json = v;
        } else {
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "%s: unknown option\n%s", o, allreduce_usage);
        }
        if (bad)
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "%s %s: invalid value\n%s", o, v, allreduce_usage);
    }
    if (a->min_bytes < sizeof(float)) a->min_bytes = sizeof(float);
    if (a->max_bytes < a->min_bytes)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "--max-bytes %zu is below --min-bytes %zu",
                        a->max_bytes, a->min_bytes);
    return DDP_OK;
}

/* Everything one size needs: the buffer in the backend's memory and a host mirror. */
typedef struct {
    ddp_backend *b;
    ddp_comm *comm, *ctrl;
    float *dev;  /* (max_count) backend memory */
    float *host; /* (max_count) */
    int rank, world;
} bench_ctx;

/* Every rank fills with rank + 1, so each element of the sum is n(n+1)/2, exact in fp32. */
static ddp_status fill(bench_ctx *c, size_t count) {
    float v = (float)(c->rank + 1);
    for (size_t i = 0; i < count; i++)
        c->host[i] = v;
    DDP_CHECK(ddp_backend_copy(c->b, c->dev, c->host, count * sizeof(float), DDP_COPY_H2D));
    DDP_CHECK(ddp_backend_sync(c->b));
    return DDP_OK;
}

static ddp_status count_wrong(bench_ctx *c, size_t count, long *wrong) {
    DDP_CHECK(ddp_backend_copy(c->b, c->host, c->dev, count * sizeof(float), DDP_COPY_D2H));
    float want = (float)c->world * (float)(c->world + 1) / 2.0f;
    long w = 0;
    for (size_t i = 0; i < count; i++)
        w += c->host[i] != want;
    *wrong = w;
    return DDP_OK;
}

/* One reducer pass over the buffer: begin, every tensor reported ready from the end of
 * the buffer towards its start (as backward does), finish. COLLECTIVE. */
static ddp_status reducer_pass(ddp_reducer *r, const size_t *bounds, int nb, size_t count) {
    DDP_CHECK(ddp_reducer_begin(r));
    size_t end = count;
    for (int i = nb - 1; i >= 0; i--) {
        DDP_CHECK(ddp_reducer_ready(r, bounds[i], end - bounds[i]));
        end = bounds[i];
    }
    DDP_CHECK(ddp_reducer_finish(r, NULL));
    return DDP_OK;
}

typedef struct {
    double t_plain, t_reducer; /* seconds per all-reduce, max over ranks */
    long wrong;                /* elements wrong, summed over ranks and both paths */
    int n_buckets;
} size_result;

/* Times one size. COLLECTIVE. */
static ddp_status bench_size(bench_ctx *c, const allreduce_args *a, size_t count, size_t *bounds,
                             size_result *res) {
    memset(res, 0, sizeof *res);
    long wrong = 0, w;
    /* Check: one all-reduce of fresh inputs. */
    DDP_CHECK(fill(c, count));
    DDP_CHECK(ddp_comm_allreduce(c->comm, c->dev, count, DDP_F32, DDP_SUM));
    DDP_CHECK(ddp_backend_sync(c->b));
    DDP_CHECK(count_wrong(c, count, &w));
    wrong += w;
    /* Timing: the values keep growing (a power-of-n multiple of the first sum); they are
     * only moved, so what they are does not change the time. */
    for (int i = 0; i < a->warmup; i++)
        DDP_CHECK(ddp_comm_allreduce(c->comm, c->dev, count, DDP_F32, DDP_SUM));
    DDP_CHECK(ddp_backend_sync(c->b));
    DDP_CHECK(ddp_comm_barrier(c->ctrl));
    double t0 = ddp_time_now();
    for (int i = 0; i < a->iters; i++)
        DDP_CHECK(ddp_comm_allreduce(c->comm, c->dev, count, DDP_F32, DDP_SUM));
    DDP_CHECK(ddp_backend_sync(c->b));
    res->t_plain = (ddp_time_now() - t0) / a->iters;
    DDP_CHECK(max_over_ranks(c->ctrl, &res->t_plain));

    if (a->reducer) {
        size_t step = a->tensor_bytes / sizeof(float);
        if (step == 0) step = 1;
        int nb = 0;
        for (size_t off = 0; off < count; off += step)
            bounds[nb++] = off;
        ddp_reducer *r;
        DDP_CHECK(ddp_reducer_create(c->comm, c->b, c->dev, count, bounds, nb, &a->ropt, &r));
        res->n_buckets = ddp_reducer_num_buckets(r);
        ddp_status s = fill(c, count);
        if (s == DDP_OK) s = reducer_pass(r, bounds, nb, count);
        if (s == DDP_OK) s = ddp_backend_sync(c->b);
        if (s == DDP_OK) s = count_wrong(c, count, &w);
        if (s == DDP_OK) wrong += w;
        for (int i = 0; s == DDP_OK && i < a->warmup; i++)
            s = reducer_pass(r, bounds, nb, count);
        if (s == DDP_OK) s = ddp_backend_sync(c->b);
        if (s == DDP_OK) s = ddp_comm_barrier(c->ctrl);
        t0 = ddp_time_now();
        for (int i = 0; s == DDP_OK && i < a->iters; i++)
            s = reducer_pass(r, bounds, nb, count);
        if (s == DDP_OK) s = ddp_backend_sync(c->b);
        res->t_reducer = (ddp_time_now() - t0) / a->iters;
        ddp_reducer_free(r);
        DDP_CHECK(s);
        DDP_CHECK(max_over_ranks(c->ctrl, &res->t_reducer));
    }
    DDP_CHECK(ddp_comm_allreduce(c->ctrl, &wrong, 1, DDP_I64, DDP_SUM));
    res->wrong = wrong;
    return DDP_OK;
}

static ddp_status run_allreduce(bench_ctx *c, const allreduce_args *a, long *total_wrong) {
    size_t max_count = a->max_bytes / sizeof(float);
    size_t step = a->tensor_bytes / sizeof(float);
    size_t *bounds = malloc((max_count / (step ? step : 1) + 2) * sizeof *bounds);
    json_t *rows = json_array();
    if (!bounds || !rows) {
        free(bounds);
        json_decref(rows);
        return DDP_FAIL(DDP_ERR_NOMEM, "out of memory");
    }
    double factor = c->world > 1 ? 2.0 * (c->world - 1) / c->world : 0.0;
    if (c->rank == 0) {
        printf("# ddp-bench allreduce: %d rank(s), comm %s, fp32 sum in place, %d warm-up + %d "
               "timed iterations; waits for late ranks %s\n",
               c->world, ddp_comm_name(c->comm), a->warmup, a->iters,
               ddp_comm_sleeping_wait(c->comm) ? "asleep (node gate)" : "in the library");
        if (a->shared) printf("# buffers in node-shared memory\n");
        printf("# time: mean per all-reduce, max over ranks; busbw = algbw * 2(n-1)/n\n");
        printf("%10s %12s %12s %10s %10s", "size", "count", "time(us)", "algbw GB/s", "busbw GB/s");
        if (a->reducer) printf(" %8s %12s %10s %7s", "buckets", "red. time", "red. busbw", "ratio");
        printf(" %6s\n", "wrong");
    }
    ddp_status s = DDP_OK;
    *total_wrong = 0;
    for (size_t bytes = a->min_bytes; s == DDP_OK && bytes <= a->max_bytes; bytes *= 2) {
        size_t count = bytes / sizeof(float);
        size_result res;
        s = bench_size(c, a, count, bounds, &res);
        if (s != DDP_OK) break;
        *total_wrong += res.wrong;
        size_t nbytes = count * sizeof(float);
        double algbw = nbytes / res.t_plain / 1e9, busbw = algbw * factor;
        double ralg = a->reducer ? nbytes / res.t_reducer / 1e9 : 0.0, rbus = ralg * factor;
        /* With one rank busbw is 0 by definition; compare algbw then. */
        double ratio = a->reducer ? (factor > 0 ? rbus / busbw : ralg / algbw) : 0.0;
        if (c->rank == 0) {
            char sz[32];
            format_bytes(nbytes, sz, sizeof sz);
            printf("%10s %12zu %12.1f %10.3f %10.3f", sz, count, res.t_plain * 1e6, algbw, busbw);
            if (a->reducer)
                printf(" %8d %12.1f %10.3f %7.3f", res.n_buckets, res.t_reducer * 1e6, rbus, ratio);
            printf(" %6ld\n", res.wrong);
            fflush(stdout);
            json_t *row =
                json_pack("{s:I, s:I, s:f, s:f, s:f, s:I}", "bytes", (json_int_t)nbytes, "count",
                          (json_int_t)count, "time_us", res.t_plain * 1e6, "algbw_gbs", algbw,
                          "busbw_gbs", busbw, "wrong", (json_int_t)res.wrong);
            if (row && a->reducer) {
                json_object_set_new(row, "reducer_buckets", json_integer(res.n_buckets));
                json_object_set_new(row, "reducer_time_us", json_real(res.t_reducer * 1e6));
                json_object_set_new(row, "reducer_busbw_gbs", json_real(rbus));
                json_object_set_new(row, "reducer_ratio", json_real(ratio));
            }
            if (row) json_array_append_new(rows, row);
        }
    }
    free(bounds);
    if (s == DDP_OK && c->rank == 0) {
        printf("# wrong elements in all: %ld\n", *total_wrong);
        if (a->json) {
            json_t *o = json_pack("{s:s, s:i, s:s, s:i, s:i, s:O}", "bench", "allreduce", "ranks",
                                  c->world, "comm", ddp_comm_name(c->comm), "iters", a->iters,
                                  "warmup", a->warmup, "sizes", rows);
            if (!o)
                s = DDP_FAIL(DDP_ERR_INTERNAL, "could not build the JSON results");
            else {
                json_object_set_new(o, "wrong", json_integer(*total_wrong));
                json_object_set_new(o, "sleeping_wait",
                                    json_boolean(ddp_comm_sleeping_wait(c->comm)));
                json_object_set_new(o, "shared", json_boolean(a->shared));
                s = write_json(o, a->json);
                json_decref(o);
            }
        }
    }
    json_decref(rows);
    return s;
}

static int main_allreduce(ddp_comm *ctrl, int argc, char **argv) {
    int rank = ddp_comm_rank(ctrl);
    allreduce_args a;
    ddp_status s = parse_allreduce(argc, argv, &a);
    if (!ddp_cli_phase_ok(ctrl, s, "parsing options")) return EXIT_USAGE;
    bench_ctx c = {.ctrl = ctrl, .rank = rank, .world = ddp_comm_size(ctrl)};
    ddp_backend_options bo = {.device = a.comm == DDP_COMM_NCCL ? DDP_DEVICE_CUDA : DDP_DEVICE_CPU,
                              .threads = 1};
    if (bo.device == DDP_DEVICE_CUDA) {
        int gpus = ddp_backend_cuda_device_count();
        bo.device_index = gpus > 0 ? ddp_comm_local_rank(ctrl) % gpus : 0;
    }
    int code = 1, dev_is_shared = 0;
    s = ddp_backend_create(&bo, &c.b);
    if (!ddp_cli_phase_ok(ctrl, s, "creating the backend")) goto done;
    size_t max_count = a.max_bytes / sizeof(float);
    c.host = malloc(max_count * sizeof(float));
    s = c.host ? ddp_backend_alloc(c.b, max_count * sizeof(float), (void **)&c.dev)
               : DDP_FAIL(DDP_ERR_NOMEM, "out of memory for %zu bytes", a.max_bytes);
    if (!ddp_cli_phase_ok(ctrl, s, "allocating the buffers")) goto done;
    s = ddp_comm_create(a.comm, c.b, &c.comm);
    if (!ddp_cli_phase_ok(ctrl, s, "creating the communicator")) goto done;
    float *shared = NULL;
    if (a.shared) {
        /* Collective; every rank gets memory, or none does. */
        s = ddp_comm_alloc_shared(c.comm, max_count * sizeof(float), (void **)&shared);
        if (s == DDP_OK && !shared)
            s = DDP_FAIL(DDP_ERR_UNSUPPORTED,
                         "--shared: no node-shared memory here (it needs the MPI comm with "
                         "all ranks on one node, and DDP_MPI_GATE not 0)");
        if (!ddp_cli_phase_ok(ctrl, s, "allocating shared memory")) goto done;
        ddp_backend_dealloc(c.b, c.dev);
        c.dev = shared; /* freed with the comm */
        dev_is_shared = 1;
    }
    long wrong = 0;
    s = run_allreduce(&c, &a, &wrong);
    if (s != DDP_OK) {
        ddp_log_current_error("benchmarking the all-reduce");
        ddp_comm_abort(ctrl, 1);
    }
    code = wrong == 0 ? 0 : 1;
    if (wrong != 0 && rank == 0) ddp_log_error("%ld elements had a wrong sum", wrong);
done:
    if (c.b && !dev_is_shared) ddp_backend_dealloc(c.b, c.dev);
    ddp_comm_free(c.comm);
    free(c.host);
    ddp_backend_free(c.b);
    return code;
}

/* ==== train =========================================================================== */

/* A dataset with the shape of Fashion-MNIST: pixels uniform in [0, 1) and labels uniform
 * over the classes, the same on every rank (fixed seed). Only the speed is measured. */
static ddp_status make_synthetic(size_t n, size_t dim, int classes, uint64_t stream,
                                 ddp_dataset *out) {
    memset(out, 0, sizeof *out);
    out->n = n;
    out->dim = dim;
    out->num_classes = classes;
    out->x = malloc(n * dim * sizeof(float));
    out->y = malloc(n * sizeof(int32_t));
    if (!out->x || !out->y) {
        ddp_dataset_free(out);
        return DDP_FAIL(DDP_ERR_NOMEM, "out of memory for a synthetic dataset of %zu samples", n);
    }
    ddp_rng rng;
    ddp_rng_seed(&rng, 12345, stream);
    for (size_t i = 0; i < n * dim; i++)
        out->x[i] = ddp_rng_uniform(&rng);
    for (size_t i = 0; i < n; i++)
        out->y[i] = (int32_t)ddp_rng_below(&rng, (uint64_t)classes);
    return DDP_OK;
}

typedef struct {
    int warmup_steps, bench_steps;
    const char *json;
    int have_data;
    int no_allreduce;
} train_args;

/* Takes out the bench's own options; the rest go to ddp_cli_parse (argv[0] kept). */
static ddp_status split_train_args(int argc, char **argv, train_args *a, int *out_argc,
                                   char **out_argv) {
    *a = (train_args){.warmup_steps = 5, .bench_steps = 20};
    int n = 0;
    out_argv[n++] = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        int bad = 0;
        if (strcmp(o, "--warmup-steps") == 0 || strcmp(o, "--bench-steps") == 0 ||
            strcmp(o, "--json") == 0) {
            if (i + 1 >= argc) return DDP_FAIL(DDP_ERR_INVALID_ARG, "%s: missing value", o);
            const char *v = argv[++i];
            if (strcmp(o, "--warmup-steps") == 0)
                bad = parse_int(v, 0, &a->warmup_steps);
            else if (strcmp(o, "--bench-steps") == 0)
                bad = parse_int(v, 1, &a->bench_steps);
            else
                a->json = v;
            if (bad) return DDP_FAIL(DDP_ERR_INVALID_ARG, "%s %s: invalid value", o, v);
            continue;
        }
        if (strcmp(o, "--no-allreduce") == 0) {
            a->no_allreduce = 1;
            continue;
        }
        if (strcmp(o, "--data") == 0 || strncmp(o, "--data=", 7) == 0) a->have_data = 1;
        out_argv[n++] = argv[i];
    }
    out_argv[n] = NULL;
    *out_argc = n;
    return DDP_OK;
}

typedef struct {
    double fwd, bwd, ar, exposed, optim, step, comm_cpu;
} phase_sums;

static int main_train(ddp_comm *ctrl, int argc, char **argv) {
    int rank = ddp_comm_rank(ctrl), world = ddp_comm_size(ctrl);
    train_args a;
    ddp_cli_options opt;
    char **pargv = calloc((size_t)argc + 1, sizeof *pargv);
    int pargc = 0;
    ddp_status s = pargv ? split_train_args(argc, argv, &a, &pargc, pargv)
                         : DDP_FAIL(DDP_ERR_NOMEM, "out of memory");
    if (s == DDP_OK) s = ddp_cli_parse(pargc, pargv, &opt);
    free(pargv);
    if (!ddp_cli_phase_ok(ctrl, s, "parsing options")) return EXIT_USAGE;
    if (opt.help) {
        if (rank == 0) {
            printf("usage: ddp-bench train [ddp-train options] [--warmup-steps 5] "
                   "[--bench-steps 20] [--json FILE] [--no-allreduce]\n"
                   "Without --data, a synthetic dataset shaped like Fashion-MNIST is used.\n"
                   "--no-allreduce skips gradient averaging altogether (the replicas drift\n"
                   "apart): the throughput N ranks would reach if communication were free,\n"
                   "the ceiling of a scaling measurement on this machine.\n\n");
            ddp_cli_usage(stdout, "ddp-bench train");
        }
        return 0;
    }
    ddp_train_config *cfg = &opt.train;
    /* --steps, if given, is the number of timed steps. One step more than are run keeps
     * every timed step off the logging path (which adds a reduction of the loss). */
    if (cfg->max_steps > 0) a.bench_steps = (int)cfg->max_steps;
    cfg->max_steps = a.warmup_steps + a.bench_steps + 1;
    cfg->log_every = (int)cfg->max_steps + 1;
    cfg->quiet = 1;
    cfg->check_sync = 0;
    cfg->reducer.skip = a.no_allreduce;
    s = ddp_train_config_resolve(cfg, world);
    if (!ddp_cli_phase_ok(ctrl, s, "checking the batch configuration")) return EXIT_USAGE;

    ddp_backend *backend = NULL;
    ddp_comm *comm = NULL;
    ddp_trainer *trainer = NULL;
    ddp_dataset train = {0}, test = {0};
    json_t *o = NULL;
    int code = 1;
    int local_size = ddp_comm_local_size(ctrl);
    int gpus = ddp_backend_cuda_device_count();
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    ddp_backend_options bo = {
        .device = cfg->device,
        .device_index = gpus > 0 ? ddp_comm_local_rank(ctrl) % gpus : 0,
        .threads = cfg->threads > 0 ? cfg->threads
                                    : (int)(cores / local_size > 0 ? cores / local_size : 1),
        .math = cfg->math,
    };
    s = ddp_backend_create(&bo, &backend);
    if (!ddp_cli_phase_ok(ctrl, s, "creating the compute backend")) goto done;
    if (a.have_data) {
        s = ddp_dataset_load_dir(cfg->data_dir, "train", &train);
        if (s == DDP_OK) s = ddp_dataset_load_dir(cfg->data_dir, "t10k", &test);
    } else {
        s = make_synthetic(60000, 784, 10, 0, &train);
        if (s == DDP_OK) s = make_synthetic(1000, 784, 10, 1, &test);
    }
    if (!ddp_cli_phase_ok(ctrl, s, "preparing the data")) goto done;
    s = ddp_comm_create(cfg->comm, backend, &comm);
    if (!ddp_cli_phase_ok(ctrl, s, "creating the communicator")) goto done;
    s = ddp_trainer_create(cfg, backend, comm, ctrl, &train, &test, &trainer);
    if (s != DDP_OK) {
        ddp_cli_agreed_failure(ctrl, s, "setting up training");
        goto done;
    }

    ddp_step_stats st;
    for (int i = 0; s == DDP_OK && i < a.warmup_steps; i++)
        s = ddp_trainer_step(trainer, &st);
    /* --trace records the timed steps only. */
    if (s == DDP_OK && !ddp_cli_open_trace(ctrl, cfg->trace_path)) goto done;
    /* All ranks start the timed steps together. */
    if (s == DDP_OK) s = ddp_comm_barrier(ctrl);
    phase_sums sum = {0};
    double t0 = ddp_time_now();
    for (int i = 0; s == DDP_OK && i < a.bench_steps; i++) {
        s = ddp_trainer_step(trainer, &st);
        sum.fwd += st.t_forward;
        sum.bwd += st.t_backward;
        sum.ar += st.t_allreduce;
        sum.exposed += st.t_exposed;
        sum.optim += st.t_optim;
        sum.step += st.t_step;
        sum.comm_cpu += st.t_comm_cpu;
    }
    if (s == DDP_OK) s = ddp_backend_sync(backend);
    if (s == DDP_OK) s = ddp_trace_close();
    /* The step ends on every rank when the slowest rank's all-reduce ends; the barrier
     * is cheap next to a step. */
    if (s == DDP_OK) s = ddp_comm_barrier(ctrl);
    double wall = ddp_time_now() - t0;
    if (s != DDP_OK) {
        ddp_log_current_error("training");
        ddp_comm_abort(ctrl, 1);
    }
    /* Phase times: mean over steps and over ranks; the wall time: max over ranks. */
    double v[7] = {sum.fwd, sum.bwd, sum.ar, sum.exposed, sum.optim, sum.step, sum.comm_cpu};
    s = ddp_comm_allreduce(ctrl, v, 7, DDP_F64, DDP_SUM);
    if (s == DDP_OK) s = max_over_ranks(ctrl, &wall);
    if (s != DDP_OK) {
        ddp_log_current_error("gathering the timings");
        ddp_comm_abort(ctrl, 1);
    }
    double per = 1.0 / ((double)a.bench_steps * world);
    for (int i = 0; i < 7; i++)
        v[i] *= per;
    double sps = (double)a.bench_steps * (double)cfg->global_batch / wall;
    ddp_model *m = ddp_trainer_model(trainer);
    double flops = ddp_model_flops_per_sample(m) * 3.0 * sps;
    static const char *const progress_names[] = {"auto", "thread", "test"};
    if (rank == 0) {
        o = json_object();
        json_object_set_new(o, "bench", json_string("train"));
        json_object_set_new(o, "model", json_string(ddp_model_describe(m)));
        json_object_set_new(o, "params", json_integer((json_int_t)ddp_model_num_params(m)));
        json_object_set_new(o, "data", json_string(a.have_data ? cfg->data_dir : "synthetic"));
        json_object_set_new(o, "ranks", json_integer(world));
        json_object_set_new(o, "threads", json_integer(bo.threads));
        json_object_set_new(o, "backend", json_string(ddp_backend_name(backend)));
        json_object_set_new(o, "comm", json_string(ddp_comm_name(comm)));
        json_object_set_new(o, "sleeping_wait", json_boolean(ddp_comm_sleeping_wait(comm)));
        json_object_set_new(o, "global_batch", json_integer((json_int_t)cfg->global_batch));
        json_object_set_new(o, "micro_batch", json_integer((json_int_t)cfg->micro_batch));
        json_object_set_new(o, "accum", json_integer(cfg->accum));
        json_object_set_new(o, "overlap", json_boolean(cfg->reducer.overlap));
        json_object_set_new(o, "allreduce", json_boolean(!cfg->reducer.skip));
        json_object_set_new(o, "progress", json_string(progress_names[cfg->reducer.progress % 3]));
        json_object_set_new(o, "bucket_mb",
                            json_real((double)cfg->reducer.bucket_bytes / (1024.0 * 1024.0)));
        json_object_set_new(o, "warmup_steps", json_integer(a.warmup_steps));
        json_object_set_new(o, "bench_steps", json_integer(a.bench_steps));
        json_object_set_new(o, "samples_per_s", json_real(sps));
        json_object_set_new(o, "t_forward", json_real(v[0]));
        json_object_set_new(o, "t_backward", json_real(v[1]));
        json_object_set_new(o, "t_allreduce", json_real(v[2]));
        json_object_set_new(o, "t_exposed", json_real(v[3]));
        json_object_set_new(o, "t_optim", json_real(v[4]));
        json_object_set_new(o, "t_step", json_real(v[5]));
        json_object_set_new(o, "t_comm_cpu", json_real(v[6]));
        json_object_set_new(o, "t_step_wall", json_real(wall / a.bench_steps));
        json_object_set_new(o, "exposed_fraction", json_real(v[5] > 0 ? v[3] / v[5] : 0.0));
        json_object_set_new(o, "model_flops_per_s", json_real(flops));
        json_dumpf(o, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
        printf("\n");
        fflush(stdout);
        s = a.json ? write_json(o, a.json) : DDP_OK;
    }
    if (!ddp_cli_phase_ok(ctrl, s, "writing the results")) goto done;
    code = 0;
done:
    json_decref(o);
    ddp_trainer_free(trainer);
    ddp_comm_free(comm);
    ddp_dataset_free(&train);
    ddp_dataset_free(&test);
    ddp_backend_free(backend);
    return code;
}

/* ==== main ============================================================================ */

static const char usage[] =
    "usage: ddp-bench allreduce [options]   all-reduce bandwidth (--help for options)\n"
    "       ddp-bench train [options]       training throughput (--help for options)\n";

int main(int argc, char **argv) {
    if (argc < 2 || (strcmp(argv[1], "allreduce") != 0 && strcmp(argv[1], "train") != 0)) {
        fputs(usage, argc < 2 || strcmp(argv[1], "--help") != 0 ? stderr : stdout);
        return argc >= 2 && strcmp(argv[1], "--help") == 0 ? 0 : EXIT_USAGE;
    }
    if (argc >= 3 && strcmp(argv[1], "allreduce") == 0 && strcmp(argv[2], "--help") == 0) {
        fputs(allreduce_usage, stdout);
        return 0;
    }
    if (ddp_mpi_init(&argc, &argv, NULL) != DDP_OK) {
        fprintf(stderr, "ddp-bench: %s\n", ddp_error_message());
        return 1;
    }
    ddp_comm *ctrl = NULL;
    if (ddp_comm_create(DDP_COMM_MPI, NULL, &ctrl) != DDP_OK) {
        fprintf(stderr, "ddp-bench: %s\n", ddp_error_message());
        ddp_mpi_finalize();
        return 1;
    }
    ddp_log_init(ddp_comm_rank(ctrl), ddp_comm_size(ctrl), DDP_LOG_INFO);
    int code;
    if (strcmp(argv[1], "allreduce") == 0)
        code = main_allreduce(ctrl, argc - 2, argv + 2);
    else
        code = main_train(ctrl, argc - 1, argv + 1); /* argv[0] becomes "train" */
    ddp_comm_free(ctrl);
    ddp_mpi_finalize();
    return code;
}
