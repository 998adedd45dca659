/*
 * model: a network as a list of layers over one flat parameter buffer and one flat
 * gradient buffer, with its activations in one arena sized at creation and its loss.
 *
 * Layers declare their tensors (a name, up to four dimensions, an initialization, and
 * whether weight decay applies), and the model lays them out in forward order, so the
 * gradients of the last layers (final first in backward) sit at the end of the buffer and
 * a reducer can hand them to the all-reduce while earlier layers still compute. A tensor
 * may be used by several layers (the GPT's token embedding is also its output
 * projection): its gradient collects every contribution and is reported final once,
 * after the last. State that is not trained (running statistics) lives in a second flat
 * buffer of "buffers", saved in checkpoints and exports but never all-reduced.
 *
 * Everything below the model (trainer, reducer, optimizer, checkpoints) sees only the
 * flat buffers, the named views, the loss statistics and the ready callbacks. Which
 * network it is, is the business of the model kind's registry entry (src/model/
 * registry.c, the one place that maps a kind to its entry): its name, its options and
 * their defaults, how it is built, described and read back, and the data it trains on.
 * Callers ask the entry (ddp_model_kind_*), never branch on the kind.
 *
 * The kinds are listed in DDP_MODEL_KINDS; each has one file with its layers and its
 * entry: mlp.c (features (N, D) -> [Linear -> act] x hidden -> Linear -> classes), gpt.c
 * (tokens (B, T) -> token + position embedding -> pre-norm transformer blocks with causal
 * self-attention and a GELU MLP -> norm -> logits through the tied embedding; one
 * prediction per position) and cnn.c (images (N, H, W, C), channels last -> [conv ->
 * batch norm -> ReLU -> 2x2 max pool] x stages -> flatten (in PyTorch's channel-major
 * order) -> the MLP's layers).
 */
#ifndef DDP_MODEL_H
#define DDP_MODEL_H

#include "ddp/backend.h"
#include "ddp/comm.h"
#include "ddp/core.h"
#include "ddp/opt.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DDP_MAX_HIDDEN 16
#define DDP_MAX_DIMS   4

#define DDP_MAX_CONV 8

/* The model kinds, X(NAME, name) each: the constant DDP_MODEL_<NAME>, the name given to
 * --model and written in descriptions, and the registry entry ddp_model_type_<name>
 * defined in the kind's file. Adding a kind is its line here and its file. */
#define DDP_MODEL_KINDS(X)                X(MLP, mlp) X(GPT, gpt) X(CNN, cnn)
#define DDP_MODEL_KIND_VALUE_(NAME, name) DDP_MODEL_##NAME,
typedef enum { DDP_MODEL_KINDS(DDP_MODEL_KIND_VALUE_) DDP_MODEL_KIND_COUNT } ddp_model_kind;
extern const char *const ddp_model_kind_names[]; /* "mlp", "gpt", "cnn", NULL */

/* What a kind trains on: labelled samples (feature vectors or images, with their class) or
 * a text (every byte a token). The trainer has one data source per value. */
#define DDP_DATA_KINDS(X) X(DDP_DATA_SAMPLES, "labelled samples") X(DDP_DATA_TEXT, "text")
typedef enum { DDP_DATA_KINDS(DDP_X_VALUE) DDP_DATA_KIND_COUNT } ddp_data_kind;

/* The normalization of a transformer (the GPT's --norm): LayerNorm (mean and variance
 * removed, weight and bias) or RMSNorm (divided by the root mean square, weight only). */
#define DDP_NORMS(X) X(DDP_NORM_LAYERNORM, "layernorm") X(DDP_NORM_RMSNORM, "rmsnorm")
typedef enum { DDP_NORMS(DDP_X_VALUE) DDP_NORM_COUNT } ddp_norm;
extern const char *const ddp_norm_names[];

/* Up to DDP_MAX_HIDDEN sizes ("256,128"). */
typedef struct {
    int n;
    size_t v[DDP_MAX_HIDDEN];
} ddp_size_list;

