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
    /* May be NULL. A layer whose parameters are used in turn (a transformer block's four
     * linear maps, each cut into row chunks of about `limit` elements when limit is not
     * 0): returns its number of parts, at least 1, and writes the interior cuts between
     * them (flat offsets of the parameters, ascending; at most max). Each part is a unit
     * of its own (ddp_model_num_units), and the layer brackets every use of a part's
     * parameters with ddp_layer_part: its forward uses parts 0, 1, ... in turn, its
     * backward the reverse, each use one bracket. */
    int (*parts)(ddp_layer *l, ddp_model *m, size_t limit, size_t *cuts, int max);
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
    /* With recomputation (ddp_model_spec.recompute): the output ends a recompute segment
     * and is kept from forward to backward. The layers after one segment's end up to the
     * next form a segment; the other outputs and the saved tensors of a segment live in a
     * workspace that every segment reuses, and backward runs the segment's forward again
     * just before its backward. The kinds set it on the natural units' last layers; the
     * model's last layer (the logits) always ends one. (A training checkpoint, the file,
     * is another thing: src/train/checkpoint*.c.) */
    int segment_end;
    /* The layer communicates in forward and backward (synchronized batch norm), through
     * the model's communicator (ddp_model_needs_comm). */
    int communicates;
    /* Set by ddp_model_add_layer: the parameters declared so far. A layer declares its
     * tensors before it is added and shares only earlier ones, so its forward reads
     * parameters in [0, param_end) alone. */
    size_t param_end;
    /* Set by the model: the layer's parts as units (0: not parted, the model brackets it
     * with the other layers of its unit), and the first one's unit. */
    int n_parts;
    int first_unit;
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
/* Says that tensor id is read only through ddp_backend_gemm (ddp_param_view's
 * products_only): the layers' linear maps, not embeddings, norms, biases or convolutions. */
void ddp_model_products_only(ddp_model *m, int id);
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
ddp_backend *ddp_model_backend(ddp_model *m);
/* Sets the positions per sample (1 by default; a sequence model's context), before the
 * arena is sized. */
void ddp_model_set_positions(ddp_model *m, size_t max_pos);
/* Adds to the forward FLOPs per sample (see ddp_model_flops_per_sample). */
void ddp_model_add_flops(ddp_model *m, double flops);
/* Adds a matrix product of `rows` rows per sample, N columns and reduction length K to
 * the forward FLOPs (2 rows N K per sample) and keeps the largest for
 * ddp_model_largest_product. */
void ddp_model_add_product(ddp_model *m, int rows, int N, int K);

/* ---- gradients (called by layers during backward) ------------------------------------ */

/* A parted layer's use of part k begins or ends (the unit hook's event); nothing where the
 * model does not run the layer in parts. */
ddp_status ddp_layer_part(ddp_model *m, ddp_layer *l, int k, ddp_unit_event ev);
/* Says that the layer reports tensor id's gradient in chunks of `rows` rows (from row 0 up:
 * the last chunk may be short), each with ddp_grad_report_part, then
 * ddp_grad_done_reported: each chunk's start is a place where a bucket may end. */
void ddp_model_chunk_rows(ddp_model *m, int id, size_t rows);

float ddp_grad_gemm_beta(ddp_model *m, int id);
ddp_status ddp_grad_prepare_add(ddp_model *m, int id);
ddp_status ddp_grad_done(ddp_model *m, int id);
ddp_status ddp_grad_report_part(ddp_model *m, int id, size_t begin, size_t count);
void ddp_grad_done_reported(ddp_model *m, int id);

/* ---- the kinds ------------------------------------------------------------------------ */

/* A kind's registry entry: ddp_model_type_<name> in its file, found by registry.c through
 * DDP_MODEL_KINDS. */
typedef struct {
    const char *summary; /* one line for --help */
    /* Its options, offsets into ddp_model_spec, with their defaults. */
    const ddp_opt *options;
    size_t n_options;
    ddp_data_kind data;
    size_t eval_batch; /* see ddp_model_kind_eval_batch */
    /* The options checked against each other (NULL: nothing to check). */
    ddp_status (*check)(const ddp_model_spec *spec);
    /* Positions per sample (NULL: 1). */
    size_t (*positions)(const ddp_model_spec *spec);
    /* Declares the layers and tensors of spec and writes its description (starting with
     * the kind's name) into describe (cap bytes). */
    ddp_status (*build)(ddp_model *m, const ddp_model_spec *spec, char *describe, size_t cap);
    /* Reads the rest of a description after "<name> " into spec (which holds the kind's
     * defaults); DDP_ERR_FORMAT when it is not one the kind writes. */
    ddp_status (*parse)(const char *rest, ddp_model_spec *spec);
} ddp_model_type;

