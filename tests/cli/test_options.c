/*
 * ddp-train's option parser and the configuration checks behind it. Good argument
 * lists set exactly the fields they name and leave the defaults elsewhere; every bad
 * one fails with DDP_ERR_INVALID_ARG and a message that names the option (every option
 * of every table is also walked in test_option_tables.c). Then the
 * batch arithmetic of ddp_train_config_resolve (global = micro x accum x world, with
 * suggestions when it does not divide) and the canonical text that ranks compare:
 * equal for equal configs, different when a setting that must agree differs, and blind
 * to output paths.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include <string.h>

#include "ddp/cli.h"

/* argv from a list of strings, with the program name in front. */
#define ARGV(...)       ((char *[]){"ddp-train", __VA_ARGS__, NULL})
#define ARGC(...)       ((int)(sizeof((char *[]){"ddp-train", __VA_ARGS__}) / sizeof(char *)))
#define PARSE(opt, ...) ddp_cli_parse(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), (opt))

/* ---- good argument lists -------------------------------------------------------------- */

static void test_no_options_gives_defaults(void **state) {
    ddp_cli_options o;
    char *argv[] = {"ddp-train", NULL};
    assert_int_equal(ddp_cli_parse(1, argv, &o), DDP_OK);
    ddp_train_config d;
    ddp_train_config_defaults(&d);
    /* Field by field for the ones people rely on, then everything via the canonical
     * text and the paths. */
    assert_int_equal(o.train.model.hidden.n, 2);
    assert_int_equal(o.train.model.hidden.v[0], 256);
    assert_int_equal(o.train.model.hidden.v[1], 128);
    assert_int_equal(o.train.model.act, DDP_ACT_RELU);
    assert_int_equal(o.train.global_batch, 128);
    assert_int_equal(o.train.accum, 0);
    assert_int_equal(o.train.micro_batch, 0);
    assert_int_equal(o.train.epochs, 20);
    assert_int_equal(o.train.optim.kind, DDP_OPTIM_SGD);
    assert_true(o.train.optim.momentum == 0.9f);
    assert_true(o.train.sched.base_lr == 0.05f);
    assert_int_equal(o.train.sched.kind, DDP_SCHED_COSINE);
    assert_int_equal(o.train.seed, 42);
    assert_int_equal(o.train.shuffle, 1);
    assert_int_equal(o.train.device, DDP_DEVICE_AUTO);
    assert_int_equal(o.train.comm, DDP_COMM_AUTO);
    assert_int_equal(o.train.math, DDP_MATH_FP32);
    assert_string_equal(o.train.metrics_path, "");
    assert_string_equal(o.dump_params, "");
    assert_int_equal(o.help, 0);
    assert_int_equal(o.version, 0);
    char a[4096], b[4096];
    ddp_train_config_canonical(&o.train, a, sizeof a);
    ddp_train_config_canonical(&d, b, sizeof b);
    assert_string_equal(a, b);
    assert_string_equal(o.train.data_dir, d.data_dir);
}

static void test_good_options_set_their_fields(void **state) {
    ddp_cli_options o;
    assert_int_equal(PARSE(&o, "--hidden", "512,256,128", "--act", "gelu", "--batch", "256",
                           "--accum", "4", "--optim", "adamw", "--lr", "1e-3", "--schedule",
                           "constant", "--device", "cpu", "--comm", "mpi", "--precision", "bf16",
                           "--metrics", "/tmp/run/metrics.jsonl", "--no-shuffle", "--epochs", "3",
                           "--steps", "1000", "--seed", "18446744073709551615", "--warmup", "0",
                           "--weight-decay", "0", "--clip", "1.5", "--quiet"),
                     DDP_OK);
    const ddp_train_config *c = &o.train;
    assert_int_equal(c->model.hidden.n, 3);
    assert_int_equal(c->model.hidden.v[0], 512);
    assert_int_equal(c->model.hidden.v[1], 256);
    assert_int_equal(c->model.hidden.v[2], 128);
    assert_int_equal(c->model.act, DDP_ACT_GELU);
    assert_int_equal(c->global_batch, 256);
    assert_int_equal(c->accum, 4);
    assert_int_equal(c->optim.kind, DDP_OPTIM_ADAMW);
    assert_true(c->sched.base_lr == 1e-3f);
    assert_int_equal(c->sched.kind, DDP_SCHED_CONSTANT);
    assert_int_equal(c->device, DDP_DEVICE_CPU);
    assert_int_equal(c->comm, DDP_COMM_MPI);
    assert_int_equal(c->math, DDP_MATH_BF16);
    assert_string_equal(c->metrics_path, "/tmp/run/metrics.jsonl");
    assert_int_equal(c->shuffle, 0);
    assert_int_equal(c->epochs, 3);
    assert_int_equal(c->max_steps, 1000);
    assert_true(c->seed == UINT64_MAX);
    assert_int_equal(c->sched.warmup_steps, 0);
    assert_true(c->optim.weight_decay == 0.0f);
    assert_true(c->clip_norm == 1.5f);
    assert_int_equal(c->quiet, 1);
    /* Untouched options keep their defaults. */
    assert_true(c->optim.beta2 == 0.999f);
    assert_int_equal(c->log_every, 50);
}

