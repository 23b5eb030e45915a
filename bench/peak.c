/* peak.c: this machine's FP32 FMA peak, the denominator of bench/run.sh's
 * "% of peak" (PERF-ANCHORS measured its machine the same way).
 *
 *   peak [THREADS]
 *
 * Each thread runs 16 independent chains of vector fused multiply-adds in
 * the widest vectors the compiler targets (built with -march=native: 16
 * floats with AVX-512), enough to hide the FMA latency on two pipes. The
 * rate is taken over each thread's own CPU time, so that other processes on
 * a shared machine do not lower it (they take wall time, not cycles): the
 * best of 5 runs, times the number of threads, is printed in GFLOP/s.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif

typedef float vf __attribute__((vector_size(LANES * 4)));

enum { CHAINS = 16 };
static const long ITERS = 20000000;

#define CHAIN16(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)

typedef struct job {
    float sink;
    double cpu_s;
} job;

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *run(void *arg) {
    job *jb = arg;
    double t0 = cpu_now();
    vf a, b;
    for (int l = 0; l < LANES; l++) {
        a[l] = 0.999999f;
        b[l] = 1e-7f;
    }
#define DECL(c) vf acc##c = a * (float)(c);
    CHAIN16(DECL)
    for (long i = 0; i < ITERS / CHAINS; i++) {
        /* an empty asm per chain keeps the sixteen in registers and the
         * multiply-adds from being folded away */
#define STEP(c) acc##c = acc##c * a + b; __asm__("" : "+v"(acc##c));
        CHAIN16(STEP)
    }
    vf s = a - a;
#define SUM(c) s += acc##c;
    CHAIN16(SUM)
    float t = 0;
    for (int l = 0; l < LANES; l++)
        t += s[l];
    jb->sink = t;
    jb->cpu_s = cpu_now() - t0;
    return NULL;
}

int main(int argc, char **argv) {
    int nt = argc > 1 ? atoi(argv[1]) : 1;
    if (nt < 1 || nt > 256)
        nt = 1;
    pthread_t th[256];
    job jobs[256];
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        for (int t = 0; t < nt; t++)
            pthread_create(&th[t], NULL, run, &jobs[t]);
        for (int t = 0; t < nt; t++)
            pthread_join(th[t], NULL);
        double gf = 0;
        for (int t = 0; t < nt; t++)
            gf += 2.0 * LANES * (double)(ITERS / CHAINS * CHAINS) / jobs[t].cpu_s / 1e9;
        if (gf > best)
            best = gf;
    }
    printf("peak_gflops=%.1f threads=%d lanes=%d\n", best, nt, LANES);
    return jobs[0].sink == 12345.f;
}
