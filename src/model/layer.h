/*
 * Layers, private to src/model/. A layer maps its input activations to its output
 * activations and back; the model runs the list of layers in order, owns every buffer,
 * and keeps the books of gradients (first contribution, last contribution, ready).
 *
 * Sizes are given per position: a per-sample model has one position per sample, a
 * sequence model t of them (t <= the model's maximum); the model multiplies by the rows
 * of a batch (n * t). A layer that needs the shape of the batch reads it from the pass.
 *
 * Gradients of parameters go through four calls, so that tied tensors, accumulation
 * over micro-batches and the reducer's ready reports come out right whatever the layer:
 *   beta = ddp_grad_gemm_beta(m, id)  before a GEMM that produces the tensor's gradient:
 *                                     0 when this is the first contribution of a pass
 *                                     that overwrites (the buffer is never read), else 1;
 *   ddp_grad_prepare_add(m, id)       before an op that can only add: zeroes the gradient
 *                                     on the first contribution of such a pass;
 *   ddp_grad_done(m, id)              after the layer's contribution: once the last user
 *                                     of the tensor is done, it is reported ready;
 *   ddp_grad_report_part(m, id, ...)  a layer that reports its (untied) tensor in slices,
 *                                     followed by ddp_grad_done_reported(m, id).
 */
#ifndef DDP_MODEL_LAYER_H
#define DDP_MODEL_LAYER_H

#include "ddp/model.h"

typedef struct ddp_layer ddp_layer;

/* One pass over a batch. */
typedef struct {
    size_t n;  /* samples */
    size_t t;  /* positions per sample */
    int train; /* DDP_MODE_TRAIN */
    /* A training forward run again in backward (activation recomputation): the layer
     * must write the same outputs and saved tensors as the first time, and do nothing
     * else a second time: no running statistics updated, no communication. A layer that
     * draws random numbers (none does today) must draw the same ones, e.g. from a seed it
     * kept at the first forward rather than from a stream that has moved on. */
    int recompute;
    const ddp_batch *batch;
} ddp_pass;

typedef struct {
    const char *kind;
    /* y (rows, out_per_pos) from x (rows, in_per_pos); x is NULL for the first layer of a
     * token model (it reads p->batch->tokens). */
    ddp_status (*forward)(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x, float *y);
    /* From dy (rows, out_per_pos): parameter gradients (through the calls above) and,
     * when dx is not NULL, dx (rows, in_per_pos), written. x and y are the input and
     * output of the last forward. */
    ddp_status (*backward)(ddp_layer *l, ddp_model *m, const ddp_pass *p, const float *x,
                           const float *y, const float *dy, float *dx);
    /* Frees what the layer allocated itself (may be NULL). */
    void (*destroy)(ddp_layer *l);
} ddp_layer_ops;

/* Every layer struct starts with this header; kinds extend it. */
struct ddp_layer {
    const ddp_layer_ops *ops;
    char name[32];          /* trace label: "fc0", "h3", "lnf" */
    size_t in_per_pos;      /* floats of input per position (0: tokens) */
    size_t out_per_pos;     /* floats of output per position */
    size_t saved_per_pos;   /* floats kept from forward to backward, per position */
    size_t scratch_per_pos; /* floats used within one call only, per position */
    float *saved;           /* set by the model: saved_per_pos * max rows */
    float *scratch;         /* set by the model: shared by all layers */
    /* With recomputation (ddp_model_spec.recompute): the output is a checkpoint, kept from
     * forward to backward. The layers after one checkpoint up to the next form a block;
     * the other outputs and the saved tensors of a block live in a workspace that every
     * block reuses, and backward runs the block's forward again just before its backward.
     * The kinds set it on the natural units' last layers; the model's last layer (the
     * logits) is always one. */
    int checkpoint;
    /* Set by ddp_model_add_layer: the parameters declared so far. A layer declares its
     * tensors before it is added and shares only earlier ones, so its forward reads
     * parameters in [0, param_end) alone. */
    size_t param_end;
};

/* ---- building (called by the model kinds while constructing) ------------------------ */

typedef enum {
    DDP_INIT_ZERO = 0,
    DDP_INIT_ONE,
    DDP_INIT_NORMAL,    /* normal(0, std) */
    DDP_INIT_HE_NORMAL, /* normal(0, sqrt(2 / fan_in)), fan_in as ddp_init_fan_in */
} ddp_init_kind;

typedef struct {
    ddp_init_kind kind;
    float std; /* DDP_INIT_NORMAL */
} ddp_init;

/* The inputs that each output of a weight tensor sums over: all dimensions but the first
 * (in of a linear map (out, in); in * kh * kw of a convolution (out, in, kh, kw)). */