static void test_remaining_options_set_their_fields(void **state) {
    ddp_cli_options o;
    assert_int_equal(PARSE(&o, "--data", "/data/mnist", "--micro-batch", "16", "--min-lr", "1e-5",
                           "--momentum", "0.95", "--nesterov", "--beta1", "0.8", "--beta2", "0.99",
                           "--eps", "1e-6", "--threads", "4", "--log-every", "10", "--eval-every",
                           "100", "--check-sync", "25", "--dump-params", "out.bin", "--comm",
                           "nccl", "--precision", "tf32", "--device", "cuda", "--hidden", "none",
                           "--help", "--version"),
                     DDP_OK);
    const ddp_train_config *c = &o.train;
    assert_string_equal(c->data_dir, "/data/mnist");
    assert_int_equal(c->micro_batch, 16);
    assert_true(c->sched.min_lr == 1e-5f);
    assert_true(c->optim.momentum == 0.95f);
    assert_int_equal(c->optim.nesterov, 1);
    assert_true(c->optim.beta1 == 0.8f);
    assert_true(c->optim.beta2 == 0.99f);
    assert_true(c->optim.eps == 1e-6f);
    assert_int_equal(c->threads, 4);
    assert_int_equal(c->log_every, 10);
    assert_int_equal(c->eval_every, 100);
    assert_int_equal(c->check_sync, 25);
    assert_string_equal(o.dump_params, "out.bin");
    assert_int_equal(c->comm, DDP_COMM_NCCL);
    assert_int_equal(c->math, DDP_MATH_TF32);
    assert_int_equal(c->device, DDP_DEVICE_CUDA);
    assert_int_equal(c->model.hidden.n, 0);
    assert_int_equal(o.help, 1);
    assert_int_equal(o.version, 1);
}

static void test_communication_checkpoint_and_output_options_set_their_fields(void **state) {
    ddp_cli_options o;
    assert_int_equal(PARSE(&o, "--bucket-mb", "2.5", "--first-bucket-mb", "0.25", "--grad-dtype",
                           "bf16", "--no-overlap", "--progress", "test", "--on-nonfinite", "skip",
                           "--trace", "/tmp/run/trace", "--timeout", "7.5", "--checkpoint-dir",
                           "/tmp/ckpt", "--checkpoint-every", "100", "--keep", "0", "--resume",
                           "--export", "model.safetensors", "--verbose"),
                     DDP_OK);
    const ddp_train_config *c = &o.train;
    assert_int_equal(c->reducer.bucket_bytes, 5u << 19);       /* 2.5 MiB */
    assert_int_equal(c->reducer.first_bucket_bytes, 1u << 18); /* 0.25 MiB */
    assert_int_equal(c->reducer.grad_dtype, DDP_BF16);
    assert_int_equal(c->reducer.overlap, 0);
    assert_int_equal(c->reducer.progress, DDP_PROGRESS_TEST);
    assert_int_equal(c->on_nonfinite, DDP_NONFINITE_SKIP);
    assert_string_equal(c->trace_path, "/tmp/run/trace");
    assert_true(c->timeout_s == 7.5f);
    assert_string_equal(c->checkpoint_dir, "/tmp/ckpt");
    assert_int_equal(c->checkpoint_every, 100);
    assert_int_equal(c->keep, 0);
    assert_int_equal(c->resume, 1);
    assert_string_equal(o.export_path, "model.safetensors");
    assert_int_equal(o.verbose, 1);
    /* Defaults of the same fields when not given; a bucket is never below one float. */
    assert_int_equal(PARSE(&o, "--bucket-mb", "0.000001"), DDP_OK);
    assert_int_equal(o.train.reducer.bucket_bytes, sizeof(float));
    assert_int_equal(o.train.reducer.first_bucket_bytes, 1u << 20);
    assert_int_equal(o.train.reducer.grad_dtype, DDP_F32);
    assert_int_equal(o.train.reducer.overlap, 1);
    assert_int_equal(o.train.reducer.progress, DDP_PROGRESS_AUTO);
    assert_int_equal(o.train.on_nonfinite, DDP_NONFINITE_ABORT);
    assert_true(o.train.timeout_s == 300.0f);
    assert_int_equal(o.train.keep, 3);
    assert_int_equal(o.train.resume, 0);
    assert_int_equal(o.verbose, 0);
    /* --timeout 0 turns the watchdog off. */
    assert_int_equal(PARSE(&o, "--timeout", "0"), DDP_OK);
    assert_true(o.train.timeout_s == 0.0f);
}

