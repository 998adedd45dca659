/*
 * The table of backend op tests: one case per op (or per way of calling one), with its
 * shapes, its tensors and how to fill them, the calls of its forward and (where the op
 * has a mathematical backward pair) its backward, and a double-precision reference of its
 * forward. Two drivers run every case: test_ops_cpu.c (the CPU backend against the
 * reference and against finite differences) and test_ops_cuda.c (the CUDA backend against
 * the CPU backend), with what they share in op_support.c. A new op needs an entry in
 * op_cases.c and its reference in op_reference.c (declared below); test_ops_cpu fails for
 * an op of the list that no case calls.
 */
#ifndef DDP_TEST_OP_CASES_H
#define DDP_TEST_OP_CASES_H

#include <stddef.h>

#include "ddp/backend.h"

/* A shape: up to OP_MAX_DIMS integers whose meaning each case names (op_case.dims). */
enum { OP_MAX_DIMS = 12 };
typedef struct {
    int d[OP_MAX_DIMS];
} op_shape;

typedef enum { OP_F32, OP_I32, OP_U16, OP_U8, OP_F64 } op_type;

typedef enum {
    OP_IN,      /* read by the forward */
    OP_OUT,     /* written by the forward ("="): starts as NaN (0xAB bytes if not float),
                 * so that an element the op forgets to write stays visibly wrong */
    OP_INOUT,   /* holds input data and the forward may change it (in-place and "+=" ops):
                 * its final contents are compared like an output's */
    OP_SCRATCH, /* workspace: starts as NaN, never compared */
} op_role;

typedef enum {
    OP_NORMAL,         /* scale * N(0, 1), on a grid of 2^-12 (see op_fill) */
    OP_AWAY_FROM_ZERO, /* as OP_NORMAL but |x| >= scale / 8: clear of a kink at 0 */
    OP_POSITIVE,       /* scale * |N(0, 1)| + scale / 16 */
    OP_INDEX,          /* integers in [0, d[bound]) of the shape */
    OP_BYTES,          /* random bytes */
    OP_F32_SPECIAL,    /* scale * N(0, 1), the first elements special bit patterns (zeros,
                        * infinities, NaNs, rounding ties, the largest float, subnormals) */
    OP_U16_ALL,        /* element i = i mod 65536: every bf16 bit pattern */
} op_kind;

/* How the backward treats an input's gradient buffer. */
typedef enum {
    OP_NO_GRAD = 0,
    OP_GRAD_SET, /* written ("="): starts as NaN */
    OP_GRAD_ADD, /* added to ("+="): starts as random values that must stay under the sum */
} op_grad;

typedef struct {
    const char *name;
    op_type type;
    op_role role;
    op_kind kind;
    float scale;
    int bound;                               /* OP_INDEX: the shape field bounding the values */
    size_t (*count)(const op_shape *s);      /* elements */
    op_grad grad;                            /* inputs: the gradient the backward computes */
    int loss;                                /* outputs: part of the loss L = sum(r * y) */
    size_t (*loss_count)(const op_shape *s); /* the leading elements in L; NULL: all */
} op_tensor;

enum { OP_MAX_TENSORS = 8 };

typedef struct op_case op_case;
struct op_case {
    const char *name;
    const char *dims; /* names of the shape fields, e.g. "N C" */
    const op_shape *shapes;
    int n_shapes;
    op_tensor t[OP_MAX_TENSORS];
    int n_tensors;
    /* The op on backend b; t[i] is the device buffer of tensor i. */
    ddp_status (*forward)(ddp_backend *b, void *const *t, const op_shape *s);
    /* The backward, after the forward: g[i] is the gradient buffer of tensor i, NULL where
     * there is none. For a loss output it holds dL/dy (= r), for an input with a grad it
     * receives dL/dx. NULL when the op has no backward pair. */
    ddp_status (*backward)(ddp_backend *b, void *const *t, void *const *g, const op_shape *s);
    /* The forward in double precision: x[i] holds tensor i (integers and bf16 bit patterns
     * as their values), outputs start as the op's do (NaN, or the input of an INOUT). */
    void (*reference)(const op_shape *s, double *const *x);
    /* Optional: adjusts the generated host data h[i] (plants ties, special values). */
    void (*prepare)(const op_shape *s, void *const *h);
    /* Optional: whether the backward computes tensor i's gradient for this shape (some
     * shapes pass NULL for a gradient); by default every tensor with a grad. */
    int (*has_grad)(const op_shape *s, int i);
    double fwd_tol;  /* CPU against the reference, relative to the largest |value|; 0: exact */
    double fd_step;  /* finite-difference step (see test_ops_cpu.c) */
    double fd_units; /* rounding units of an output, for the finite-difference tolerance */
    double gpu_tol;  /* CUDA (fp32) against the CPU, relative to the largest |value|; 0: bits */
    int uses_math;   /* depends on the math mode: also compared in tf32 and bf16 */
};

