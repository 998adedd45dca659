/*
 * Datasets in the MNIST layout: pixels become floats in [0, 1], labels int32; images and
 * labels that disagree, labels past the last class and files of the wrong shape are
 * rejected with the file and sample named; a directory is searched for .gz then raw
 * files, and a missing dataset says where it looked and how to install it. When
 * Fashion-MNIST is installed, the real files are loaded and checked.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/idx_fixture.h"
#include "ddp/data.h"

/* n images of rows x cols whose pixel j of image i is (i * 37 + j * 11) % 256. */
static void write_images(const char *path, uint32_t n, uint32_t rows, uint32_t cols, int gz) {
    size_t len = (size_t)n * rows * cols;
    unsigned char *px = malloc(len ? len : 1);
    assert_non_null(px);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < (size_t)rows * cols; j++)
            px[i * rows * cols + j] = (unsigned char)((i * 37 + j * 11) % 256);
    const uint32_t dims[3] = {n, rows, cols};
    fx_write_idx(path, DDP_IDX_U8, 3, dims, px, len, gz);
    free(px);
}

static void write_labels(const char *path, const unsigned char *labels, uint32_t n, int gz) {
    const uint32_t dims[1] = {n};
    fx_write_idx(path, DDP_IDX_U8, 1, dims, labels, n, gz);
}

static void expect_load_fails(const char *images, const char *labels, int classes, ddp_status st,
                              const char *what) {
    ddp_dataset ds;
    ddp_error_clear();
    assert_int_equal(ddp_dataset_load_idx(images, labels, classes, &ds), st);
    assert_msg_has(what);
    assert_null(ds.x);
    assert_null(ds.y);
    assert_int_equal(ds.n, 0);
}

static void test_loads_pixels_scaled_and_labels(void **state) {
    char im[512], lb[512];
    fx_path(im, sizeof im, *state, "im.gz");
    fx_path(lb, sizeof lb, *state, "lb");
    write_images(im, 3, 2, 4, 1);
    const unsigned char labels[3] = {9, 0, 4};
    write_labels(lb, labels, 3, 0);

    ddp_dataset ds;
    assert_int_equal(ddp_dataset_load_idx(im, lb, 10, &ds), DDP_OK);
    assert_int_equal(ds.n, 3);
    assert_int_equal(ds.dim, 8);
    assert_int_equal(ds.num_classes, 10);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(ds.y[i], labels[i]);
        for (size_t j = 0; j < 8; j++) {
            float want = (float)((i * 37 + j * 11) % 256) / 255.0f;
            assert_true(ds.x[i * 8 + j] == want);
            assert_true(ds.x[i * 8 + j] >= 0.0f && ds.x[i * 8 + j] <= 1.0f);
        }
    }
    ddp_dataset_free(&ds);
    assert_null(ds.x);
}

static void test_rejects_count_mismatch(void **state) {
    char im[512], lb[512];
    fx_path(im, sizeof im, *state, "im");
    fx_path(lb, sizeof lb, *state, "lb");
    write_images(im, 3, 2, 2, 0);
    const unsigned char labels[2] = {1, 2};
    write_labels(lb, labels, 2, 0);
    expect_load_fails(im, lb, 10, DDP_ERR_FORMAT, "has 3 samples");
    assert_msg_has("has 2");
    assert_msg_has(im);
    assert_msg_has(lb);
}

static void test_rejects_label_out_of_range(void **state) {
    char im[512], lb[512];
    fx_path(im, sizeof im, *state, "im");
    fx_path(lb, sizeof lb, *state, "lb");
    write_images(im, 4, 2, 2, 0);
    const unsigned char labels[4] = {1, 9, 12, 10};
    write_labels(lb, labels, 4, 0);
    /* The first bad label is reported, by sample index and value. */
    expect_load_fails(im, lb, 10, DDP_ERR_FORMAT, "sample 2 has label 12");
    assert_msg_has("below 10");
    assert_msg_has(lb);
    /* The same files are fine with more classes. */
    ddp_dataset ds;
    assert_int_equal(ddp_dataset_load_idx(im, lb, 13, &ds), DDP_OK);
    assert_int_equal(ds.y[2], 12);
    ddp_dataset_free(&ds);
    expect_load_fails(im, lb, 0, DDP_ERR_INVALID_ARG, "num_classes is 0");
}

