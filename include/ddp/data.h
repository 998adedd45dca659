/*
 * data: dataset readers and the distributed sampler.
 *
 * IDX is the format of MNIST and Fashion-MNIST: a big-endian header (two zero bytes, a
 * type code, the number of dimensions, then each dimension as a 32-bit integer)
 * followed by the elements. Files may be gzip-compressed or raw; both are read.
 *
 * The sampler gives every rank the same shuffled order of the epoch (from seed and
 * epoch alone) and hands rank r its slice of each global batch, so that over one epoch
 * every sample is used exactly once across all ranks. The incomplete tail batch of an
 * epoch is dropped, so every rank runs the same number of steps.
 */
#ifndef DDP_DATA_H
#define DDP_DATA_H

#include "ddp/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DDP_IDX_MAX_DIMS 4

typedef enum {
    DDP_IDX_U8 = 0x08,
    DDP_IDX_I8 = 0x09,
    DDP_IDX_I16 = 0x0B,
    DDP_IDX_I32 = 0x0C,
    DDP_IDX_F32 = 0x0D,
    DDP_IDX_F64 = 0x0E
} ddp_idx_type;

typedef struct {
    ddp_idx_type type;
    int ndims;
    uint32_t dims[DDP_IDX_MAX_DIMS];
    size_t count;     /* product of dims */
    size_t elem_size; /* bytes per element */
    void *data;       /* count elements, converted to host byte order */
} ddp_idx;

/* Parses an IDX image from memory (uncompressed). Validates the magic, the type, the
 * number of dimensions and that the size matches the dimensions exactly. */
ddp_status ddp_idx_parse(const void *buf, size_t len, const char *name, ddp_idx *out);
/* Reads an IDX file, gzip-compressed or raw. */
ddp_status ddp_idx_read(const char *path, ddp_idx *out);
void ddp_idx_free(ddp_idx *idx);

typedef struct {
    size_t n;        /* number of samples */
    size_t dim;      /* features per sample */
    int num_classes; /* labels are in [0, num_classes) */
    float *x;        /* (n, dim), pixels scaled to [0, 1] */
    int32_t *y;      /* (n) */
} ddp_dataset;

/* Loads an image file (u8, n x rows x cols) and a label file (u8, n) into a dataset,
 * checking that they agree on n and that labels are below num_classes. */
ddp_status ddp_dataset_load_idx(const char *images_path, const char *labels_path, int num_classes,
                                ddp_dataset *out);
/* Loads the split "train" or "t10k" from a directory laid out like MNIST:
 * <split>-images-idx3-ubyte[.gz] and <split>-labels-idx1-ubyte[.gz]. */
ddp_status ddp_dataset_load_dir(const char *dir, const char *split, ddp_dataset *out);
void ddp_dataset_free(ddp_dataset *ds);

typedef struct {
    size_t n;            /* samples in the dataset */
    size_t global_batch; /* samples per step over all ranks */
    size_t local_batch;  /* global_batch / world */
    int rank, world;
    uint64_t seed;
    int shuffle;
    size_t steps_per_epoch; /* n / global_batch (tail dropped) */
    uint64_t epoch;         /* epoch of the next batch */
    size_t step;            /* step within that epoch of the next batch */
    uint32_t *order;        /* (n) permutation of the current epoch */
} ddp_sampler;

/* Fails with a message if global_batch is 0, not divisible by world, or larger than n. */
ddp_status ddp_sampler_init(ddp_sampler *s, size_t n, size_t global_batch, int rank, int world,
                            uint64_t seed, int shuffle);
/* Writes this rank's local_batch sample indices of the next global batch and advances;
 * *epoch_out (may be NULL) receives the batch's epoch. */
ddp_status ddp_sampler_next(ddp_sampler *s, int32_t *idx, uint64_t *epoch_out);
/* Positions the sampler so that the next batch is step `step` of epoch `epoch`
 * (resuming from a checkpoint). */
ddp_status ddp_sampler_seek(ddp_sampler *s, uint64_t epoch, size_t step);
void ddp_sampler_free(ddp_sampler *s);

/* The contiguous part of n items that rank r evaluates: every item exactly once over
 * all ranks, sizes differing by at most one, no padding. */
void ddp_shard_range(size_t n, int rank, int world, size_t *begin, size_t *count);

#ifdef __cplusplus
}
#endif
#endif