/* The shape of a model. The data decides the first fields (the source fills them in);
 * the options of every kind follow, and a kind reads those of its option table (its
 * registry entry), leaving the others alone. */
typedef struct {
    ddp_model_kind kind;
    /* from the data: features per sample; classes (a text's vocabulary); images' geometry */
    size_t input_dim;
    int num_classes;
    int height, width, channels;
    /* mlp, and the cnn's dense head: hidden layer sizes and activation */
    ddp_size_list hidden;
    ddp_act act;
    /* gpt: blocks, width, attention heads, context length (positions), normalization */
    int layers, dim, heads, ctx;
    ddp_norm norm;
    /* cnn: convolution stages (each conv kernel x kernel, padding kernel / 2, then batch
     * norm, ReLU and 2 x 2 max pooling) of conv.v[i] channels, then the dense head;
     * sync_bn: batch-norm statistics over all ranks (the model's communicator) */
    ddp_size_list conv;
    int kernel;
    int sync_bn;
    /* weight decay on every tensor; by default only on matrices and the token embedding,
     * not on biases, normalization parameters and position embeddings */
    int decay_all;
    /* activation recomputation (--recompute): keep only each block's input from forward to
     * backward (a transformer block; a dense layer with its activation; a conv stage) and
     * run the block's forward again in backward, into one block's worth of memory that
     * every block reuses. The gradients are the same bits; a training step costs about
     * one more forward. Not part of ddp_model_describe: it changes no result. */
    int recompute;
} ddp_model_spec;

/* ---- the registry: what each kind is -------------------------------------------------- */

/* The kind's name ("mlp"), or "?" for a value that is not a kind. */
const char *ddp_model_kind_name(ddp_model_kind kind);
/* One line on what the kind is, for --help. */
const char *ddp_model_kind_summary(ddp_model_kind kind);
/* The kind's own options (offsets into ddp_model_spec, with their defaults); *n gets
 * their number. */
const ddp_opt *ddp_model_kind_options(ddp_model_kind kind, size_t *n);
/* What the kind trains on. */
ddp_data_kind ddp_model_kind_data(ddp_model_kind kind);
/* Samples per forward pass of an evaluation, for the memory of the activations (a conv
 * net's are hundreds of times larger per sample than an MLP's); 0: the micro-batch. */
size_t ddp_model_kind_eval_batch(ddp_model_kind kind);

/* Fills the defaults of `kind` from its option table (the sizes ddp-train uses when none
 * are given); the fields the data decides stay 0. */
void ddp_model_spec_defaults(ddp_model_spec *spec, ddp_model_kind kind);
/* Checks the kind's options against each other (before any data is read), with a message
 * naming the options. */
ddp_status ddp_model_spec_check(const ddp_model_spec *spec);
/* Positions per sample that the kind predicts: 1, or a language model's context. */
size_t ddp_model_spec_positions(const ddp_model_spec *spec);
/* Reads a description written by ddp_model_describe back into a spec (for tools that
 * load a checkpoint or export, such as ddp-generate). */
ddp_status ddp_model_spec_parse(const char *describe, ddp_model_spec *spec);

/* A named view of one tensor in a flat buffer. */
typedef struct {
    char name[64]; /* e.g. "fc0.weight", "transformer.h.0.attn.c_attn.weight" */
    size_t offset; /* in elements */
    size_t count;
    int ndim;
    size_t shape[DDP_MAX_DIMS]; /* weights of a linear map: (out, in) */
    int decay;                  /* weight decay applies (parameters only) */
    /* Read only as an operand of matrix products (ddp_backend_gemm), which under
     * --precision bf16 read the weights' bf16 copy: ZeRO-3 then gathers that copy alone. */
    int products_only;
} ddp_param_view;

/* One batch in device memory. Per-sample models take features x; token models take
 * tokens. targets holds one label per sample (t = 1) or per position; NULL computes no
 * loss. */
