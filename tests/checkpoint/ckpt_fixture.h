/* What the checkpoint tests share: an MPI world and a world of one, a small synthetic
 * training set, a small configuration, scratch directories named alike on every rank,
 * and helpers that fail the test with the library's message. */
#ifndef DDP_TEST_CKPT_FIXTURE_H
#define DDP_TEST_CKPT_FIXTURE_H

#include <stddef.h>

#include "ddp/checkpoint.h"
#include "ddp/train.h"

extern ddp_backend *fx_backend;
extern ddp_comm *fx_world, *fx_local;
extern ddp_dataset fx_train, fx_test;
extern ddp_text fx_text;
extern int fx_rank, fx_size;

/* MPI, the CPU backend, both communicators and the data. */
void fx_init(int *argc, char ***argv);
/* Fails the job if any rank failed (a test failing on one rank only must not hang the
 * others); frees everything. Returns the exit status. */
int fx_finish(int failed);

/* A small MLP, global batch 32, cosine schedule with warm-up, `steps` steps. */
ddp_train_config fx_config(ddp_optim_kind kind, int64_t steps);
/* A tiny GPT (2 blocks, width 16, context 8) on fx_text, batch 8, `steps` steps. */
ddp_train_config fx_gpt_config(int64_t steps);
/* A fresh directory created by rank 0; every rank gets its name. COLLECTIVE (world). */
void fx_tempdir(char *out, size_t cap);
/* Rank 0 removes dir and the files in it. */
void fx_rmdir(const char *dir);
/* Reads a whole file (malloc'd), failing the test if it cannot. */
unsigned char *fx_slurp(const char *path, size_t *len);
/* Rank 0 copies a file. */
void fx_copy(const char *from, const char *to);

ddp_trainer *fx_create(const ddp_train_config *cfg, ddp_comm *comm);
/* The trainer's parameters followed by its buffers (malloc'd), and their number. */
float *fx_params(ddp_trainer *t, size_t *n);
/* Creates, runs to the end, and returns the parameters; frees the trainer. */
float *fx_train_run(const ddp_train_config *cfg, ddp_comm *comm, size_t *n);
/* Every rank copies the regular files of `from` into the new directory `to`. */
void fx_copy_dir(const char *from, const char *to);
/* Rank 0 removes the manifest and the shards of checkpoint `step` (as if the run had been
 * killed before it). COLLECTIVE (world). */
void fx_forget(const char *dir, int64_t step);
/* Resumes c (resume set) from dir over comm and runs it to the end; returns the parameters
 * and the step resumed from. */
float *fx_resume_run(ddp_train_config c, const char *dir, ddp_comm *comm, int64_t *resumed,
                     size_t *n);
/* The steps of the checkpoints in dir, as "4,8" (rank 0's view). */
void fx_list(const char *dir, char *out, size_t cap);

#endif