size_t ddp_init_fan_in(const ddp_param_view *v);

/* Appends a layer (allocated by the caller with calloc; the model frees it). */
ddp_status ddp_model_add_layer(ddp_model *m, ddp_layer *l);
/* Declares a parameter tensor of the model, laid out after the ones declared before;
 * shape has ndim (1..4) dimensions. Returns its id in *id. */
ddp_status ddp_model_add_param(ddp_model *m, const char *name, int ndim, const size_t *shape,
                               ddp_init init, int decay, int *id);
/* Declares a buffer: state of the model that is not trained (running statistics), kept
 * in a flat buffer of its own, saved in checkpoints and exports. Returns its id. */
ddp_status ddp_model_add_buffer(ddp_model *m, const char *name, int ndim, const size_t *shape,
                                ddp_init init, int *id);
float *ddp_model_buf(ddp_model *m, int id);
/* The communicator of layers that communicate (synchronized batch norm); NULL unless
 * ddp_model_set_comm gave one. */
ddp_comm *ddp_model_comm(ddp_model *m);
/* Declares one more layer that uses (and contributes gradient to) tensor id. */
void ddp_model_share_param(ddp_model *m, int id);
/* The tensor's values and gradient (device), valid once the model is built. */
float *ddp_model_w(ddp_model *m, int id);
float *ddp_model_dw(ddp_model *m, int id);
size_t ddp_model_param_offset(const ddp_model *m, int id);
size_t ddp_model_param_count(const ddp_model *m, int id);
ddp_backend *ddp_model_backend(ddp_model *m);
/* Adds to the forward FLOPs per sample (see ddp_model_flops_per_sample). */
void ddp_model_add_flops(ddp_model *m, double flops);

/* ---- gradients (called by layers during backward) ------------------------------------ */

float ddp_grad_gemm_beta(ddp_model *m, int id);
ddp_status ddp_grad_prepare_add(ddp_model *m, int id);
ddp_status ddp_grad_done(ddp_model *m, int id);
ddp_status ddp_grad_report_part(ddp_model *m, int id, size_t begin, size_t count);
void ddp_grad_done_reported(ddp_model *m, int id);

/* ---- the kinds ------------------------------------------------------------------------ */

ddp_status ddp_model_build_mlp(ddp_model *m, const ddp_model_spec *spec, char *describe,
                               size_t cap);
ddp_status ddp_model_build_gpt(ddp_model *m, const ddp_model_spec *spec, char *describe,
                               size_t cap);
ddp_status ddp_model_build_cnn(ddp_model *m, const ddp_model_spec *spec, char *describe,
                               size_t cap);
/* The MLP part of the MLP and the CNN: [Linear -> act] x hidden -> Linear -> classes from
 * `in` features, appended after the model's layers so far, its tensors named fc0, fc1, ...;
 * appends "256-128-10
 * relu" style text to describe. */
ddp_status ddp_model_add_mlp_head(ddp_model *m, const ddp_model_spec *spec, size_t in,
                                  char *describe, size_t cap);

/* Linear (y = x W^T + b, W (out, in)) and elementwise activation layers, for any kind.
 * Linear rows may be reported in slices (ddp_model_set_grad_slices). */
ddp_status ddp_layer_linear_create(ddp_model *m, const char *name, const char *param_prefix,
                                   size_t in, size_t out, ddp_init weight_init, ddp_layer **out_l);
ddp_status ddp_layer_activation_create(ddp_model *m, const char *name, ddp_act act, size_t dim,
                                       ddp_layer **out_l);
/* A linear map inside a layer: y (rows, out) = x (rows, in) W^T + b, and its backward
 * (bias gradient, weight gradient, then dx (rows, in) written when not NULL), with the
 * gradient books kept for tensors w (out, in) and b (out). */
ddp_status ddp_matmul_forward(ddp_model *m, const float *x, int w, int b, float *y, size_t rows,
                              size_t in, size_t out);
ddp_status ddp_matmul_backward(ddp_model *m, const float *x, const float *dy, int w, int b,
                               float *dx, size_t rows, size_t in, size_t out);

/* The linear layer's weight slicing (rows per ready report, 0: whole), for the model. */
int ddp_layer_is_linear(const ddp_layer *l);
void ddp_layer_linear_set_slices(ddp_layer *l, size_t rows);
size_t ddp_layer_linear_slice_rows(const ddp_layer *l);
int ddp_layer_linear_weight(const ddp_layer *l);
int ddp_layer_linear_bias(const ddp_layer *l);
size_t ddp_layer_linear_out(const ddp_layer *l);

#endif