/* The entry of `kind` (NULL for a value that is not a kind). */
const ddp_model_type *ddp_model_type_of(ddp_model_kind kind);

/* The dense head of the MLP and the CNN: [Linear -> act] x hidden -> Linear -> classes from
 * `in` features, appended after the model's layers so far, its tensors named fc0, fc1, ...;
 * appends "256-128-10 relu" style text to describe. */
ddp_status ddp_model_add_mlp_head(ddp_model *m, const ddp_model_spec *spec, size_t in,
                                  char *describe, size_t cap);
/* Reads "256-128-10 relu" (a head's description) into spec: input size, hidden sizes,
 * classes, activation. */
ddp_status ddp_model_parse_mlp_head(const char *text, ddp_model_spec *spec);
/* Reads "32,64" into a ddp_size_list of 1 to max_n sizes of 1 to max_v each, written only
 * when the whole list is good; the message names --name and shows `example`. */
ddp_status ddp_model_parse_list(const char *name, const char *arg, ddp_size_list *out, int max_n,
                                size_t max_v, const char *example);
/* A ddp_size_list as "256,128" ("none" when empty), as --hidden reads it. */
void ddp_model_format_sizes(const void *field, char *buf, size_t cap);
/* --hidden: sizes, or "none". */
ddp_status ddp_model_parse_hidden(const char *name, const char *arg, void *field);
/* The option entries of the dense head (--hidden, --act), for the kinds that have one;
 * hidden_def is the default of --hidden. */
#define DDP_MODEL_HEAD_OPTIONS(hidden_def)                                                         \
    {.name = "hidden",                                                                             \
     .kind = DDP_OPT_CUSTOM,                                                                       \
     DDP_OPT_FIELD(ddp_model_spec, hidden),                                                        \
     .arg = "LIST",                                                                                \
     .help = "hidden dense layer sizes, e.g. 256,128; 'none' for none",                            \
     .parse = ddp_model_parse_hidden,                                                              \
     .format = ddp_model_format_sizes,                                                             \
     .def = (hidden_def)},                                                                         \
    {                                                                                              \
        .name = "act", .kind = DDP_OPT_CHOICE, DDP_OPT_FIELD(ddp_model_spec, act),                 \
        .help = "activation of the hidden dense layers", .choices = ddp_act_names, .def = "relu"   \
    }

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

/* A linear map of a parted layer (ddp_layer_ops.parts): W's rows in chunks, each chunk a
 * part of the layer (the last one holding the bias too). */
typedef struct {
    int w, b;       /* (out, in), (out) */
    size_t in, out; /* W's shape */
    size_t rows;    /* rows per chunk (set by ddp_matmul_parts_plan) */
    int part;       /* the layer's part of the first chunk (set by the layer) */
} ddp_matmul_parts;
/* Cuts W into chunks of whole rows, at least `limit` elements each but the last (0: whole), tells
 * the model (ddp_model_chunk_rows), returns the number of chunks. */
int ddp_matmul_parts_plan(ddp_model *m, ddp_matmul_parts *mp, size_t limit);
/* Interior cuts of its chunks (mp->w's offset + k rows, k = 1..) into cuts[*n..] (up to
 * max), *n advanced. */
void ddp_matmul_parts_cuts(ddp_model *m, const ddp_matmul_parts *mp, size_t *cuts, int *n, int max);
/* y = x W^T + b chunk by chunk, each chunk's product inside its part's use (begun: the
 * caller has begun the first part's use, for what it reads before, such as a norm); every
 * part's use is ended. */
ddp_status ddp_matmul_parts_forward(ddp_model *m, ddp_layer *l, const ddp_matmul_parts *mp,
                                    const float *x, float *y, size_t rows, int begun);
/* The backward: the bias and weight gradients first (W is not read; each chunk reported
 * apart when there are several), then dx (rows, in) summed over the chunks in reverse,
 * each inside its part's use; the first part's use is left open with keep_first (the caller
 * ends it after what it reads too). dx may alias x: x is read only before dx is written. */
ddp_status ddp_matmul_parts_backward(ddp_model *m, ddp_layer *l, const ddp_matmul_parts *mp,
                                     const float *x, const float *dy, float *dx, size_t rows,
                                     int keep_first);

/* The linear layer's weight slicing (rows per ready report, 0: whole), for the model. */
int ddp_layer_is_linear(const ddp_layer *l);
void ddp_layer_linear_set_slices(ddp_layer *l, size_t rows);
size_t ddp_layer_linear_slice_rows(const ddp_layer *l);
int ddp_layer_linear_weight(const ddp_layer *l);
int ddp_layer_linear_bias(const ddp_layer *l);

#endif
