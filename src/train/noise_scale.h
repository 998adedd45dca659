/* The gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch
 * Training", appendix A.1): unbiased estimates of |G|^2 and tr(Sigma) from the squared
 * norms of one gradient over a small batch and one over a large batch, smoothed by
 * exponential moving averages, and their ratio B_simple = tr(Sigma) / |G|^2. The pure
 * estimator is here; noise_scale.c also holds the trainer's hooks that measure the norms. */
#ifndef DDP_NOISE_SCALE_H
#define DDP_NOISE_SCALE_H

#include <stddef.h>
#include <stdint.h>

/* From E|G_B|^2 = |G|^2 + tr(Sigma) / B at two batch sizes b_small < b_big:
 *   |G|^2     = (b_big |G_big|^2 - b_small |G_small|^2) / (b_big - b_small)
 *   tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1 / b_small - 1 / b_big)
 * Both are unbiased; each alone is noisy, and either may come out negative. */
void ddp_gns_estimate(double b_small, double small_sq, double b_big, double big_sq, double *g2,
                      double *trace);

/* The moving averages. Linear in the estimates, so the average over ranks of each rank's
 * averages (each fed its own small-batch norm and the common large-batch one) is the
 * average of the estimates from the rank-averaged small-batch norm: the ranks need not
 * communicate until the value is read. */
typedef struct {
    double beta;   /* decay per step, in [0, 1) */
    double g2, tr; /* the averages, not yet corrected for their start at zero */
    int64_t n;     /* estimates folded in */
} ddp_gns_ema;

void ddp_gns_ema_init(ddp_gns_ema *e, double beta);
void ddp_gns_ema_add(ddp_gns_ema *e, double g2, double trace);
/* The bias-corrected averages (divided by 1 - beta^n, as Adam's moments); 0 when n = 0. */
void ddp_gns_ema_read(const ddp_gns_ema *e, double *g2, double *trace);
/* B_simple = tr(Sigma) / |G|^2 from the averages; NaN when there is no estimate yet or the
 * averaged |G|^2 is not positive (the gradient is all noise at this batch size). */
double ddp_gns_b_simple(const ddp_gns_ema *e);

#endif