typedef struct {
    size_t n;               /* samples (sequences) */
    size_t t;               /* positions per sample: 1, or a sequence length <= ctx */
    const float *x;         /* (n, input_dim), or NULL */
    const int32_t *tokens;  /* (n, t), or NULL */
    const int32_t *targets; /* (n, t), or NULL */
} ddp_batch;

typedef enum { DDP_MODE_EVAL = 0, DDP_MODE_TRAIN = 1 } ddp_mode;

typedef struct ddp_model ddp_model;

/* Called during backward when the gradients [offset, offset + count) of the flat buffer
 * are final for this backward pass (once per tensor, or per slice of a sliced one), in
 * backward order. A nonzero status stops the backward and is returned from it. */
typedef ddp_status (*ddp_grad_ready_fn)(void *ctx, size_t offset, size_t count);

/* Builds the model of `spec` with activations for batches of up to max_batch samples
 * (sequences of up to ctx positions). Parameters are not initialized. Not collective. */
ddp_status ddp_model_create(ddp_backend *b, const ddp_model_spec *spec, size_t max_batch,
                            ddp_model **out);
void ddp_model_free(ddp_model *m);

const ddp_model_spec *ddp_model_spec_of(const ddp_model *m);
size_t ddp_model_num_params(const ddp_model *m);
/* Classes of the logits: the MLP's classes, the GPT's vocabulary. */
int ddp_model_num_classes(const ddp_model *m);
/* Positions per sample: 1, or the GPT's context length. */
size_t ddp_model_max_positions(const ddp_model *m);
/* Nonzero when the model takes tokens (a language model, which ddp_model_generate can
 * sample from) rather than features. */
int ddp_model_takes_tokens(const ddp_model *m);
/* Nonzero when layers of the model communicate in forward and backward (synchronized
 * batch norm) and need ddp_model_set_comm before training. */
int ddp_model_needs_comm(const ddp_model *m);
float *ddp_model_params(ddp_model *m); /* device, (num_params) */
float *ddp_model_grads(ddp_model *m);  /* device, (num_params) */
int ddp_model_num_views(const ddp_model *m);
const ddp_param_view *ddp_model_view(const ddp_model *m, int i);
/* Buffers: state that is not trained (running statistics of batch norm; none in the MLP
 * and the GPT). */
size_t ddp_model_num_buffer_elems(const ddp_model *m);
float *ddp_model_buffers(ddp_model *m); /* device, (num_buffer_elems), or NULL */
int ddp_model_num_buffer_views(const ddp_model *m);
const ddp_param_view *ddp_model_buffer_view(const ddp_model *m, int i);
/* Bytes of the activation arena, as allocated at creation for max_batch samples: the
 * layers' outputs and saved tensors (with recomputation: the blocks' inputs and one
 * block's workspace), the shared scratch, the backward's two gradient buffers and the
 * gradient of the logits. Small per-layer state outside it (batch norm's per-channel
 * statistics) is not counted. */
size_t ddp_model_activation_bytes(const ddp_model *m);
/* Gives the layers that communicate in forward and backward (synchronized batch norm)
 * their communicator: one of their own, since another thread (the reducer's) may be
 * all-reducing gradients on the trainer's at the same time. Without one they compute on
 * this rank's batch alone. */
void ddp_model_set_comm(ddp_model *m, ddp_comm *comm);
/* Units: the layers from one recompute segment's end to the next (a CNN stage, a dense
 * layer with its activation; the GPT's embedding, final norm and output projection each
 * one of their own), and the parts of a layer that uses its parameters in turn (a GPT
 * block's four linear maps with the norms before them, each its own unit, and each cut
 * into row chunks under ddp_model_set_unit_limit): the pieces in which ZeRO-3 gathers the
 * parameters. Unit u owns a contiguous range of the flat parameter buffer (the tensors
 * its layers declare, possibly none) and may use tensors of earlier units as well (the
 * GPT's output projection uses the token embedding of the first). */
