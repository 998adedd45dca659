/*
 * Activation recomputation (ddp_model_spec.recompute, --recompute), under mpirun with 2
 * ranks. For the GPT, the MLP (its first layer's gradient reported in slices) and the
 * CNN (batch norm), a step of two micro-batches (the first writes the gradients, the
 * second adds) gives, with and without recomputation, the same gradient bits, the same
 * logits and loss, the same ready reports in the same order, and the same running
 * statistics (updated once per training forward, not again when recomputed). With
 * synchronized batch norm, a rank that recomputes pairs its collectives with ranks that
 * do not (the recomputed forward does not communicate) and gets the bits of a run
 * without. The arena holds exactly the bytes of its layout, fewer with recomputation.
 *
 * No model here draws random numbers in forward (there is no dropout), so there is no
 * mask to reproduce.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/backend_ops.h"
#include "ddp/model.h"

enum { NB = 4 };

static ddp_backend *backend;
static ddp_comm *world_comm;
static int rank, world;

/* What a step leaves behind. */
typedef struct {
    float *grads, *logits, *bufs;
    size_t np, nlogits, nbufs;
    float stats[2];
    ready_log rep;
    size_t activation_bytes;
} outcome;

static void outcome_free(outcome *o) {
    free(o->grads);
    free(o->logits);
    free(o->bufs);
    memset(o, 0, sizeof *o);
}

static ddp_model_spec gpt_spec(void) {
    ddp_model_spec s;
    ddp_model_spec_defaults(&s, DDP_MODEL_GPT);
    s.layers = 3;
    s.dim = 8;
    s.heads = 2;
    s.ctx = 5;
    s.num_classes = 11;
    s.num_classes = 11;
    return s;
}

static ddp_model_spec mlp_spec(ddp_act act) {
    ddp_model_spec s;
    ddp_model_spec_defaults(&s, DDP_MODEL_MLP);
    s.input_dim = 12;
    s.hidden.n = 2;
    s.hidden.v[0] = 9;
    s.hidden.v[1] = 7;
    s.act = act;
    s.num_classes = 4;
    return s;
}

static ddp_model_spec cnn_spec(void) {
    ddp_model_spec s;
    ddp_model_spec_defaults(&s, DDP_MODEL_CNN);
    s.height = 6;
    s.width = 8;
    s.channels = 2;
    s.conv.n = 2;
    s.conv.v[0] = 3;
    s.conv.v[1] = 4;
    s.kernel = 3;
    s.hidden.n = 1;
    s.hidden.v[0] = 5;
    s.num_classes = 3;
    return s;
}

/* One step of two micro-batches of NB samples through a fresh model of spec (with
 * recompute as given), initialized from a seed shared by all ranks, on inputs drawn
 * from this rank's seed; comm for batch norm, or NULL. */
static void step(ddp_model_spec spec, int recompute, ddp_comm *comm, outcome *o) {
    memset(o, 0, sizeof *o);
    spec.recompute = recompute;
    ddp_model *m = NULL;
    OK(ddp_model_create(backend, &spec, NB, &m));
    OK(ddp_model_init_params(m, 1234));
    if (spec.kind == DDP_MODEL_MLP) ddp_model_set_grad_slices(m, 20); /* 2 rows a slice */
    ddp_model_set_comm(m, comm);
    size_t t = ddp_model_max_positions(m), rows = NB * t;
    int classes = ddp_model_num_classes(m);
    size_t dim = spec.kind == DDP_MODEL_MLP   ? spec.input_dim
                 : spec.kind == DDP_MODEL_CNN ? (size_t)(spec.height * spec.width * spec.channels)
                                              : 0;
    float *x = dim ? malloc(NB * dim * sizeof *x) : NULL;
    int32_t *tok = malloc(rows * sizeof *tok), *tgt = malloc(rows * sizeof *tgt);
    assert_non_null(tok);
    assert_non_null(tgt);
    ddp_rng rng;
    ddp_rng_seed(&rng, 99, (uint64_t)rank);
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < NB * dim; i++)
            x[i] = ddp_rng_normal(&rng);
        for (size_t i = 0; i < rows; i++) {
            tok[i] = (int32_t)(ddp_rng_uniform(&rng) * (float)classes) % classes;
            tgt[i] = (int32_t)(ddp_rng_uniform(&rng) * (float)classes) % classes;
        }
        ddp_batch batch = {.n = NB, .t = t, .x = x, .tokens = dim ? NULL : tok, .targets = tgt};
        OK(ddp_model_forward(m, &batch, DDP_MODE_TRAIN, 1.0f / (float)(2 * rows), o->stats));
        OK(ddp_model_backward(m, k == 0, ready_log_record, &o->rep));
    }
    o->np = ddp_model_num_params(m);
    o->grads = malloc(o->np * sizeof(float));
    memcpy(o->grads, ddp_model_grads(m), o->np * sizeof(float));
    o->nlogits = rows * (size_t)classes;
    o->logits = malloc(o->nlogits * sizeof(float));
    memcpy(o->logits, ddp_model_logits(m), o->nlogits * sizeof(float));
    o->nbufs = ddp_model_num_buffer_elems(m);
    if (o->nbufs) {
        o->bufs = malloc(o->nbufs * sizeof(float));
        memcpy(o->bufs, ddp_model_buffers(m), o->nbufs * sizeof(float));
    }
    o->activation_bytes = ddp_model_activation_bytes(m);
    free(x);
    free(tok);
    free(tgt);
    ddp_model_free(m);
}

