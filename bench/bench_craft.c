/* bench_craft.c: times one Witches' Brew crafting step, the Lethe side of
 * the crafting rows of bench/run.sh (PyTorch's: bench_torch.py w16 craft).
 *
 *   bench_craft PROGRAM.so ENTRY [--warmup N] [--steps N] [--threads N] [--profile [--cpu-time]]
 *
 * ENTRY is an export of graphs/attacks/witches_brew.lth (bench/craft.lth):
 * the model gets fresh parameters from ENTRY.init_model (fixed seed), the
 * target gradient is computed once by ENTRY.init_state from a fixed
 * pseudo-random target image and adversarial label (not timed, as the poison
 * stage does it once per batch), and each timed call is one step: the
 * poison batch's gradient over all parameters, 1 - cosine against the target
 * gradient, its gradient with respect to the images (second order), signed
 * Adam and the projection. Images are uniform in [-1, 1), labels in [0, 10),
 * the box [-1, 1] and the L-inf radius 16/255 (pixel scale 1), so the
 * projection clamps some pixels as in real crafting.
 *
 * Prints one line of key=value pairs as bench_resnet.c does: the median,
 * min and max seconds per step, the least process CPU time of a step, the
 * peak RSS in MiB of the whole process (it times one entry only), the
 * workspace in MiB, the loss after the last step and the step's GFLOP (the
 * program's static per-kernel counts). --profile adds the
 * generated code's per-kernel table of the timed steps ("K " lines, as
 * bench_resnet.c prints them; bench_profile.h), --cpu-time on the calling
 * thread's CPU clock: with --threads 1, what each kernel costs even on a busy
 * machine.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bench_profile.h"
#include "bench_util.h"
#include "lethe.h"
#include "threadpool.h"

/* Fills the named inputs of f: FIELD.x uniform in [-1, 1), FIELD.y in [0, 10). */
static int fill_data(lethe_frame *f, const char *field, char *err) {
    char xname[64], yname[64];
    snprintf(xname, sizeof xname, "%s.x", field);
    snprintf(yname, sizeof yname, "%s.y", field);
    for (int i = 0; i < f->e->nargs; i++) {
        const lethe_arg *a = &f->e->args[i];
        int is_x = !strcmp(a->name, xname), is_y = !strcmp(a->name, yname);
        if (!is_x && !is_y)
            continue;
        int64_t n = 1;
        for (int d = 0; d < a->rank; d++)
            n *= a->shape[d];
        for (int64_t j = 0; j < n; j++)
            if (is_x)
                ((float *)f->args[i])[j] = rng_uniform();
            else
                ((int32_t *)f->args[i])[j] = (int32_t)(rng_next() % 10);
    }
    if (!frame_arg(f, xname) || !frame_arg(f, yname))
        return lethe_errf(err, LETHE_EFORMAT, "entry %s has no %s or %s", f->e->name, xname, yname);
    return LETHE_OK;
}

static int call_once(const lethe_program *p, const char *name, ts_store *model, ts_store *state, const char *data,
                     lethe_ctx *ctx, char *err) {
    const lethe_entry *e = lethe_entry_find(p, name);
    if (!e)
        return lethe_errf(err, LETHE_ENOTFOUND, "the program has no entry %s", name);
    frame_models fm = {NULL, model};
    lethe_frame *f = frame_new(e, &fm, 1, state, err);
    if (!f)
        return LETHE_EARG;
    int rc = data ? fill_data(f, data, err) : LETHE_OK;
    if (!rc)
        rc = frame_call(f, ctx, err);
    frame_free(f);
    return rc;
}

