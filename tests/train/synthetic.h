/* A small synthetic classification set for training tests: class centres plus noise,
 * generated from a seed, so every rank builds the same data without files. */
#ifndef DDP_TEST_SYNTHETIC_H
#define DDP_TEST_SYNTHETIC_H

#include <stdlib.h>
#include <string.h>

#include "ddp/data.h"

static inline void synthetic_dataset(ddp_dataset *ds, size_t n, size_t dim, int classes,
                                     uint64_t seed) {
    ddp_rng rng;
    ddp_rng_seed(&rng, seed, 0);
    float *centres = malloc((size_t)classes * dim * sizeof(float));
    for (size_t i = 0; i < (size_t)classes * dim; i++)
        centres[i] = ddp_rng_normal(&rng);
    ds->n = n;
    ds->dim = dim;
    ds->num_classes = classes;
    ds->x = malloc(n * dim * sizeof(float));
    ds->y = malloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) {
        int c = (int)ddp_rng_below(&rng, (uint64_t)classes);
        ds->y[i] = c;
        for (size_t j = 0; j < dim; j++)
            ds->x[i * dim + j] = centres[(size_t)c * dim + j] + 0.8f * ddp_rng_normal(&rng);
    }
    free(centres);
}

/* The tiny CNN's images (tiny_cnn_config, test_util.h): 320 for training and 50 for
 * testing, 6 x 6 pixels of 4 classes. */
static inline void synthetic_images(ddp_dataset *train, ddp_dataset *test) {
    synthetic_dataset(train, 320, 36, 4, 10);
    synthetic_dataset(test, 50, 36, 4, 11);
    train->height = train->width = test->height = test->width = 6;
}

/* A text of n bytes from a first-order Markov chain over 24 letters (each letter followed
 * by one of 3 likely successors most of the time), so that a language model has
 * something to learn; the last 10% is validation, as ddp_text_load splits. */
static inline void synthetic_text(ddp_text *t, size_t n, uint64_t seed) {
    ddp_rng rng;
    ddp_rng_seed(&rng, seed, 0);
    memset(t, 0, sizeof *t);
    t->bytes = malloc(n);
    int c = 0;
    for (size_t i = 0; i < n; i++) {
        t->bytes[i] = (uint8_t)('a' + c);
        uint64_t r = ddp_rng_below(&rng, 10);
        c = r < 8 ? (c * 7 + 3 + (int)(r % 3)) % 24 : (int)ddp_rng_below(&rng, 24);
    }
    t->n_val = (n + 5) / 10;
    t->n_train = n - t->n_val;
}

#endif