/* Everything but the arena's size is the same bits. */
static void assert_same_step(const outcome *a, const outcome *b) {
    assert_int_equal(a->np, b->np);
    assert_memory_equal(a->grads, b->grads, a->np * sizeof(float));
    assert_memory_equal(a->logits, b->logits, a->nlogits * sizeof(float));
    assert_memory_equal(a->stats, b->stats, sizeof a->stats);
    assert_int_equal(a->nbufs, b->nbufs);
    if (a->nbufs) assert_memory_equal(a->bufs, b->bufs, a->nbufs * sizeof(float));
    /* Two passes, every tensor (or slice) reported once in each. */
    assert_true(a->rep.calls <= READY_LOG_MAX);
    assert_int_equal(a->rep.calls, b->rep.calls);
    assert_memory_equal(a->rep.offset, b->rep.offset, (size_t)a->rep.calls * sizeof(size_t));
    assert_memory_equal(a->rep.count, b->rep.count, (size_t)a->rep.calls * sizeof(size_t));
}

/* The gradients are not trivially equal: the step moved them off zero. */
static void assert_nonzero_grads(const outcome *o) {
    double sum = 0.0;
    for (size_t i = 0; i < o->np; i++)
        sum += fabs(o->grads[i]);
    assert_true(sum > 0.0);
}

static void same_step_with_and_without(ddp_model_spec spec) {
    outcome plain, rc;
    step(spec, 0, NULL, &plain);
    step(spec, 1, NULL, &rc);
    assert_nonzero_grads(&plain);
    assert_same_step(&plain, &rc);
    assert_true(rc.activation_bytes < plain.activation_bytes);
    outcome_free(&plain);
    outcome_free(&rc);
}

static void gpt_recompute_gives_the_same_gradients(void **state) {
    (void)state;
    same_step_with_and_without(gpt_spec());
}

static void mlp_recompute_gives_the_same_gradients_and_slices(void **state) {
    (void)state;
    same_step_with_and_without(mlp_spec(DDP_ACT_RELU));
    same_step_with_and_without(mlp_spec(DDP_ACT_GELU));
}

static void cnn_recompute_gives_the_same_gradients_and_running_statistics(void **state) {
    (void)state;
    ddp_model_spec spec = cnn_spec();
    outcome plain, rc;
    step(spec, 0, NULL, &plain);
    step(spec, 1, NULL, &rc);
    assert_nonzero_grads(&plain);
    /* The running statistics moved off their initial 0 and 1 (by the two training
     * forwards); with recomputation they are the same bits, so not moved again. */
    int moved = 0;
    for (size_t i = 0; i < plain.nbufs; i++)
        moved |= plain.bufs[i] != 0.0f && plain.bufs[i] != 1.0f;
    assert_true(moved);
    assert_same_step(&plain, &rc);
    outcome_free(&plain);
    outcome_free(&rc);
}

/* Synchronized batch norm: all-reduces in forward and backward over the ranks. Rank 0
 * recomputes, the others do not: if the recomputed forward communicated, rank 0's
 * collectives would no longer pair with theirs (another count: a failure or a hang). */
static void sync_bn_recompute_on_one_rank_pairs_with_the_others(void **state) {
    (void)state;
    ddp_model_spec spec = cnn_spec();
    outcome plain, mixed, all;
    step(spec, 0, world_comm, &plain);
    step(spec, rank == 0, world_comm, &mixed);
    step(spec, 1, world_comm, &all);
    assert_nonzero_grads(&plain);
    assert_same_step(&plain, &mixed);
    assert_same_step(&plain, &all);
    /* The statistics were those of the global batch: the running statistics agree. */
    float *r0 = malloc(plain.nbufs * sizeof(float));
    memcpy(r0, plain.bufs, plain.nbufs * sizeof(float));
    OK(ddp_comm_broadcast(world_comm, r0, plain.nbufs, DDP_F32, 0));
    assert_memory_equal(r0, plain.bufs, plain.nbufs * sizeof(float));
    free(r0);
    outcome_free(&plain);
    outcome_free(&mixed);
    outcome_free(&all);
}