int ddp_model_num_units(const ddp_model *m);
/* Cuts the linear maps of layers that have parts into row chunks of at least max_elems
 * elements (whole rows, the last chunk the rest; 0: whole maps), each chunk a unit and a place
 * where a gradient bucket may end (ddp_model_ready_points), and makes the units again. Call it
 * before anything reads the units or the ready points. Changes the order of sums in those
 * maps' backward (input gradients summed chunk by chunk), not what they compute. */
ddp_status ddp_model_set_unit_limit(ddp_model *m, size_t max_elems);
/* Unit u's own range [*begin, *end) and the ids of the tensors of other units it uses
 * (up to max into shared; returns how many there are). */
int ddp_model_unit_params(const ddp_model *m, int u, size_t *begin, size_t *end, int *shared,
                          int max);
/* The name of unit u's last layer ("h3", "lm_head"), for messages. */
const char *ddp_model_unit_name(const ddp_model *m, int u);
/* What the unit hook is told: a unit's use begins (before its first layer; in backward
 * before its last layer and before any recomputation of its segment) or ends (after it).
 * A parted layer's parts are used again, as forwards, in its segment's recomputation.
 * Forward passes in evaluation tell it too. */
#define DDP_UNIT_EVENTS(X)                                                                         \
    X(DDP_UNIT_FORWARD_BEGIN, "forward begins")                                                    \
    X(DDP_UNIT_FORWARD_END, "forward ends")                                                        \
    X(DDP_UNIT_BACKWARD_BEGIN, "backward begins") X(DDP_UNIT_BACKWARD_END, "backward ends")
typedef enum { DDP_UNIT_EVENTS(DDP_X_VALUE) DDP_UNIT_EVENT_COUNT } ddp_unit_event;
/* The units in the order of their uses (each use one begin and one end event) in a
 * training forward and, with backward, the backward after it (recomputation included):
 * writes at most max into uses, returns how many there are. */
int ddp_model_unit_uses(const ddp_model *m, int backward, int *uses, int max);
/* A nonzero status stops the pass and is returned from it. */
typedef ddp_status (*ddp_unit_fn)(void *ctx, int unit, ddp_unit_event ev);
/* Lets the parameters of a sharded update arrive while the first layers already compute
 * (ZeRO-1 and 2: wait for the part of the all-gather a unit reads), or gathers each unit's
 * parameters just in time and gives them back after (ZeRO-3). NULL: none. */
void ddp_model_set_unit_hook(ddp_model *m, ddp_unit_fn fn, void *ctx);
/* The hook set (NULL, NULL when none): for a caller that wraps it (tests). */
void ddp_model_unit_hook(const ddp_model *m, ddp_unit_fn *fn, void **ctx);
/* A text that identifies the kind and every shape option ("mlp 784-256-128-10 relu",
 * "gpt L4 C256 H4 T128 V256"), written by the kind; ddp_model_spec_parse reads it back. */
const char *ddp_model_describe(const ddp_model *m);
/* Floating-point operations of one forward pass per sample (per sequence of ctx
 * positions), counting 2 per multiply-add of the matrix products and the attention;
 * training costs about 3 times this. */
double ddp_model_flops_per_sample(const ddp_model *m);
/* The model's largest matrix product of a training pass over n samples: C (M, N) =
 * A (M, K) B (K, N), M = rows per sample x n. What MFU's peak is measured at. */
void ddp_model_largest_product(const ddp_model *m, size_t n, int *M, int *N, int *K);

/* Initializes parameters and buffers from `seed` alone (one RNG stream per tensor), the
 * same on every rank that passes the same seed, each tensor as its kind declared it: MLP
 * and CNN weights He-normal over their fan-in, GPT weights normal(0, 0.02) with the
 * residual projections scaled by 1/sqrt(2 layers) as in GPT-2, biases 0, normalization
 * weights 1. */
