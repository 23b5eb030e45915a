/* bench_resnet.c: times one entry point of a compiled program, the Lethe side
 * of bench/run.sh.
 *
 *   bench_resnet PROGRAM.so ENTRY [--warmup N] [--steps N] [--threads N] [--profile [--cpu-time]]
 *
 * Loads the program through runtime/lethe.h, initialises the model with
 * ENTRY.init_model (and the rule state with ENTRY.init_state) from a fixed
 * seed, fills the inputs with a fixed pseudo-random batch (x uniform in
 * [-1, 1), labels or token ids in [0, 10), a mask (GPT-2's) all 1), runs
 * N warm-up calls and then N timed calls on a thread pool of --threads
 * threads (default: one per CPU; OpenBLAS gets the same count). One process
 * times one entry, so its peak resident memory (getrusage, the whole
 * process: program, model, state, frame, workspace, OpenBLAS buffers)
 * belongs to that configuration alone.
 *
 * Prints one line of key=value pairs (the median, min and max seconds per
 * call, the least process CPU time of a call, the peak RSS in MiB and the
 * workspace in MiB). With --profile, the
 * generated code's kernel profile (backend_llvm_abi.c) is enabled for the
 * timed calls and a per-kernel table follows, as lines starting with "K ":
 * the minimum and the mean ms per call over the timed steps, the minimum's
 * share of the sum of minima, GFLOP/s at the minimum (from the kernel's
 * rough flop count), the kernel name and the graph nodes it computes. The
 * minimum is what a kernel costs when no other process takes its core.
 * --cpu-time profiles the calling thread's CPU time instead of wall time:
 * with --threads 1 that is the kernels' cost even on a busy machine.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bench_util.h"
#include "lethe.h"
#include "threadpool.h"
#include "bench_profile.h"

static void fill_inputs(lethe_frame *f) {
    const lethe_entry *e = f->e;
    for (int i = 0; i < e->nargs; i++) {
        const lethe_arg *a = &e->args[i];
        if (a->kind != LETHE_INPUT)
            continue;
        int64_t n = 1;
        for (int d = 0; d < a->rank; d++)
            n *= a->shape[d];
        size_t len = strlen(a->name);
        int is_mask = len >= 4 && !strcmp(a->name + len - 4, "mask");   /* GPT-2's padding mask: all real tokens */
        if (a->dtype == LETHE_F32)
            for (int64_t j = 0; j < n; j++)
                ((float *)f->args[i])[j] = is_mask ? 1.0f : rng_uniform();
        else if (a->dtype == LETHE_I32)
            for (int64_t j = 0; j < n; j++)
                ((int32_t *)f->args[i])[j] = (int32_t)(rng_next() % 10);
    }
}

static int call_init(const lethe_program *p, const char *entry, const char *suffix, ts_store *model, ts_store *state,
                     lethe_ctx *ctx, char *err) {
    char name[256];
    snprintf(name, sizeof name, "%s.%s", entry, suffix);
    const lethe_entry *e = lethe_entry_find(p, name);
    if (!e)
        return LETHE_OK;
    frame_models fm = {NULL, model};
    lethe_frame *f = frame_new(e, &fm, 1, state, err);
    if (!f)
        return LETHE_EARG;
    int rc = frame_call(f, ctx, err);
    frame_free(f);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s PROGRAM.so ENTRY [--warmup N] [--steps N] [--threads N] [--profile [--cpu-time]]\n",
                argv[0]);
        return 2;
    }
    const char *so = argv[1], *entry = argv[2];
    int warmup = 2, steps = 5, threads = 0, profile = 0, cpu_clock = 0;
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
    char err[LETHE_ERR_LEN];
    lethe_prog prog;
    if (lethe_prog_open(so, "", &prog, err)) {
        fprintf(stderr, "bench_resnet: %s\n", err);
        return 1;
    }
    const lethe_entry *e = lethe_entry_find(prog.p, entry);
    if (!e) {
        fprintf(stderr, "bench_resnet: %s has no entry %s\n", so, entry);
        return 1;
    }
    lethe_pool *pool = lethe_pool_new(threads);
    lethe_ctx ctx;
    lethe_ctx_init(&ctx, pool, 1234);
    ts_store model = {0}, state = {0};
    if (call_init(prog.p, entry, "init_model", &model, NULL, &ctx, err) ||
        call_init(prog.p, entry, "init_state", &model, &state, &ctx, err)) {
        fprintf(stderr, "bench_resnet: %s\n", err);
        return 1;
    }
    frame_models fm = {NULL, &model};
    lethe_frame *f = frame_new(e, &fm, 1, &state, err);
    if (!f) {
        fprintf(stderr, "bench_resnet: %s\n", err);
        return 1;
    }
    fill_inputs(f);
    /* the learning rate of a training step is small enough that a few steps on
     * one batch stay finite */
    frame_set_scalar(f, "lr", 0.01);
    for (int i = 0; i < warmup; i++)
        if (frame_call(f, &ctx, err)) {
            fprintf(stderr, "bench_resnet: %s\n", err);
            return 1;
        }
    kprofile *kp = profile ? dlsym(prog.handle, "lethe_program_main_profile") : NULL;
    if (profile && !kp)
        fprintf(stderr, "bench_resnet: %s has no kernel profile table\n", so);
    kstats ks = kstats_new(kp, entry);
    if (kp)
        kp->enabled = 1 + (cpu_clock ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC);
    double *t = calloc((size_t)steps, sizeof(double)), *cpu = calloc((size_t)steps, sizeof(double));
    double total = 0;
    for (int i = 0; i < steps; i++) {
        ctx.counter = (uint64_t)i;
        double t0 = now_s(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
        if (frame_call(f, &ctx, err)) {
            fprintf(stderr, "bench_resnet: %s\n", err);
            return 1;
        }
        t[i] = now_s() - t0;
        cpu[i] = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
        total += t[i];
        kstats_step(&ks);
    }
    qsort(t, (size_t)steps, sizeof(double), cmp_double);
    qsort(cpu, (size_t)steps, sizeof(double), cmp_double);
    double med = steps % 2 ? t[steps / 2] : 0.5 * (t[steps / 2 - 1] + t[steps / 2]);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    float *loss = frame_arg(f, "loss");
    printf("entry=%s median_s=%.5f min_s=%.5f max_s=%.5f cpu_min_s=%.5f steps=%d threads=%d peak_rss_mb=%.1f "
           "workspace_mb=%.1f",
           entry, med, t[0], t[steps - 1], cpu[0], steps, lethe_pool_nthreads(pool), (double)ru.ru_maxrss / 1024.0,
           (double)e->workspace_bytes / (1024.0 * 1024.0));
    if (loss)
        printf(" loss=%.4f", (double)*loss);
    printf("\n");
    if (kp)
        kstats_print(&ks, steps, total / steps);
    frame_free(f);
    ts_clear(&model);
    ts_clear(&state);
    lethe_pool_free(pool);
    lethe_prog_close(&prog);
    free(t);
    free(cpu);
    return 0;
}