/* The box, the pixel scale and the radius of the projection. */
static int set_constraints(lethe_frame *f, char *err) {
    float *lo = frame_arg(f, "pixel_lo"), *hi = frame_arg(f, "pixel_hi"), *std = frame_arg(f, "pixel_std");
    if (!lo || !hi || !std)
        return lethe_errf(err, LETHE_EFORMAT, "entry %s is not a witches_brew step (no pixel_lo, pixel_hi, pixel_std)",
                          f->e->name);
    *lo = -1.0f, *hi = 1.0f, *std = 1.0f;   /* f32[1, 1, 1]: one channel */
    return frame_set_scalar(f, "eps", 16.0 / 255.0) ? lethe_errf(err, LETHE_EFORMAT, "entry %s has no scalar eps", f->e->name)
                                                   : LETHE_OK;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s PROGRAM.so ENTRY [--warmup N] [--steps N] [--threads N] [--profile [--cpu-time]]\n",
                argv[0]);
        return 2;
    }
    const char *so = argv[1], *entry = argv[2];
    int warmup = 1, steps = 3, threads = 0, profile = 0, cpu_clock = 0;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--warmup") && i + 1 < argc)
            warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--profile"))
            profile = 1;
        else if (!strcmp(argv[i], "--cpu-time"))
            cpu_clock = 1;
        else {
            fprintf(stderr, "%s: unknown argument %s\n", argv[0], argv[i]);
            return 2;
        }
    }
    if (steps < 1)
        steps = 1;
    char err[LETHE_ERR_LEN], name[256];
    lethe_prog prog;
    if (lethe_prog_open(so, "", &prog, err)) {
        fprintf(stderr, "bench_craft: %s\n", err);
        return 1;
    }
    const lethe_entry *e = lethe_entry_find(prog.p, entry);
    lethe_pool *pool = lethe_pool_new(threads);
    lethe_ctx ctx;
    lethe_ctx_init(&ctx, pool, 1234);
    ts_store model = {0}, state = {0};
    lethe_frame *f = NULL;
    int rc = e ? LETHE_OK : lethe_errf(err, LETHE_ENOTFOUND, "%s has no entry %s", so, entry);
    snprintf(name, sizeof name, "%s.init_model", entry);
    if (!rc)
        rc = call_once(prog.p, name, &model, NULL, NULL, &ctx, err);
    snprintf(name, sizeof name, "%s.init_state", entry);
    if (!rc)
        rc = call_once(prog.p, name, &model, &state, "target", &ctx, err);
    frame_models fm = {NULL, &model};
    if (!rc && !(f = frame_new(e, &fm, 1, &state, err)))
        rc = LETHE_EARG;
    if (!rc)
        rc = fill_data(f, "poison", err);
    if (!rc)
        rc = set_constraints(f, err);
    for (int i = 0; !rc && i < warmup; i++)
        rc = frame_call(f, &ctx, err);
    /* every program carries the table (its FLOP counts are static): the
     * step's FLOPs give both sides' share of the peak in bench/report.py */
    kprofile *kp = !rc ? dlsym(prog.handle, "lethe_program_main_profile") : NULL;
    if (profile && !rc && !kp)
        fprintf(stderr, "bench_craft: %s has no kernel profile table\n", so);
    kstats ks = kstats_new(kp, entry);
    double step_flops = 0;
    for (int64_t k = 0; ks.pe && k < ks.pe->nkernels; k++)
        step_flops += ks.pe->flops[k];
    if (kp && profile)
        kp->enabled = 1 + (cpu_clock ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC);
    double *t = calloc((size_t)steps, sizeof(double)), *cpu = calloc((size_t)steps, sizeof(double)), total = 0;
    for (int i = 0; !rc && i < steps; i++) {
        ctx.counter = (uint64_t)i;
        double t0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
        rc = frame_call(f, &ctx, err);
        t[i] = clock_s(CLOCK_MONOTONIC) - t0;
        cpu[i] = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
        total += t[i];
        kstats_step(&ks);
    }
    if (rc)
        fprintf(stderr, "bench_craft: %s\n", err);
    else {
        qsort(t, (size_t)steps, sizeof(double), cmp_double);
        qsort(cpu, (size_t)steps, sizeof(double), cmp_double);
        double med = steps % 2 ? t[steps / 2] : 0.5 * (t[steps / 2 - 1] + t[steps / 2]);
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        const float *loss = frame_arg(f, "loss");
        printf("entry=%s median_s=%.5f min_s=%.5f max_s=%.5f cpu_min_s=%.5f steps=%d threads=%d peak_rss_mb=%.1f "
               "workspace_mb=%.1f loss=%.6f gflop=%.4f\n",
               entry, med, t[0], t[steps - 1], cpu[0], steps, lethe_pool_nthreads(pool), (double)ru.ru_maxrss / 1024.0,
               (double)e->workspace_bytes / (1024.0 * 1024.0), loss ? (double)*loss : -1.0, step_flops * 1e-9);
        if (profile)
            kstats_print(&ks, steps, total / steps);
    }
    kstats_free(&ks);
    free(t);
    free(cpu);
    frame_free(f);
    ts_clear(&model);
    ts_clear(&state);
    lethe_pool_free(pool);
    lethe_prog_close(&prog);
    return rc ? 1 : 0;
}
