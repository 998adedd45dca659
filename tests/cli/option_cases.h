/*
 * A good and a bad value of every option of every program (ddp-train with each model kind,
 * ddp-bench allreduce and train, ddp-generate): test_option_tables walks every option of
 * the tables with them (an option without a case fails there), test_option_entries checks
 * the entries' defaults, fingerprint and resume flags with them.
 */
#ifndef DDP_TEST_OPTION_CASES_H
#define DDP_TEST_OPTION_CASES_H

#include <stddef.h>

#include "ddp/model.h"

typedef struct {
    const char *name;
    const char *good; /* NULL: a flag */
    const char *bad;  /* refused; for a flag, the value given with '=' */
    const char *alt;  /* another good value, for a model whose default good is */
} opt_case;

extern const opt_case train_cases[], allreduce_cases[], bench_train_cases[], generate_cases[];
extern const size_t n_train_cases, n_allreduce_cases, n_bench_train_cases, n_generate_cases;
/* The case of --name in cases[0..n), or NULL. */
const opt_case *find_case(const opt_case *cases, size_t n, const char *name);
/* ddp-train's --help for model kind k (malloc'd; NULL without memory). */
char *train_help(ddp_model_kind k);

#endif
