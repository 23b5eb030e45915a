/* bench_profile.h: the generated code's per-kernel profile (the table
 * backend_llvm_abi.c exports as lethe_program_main_profile) as per-step
 * minima and means, printed as the "P " and "K " lines that bench/run.sh and
 * bench/report.py read (header-only, like bench_util.h: each driver is one
 * file built by bench/run.sh): bench_resnet.c and bench_craft.c. */
#ifndef LETHE_BENCH_PROFILE_H
#define LETHE_BENCH_PROFILE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct kprofile_entry {
    const char *entry;
    int64_t nkernels;
    const char *const *kernel;
    const char *const *what;
    const double *flops;
    int64_t *ns;
} kprofile_entry;

typedef struct kprofile {
    int32_t enabled;
    int32_t nentries;
    const kprofile_entry *entries;
} kprofile;

/* The profile of `entry` as per-step minima (robust to other processes on a
 * shared machine) and means over the timed steps. */
typedef struct kstats {
    const kprofile_entry *pe;
    int64_t *last;       /* counters after the previous step */
    double *min, *sum;   /* ns per step */
} kstats;

static inline kstats kstats_new(const kprofile *kp, const char *entry) {
    kstats ks = {0};
    for (int i = 0; kp && i < kp->nentries; i++)
        if (!strcmp(kp->entries[i].entry, entry))
            ks.pe = &kp->entries[i];
    if (!ks.pe)
        return ks;
    size_t n = (size_t)ks.pe->nkernels + 1;
    ks.last = calloc(n, sizeof(int64_t));
    ks.min = calloc(n, sizeof(double));
    ks.sum = calloc(n, sizeof(double));
    for (int64_t k = 0; k < ks.pe->nkernels; k++) {
        ks.last[k] = ks.pe->ns[k];
        ks.min[k] = 1e30;
    }
    return ks;
}

static inline void kstats_step(kstats *ks) {
    for (int64_t k = 0; ks->pe && k < ks->pe->nkernels; k++) {
        double d = (double)(ks->pe->ns[k] - ks->last[k]);
        ks->last[k] = ks->pe->ns[k];
        ks->sum[k] += d;
        if (d < ks->min[k])
            ks->min[k] = d;
    }
}

/* "P entry=..." then one "K min_ms mean_ms share% GFLOP/s kernel | what" line
 * per kernel */
static inline void kstats_print(const kstats *ks, int steps, double step_s) {
    const kprofile_entry *pe = ks->pe;
    if (!pe)
        return;
    double smin = 0, smean = 0;
    for (int64_t k = 0; k < pe->nkernels; k++) {
        smin += ks->min[k];
        smean += ks->sum[k] / steps;
    }
    printf("P entry=%s kernels=%lld sum_min_ms=%.3f sum_mean_ms=%.3f step_ms=%.3f\n", pe->entry, (long long)pe->nkernels,
           smin * 1e-6, smean * 1e-6, step_s * 1e3);
    for (int64_t k = 0; k < pe->nkernels; k++) {
        double ms = ks->min[k] * 1e-6;
        double gf = ms > 0 ? pe->flops[k] / (ms * 1e6) : 0;
        printf("K %9.3f %9.3f %6.2f%% %8.1f %s | %s\n", ms, ks->sum[k] * 1e-6 / steps,
               smin > 0 ? 100.0 * ks->min[k] / smin : 0.0, gf, pe->kernel[k], pe->what[k]);
    }
}

static inline void kstats_free(kstats *ks) {
    free(ks->last);
    free(ks->min);
    free(ks->sum);
}

#endif
