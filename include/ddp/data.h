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
 *
 * Text is read as bytes, and every byte is a token (a vocabulary of 256), so any file
 * trains without a tokenizer. Training windows start at offsets drawn from (seed, step)
 * alone; validation cuts the held-out tail into consecutive windows that together
 * predict each of its bytes exactly once over all ranks.
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
    size_t n;             /* number of samples */
    size_t dim;           /* features per sample */
    size_t height, width; /* images: dim = height * width (one channel); 0 when not images */
    int num_classes;      /* labels are in [0, num_classes) */
    float *x;             /* (n, dim), pixels scaled to [0, 1] */
    int32_t *y;           /* (n) */
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
    size_t pos;             /* samples of the epoch's order handed out before it */
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
/* Changes the global batch from the next batch on (an adaptive batch schedule): the
 * next batch starts where the last one ended in the epoch's order, so that every sample
 * is still used at most once per epoch, and a new epoch begins when fewer than
 * global_batch samples are left of this one (that tail is dropped, as always). Fails
 * with a message if global_batch is 0, not divisible by world, or larger than n. */
ddp_status ddp_sampler_set_batch(ddp_sampler *s, size_t global_batch);
/* Positions the sampler at sample `pos` of epoch `epoch`'s order, as step `step` of that
 * epoch (resuming a run whose batch changed within the epoch). */
ddp_status ddp_sampler_seek_pos(ddp_sampler *s, uint64_t epoch, size_t step, size_t pos);
void ddp_sampler_free(ddp_sampler *s);

/* The evaluation split: the contiguous part of n items that rank r evaluates, every item
 * exactly once over all ranks, sizes differing by at most one, no padding. (A "shard" is
 * something else: a rank's part of the flat parameter buffer, ddp/sync.h.) */
void ddp_split_range(size_t n, int rank, int world, size_t *begin, size_t *count);

/* ---- text: bytes as tokens -------------------------------------------------------- */

#define DDP_TEXT_VOCAB 256

/* A text file held whole in memory. The last tenth of its bytes is the validation split,
 * which training never reads. */
typedef struct {
    uint8_t *bytes; /* (n_train + n_val) the file, training split first */
    size_t n_train; /* bytes [0, n_train) are trained on */
    size_t n_val;   /* bytes [n_train, n_train + n_val) are only evaluated */
    char *path;     /* the file, for messages */
} ddp_text;

/* Reads the whole file at path (any bytes: UTF-8, other encodings and binary files are
 * all just tokens) and splits it: the last 10% of the bytes, rounded to the nearest byte
 * and at least 1, is the validation split. Fails with a message naming the file when it
 * is missing, unreadable, a directory or device, empty, or a single byte (too short to
 * split). On failure *out is left empty. */
ddp_status ddp_text_load(const char *path, ddp_text *out);
/* Whether the text is long enough for context ctx: the training split needs at least
 * ctx + 1 bytes (one window of inputs and the targets one byte later), the validation
 * split at least 2 (one predicted byte). The message says how long the file would have
 * to be. */
ddp_status ddp_text_check(const ddp_text *t, size_t ctx);
void ddp_text_free(ddp_text *t);

/* The path of the default corpus, without creating anything:
 * $XDG_CACHE_HOME/ddp/kjv.txt, else $HOME/.cache/ddp/kjv.txt, else
 * /tmp/ddp-<uid>/kjv.txt (relative or empty variables count as unset). */
ddp_status ddp_text_corpus_path(char *path, size_t cap);
/* Writes the path of the default corpus, the King James Bible, into path (cap bytes) and
 * creates the file the first time: by running Debian's `bible -l 79 gen1:1-rev22:21`
 * (package bible-kjv), into a temporary file that is renamed into place only when
 * complete and checked, so that concurrent or interrupted creations never leave a
 * partial file under the final name. A file already there is reused. Not collective:
 * in a multi-rank job one rank per node calls it before the others load the file. */
