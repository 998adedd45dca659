/* Helpers shared by the files of src/data/ (not part of the public header). */
#ifndef DDP_DATA_IMPL_H
#define DDP_DATA_IMPL_H

#include "ddp/data.h"

/* Explains why global_batch does not split evenly over the ranks, naming the nearest
 * batch sizes that would and that are at most n (SIZE_MAX: no upper bound). */
ddp_status ddp_data_fail_indivisible(size_t n, size_t global_batch, int world);

#endif
