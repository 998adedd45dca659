/*
 * Image classification datasets in the MNIST layout: an IDX file of u8 images
 * (n x rows x cols) and an IDX file of u8 labels (n), turned into float features in
 * [0, 1] and int32 labels. Every check that could fail later in training with a
 * confusing symptom (a label past the last class, counts that disagree) fails here,
 * with the file and the sample named.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ddp/data.h"

#define MNIST_CLASSES 10
#define DATASET_HINT                                                                               \
    "install dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass --data DIR"

static ddp_status check_images(const ddp_idx *im, const char *path) {
    if (im->type != DDP_IDX_U8 || im->ndims != 3)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "images file '%s' holds %d-dimensional elements of type 0x%02x; "
                        "expected u8 (0x08) images with 3 dimensions (n x rows x cols): is "
                        "it a labels file, or another dataset?",
                        path, im->ndims, (unsigned)im->type);
    if (im->dims[0] == 0 || im->dims[1] == 0 || im->dims[2] == 0)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "images file '%s' has dimensions %u x %u x %u; a dataset needs at "
                        "least one sample of at least one pixel",
                        path, (unsigned)im->dims[0], (unsigned)im->dims[1], (unsigned)im->dims[2]);
    return DDP_OK;
}

static ddp_status check_labels(const ddp_idx *lb, const char *path) {
    if (lb->type != DDP_IDX_U8 || lb->ndims != 1)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "labels file '%s' holds %d-dimensional elements of type 0x%02x; "
                        "expected u8 (0x08) labels with 1 dimension (n): is it an images "
                        "file, or another dataset?",
                        path, lb->ndims, (unsigned)lb->type);
    return DDP_OK;
}

/* Fills out from validated images and labels. */
static ddp_status convert(const ddp_idx *im, const ddp_idx *lb, const char *labels_path,
                          int num_classes, ddp_dataset *out) {
    size_t n = im->dims[0];
    size_t dim = (size_t)im->dims[1] * im->dims[2];
    const uint8_t *labels = lb->data;
    for (size_t i = 0; i < n; i++)
        if (labels[i] >= num_classes)
            return DDP_FAIL(DDP_ERR_FORMAT,
                            "labels file '%s': sample %zu has label %u, but labels must be "
                            "below %d (the number of classes); the file is corrupt or "
                            "belongs to a dataset with more classes",
                            labels_path, i, (unsigned)labels[i], num_classes);

    /* n * dim is im->count, which the reader capped well below SIZE_MAX / 4. */
    float *x = malloc(im->count * sizeof *x);
    int32_t *y = malloc(n * sizeof *y);
    if (x == NULL || y == NULL) {
        free(x);
        free(y);
        return DDP_FAIL(DDP_ERR_NOMEM, "out of host memory for %zu samples of %zu features", n,
                        dim);
    }
    const uint8_t *pixels = im->data;
    for (size_t i = 0; i < im->count; i++)
        x[i] = (float)pixels[i] / 255.0f;
    for (size_t i = 0; i < n; i++)
        y[i] = labels[i];

    out->n = n;
    out->dim = dim;
    out->height = im->dims[1];
    out->width = im->dims[2];
    out->num_classes = num_classes;
    out->x = x;
    out->y = y;
    return DDP_OK;
}

ddp_status ddp_dataset_load_idx(const char *images_path, const char *labels_path, int num_classes,
                                ddp_dataset *out) {
    if (out == NULL || images_path == NULL || labels_path == NULL)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "ddp_dataset_load_idx: a path or out is NULL");
    memset(out, 0, sizeof *out);
    /* Labels are u8, so more than 256 classes could never all occur. */
    if (num_classes < 1 || num_classes > 256)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "ddp_dataset_load_idx: num_classes is %d; u8 labels allow 1 to 256",
                        num_classes);

    ddp_idx im = {0}, lb = {0};
    ddp_status s;
    DDP_CHECK_GOTO(ddp_idx_read(images_path, &im), s, done);
    DDP_CHECK_GOTO(check_images(&im, images_path), s, done);
    DDP_CHECK_GOTO(ddp_idx_read(labels_path, &lb), s, done);
    DDP_CHECK_GOTO(check_labels(&lb, labels_path), s, done);
    if (im.dims[0] != lb.dims[0]) {
        s = DDP_FAIL(DDP_ERR_FORMAT,
                     "images file '%s' has %u samples but labels file '%s' has %u; they "
                     "must come from the same split (train or t10k) of the same dataset",
                     images_path, (unsigned)im.dims[0], labels_path, (unsigned)lb.dims[0]);
        goto done;
    }
    DDP_CHECK_GOTO(convert(&im, &lb, labels_path, num_classes, out), s, done);
done:
    ddp_idx_free(&im);
    ddp_idx_free(&lb);
    return s;
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Finds "<dir>/<split>-<kind>-ubyte", preferring the .gz that the dataset ships as. */
static ddp_status find_file(const char *dir, const char *split, const char *kind, char *path,
                            size_t cap) {
    char gz[4096], raw[4096];
    int n1 = snprintf(gz, sizeof gz, "%s/%s-%s-ubyte.gz", dir, split, kind);
    int n2 = snprintf(raw, sizeof raw, "%s/%s-%s-ubyte", dir, split, kind);
    if (n1 < 0 || n2 < 0 || (size_t)n1 >= sizeof gz || (size_t)n1 >= cap)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "dataset directory path '%s' is too long; use a shorter path", dir);
    if (file_exists(gz)) {
        memcpy(path, gz, (size_t)n1 + 1);
        return DDP_OK;
    }
    if (file_exists(raw)) {
        memcpy(path, raw, (size_t)n2 + 1);
        return DDP_OK;
    }
    return DDP_FAIL(DDP_ERR_IO, "cannot find the %s %s of the dataset: tried '%s' and '%s'; %s",
                    split, strncmp(kind, "images", 6) == 0 ? "images" : "labels", gz, raw,
                    DATASET_HINT);
}

ddp_status ddp_dataset_load_dir(const char *dir, const char *split, ddp_dataset *out) {
    if (out == NULL || dir == NULL || split == NULL)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "ddp_dataset_load_dir: dir, split or out is NULL");
    memset(out, 0, sizeof *out);
    if (strcmp(split, "train") != 0 && strcmp(split, "t10k") != 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "unknown dataset split '%s': MNIST-style directories have the splits "
                        "\"train\" and \"t10k\" (the test set)",
                        split);
    char images[4096], labels[4096];
    DDP_CHECK(find_file(dir, split, "images-idx3", images, sizeof images));
    DDP_CHECK(find_file(dir, split, "labels-idx1", labels, sizeof labels));
    DDP_CHECK(ddp_dataset_load_idx(images, labels, MNIST_CLASSES, out));
    return DDP_OK;
}

void ddp_dataset_free(ddp_dataset *ds) {
    if (ds == NULL) return;
    free(ds->x);
    free(ds->y);
    memset(ds, 0, sizeof *ds);
}
