/*
 * powersgd: low-rank gradient compression with error feedback (Vogels, Karimireddy and
 * Jaggi, "PowerSGD", NeurIPS 2019), for the all-reduce of a bucket of gradients.
 *
 * Each matrix-shaped gradient M (rows, cols) of a bucket, with the error that earlier steps
 * did not send added to it, is replaced by a rank-R approximation found by one step of
 * power iteration, warm-started from the last step's Q:
 *   P = M Q              (rows, R)  summed over ranks (all-reduce 1, with the bucket's
 *                                   vectors, which travel uncompressed beside it)
 *   P^ = orthonormal columns of P (Gram-Schmidt in fp32, the same bits on every rank)
 *   Q' = M^T P^          (cols, R)  summed over ranks (all-reduce 2)
 *   error = M - P^ (M^T P^)^T       what this rank's M lost (kept for the next step)
 *   result = P^ Q'^T                the sum over ranks of each rank's projection P^ P^^T M
 * so that over the ranks, result + the errors' sum = the gradients' sum + the errors' sum
 * of the step before: nothing is dropped, only delayed (tests/sync/test_powersgd.c). A
 * bucket sends (rows + cols) R floats per matrix instead of rows x cols.
 *
 * Which tensors: those of two or more dimensions (a convolution's (out, in, kh, kw) as
 * (out, in kh kw)) whose R-rank factors are at most half their size; the others travel
 * as they are. The products and the orthogonalization are this file's own loops in a fixed
 * order, so that ranks on different CPUs (whose BLAS kernels round differently) compute
 * the same bits and the replicas stay equal. Host memory only.
 */
#ifndef DDP_POWERSGD_H
#define DDP_POWERSGD_H

#include "ddp/comm.h"
#include "ddp/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One matrix-shaped gradient of the flat buffer: elements [offset, offset + rows cols),
 * row-major. */
typedef struct {
    size_t offset, rows, cols;
} ddp_psgd_matrix;

typedef struct {
    int rank;       /* R: columns of P and Q (1 to DDP_PSGD_MAX_RANK) */
    int64_t start;  /* steps before this one are all-reduced uncompressed (warm-up) */
    uint64_t seed;  /* of Q's initial values: the same on every rank */
    ddp_dtype wire; /* DDP_F32, or DDP_BF16: P, Q and the vectors travel in bf16 */
} ddp_powersgd_options;

#define DDP_PSGD_MAX_RANK 64

typedef struct ddp_powersgd ddp_powersgd;

/* The matrices of the model worth compressing at rank R, in the order of the flat buffer;
 * returns how many (writing at most cap of them to out, which may be NULL). */
int ddp_powersgd_matrices_of(const ddp_model *m, int rank, ddp_psgd_matrix *out, int cap);

/* A compressor for a flat buffer of n gradients with these matrices (ascending, disjoint).
 * Not collective. */
ddp_status ddp_powersgd_create(const ddp_powersgd_options *o, size_t n, const ddp_psgd_matrix *mats,
                               int n_mats, ddp_powersgd **out);
void ddp_powersgd_free(ddp_powersgd *p);

/* Moves the first compressed step (--compress auto decides it during the run). */
void ddp_powersgd_set_start(ddp_powersgd *p, int64_t start);
/* What a compressed all-reduce of grads[begin, end) sends: floats per rank over both
 * all-reduces (*elems) and how many all-reduces (*calls: 0 for an empty range, 1 where it
 * holds no matrix, else 2). */
void ddp_powersgd_wire(const ddp_powersgd *p, size_t begin, size_t end, size_t *elems, int *calls);
/* Seconds of this rank's compression work (the products and the orthogonalization, no
 * communication) for the buckets [bounds[2i], bounds[2i+1]) of grads (n), measured once
 * on copies with a compressor of the same matrices over `local` (a communicator of this
 * rank alone). Not collective. */
ddp_status ddp_powersgd_time_work(const ddp_powersgd *p, ddp_comm *local, const float *grads,
                                  const size_t *bounds, int n_buckets, double *seconds);
/* The step about to run (steps completed before it): it compresses when step >= start.
 * The first step that does not compress after one that did adds the error feedback into
 * its sums (and clears it), so that stopping loses nothing. */
void ddp_powersgd_set_step(ddp_powersgd *p, int64_t step);
int ddp_powersgd_compressing(const ddp_powersgd *p);

/* Sums grads[begin, end) over the ranks of c in place, compressed where the step
 * compresses (else a plain all-reduce, in the wire's dtype), the bucket's matrices those
 * wholly inside the range. sites name the two all-reduces in the flight recorder.
 * COLLECTIVE over c: every rank calls it with the same range. */
ddp_status ddp_powersgd_allreduce(ddp_powersgd *p, ddp_comm *c, float *grads, size_t begin,
                                  size_t end, const char *const sites[2]);

/* Forgets the error feedback and restarts Q from the seed (after non-finite gradients,
 * which would otherwise stay in the errors). Not collective; every rank does it alike. */
void ddp_powersgd_reset(ddp_powersgd *p);

/* ---- the state, for checkpoints ------------------------------------------------------ */

/* This rank's error feedback: (n) floats, zero outside the matrices. */
float *ddp_powersgd_errors(ddp_powersgd *p);
/* The Q factors, the same on every rank: (q_elems) floats, matrix by matrix (R, cols). */
float *ddp_powersgd_q(ddp_powersgd *p);
size_t ddp_powersgd_q_elems(const ddp_powersgd *p);
/* Nonzero once Q holds a step's result (warm start); zero while it is the seed's. */
int ddp_powersgd_q_warm(const ddp_powersgd *p);
void ddp_powersgd_set_q_warm(ddp_powersgd *p, int warm);
/* Bytes the compressor holds (errors, Q, the wire buffers at their largest so far). */
size_t ddp_powersgd_bytes(const ddp_powersgd *p);

#ifdef __cplusplus
}
#endif
#endif