ddp_status ddp_text_default_corpus(char *path, size_t cap);

/* Training windows: step s's global batch is global_batch offsets drawn uniformly from
 * [0, n_train - ctx - 1] by an RNG seeded from (seed, s) alone, so every rank derives
 * the same batch without communicating, and resuming needs nothing but the step. Rank r
 * takes offsets [r * B/world, (r + 1) * B/world). */
typedef struct {
    size_t n_train;      /* bytes of the training split */
    size_t ctx;          /* positions per window (T) */
    size_t global_batch; /* windows per step over all ranks (B) */
    size_t local_batch;  /* global_batch / world */
    int rank, world;
    uint64_t seed;
    size_t steps_per_epoch; /* ddp_window_steps_per_epoch */
} ddp_window_sampler;

/* Fails with a message if ctx or global_batch is 0, global_batch is not divisible by
 * world, or the training split is shorter than ctx + 1 bytes. */
ddp_status ddp_window_sampler_init(ddp_window_sampler *s, size_t n_train, size_t ctx,
                                   size_t global_batch, int rank, int world, uint64_t seed);
/* Writes this rank's local_batch window offsets of global step `step` (>= 0) into
 * offsets. A pure function of the sampler's settings and the step. */
ddp_status ddp_window_offsets(const ddp_window_sampler *s, int64_t step, size_t *offsets);
/* What an epoch means for text, where windows are drawn at random rather than visited:
 * as many steps as it takes to draw as many positions as the training split has bytes,
 * n_train / (global_batch * ctx), and at least 1. Zero sizes give 1. */
size_t ddp_window_steps_per_epoch(size_t n_train, size_t ctx, size_t global_batch);
/* Fills inputs tokens (n, ctx) with training bytes [o, o + ctx) and targets (n, ctx)
 * with bytes [o + 1, o + ctx + 1) for each of the n offsets o; fails without writing if
 * a window would reach past the training split. */
ddp_status ddp_text_fill(const ddp_text *t, const size_t *offsets, size_t n, size_t ctx,
                         int32_t *tokens, int32_t *targets);

/* Validation windows: the validation split cut into consecutive windows; window i
 * predicts validation bytes [i*ctx + 1, i*ctx + 1 + len) from the len bytes before each,
 * with len = ctx except in the last window, which is shorter when ctx does not divide
 * n_val - 1. Over all windows every one of the n_val - 1 predictable bytes is predicted
 * exactly once; ranks take contiguous shares (ddp_split_range), so no window is repeated
 * to even out the shares, and a rank may get none. */
typedef struct {
    size_t n_val;     /* bytes of the validation split */
    size_t ctx;       /* positions of a full window */
    size_t n_windows; /* over all ranks: ceil((n_val - 1) / ctx) */
    size_t last_len;  /* positions of window n_windows - 1: 1 to ctx */
    size_t begin;     /* this rank's windows are [begin, begin + count) */
    size_t count;     /* may be 0 */
} ddp_val_windows;

/* Fails with a message if ctx is 0 or the validation split has fewer than 2 bytes. */
ddp_status ddp_val_windows_init(ddp_val_windows *v, const ddp_text *t, size_t ctx, int rank,
                                int world);
/* Fills windows [first, first + n) of this rank's share (first counts from the share's
 * start) as rows of tokens (n, ctx) and targets (n, ctx). Only window n_windows - 1 can
 * be short, so only the last row of a batch: *last_len receives the length of the last
 * row written (ctx when all are full, 0 when n is 0), and that row's remaining positions
 * hold token 0 and target -1. Because the short row comes last, the batch can run as
 * (n - 1, ctx) rows followed by one (1, last_len) row at tokens + (n - 1) * ctx. */
ddp_status ddp_val_windows_fill(const ddp_val_windows *v, const ddp_text *t, size_t first, size_t n,
                                int32_t *tokens, int32_t *targets, size_t *last_len);

#ifdef __cplusplus
}
#endif
#endif