static void test_rejects_wrong_dims_and_types(void **state) {
    char im[512], lb[512], bad[512];
    fx_path(im, sizeof im, *state, "im");
    fx_path(lb, sizeof lb, *state, "lb");
    fx_path(bad, sizeof bad, *state, "bad");
    write_images(im, 2, 2, 2, 0);
    const unsigned char labels[2] = {1, 2};
    write_labels(lb, labels, 2, 0);

    /* Images with 2 dimensions (n x 784 flattened). */
    const uint32_t flat[2] = {2, 4};
    fx_write_idx(bad, DDP_IDX_U8, 2, flat, "\0\0\0\0\0\0\0\0", 8, 0);
    expect_load_fails(bad, lb, 10, DDP_ERR_FORMAT, "3 dimensions");
    assert_msg_has(bad);

    /* Files swapped: labels as images and images as labels. */
    expect_load_fails(lb, im, 10, DDP_ERR_FORMAT, "images file");

    /* Labels with 2 dimensions. */
    const uint32_t ldims[2] = {2, 1};
    fx_write_idx(bad, DDP_IDX_U8, 2, ldims, "\1\2", 2, 0);
    expect_load_fails(im, bad, 10, DDP_ERR_FORMAT, "labels file");
    assert_msg_has("1 dimension");

    /* Images stored as f32 instead of u8. */
    const uint32_t fdims[3] = {2, 1, 1};
    fx_write_idx(bad, DDP_IDX_F32, 3, fdims, "\0\0\0\0\0\0\0\0", 8, 0);
    expect_load_fails(bad, lb, 10, DDP_ERR_FORMAT, "expected u8");

    /* No samples at all. */
    write_images(bad, 0, 2, 2, 0);
    expect_load_fails(bad, lb, 10, DDP_ERR_FORMAT, "at least one sample");

    /* A reader error is passed up unchanged. */
    fx_path(bad, sizeof bad, *state, "missing");
    expect_load_fails(im, bad, 10, DDP_ERR_IO, "cannot open");
}

static void test_load_dir_prefers_gzip_and_falls_back_to_raw(void **state) {
    char p[512];
    const unsigned char labels[3] = {0, 1, 2};
    /* train: gzip images, raw labels; a raw images decoy with another size must be
     * ignored because the .gz comes first. */
    write_images(fx_path(p, sizeof p, *state, "train-images-idx3-ubyte.gz"), 3, 2, 2, 1);
    write_images(fx_path(p, sizeof p, *state, "train-images-idx3-ubyte"), 5, 2, 2, 0);
    write_labels(fx_path(p, sizeof p, *state, "train-labels-idx1-ubyte"), labels, 3, 0);
    ddp_dataset ds;
    assert_int_equal(ddp_dataset_load_dir(*state, "train", &ds), DDP_OK);
    assert_int_equal(ds.n, 3);
    assert_int_equal(ds.dim, 4);
    assert_int_equal(ds.num_classes, 10);
    assert_int_equal(ds.y[2], 2);
    ddp_dataset_free(&ds);

    /* t10k has images but no labels: the error names both label paths tried. */
    write_images(fx_path(p, sizeof p, *state, "t10k-images-idx3-ubyte"), 1, 2, 2, 0);
    ddp_error_clear();
    assert_int_equal(ddp_dataset_load_dir(*state, "t10k", &ds), DDP_ERR_IO);
    assert_msg_has("t10k labels");
    assert_msg_has(fx_path(p, sizeof p, *state, "t10k-labels-idx1-ubyte.gz"));
    assert_msg_has(fx_path(p, sizeof p, *state, "t10k-labels-idx1-ubyte'"));
}

static void test_load_dir_missing_says_how_to_install(void **state) {
    ddp_dataset ds;
    char p[512];
    ddp_error_clear();
    assert_int_equal(ddp_dataset_load_dir(*state, "train", &ds), DDP_ERR_IO);
    assert_msg_has(fx_path(p, sizeof p, *state, "train-images-idx3-ubyte.gz"));
    assert_msg_has(fx_path(p, sizeof p, *state, "train-images-idx3-ubyte'"));
    assert_msg_has("apt-get install dataset-fashion-mnist");
    assert_msg_has("--data DIR");
    assert_null(ds.x);

    ddp_error_clear();
    assert_int_equal(ddp_dataset_load_dir(*state, "test", &ds), DDP_ERR_INVALID_ARG);
    assert_msg_has("'test'");
    assert_msg_has("t10k");
}

/* The installed Fashion-MNIST: sizes, label range and the balanced class histogram. */
static void check_real_split(const char *dir, const char *split, size_t n) {
    ddp_dataset ds;
    assert_int_equal(ddp_dataset_load_dir(dir, split, &ds), DDP_OK);
    assert_int_equal(ds.n, n);
    assert_int_equal(ds.dim, 784);
    assert_int_equal(ds.num_classes, 10);
    size_t hist[10] = {0};
    for (size_t i = 0; i < ds.n; i++) {
        assert_in_range(ds.y[i], 0, 9);
        hist[ds.y[i]]++;
    }
    for (int c = 0; c < 10; c++)
        assert_int_equal(hist[c], n / 10);
    float lo = 1.0f, hi = 0.0f;
    for (size_t i = 0; i < ds.n * ds.dim; i++) {
        if (ds.x[i] < lo) lo = ds.x[i];
        if (ds.x[i] > hi) hi = ds.x[i];
    }
    assert_true(lo == 0.0f && hi == 1.0f);
    ddp_dataset_free(&ds);
}

static void test_real_fashion_mnist(void **state) {
    const char *dir = getenv("DDP_FASHION_MNIST");
    if (dir == NULL || dir[0] == '\0') dir = "/usr/share/datasets/fashion-mnist";
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        print_message("Fashion-MNIST not found in %s; skipped\n", dir);
        skip();
    }
    check_real_split(dir, "train", 60000);
    check_real_split(dir, "t10k", 10000);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_loads_pixels_scaled_and_labels, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_rejects_count_mismatch, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_rejects_label_out_of_range, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_rejects_wrong_dims_and_types, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_load_dir_prefers_gzip_and_falls_back_to_raw,
                                        fx_tmpdir_setup, fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_load_dir_missing_says_how_to_install, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test(test_real_fashion_mnist),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