/* The arena's size from its layout, per position of NB samples' rows, in floats: every
 * layer's output and saved floats (without recomputation), or the outputs that end
 * recompute segments and the largest segment's other outputs and saved floats (with), plus the
 * scratch, the backward's two buffers of the widest boundary and the gradient of the logits. */
static size_t arena(size_t rows, size_t outs, size_t saved, size_t scratch, size_t widest,
                    size_t classes) {
    return rows * (outs + saved + scratch + 2 * widest + classes) * sizeof(float);
}

static void activation_bytes_are_those_of_the_layout(void **state) {
    (void)state;
    outcome plain, rc;

    /* GPT, L3 C8 H2 T5 V11: outputs embedding C, blocks C each, ln_f C, logits V;
     * saved per block 15 C + 4 + H T, ln_f 2 (mean, rstd); every layer ends a recompute
     * segment, so with recomputation one block's saved floats remain. Scratch: attention's
     * work alone (the block's gradients live over its saved tensors). */
    ddp_model_spec g = gpt_spec();
    size_t C = 8, L = 3, T = 5, V = 11, H = 2, rows = NB * T;
    size_t blk = 15 * C + 4 + H * T;
    size_t scratch = DDP_ATTENTION_WORK(1, T, C, H) / T;
    step(g, 0, NULL, &plain);
    step(g, 1, NULL, &rc);
    assert_int_equal(plain.activation_bytes,
                     arena(rows, (L + 2) * C + V, L * blk + 2, scratch, V, V));
    assert_int_equal(rc.activation_bytes, arena(rows, (L + 2) * C + V, blk, scratch, V, V));
    outcome_free(&plain);
    outcome_free(&rc);

    /* MLP 12-9-7-4: outputs fc0 9, relu 9, fc1 7, relu 7, fc2 4; with recomputation the
     * activations' outputs and the logits are kept and one linear map's output (9) is
     * the workspace. No scratch; the widest boundary is the input. */
    step(mlp_spec(DDP_ACT_RELU), 0, NULL, &plain);
    step(mlp_spec(DDP_ACT_RELU), 1, NULL, &rc);
    assert_int_equal(plain.activation_bytes, arena(NB, 9 + 9 + 7 + 7 + 4, 0, 0, 12, 4));
    assert_int_equal(rc.activation_bytes, arena(NB, 9 + 7 + 4, 9, 0, 12, 4));
    outcome_free(&plain);
    outcome_free(&rc);

    /* CNN 6x8x2, conv 3,4, fc 8-5-3: stage 0 outputs conv/bn/relu 48 x 3 each and pool
     * 12 x 3 (saving as many indices), stage 1 12 x 4 each and pool 2 x 4 (8 indices),
     * flatten 8, fc0 5, relu 5, fc1 3. Kept with recomputation: the pools, the relu of
     * the head, the logits; the largest block is stage 0 (3 x 144 + 36 indices). */
    ddp_model_spec c = cnn_spec();
    ddp_conv_shape
        s0 = {.N = 1, .H = 6, .W = 8, .Cin = 2, .Cout = 3, .KH = 3, .KW = 3, .stride = 1, .pad = 1},
        s1 = {.N = 1, .H = 3, .W = 4, .Cin = 3, .Cout = 4, .KH = 3, .KW = 3, .stride = 1, .pad = 1};
    size_t cs = DDP_CONV_WORK(&s0) > DDP_CONV_WORK(&s1) ? DDP_CONV_WORK(&s0) : DDP_CONV_WORK(&s1);
    step(c, 0, NULL, &plain);
    step(c, 1, NULL, &rc);
    assert_int_equal(plain.activation_bytes,
                     arena(NB, 3 * 144 + 36 + 3 * 48 + 8 + 8 + 5 + 5 + 3, 36 + 8, cs, 144, 3));
    assert_int_equal(rc.activation_bytes, arena(NB, 36 + 8 + 5 + 3, 3 * 144 + 36, cs, 144, 3));
    outcome_free(&plain);
    outcome_free(&rc);
}

int main(int argc, char **argv) {
    mpi_test_init(&argc, &argv, &backend, &world_comm, &rank, &world);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gpt_recompute_gives_the_same_gradients),
        cmocka_unit_test(mlp_recompute_gives_the_same_gradients_and_slices),
        cmocka_unit_test(cnn_recompute_gives_the_same_gradients_and_running_statistics),
        cmocka_unit_test(sync_bn_recompute_on_one_rank_pairs_with_the_others),
        cmocka_unit_test(activation_bytes_are_those_of_the_layout),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return mpi_test_finish(failed, backend, world_comm);
}