extern const op_case op_cases[];
extern const int op_case_count;

/* Bytes of one element, and of tensor t at shape s. */
size_t op_elem_size(op_type type);
size_t op_tensor_bytes(const op_tensor *t, const op_shape *s);
/* Whether the forward writes tensor t (OUT or INOUT): what is compared after it. */
int op_is_output(const op_tensor *t);
/* Whether the backward computes the gradient of tensor i at shape s. */
int op_has_grad(const op_case *c, const op_shape *s, int i);
/* Fills the host buffers h[i] (op_tensor_bytes each) of every tensor: inputs as their kind
 * says, OUT and SCRATCH as NaN (floats) or 0xAB (other types); then the case's prepare. */
void op_fill(const op_case *c, const op_shape *s, void *const *h, ddp_rng *rng);
/* Runs test(state = the case) for every case of the table as one cmocka group, then `last`
 * (named last_name; may be NULL) after them; returns the number of failed tests (or 1
 * without memory). */
int op_run_cases(const char *group, void (*test)(void **state), int (*setup)(void **state),
                 int (*teardown)(void **state), const char *last_name, void (*last)(void **state));
/* "name (N=3 C=5)" into buf. */
const char *op_describe(const op_case *c, const op_shape *s, char *buf, size_t size);

/* Element i of a host buffer of the given type as a double (bf16 patterns as integers). */
double op_get(op_type type, const void *h, size_t i);

/* got must equal want (n elements of the given type) within tol times the largest finite
 * |want|: NaN exactly where want has NaN, infinities equal, integers and bf16 patterns
 * equal bit for bit. Fails the running test with a message naming `what` otherwise. */
void op_expect_close(const char *what, op_type type, const void *got, const void *want, size_t n,
                     double tol);

/* The constants the ops are called with, shared by the calls and the references. */
#define OP_GEMM_ALPHAS                                                                             \
    { 1.0f, 0.7f, -1.3f, 0.5f, 0.5f }
#define OP_GEMM_BETAS                                                                              \
    { 0.0f, 0.5f, 1.0f, -2.0f, 0.0f }
#define OP_SCALE_ALPHA      (-0.37f)
#define OP_XENT_GRAD_SCALE  (1.0f / 64.0f)
#define OP_SGD_LR           0.1f
#define OP_SGD_MOMENTUM     0.9f
#define OP_SGD_WD           0.01f
#define OP_ADAMW_LR         0.05f
#define OP_ADAMW_BETA1      0.9f
#define OP_ADAMW_BETA2      0.999f
#define OP_ADAMW_EPS        1e-8f
#define OP_ADAMW_WD         0.1f
#define OP_CLIP_SCALE(clip) ((clip) ? 0.25f : 1.0f)
#define OP_BN_EPS           1e-5f
#define OP_BN_MOMENTUM      0.1f

/* The double-precision references (op_reference.c), one per case. */
void ref_act(const op_shape *s, double *const *x);
void ref_act_in_place(const op_shape *s, double *const *x);
void ref_act_backward(const op_shape *s, double *const *x);
void ref_bias_add(const op_shape *s, double *const *x);
void ref_gemm(const op_shape *s, double *const *x);
void ref_softmax_xent(const op_shape *s, double *const *x);
void ref_softmax_xent_grad(const op_shape *s, double *const *x);
void ref_add(const op_shape *s, double *const *x);
void ref_add_in_place(const op_shape *s, double *const *x);
void ref_gather_rows(const op_shape *s, double *const *x);
void ref_scale(const op_shape *s, double *const *x);
void ref_f32_to_bf16(const op_shape *s, double *const *x);
void ref_bf16_to_f32(const op_shape *s, double *const *x);
void ref_sumsq(const op_shape *s, double *const *x);
void ref_sumsq_add(const op_shape *s, double *const *x);
void ref_sgd_step(const op_shape *s, double *const *x);
void ref_adamw_step(const op_shape *s, double *const *x);
void ref_encoder(const op_shape *s, double *const *x);
void ref_layernorm(const op_shape *s, double *const *x);
void ref_rmsnorm(const op_shape *s, double *const *x);
void ref_transpose(const op_shape *s, double *const *x);
void ref_attention(const op_shape *s, double *const *x);
void ref_conv2d(const op_shape *s, double *const *x);
void ref_maxpool(const op_shape *s, double *const *x);
void ref_maxpool_both(const op_shape *s, double *const *x);
void ref_batchnorm(const op_shape *s, double *const *x);
void ref_batchnorm_eval(const op_shape *s, double *const *x);
void ref_batchnorm_dx(const op_shape *s, double *const *x);

/* The GELU of the op list (tanh approximation) and its derivative, in double. */
double ref_gelu(double x);
double ref_gelu_grad(double x);

#endif