static void test_equals_form_and_last_value_win(void **state) {
    ddp_cli_options o;
    assert_int_equal(PARSE(&o, "--batch=64", "--lr=0.5", "--batch", "96"), DDP_OK);
    assert_int_equal(o.train.global_batch, 96);
    assert_true(o.train.sched.base_lr == 0.5f);
}

static void test_sixteen_hidden_layers_are_allowed(void **state) {
    ddp_cli_options o;
    assert_int_equal(PARSE(&o, "--hidden", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16"), DDP_OK);
    assert_int_equal(o.train.model.hidden.n, DDP_MAX_HIDDEN);
    for (int i = 0; i < DDP_MAX_HIDDEN; i++)
        assert_int_equal(o.train.model.hidden.v[i], i + 1);
}

static void test_parser_can_run_again_after_an_error(void **state) {
    ddp_cli_options o;
    assert_int_equal(PARSE(&o, "--batch", "0"), DDP_ERR_INVALID_ARG);
    assert_int_equal(PARSE(&o, "--batch", "32", "--act", "gelu"), DDP_OK);
    assert_int_equal(o.train.global_batch, 32);
    assert_int_equal(o.train.model.act, DDP_ACT_GELU);
    /* A fresh parse starts from the defaults, not from the last result. */
    assert_int_equal(PARSE(&o, "--epochs", "2"), DDP_OK);
    assert_int_equal(o.train.global_batch, 128);
    assert_int_equal(o.train.model.act, DDP_ACT_RELU);
}

/* ---- bad argument lists --------------------------------------------------------------- */

static void expect_bad(int argc, char **argv, const char *named) {
    ddp_cli_options o;
    ddp_status s = ddp_cli_parse(argc, argv, &o);
    if (s != DDP_ERR_INVALID_ARG)
        fail_msg("'%s %s' gave status %d, expected invalid argument", argv[1],
                 argc > 2 ? argv[2] : "", (int)s);
    if (!strstr(ddp_error_message(), named))
        fail_msg("message '%s' does not name '%s'", ddp_error_message(), named);
}
#define EXPECT_BAD(named, ...) expect_bad(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), (named))

static void test_unknown_option_is_named(void **state) {
    EXPECT_BAD("--bogus", "--bogus");
    EXPECT_BAD("--bogus", "--batch", "64", "--bogus", "3");
}

static void test_missing_value_is_named(void **state) {
    EXPECT_BAD("--batch", "--batch");
    EXPECT_BAD("--lr", "--epochs", "3", "--lr");
    assert_msg_has("needs a value");
}

static void test_batch_must_be_a_positive_whole_number(void **state) {
    EXPECT_BAD("--batch", "--batch", "0");
    EXPECT_BAD("--batch", "--batch", "-5");
    EXPECT_BAD("--batch", "--batch", "12x");
    EXPECT_BAD("--batch", "--batch", "");
    EXPECT_BAD("--batch", "--batch", "+12");
    EXPECT_BAD("--batch", "--batch", "1.5");
    EXPECT_BAD("--batch", "--batch", "99999999999999999999999");
    assert_msg_has("whole number");
}

static void test_numbers_are_parsed_strictly(void **state) {
    EXPECT_BAD("--lr", "--lr", "abc");
    EXPECT_BAD("--lr", "--lr", "nan");
    EXPECT_BAD("--lr", "--lr", "inf");
    EXPECT_BAD("--lr", "--lr", "0");
    EXPECT_BAD("--lr", "--lr", "1e-3x");
    EXPECT_BAD("--lr", "--lr", "-0.1");
    EXPECT_BAD("--momentum", "--momentum", "1");
    EXPECT_BAD("--weight-decay", "--weight-decay", "-1");
    EXPECT_BAD("--accum", "--accum", "0");
    EXPECT_BAD("--epochs", "--epochs", "0");
    EXPECT_BAD("--seed", "--seed", "-1");
    EXPECT_BAD("--threads", "--threads", "two");
}

static void test_communication_checkpoint_and_output_values_are_checked(void **state) {
    EXPECT_BAD("--bucket-mb", "--bucket-mb", "0");
    EXPECT_BAD("--bucket-mb", "--bucket-mb", "25MB");
    EXPECT_BAD("--first-bucket-mb", "--first-bucket-mb", "100001");
    EXPECT_BAD("--grad-dtype", "--grad-dtype", "fp16");
    EXPECT_BAD("--progress", "--progress", "poll");
    EXPECT_BAD("--on-nonfinite", "--on-nonfinite", "ignore");
    EXPECT_BAD("--timeout", "--timeout", "-5");
    EXPECT_BAD("--timeout", "--timeout", "1000001");
    EXPECT_BAD("--checkpoint-every", "--checkpoint-every", "0");
    EXPECT_BAD("--keep", "--keep", "-1");
    EXPECT_BAD("--trace", "--trace", "");
    EXPECT_BAD("--export", "--export", "");
    EXPECT_BAD("--checkpoint-dir", "--checkpoint-dir", "");
    /* Flags take no value. */
    EXPECT_BAD("--no-overlap", "--no-overlap=1");
    EXPECT_BAD("--resume", "--resume=yes");
    assert_msg_has("takes no value");
    EXPECT_BAD("--verbose", "--verbose=");
}

static void test_hidden_sizes_are_checked(void **state) {
    EXPECT_BAD("--hidden", "--hidden", "256,,128");
    EXPECT_BAD("--hidden", "--hidden", "0");
    EXPECT_BAD("--hidden", "--hidden", "256,0");
    EXPECT_BAD("--hidden", "--hidden", "256,");
    EXPECT_BAD("--hidden", "--hidden", ",256");
    EXPECT_BAD("--hidden", "--hidden", "256;128");
    EXPECT_BAD("--hidden", "--hidden", "-256");
    EXPECT_BAD("--hidden", "--hidden", "");
    EXPECT_BAD("--hidden", "--hidden", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17");
    assert_msg_has("at most 16");
}

static void test_choices_are_checked(void **state) {
    EXPECT_BAD("--act", "--act", "tanh");
    assert_msg_has("relu");
    EXPECT_BAD("--optim", "--optim", "adam");
    EXPECT_BAD("--schedule", "--schedule", "linear");
    EXPECT_BAD("--device", "--device", "gpu");
    EXPECT_BAD("--comm", "--comm", "gloo");
    EXPECT_BAD("--precision", "--precision", "fp16");
    EXPECT_BAD("--act", "--act", "RELU");
}

static void test_paths_must_not_be_empty(void **state) {
    EXPECT_BAD("--metrics", "--metrics", "");
    EXPECT_BAD("--data", "--data", "");
}

static void test_stray_positional_argument_is_named(void **state) {
    EXPECT_BAD("'train.txt'", "--batch", "64", "train.txt");
    EXPECT_BAD("'64'", "--batch", "32", "64");
}

/* ---- ddp_train_config_resolve --------------------------------------------------------- */

static ddp_train_config config(size_t batch, int accum, size_t micro) {
    ddp_train_config c;
    ddp_train_config_defaults(&c);
    c.global_batch = batch;
    c.accum = accum;
    c.micro_batch = micro;
    return c;
}

static void test_resolve_derives_micro_batch(void **state) {
    ddp_train_config c = config(128, 0, 0);
    assert_int_equal(ddp_train_config_resolve(&c, 4), DDP_OK);
    assert_int_equal(c.accum, 1);
    assert_int_equal(c.micro_batch, 32);

    c = config(128, 2, 0);
    assert_int_equal(ddp_train_config_resolve(&c, 4), DDP_OK);
    assert_int_equal(c.micro_batch, 16); /* 128 / (4 x 2) */

    c = config(96, 4, 0);
    assert_int_equal(ddp_train_config_resolve(&c, 3), DDP_OK);
    assert_int_equal(c.micro_batch, 8);
}

static void test_resolve_derives_accum_from_micro_batch(void **state) {
    ddp_train_config c = config(128, 0, 16);
    assert_int_equal(ddp_train_config_resolve(&c, 2), DDP_OK);
    assert_int_equal(c.accum, 4); /* 64 per rank / 16 */
    assert_int_equal(c.micro_batch, 16);

    /* Both given and consistent: 16 x 4 x 2 = 128. */
    c = config(128, 4, 16);
    assert_int_equal(ddp_train_config_resolve(&c, 2), DDP_OK);
    assert_int_equal(c.accum, 4);
    assert_int_equal(c.micro_batch, 16);
}

static void test_resolve_rejects_batch_not_divisible_by_world(void **state) {
    ddp_train_config c = config(128, 0, 0);
    assert_int_equal(ddp_train_config_resolve(&c, 3), DDP_ERR_INVALID_ARG);
    assert_msg_has("multiple of 3");
    assert_msg_has("126 or 129");
    /* A batch smaller than the world suggests the world itself. */
    c = config(2, 0, 0);
    assert_int_equal(ddp_train_config_resolve(&c, 4), DDP_ERR_INVALID_ARG);
    assert_msg_has("multiple of 4");
}

static void test_resolve_rejects_accum_that_does_not_divide(void **state) {
    ddp_train_config c = config(128, 3, 0);
    assert_int_equal(ddp_train_config_resolve(&c, 2), DDP_ERR_INVALID_ARG);
    /* 64 per rank: the divisors next to 3 are 2 and 4. */
    assert_msg_has("--accum 2 or 4");
    /* More micro-batches than samples per rank. */
    c = config(8, 4, 0);
    assert_int_equal(ddp_train_config_resolve(&c, 4), DDP_ERR_INVALID_ARG);
    assert_msg_has("--accum");
}

static void test_resolve_rejects_micro_batch_that_does_not_divide(void **state) {
    ddp_train_config c = config(128, 0, 24);
    assert_int_equal(ddp_train_config_resolve(&c, 2), DDP_ERR_INVALID_ARG);
    assert_msg_has("--micro-batch 24");
    assert_msg_has("16 or 32");
    /* Far above the batch (found by the option fuzzer: the old search counted down from
     * the micro-batch one by one, 12 s for this one): the whole share is the suggestion. */
    c = config(128, 0, 722609649);
    assert_int_equal(ddp_train_config_resolve(&c, 1), DDP_ERR_INVALID_ARG);
    assert_msg_has("use a micro-batch of 128");
    /* A prime share: only 1 and itself. */
    c = config(2 * 1000003, 0, 1000);
    assert_int_equal(ddp_train_config_resolve(&c, 2), DDP_ERR_INVALID_ARG);
    assert_msg_has("1 or 1000003");
}

static void test_resolve_rejects_inconsistent_accum_and_micro_batch(void **state) {
    ddp_train_config c = config(128, 2, 16);
    assert_int_equal(ddp_train_config_resolve(&c, 2), DDP_ERR_INVALID_ARG);
    assert_msg_has("disagree");
    assert_msg_has("--accum 4");
}

static void test_resolve_rejects_other_bad_settings(void **state) {
    ddp_train_config c = config(0, 0, 0);
    assert_int_equal(ddp_train_config_resolve(&c, 1), DDP_ERR_INVALID_ARG);
    c = config(128, 0, 0);
    assert_int_equal(ddp_train_config_resolve(&c, 0), DDP_ERR_INVALID_ARG);
    c = config(128, 0, 0);
    c.sched.min_lr = 1.0f; /* above --lr 0.05 */
    assert_int_equal(ddp_train_config_resolve(&c, 1), DDP_ERR_INVALID_ARG);
    assert_msg_has("--min-lr");
    c = config(128, 0, 0);
    c.epochs = 0;
    c.max_steps = 0;
    assert_int_equal(ddp_train_config_resolve(&c, 1), DDP_ERR_INVALID_ARG);
    assert_msg_has("--steps");
}

/* ---- ddp_train_config_canonical ------------------------------------------------------- */

static void canonical_of(const char *const *args, int n, char *buf, size_t cap) {
    char *argv[16] = {"ddp-train"};
    for (int i = 0; i < n; i++)
        argv[i + 1] = (char *)args[i];
    ddp_cli_options o;
    assert_int_equal(ddp_cli_parse(n + 1, argv, &o), DDP_OK);
    assert_int_equal(ddp_train_config_resolve(&o.train, 2), DDP_OK);
    size_t len = ddp_train_config_canonical(&o.train, buf, cap);
    assert_int_equal(len, strlen(buf));
}

static void test_canonical_text_is_equal_for_equal_configs(void **state) {
    const char *a[] = {"--lr", "0.01", "--hidden", "64,32"};
    const char *b[] = {"--hidden", "64,32", "--lr", "0.01"};
    char ta[4096], tb[4096];
    canonical_of(a, 4, ta, sizeof ta);
    canonical_of(b, 4, tb, sizeof tb);
    assert_string_equal(ta, tb);
}

static void test_canonical_text_changes_with_settings_that_must_agree(void **state) {
    const char *base[] = {"--lr", "0.01", "--hidden", "64,32"};
    const char *lr[] = {"--lr", "0.0100001", "--hidden", "64,32"};
    const char *hidden[] = {"--lr", "0.01", "--hidden", "64,33"};
    const char *deeper[] = {"--lr", "0.01", "--hidden", "64,32,1"};
    const char *seed[] = {"--lr", "0.01", "--hidden", "64,32", "--seed", "7"};
    const char *accum[] = {"--lr", "0.01", "--hidden", "64,32", "--accum", "2"};
    char t0[4096], t[4096];
    canonical_of(base, 4, t0, sizeof t0);
    canonical_of(lr, 4, t, sizeof t);
    assert_string_not_equal(t0, t);
    canonical_of(hidden, 4, t, sizeof t);
    assert_string_not_equal(t0, t);
    canonical_of(deeper, 4, t, sizeof t);
    assert_string_not_equal(t0, t);
    canonical_of(seed, 6, t, sizeof t);
    assert_string_not_equal(t0, t);
    canonical_of(accum, 6, t, sizeof t);
    assert_string_not_equal(t0, t);
}

static void test_model_gpt_brings_its_defaults_and_options_still_win(void **state) {
    ddp_cli_options o;
    /* Given after another option, --model still decides where the others start from. */
    assert_int_equal(PARSE(&o, "--lr", "1e-3", "--model", "gpt", "--layers", "6", "--dim", "384",
                           "--heads", "6", "--ctx", "64", "--text", "/tmp/t.txt", "--decay-all"),
                     DDP_OK);
    const ddp_train_config *c = &o.train;
    assert_int_equal(c->model.kind, DDP_MODEL_GPT);
    assert_int_equal(c->model.layers, 6);
    assert_int_equal(c->model.dim, 384);
    assert_int_equal(c->model.heads, 6);
    assert_int_equal(c->model.ctx, 64);
    assert_int_equal(c->model.num_classes, 0); /* the vocabulary is the text's (its source) */
    assert_int_equal(c->model.decay_all, 1);
    assert_string_equal(c->text_path, "/tmp/t.txt");
    assert_true(c->sched.base_lr == 1e-3f);
    /* The GPT's defaults where nothing was given. */
    ddp_train_config d;
    ddp_train_config_defaults_for(&d, DDP_MODEL_GPT);
    assert_int_equal(c->optim.kind, DDP_OPTIM_ADAMW);
    assert_int_equal(c->global_batch, d.global_batch);
    assert_int_equal(c->max_steps, d.max_steps);
    assert_true(c->clip_norm == d.clip_norm && d.clip_norm > 0.0f);
    assert_true(c->optim.weight_decay == d.optim.weight_decay);
    /* The canonical text covers every shape option: a rank with another width differs. */
    ddp_cli_options o2;
    assert_int_equal(PARSE(&o2, "--model=gpt", "--lr", "1e-3", "--layers", "6", "--dim", "384",
                           "--heads", "6", "--ctx", "64", "--decay-all"),
                     DDP_OK);
    char a[4096], b[4096];
    ddp_train_config_canonical(&o.train, a, sizeof a);
    ddp_train_config_canonical(&o2.train, b, sizeof b);
    assert_string_equal(a, b); /* the text path is per rank */
    const char *shape[][2] = {
        {"--layers", "5"}, {"--dim", "192"}, {"--heads", "3"}, {"--ctx", "32"}};
    for (int i = 0; i < 4; i++) {
        char *argv[] = {"ddp-train",         "--model",           "gpt",
                        (char *)shape[i][0], (char *)shape[i][1], NULL};
        assert_int_equal(ddp_cli_parse(5, argv, &o2), DDP_OK);
        ddp_train_config_canonical(&o2.train, b, sizeof b);
        ddp_train_config_defaults_for(&d, DDP_MODEL_GPT);
        ddp_train_config_canonical(&d, a, sizeof a);
        if (strcmp(a, b) == 0) fail_msg("%s does not change the canonical text", shape[i][0]);
    }
    /* And the MLP's defaults stay the MLP's. */
    assert_int_equal(PARSE(&o, "--model", "mlp"), DDP_OK);
    assert_int_equal(o.train.optim.kind, DDP_OPTIM_SGD);
}

static void test_canonical_text_ignores_output_paths_and_per_rank_settings(void **state) {
    const char *base[] = {"--lr", "0.01"};
    const char *other[] = {"--lr",          "0.01",   "--metrics", "/tmp/elsewhere.jsonl",
                           "--dump-params", "p.bin",  "--threads", "3",
                           "--quiet",       "--data", "/mnt/copy", "--recompute"};
    char t0[4096], t[4096];
    canonical_of(base, 2, t0, sizeof t0);
    /* --recompute too: the same gradient bits and the same collectives. */
    canonical_of(other, 12, t, sizeof t);
    assert_string_equal(t0, t);
    ddp_cli_options o;
    assert_int_equal(PARSE(&o, "--recompute"), DDP_OK);
    assert_int_equal(o.train.model.recompute, 1);
}

static void test_canonical_text_truncates_safely(void **state) {
    ddp_train_config c;
    ddp_train_config_defaults(&c);
    char full[4096], small[16];
    size_t n = ddp_train_config_canonical(&c, full, sizeof full);
    assert_true(n > sizeof small);
    memset(small, 'x', sizeof small);
    size_t m = ddp_train_config_canonical(&c, small, sizeof small);
    assert_int_equal(m, sizeof small - 1);
    assert_int_equal(small[sizeof small - 1], '\0');
    assert_memory_equal(small, full, sizeof small - 1);
    /* No room at all: nothing is written, and the length says so. */
    memset(small, 'x', sizeof small);
    assert_int_equal(ddp_train_config_canonical(&c, small, 0), 0);
    assert_int_equal(small[0], 'x');
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_options_gives_defaults),
        cmocka_unit_test(test_model_gpt_brings_its_defaults_and_options_still_win),
        cmocka_unit_test(test_good_options_set_their_fields),
        cmocka_unit_test(test_remaining_options_set_their_fields),
        cmocka_unit_test(test_communication_checkpoint_and_output_options_set_their_fields),
        cmocka_unit_test(test_equals_form_and_last_value_win),
        cmocka_unit_test(test_sixteen_hidden_layers_are_allowed),
        cmocka_unit_test(test_parser_can_run_again_after_an_error),
        cmocka_unit_test(test_unknown_option_is_named),
        cmocka_unit_test(test_missing_value_is_named),
        cmocka_unit_test(test_batch_must_be_a_positive_whole_number),
        cmocka_unit_test(test_numbers_are_parsed_strictly),
        cmocka_unit_test(test_communication_checkpoint_and_output_values_are_checked),
        cmocka_unit_test(test_hidden_sizes_are_checked),
        cmocka_unit_test(test_choices_are_checked),
        cmocka_unit_test(test_paths_must_not_be_empty),
        cmocka_unit_test(test_stray_positional_argument_is_named),
        cmocka_unit_test(test_resolve_derives_micro_batch),
        cmocka_unit_test(test_resolve_derives_accum_from_micro_batch),
        cmocka_unit_test(test_resolve_rejects_batch_not_divisible_by_world),
        cmocka_unit_test(test_resolve_rejects_accum_that_does_not_divide),
        cmocka_unit_test(test_resolve_rejects_micro_batch_that_does_not_divide),
        cmocka_unit_test(test_resolve_rejects_inconsistent_accum_and_micro_batch),
        cmocka_unit_test(test_resolve_rejects_other_bad_settings),
        cmocka_unit_test(test_canonical_text_is_equal_for_equal_configs),
        cmocka_unit_test(test_canonical_text_changes_with_settings_that_must_agree),
        cmocka_unit_test(test_canonical_text_ignores_output_paths_and_per_rank_settings),
        cmocka_unit_test(test_canonical_text_truncates_safely),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