ddp_status ddp_model_init_params(ddp_model *m, uint64_t seed);
/* The same for elements [lo, hi) of the flat parameter buffer only (the same bits as those
 * of the whole; every tensor's stream is drawn from its start), and all buffers: a rank
 * that keeps a shard of the parameters writes no others. */
ddp_status ddp_model_init_params_range(ddp_model *m, uint64_t seed, size_t lo, size_t hi);

/* Forward pass over one batch (n <= max_batch samples, t <= max positions), whose arrays
 * must stay valid until the backward that follows (it reads the inputs again). With
 * targets, adds the summed cross-entropy loss of all n * t predictions to stats[0] and
 * the number of correct arg-max predictions to stats[1] (device, 2 floats). In
 * DDP_MODE_TRAIN with grad_scale != 0 it also keeps the gradient of grad_scale * the
 * summed loss with respect to the logits for ddp_model_backward (grad_scale = 1 /
 * predictions in the global batch makes it the gradient of the mean). */
ddp_status ddp_model_forward(ddp_model *m, const ddp_batch *batch, ddp_mode mode, float grad_scale,
                             float *stats);
/* The logits of the last forward: (n * t, num_classes) device memory owned by the
 * model, valid until the next forward. */
const float *ddp_model_logits(const ddp_model *m);
/* Backward pass for the last forward (which must have been DDP_MODE_TRAIN with targets).
 * With first set (the first micro-batch of a step) the gradients are written; otherwise
 * they are added to the buffer (later micro-batches accumulate). Every tensor's gradient
 * is reported to ready exactly once per pass, as soon as it is final; a tensor that got
 * no contribution (zeroed when first is set) is reported at the end. ready may be NULL. */
ddp_status ddp_model_backward(ddp_model *m, int first, ddp_grad_ready_fn ready, void *ctx);
ddp_status ddp_model_zero_grads(ddp_model *m);
/* Moves the gradients into grads (num_params floats of the backend's memory, zeroed
 * here), which must outlive the model: e.g. memory shared with the other ranks of the
 * node (ddp_comm_alloc_shared), which all-reduces without copies. */
ddp_status ddp_model_use_grad_buffer(ddp_model *m, float *grads);

/* Sampling new tokens from a token model (the GPT). */
typedef struct {
    size_t tokens;     /* how many new tokens */
    float temperature; /* softmax temperature; 0 = always the most likely token */
    int top_k;         /* draw among the k most likely tokens only; 0 = all */
    uint64_t seed;     /* the same seed and model give the same tokens */
} ddp_generate_options;

/* Receives each new token as it is drawn; a nonzero status stops the generation. */
typedef ddp_status (*ddp_emit_fn)(void *ctx, int32_t token);

/* Draws o->tokens tokens one after the other, each from the model's prediction after the
 * prompt and the tokens drawn so far (the last ctx of them), and hands each to emit. */
ddp_status ddp_model_generate(ddp_model *m, const int32_t *prompt, size_t n_prompt,
                              const ddp_generate_options *o, ddp_emit_fn emit, void *ctx);

/* Makes backward compute and report the first layer's weight gradient in row slices of
 * about max_elems elements (the lowest rows, sent last, in a shorter one) (0: in one
 * piece, the default), where the first layer is a linear map (the MLP). The first
 * layer's gradients are final last, so whatever bucket holds them is all-reduced after
 * backward has ended; in slices, all but the last slice's all-reduce overlap with the
 * rest of that layer's backward. The values are the same either way. Returns where the
 * gradients that are final last end: [0, returned) (0 when nothing is sliced). */
size_t ddp_model_set_grad_slices(ddp_model *m, size_t max_elems);
/* The offsets (ascending) at which backward's ready reports begin: one per tensor, one
 * per slice of a sliced one. The places a reducer may cut buckets. Writes at most max
 * and returns how many there are. */
int ddp_model_ready_points(ddp_model *m, size_t *offsets, int max);

#ifdef __cplusplus
}
#endif
#endif
