/* The cases of every option (option_cases.h). */
#include "option_cases.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/cli.h"

const opt_case train_cases[] = {
    {"data", "/data/mnist", "", NULL},
    {"hidden", "64,32", "64,,32", NULL},
    {"act", "gelu", "tanh", NULL},
    {"model", "gpt", "gpt2", "cnn"},
    {"channels", "16,32,64", "16,,32", NULL},
    {"kernel", "5", "0", NULL},
    {"sync-bn", NULL, "1", NULL},
    {"eval-tokens", "1024", "-1", NULL},
    {"text", "/data/corpus.txt", "", NULL},
    {"layers", "6", "0", NULL},
    {"dim", "384", "-8", NULL},
    {"heads", "6", "1e2", NULL},
    {"ctx", "256", "1", NULL},
    {"norm", "rmsnorm", "rms", NULL},
    {"decay-all", NULL, "1", NULL},
    {"recompute", NULL, "1", NULL},
    {"batch", "256", "0", NULL},
    {"accum", "4", "0", NULL},
    {"micro-batch", "16", "1.5", NULL},
    {"epochs", "3", "0x3", NULL},
    {"steps", "1000", "1e3", NULL},
    {"optim", "adamw", "adam", "sgd"},
    {"lr", "0.1", "nan", NULL},
    {"min-lr", "1e-5", "-1", NULL},
    {"schedule", "constant", "linear", NULL},
    {"warmup", "0", "-1", NULL},
    {"momentum", "0.5", "1", NULL},
    {"nesterov", NULL, "yes", NULL},
    {"beta1", "0.8", "1.5", NULL},
    {"beta2", "0.99", " 0.9", "0.95"},
    {"eps", "1e-6", "0", NULL},
    {"weight-decay", "0.01", "11", NULL},
    {"clip", "1.5", "inf", NULL},
    {"seed", "7", "-1", NULL},
    {"no-shuffle", NULL, "1", NULL},
    {"device", "cpu", "gpu", NULL},
    {"comm", "mpi", "gloo", NULL},
    {"precision", "bf16", "fp16", NULL},
    {"threads", "4", "0", NULL},
    {"bucket-mb", "2.5", "0", NULL},
    {"first-bucket-mb", "0.5", "1e6", NULL},
    {"grad-dtype", "bf16", "fp16", NULL},
    {"compress", "powersgd", "topk", NULL},
    {"compress-rank", "2", "0", NULL},
    {"compress-start", "100", "-1", NULL},
    {"no-overlap", NULL, "true", NULL},
    {"zero", "3", "4", "2"},
    {"gathers", "1", "4", "3"},
    {"keep-gathered", NULL, "1", NULL},
    {"progress", "thread", "fast", NULL},
    {"hierarchical", "off", "yes", NULL},
    {"on-nonfinite", "skip", "ignore", NULL},
    {"no-gns", NULL, "1", NULL},
    {"gns-ema", "0.9", "1", NULL},
    {"gns-every", "10", "0", NULL},
    {"batch-schedule", "adaptive", "dynamic", NULL},
    {"max-batch", "4096", "0", NULL},
    {"lr-scaling", "sqrt", "cubic", NULL},
    {"target-accuracy", "0.88", "1.5", NULL},
    {"log-every", "10", "0", NULL},
    {"eval-every", "100", "2147483648", NULL},
    {"check-sync", "25", "", NULL},
    {"metrics", "/tmp/m.jsonl", "", NULL},
    {"dump-params", "out.bin", "", NULL},
    {"memory-plan", "8", "0", NULL},
    {"target-loss", "1.5", "-1", NULL},
    {"quiet", NULL, "1", NULL},
    {"trace", "/tmp/trace", "", NULL},
    {"verbose", NULL, "2", NULL},
    {"checkpoint-dir", "ckpt", "", NULL},
    {"checkpoint-every", "10", "0", NULL},
    {"keep", "0", "1048577", NULL},
    {"resume", NULL, "1", NULL},
    {"export", "model.safetensors", "", NULL},
    {"timeout", "7.5", "-1", NULL},
    {"flight-ring", "1024", "-1", NULL},
    {"flight-dir", "/tmp/flight", "", NULL},
    {"check-collectives", NULL, "1", NULL},
    {"help", NULL, "1", NULL},
    {"version", NULL, "1", NULL},
};

const opt_case allreduce_cases[] = {
    {"comm", "nccl", "gloo", NULL},     {"collective", "allgather", "gather", NULL},
    {"min-bytes", "1K", "1.5", NULL},   {"max-bytes", "1M", "5G", NULL},
    {"iters", "3", "0", NULL},          {"warmup-iters", "0", "-1", NULL},
    {"gap-ms", "2.5", "-1", NULL},      {"shared", NULL, "1", NULL},
    {"reducer", NULL, "1", NULL},       {"tensor-mb", "0.25", "0", NULL},
    {"bucket-mb", "2", "x", NULL},      {"first-bucket-mb", "0.5", "-1", NULL},
    {"progress", "test", "fast", NULL}, {"json", "/tmp/ar.json", "", NULL},
    {"hierarchical", "on", "2", NULL},  {"timeout", "5", "nan", NULL},
    {"verbose", NULL, "1", NULL},       {"help", NULL, "1", NULL},
};

const opt_case bench_train_cases[] = {
    {"warmup-steps", "7", "-1", NULL},
    {"bench-steps", "30", "0", NULL},
    {"json", "/tmp/train.json", "", NULL},
    {"no-allreduce", NULL, "1", NULL},
};

const opt_case generate_cases[] = {
    {"checkpoint", "ckpt/ckpt-00000010.ddp", "", NULL},
    {"checkpoint-dir", "ckpt", "", NULL},
    {"safetensors", "model.safetensors", "", NULL},
    {"prompt", "And God said", "", NULL},
    {"tokens", "100", "-1", NULL},
    {"temperature", "0", "-0.5", NULL},
    {"top-k", "0", "k", NULL},
    {"seed", "7", "-7", NULL},
    {"device", "cpu", "tpu", NULL},
    {"precision", "bf16", "fp16", NULL},
    {"threads", "2", "0", NULL},
    {"verbose", NULL, "1", NULL},
    {"help", NULL, "1", NULL},
};

const size_t n_train_cases = sizeof train_cases / sizeof *train_cases;
const size_t n_allreduce_cases = sizeof allreduce_cases / sizeof *allreduce_cases;
const size_t n_bench_train_cases = sizeof bench_train_cases / sizeof *bench_train_cases;
const size_t n_generate_cases = sizeof generate_cases / sizeof *generate_cases;

const opt_case *find_case(const opt_case *cases, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(cases[i].name, name) == 0) return &cases[i];
    return NULL;
}

char *train_help(ddp_model_kind k) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return NULL;
    ddp_cli_usage(f, "ddp-train", k);
    fclose(f);
    return text;
}
