/* bench_gemm.c: Lethe's generated GEMMs against OpenBLAS's cblas_sgemm, the
 * GEMM micro-benchmark section of bench/run.sh (`bench/run.sh gemm` alone).
 *
 *   bench_gemm PROGRAM.so [--reps N] [--threads 1,2] [--only SUBSTRING,...] [--peak THREADS:GFLOPS]...
 *
 * PROGRAM.so is bench/gemm.lth compiled by lethec (--only: the entries whose
 * names contain one of the substrings). Each entry is one GEMM
 * (or one convolution), named FORM_SHAPE (gemm.lth says which): nn C = A B,
 * nt C = A B^T, tn C = A^T B, conv a 3x3 convolution with pad 1 (Lethe's
 * implicit-im2col GEMMs). For each entry and thread count, both sides run
 * once to warm up and then in N alternating rounds (Lethe, then OpenBLAS, on
 * the same inputs; a round of a GEMM under ~10 ms repeats it, MIN_ROUND_FLOP);
 * each side's fastest round counts, since other processes on a shared
 * machine only ever make a call slower. The OpenBLAS side of a
 * conv row is one cblas_sgemm per image on im2col columns built beforehand
 * (the im2col is not timed), so its ratio flatters OpenBLAS.
 *
 * Prints a Markdown section: the CPU, the kernel OpenBLAS picked
 * (openblas_get_corename) and the environment that picked it, then one row
 * per entry and thread count: milliseconds, GFLOP/s, Lethe/OpenBLAS (>1:
 * Lethe faster), on one thread also the ratio of the two sides' least
 * CPU time of the calling thread (which other processes do not inflate:
 * the fairer figure on a busy machine), % of the measured FP32 peak
 * (bench/peak.c, passed with --peak) and the largest difference between the two results relative to
 * the largest |result|. Exits 1 if a difference exceeds 1e-3 (a wrong
 * GEMM, not rounding: random inputs in [-1, 1) and fp32 sums of up to 131072
 * terms stay far below it).
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "lethe.h"
#include "threadpool.h"

enum { MAX_THREAD_COUNTS = 8 };
static const double MISMATCH = 1e-3;
/* OpenBLAS's idle threads keep yielding for about 0.1 s after a call (its
 * thread timeout) before they sleep; Lethe's 2-thread run waits that long
 * after it so that they do not take its second core. */
static const double BLAS_IDLE_S = 0.15;
/* A round repeats a GEMM of under ~10 ms (at 200 GFLOP/s) back to back, as
 * a step runs its kernels, and counts the mean call: a lone call of 1-3 ms
 * on two threads measured mostly the wake-up of the idle second thread
 * after the gap between rounds (GPT-2's 256 x 768 x 768 on 2 threads: 1.72
 * ms alone, 0.77 ms per call in a round of 20; 1.43 ms on one thread). */
static const double MIN_ROUND_FLOP = 2e9;

typedef enum form { F_NN, F_NT, F_TN, F_CONV } form;
static const char *const FORM_NAME[] = {"NN", "NT", "TN", "conv"};

/* what each shape of gemm.lth is, for the row labels */
static const struct {
    const char *shape, *what;
} SHAPES[] = {
    {"sq2048", "2048^3"},
    {"w64_stem", "w64 stem 3->64, 32x32"},
    {"w64_l1", "w64 layer1 64->64, 32x32"},
    {"w64_l2", "w64 layer2 128->128, 16x16"},
    {"w64_l3", "w64 layer3 256->256, 8x8"},
    {"w64_l4", "w64 layer4 512->512, 4x4"},
    {"w64_fc", "w64 fc 512->10"},
    {"w16_stem", "w16 stem 1->16, 28x28"},
    {"w16_l1", "w16 layer1 16->16, 28x28"},
    {"w16_l2", "w16 layer2 32->32, 14x14"},
    {"w16_l3", "w16 layer3 64->64, 7x7"},
    {"w16_l4", "w16 layer4 128->128, 4x4"},
    {"w16_fc", "w16 fc 128->10"},
    {"gpt2_qkv_bt256", "GPT-2 qkv fwd, BT 256"},
    {"gpt2_attproj_bt256", "GPT-2 attn proj fwd, BT 256"},
    {"gpt2_fc_bt256", "GPT-2 fc fwd, BT 256"},
    {"gpt2_fcproj_bt256", "GPT-2 fc proj fwd, BT 256"},
    {"gpt2_lmhead_bt256", "GPT-2 LM head fwd, BT 256"},
    {"gpt2_lmhead_dx_bt256", "GPT-2 LM head dX, BT 256"},
    {"gpt2_lmhead_dw_bt256", "GPT-2 LM head dW, BT 256"},
    {"gpt2_qkv_bt512", "GPT-2 qkv fwd, BT 512"},
    {"gpt2_attproj_bt512", "GPT-2 attn proj fwd, BT 512"},
    {"gpt2_fc_bt512", "GPT-2 fc fwd, BT 512"},
    {"gpt2_fcproj_bt512", "GPT-2 fc proj fwd, BT 512"},
    {"gpt2_lmhead_bt512", "GPT-2 LM head fwd, BT 512"},
    {"gpt2_lmhead_dx_bt512", "GPT-2 LM head dX, BT 512"},
    {"gpt2_lmhead_dw_bt512", "GPT-2 LM head dW, BT 512"},
};

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static int64_t numel(const lethe_arg *a) {
    int64_t n = 1;
    for (int d = 0; d < a->rank; d++)
        n *= a->shape[d];
    return n;
}

/* One entry as a problem: its two inputs, its output, and the sizes. */
typedef struct problem {
    const lethe_entry *e;
    form f;
    const char *shape;            /* after the prefix: "w64_l1" */
    const lethe_arg *in[2], *out;
    float *a, *b, *c;             /* the frame's buffers */
    int64_t m, n, k;              /* the GEMM (conv: per image, m = out channels) */
    int64_t images, cin, h, w;    /* conv only */
    float *blas_b, *blas_c;       /* the OpenBLAS side's B (conv: the columns) and C */
} problem;

static int parse_problem(problem *p, const lethe_entry *e) {
    static const char *const prefix[] = {"nn_", "nt_", "tn_", "conv_"};
    memset(p, 0, sizeof *p);
    p->e = e;
    int f = -1;
    for (int i = 0; i < 4 && f < 0; i++)
        if (!strncmp(e->name, prefix[i], strlen(prefix[i])))
            f = i;
    if (f < 0)
        return -1;
    p->f = (form)f;
    p->shape = e->name + strlen(prefix[f]);
    int nin = 0;
    for (int i = 0; i < e->nargs; i++) {
        const lethe_arg *a = &e->args[i];
        if (a->kind == LETHE_INPUT && nin < 2)
            p->in[nin++] = a;
        else if (a->kind == LETHE_OUTPUT)
            p->out = a;
    }
    if (nin != 2 || !p->out || p->in[0]->dtype != LETHE_F32 || p->in[1]->dtype != LETHE_F32)
        return -1;
    const int64_t *sa = p->in[0]->shape, *sb = p->in[1]->shape;
    if (p->f == F_CONV) {
        if (p->in[0]->rank != 4 || p->in[1]->rank != 4 || sb[2] != 3 || sb[3] != 3 || sb[1] != sa[1])
            return -1;
        p->images = sa[0], p->cin = sa[1], p->h = sa[2], p->w = sa[3];
        p->m = sb[0], p->n = p->h * p->w, p->k = p->cin * 9;
        return 0;
    }
    if (p->in[0]->rank != 2 || p->in[1]->rank != 2)
        return -1;
    p->images = 1;
    switch (p->f) {
    case F_NN: p->m = sa[0], p->k = sa[1], p->n = sb[1]; break;
    case F_NT: p->m = sa[0], p->k = sa[1], p->n = sb[0]; break;
    default:   p->k = sa[0], p->m = sa[1], p->n = sb[1]; break;
    }
    return 0;
}

/* columns[image][c * 9 + ky * 3 + kx][y * w + x] of a 3x3, pad 1, stride 1
 * convolution: the B operand of gemm.lth's conv3x3 per image */
static void im2col3x3(const problem *p, const float *x, float *cols) {
    int64_t hw = p->h * p->w;
    for (int64_t img = 0; img < p->images; img++)
        for (int64_t c = 0; c < p->cin; c++)
            for (int t = 0; t < 9; t++) {
                const float *src = x + (img * p->cin + c) * hw;
                float *dst = cols + (img * p->k + c * 9 + t) * hw;
                int dy = t / 3 - 1, dx = t % 3 - 1;
                for (int64_t y = 0; y < p->h; y++)
                    for (int64_t xx = 0; xx < p->w; xx++) {
                        int64_t sy = y + dy, sx = xx + dx;
                        dst[y * p->w + xx] = sy >= 0 && sy < p->h && sx >= 0 && sx < p->w ? src[sy * p->w + sx] : 0.0f;
                    }
            }
}

static void run_blas(const problem *p) {
    switch (p->f) {
    case F_NN:
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)p->m, (int)p->n, (int)p->k, 1.0f, p->a, (int)p->k,
                    p->b, (int)p->n, 0.0f, p->blas_c, (int)p->n);
        break;
    case F_NT:
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)p->m, (int)p->n, (int)p->k, 1.0f, p->a, (int)p->k,
                    p->b, (int)p->k, 0.0f, p->blas_c, (int)p->n);
        break;
    case F_TN:
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)p->m, (int)p->n, (int)p->k, 1.0f, p->a, (int)p->m,
                    p->b, (int)p->n, 0.0f, p->blas_c, (int)p->n);
        break;
    case F_CONV:
        /* a = the image batch, b = the weights [m, k]; blas_b the columns */
        for (int64_t img = 0; img < p->images; img++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)p->m, (int)p->n, (int)p->k, 1.0f, p->b,
                        (int)p->k, p->blas_b + img * p->k * p->n, (int)p->n, 0.0f, p->blas_c + img * p->m * p->n,
                        (int)p->n);
        break;
    }
}

/* max |lethe - blas| / max |blas| */
static double rel_diff(const float *x, const float *ref, int64_t n) {
    double d = 0, r = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)x[i] - (double)ref[i]);
        if (!(e <= d))
            d = e;   /* NaN propagates as a maximal difference */
        if (fabs((double)ref[i]) > r)
            r = fabs((double)ref[i]);
    }
    return r > 0 ? d / r : d;
}

/* whether name contains one of the comma-separated substrings of list */
static int name_selected(const char *name, const char *list) {
    char buf[256];
    for (const char *s = list; *s;) {
        size_t len = strcspn(s, ",");
        if (len > 0 && len < sizeof buf) {
            memcpy(buf, s, len);
            buf[len] = 0;
            if (strstr(name, buf))
                return 1;
        }
        s += len;
        s += *s == ',';
    }
    return 0;
}

static const char *shape_label(const char *shape) {
    for (size_t i = 0; i < sizeof SHAPES / sizeof SHAPES[0]; i++)
        if (!strcmp(SHAPES[i].shape, shape))
            return SHAPES[i].what;
    return shape;
}

static void print_cpu(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512], model[256] = "?", family[32] = "?", mod[32] = "?";
    while (f && fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (!colon)
            continue;
        char *v = colon + 1 + (colon[1] == ' ');
        v[strcspn(v, "\n")] = 0;
        if (!strncmp(line, "model name", 10) && !strcmp(model, "?"))
            snprintf(model, sizeof model, "%s", v);
        else if (!strncmp(line, "cpu family", 10) && !strcmp(family, "?"))
            snprintf(family, sizeof family, "%s", v);
        else if (!strncmp(line, "model\t", 6) && !strcmp(mod, "?"))
            snprintf(mod, sizeof mod, "%s", v);
    }
    if (f)
        fclose(f);
    printf("CPU: %s (family %s, model %s).\n", model, family, mod);
}

typedef struct ratio_stats {
    double log_sum, log_sum_cpu, min;
    int rows, at_least_09;
    const char *min_row;
} ratio_stats;

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PROGRAM.so [--reps N] [--threads 1,2] [--only SUBSTRING,...] [--peak THREADS:GFLOPS]...\n",
                argv[0]);
        return 2;
    }
    int reps = 3, nthr = 0, threads[MAX_THREAD_COUNTS];
    double peak[MAX_THREAD_COUNTS] = {0};
    const char *only = NULL, *thread_list = "1,2";
    struct { int t; double g; } peaks[MAX_THREAD_COUNTS];
    int npeaks = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            thread_list = argv[++i];
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--peak") && i + 1 < argc && npeaks < MAX_THREAD_COUNTS &&
                 sscanf(argv[++i], "%d:%lf", &peaks[npeaks].t, &peaks[npeaks].g) == 2)
            npeaks++;
        else {
            fprintf(stderr, "bench_gemm: bad argument %s\n", argv[i]);
            return 2;
        }
    }
    if (reps < 1)
        reps = 1;
    for (const char *s = thread_list; *s && nthr < MAX_THREAD_COUNTS;) {
        int t = atoi(s);
        if (t < 1) {
            fprintf(stderr, "bench_gemm: bad thread count in %s\n", thread_list);
            return 2;
        }
        threads[nthr++] = t;
        s += strcspn(s, ",");
        s += *s == ',';
    }
    for (int i = 0; i < nthr; i++)
        for (int j = 0; j < npeaks; j++)
            if (peaks[j].t == threads[i])
                peak[i] = peaks[j].g;

    char err[LETHE_ERR_LEN];
    lethe_prog prog;
    if (lethe_prog_open(argv[1], "", &prog, err)) {
        fprintf(stderr, "bench_gemm: %s\n", err);
        return 1;
    }
    lethe_pool *pools[MAX_THREAD_COUNTS];
    lethe_ctx ctxs[MAX_THREAD_COUNTS];
    for (int i = 0; i < nthr; i++) {
        if (!(pools[i] = lethe_pool_new(threads[i]))) {
            fprintf(stderr, "bench_gemm: cannot start a pool of %d threads\n", threads[i]);
            return 1;
        }
        lethe_ctx_init(&ctxs[i], pools[i], 1234);
    }

    const char *coretype = getenv("OPENBLAS_CORETYPE");
    printf("### Generated GEMMs against OpenBLAS (micro-benchmark)\n\n");
    print_cpu();
    printf("OpenBLAS: %s; kernel (openblas_get_corename): **%s**; OPENBLAS_CORETYPE=%s, OPENBLAS_L2_SIZE=%s%s.\n",
           openblas_get_config(), openblas_get_corename(), coretype ? coretype : "(unset)",
           getenv("OPENBLAS_L2_SIZE") ? getenv("OPENBLAS_L2_SIZE") : "(unset)",
           coretype ? " (set: this is not OpenBLAS's own choice of kernel)" : " (OpenBLAS's own choice)");
    printf("Each figure: the fastest of %d alternating rounds per side after one warm-up round, a round being "
           "one call or, for a GEMM under ~10 ms, that many back to back (its mean call, as in a step); ratio = Lethe GFLOP/s "
           "over OpenBLAS GFLOP/s (>1: Lethe faster), on 1 thread also by each side's least CPU time of the calling "
           "thread (robust to other processes); %% peak of bench/peak.c's FP32 peak for the threads used; diff = "
           "max |Lethe - OpenBLAS| / max |OpenBLAS|. Conv rows: Lethe's conv2d entry (implicit im2col) against one "
           "cblas_sgemm per image on im2col columns built beforehand (im2col not timed).\n\n",
           reps);
    printf("| shape | form | M x N x K | threads | Lethe ms | OpenBLAS ms | Lethe GFLOP/s (%% peak) | OpenBLAS GFLOP/s "
           "(%% peak) | ratio | ratio by CPU time | diff |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    fflush(stdout);

    ratio_stats st[MAX_THREAD_COUNTS][2];   /* [threads][plain GEMM, conv] */
    for (int i = 0; i < nthr; i++)
        for (int j = 0; j < 2; j++)
            st[i][j] = (ratio_stats){0, 0, INFINITY, 0, 0, ""};
    int mismatches = 0, failed = 0;
    for (uint32_t ei = 0; ei < prog.p->nentries && !failed; ei++) {
        problem p;
        if (parse_problem(&p, &prog.p->entries[ei]))
            continue;
        if (only && !name_selected(p.e->name, only))
            continue;
        lethe_frame *fr = frame_new(p.e, NULL, 0, NULL, err);
        if (!fr) {
            fprintf(stderr, "bench_gemm: %s\n", err);
            failed = 1;
            break;
        }
        p.a = frame_arg(fr, p.in[0]->name);
        p.b = frame_arg(fr, p.in[1]->name);
        p.c = frame_arg(fr, p.out->name);
        int64_t na = numel(p.in[0]), nb = numel(p.in[1]), nc = numel(p.out);
        for (int64_t i = 0; i < na; i++)
            p.a[i] = rng_uniform();
        for (int64_t i = 0; i < nb; i++)
            p.b[i] = rng_uniform();
        p.blas_c = malloc((size_t)nc * sizeof(float));
        if (p.f == F_CONV) {
            p.blas_b = malloc((size_t)(p.images * p.k * p.n) * sizeof(float));
            if (p.blas_b)
                im2col3x3(&p, p.a, p.blas_b);
        }
        if (!p.blas_c || (p.f == F_CONV && !p.blas_b)) {
            fprintf(stderr, "bench_gemm: out of memory for %s\n", p.e->name);
            failed = 1;
        }
        double flops = 2.0 * (double)p.images * (double)p.m * (double)p.n * (double)p.k;
        /* a timed round of a small GEMM runs it often enough to take about
         * 10 ms (MIN_ROUND_FLOP) */
        int calls = flops >= MIN_ROUND_FLOP ? 1 : (int)ceil(MIN_ROUND_FLOP / flops);
        for (int ti = 0; ti < nthr && !failed; ti++) {
            double best_l = INFINITY, best_b = INFINITY, cpu_l = INFINITY, cpu_b = INFINITY;
            for (int r = 0; r <= reps && !failed; r++) {
                double c0 = clock_s(CLOCK_THREAD_CPUTIME_ID), t0 = now_s();
                for (int c = 0; c < calls; c++)
                    if (frame_call(fr, &ctxs[ti], err)) {
                        fprintf(stderr, "bench_gemm: %s: %s\n", p.e->name, err);
                        failed = 1;
                        break;
                    }
                double t1 = now_s(), c1 = clock_s(CLOCK_THREAD_CPUTIME_ID);
                openblas_set_num_threads(threads[ti]);
                for (int c = 0; c < calls; c++)
                    run_blas(&p);
                double t2 = now_s(), c2 = clock_s(CLOCK_THREAD_CPUTIME_ID);
                if (r > 0) {   /* round 0 warms up both sides */
                    best_l = fmin(best_l, (t1 - t0) / calls);
                    best_b = fmin(best_b, (t2 - t1) / calls);
                    cpu_l = fmin(cpu_l, (c1 - c0) / calls);
                    cpu_b = fmin(cpu_b, (c2 - c1) / calls);
                }
                if (threads[ti] > 1)
                    sleep_s(BLAS_IDLE_S);
            }
            if (failed)
                break;
            double diff = rel_diff(p.c, p.blas_c, nc);
            double gl = flops / best_l * 1e-9, gb = flops / best_b * 1e-9, ratio = gl / gb;
            char pl[32] = "", pb[32] = "";
            if (peak[ti] > 0) {
                snprintf(pl, sizeof pl, " (%.0f%%)", 100 * gl / peak[ti]);
                snprintf(pb, sizeof pb, " (%.0f%%)", 100 * gb / peak[ti]);
            }
            char per_image[48] = "";
            if (p.f == F_CONV)
                snprintf(per_image, sizeof per_image, " (%lld images x %lld)", (long long)p.images, (long long)p.n);
            /* on more threads the others' work is not the caller's CPU time */
            char cpu_ratio[32] = "-";
            double rc = cpu_l > 0 && cpu_b > 0 ? cpu_b / cpu_l : NAN;
            if (threads[ti] == 1)
                snprintf(cpu_ratio, sizeof cpu_ratio, "%.2f", rc);
            int bad = !(diff <= MISMATCH);
            mismatches += bad;
            printf("| %s | %s | %lld x %lld%s x %lld | %d | %.3g | %.3g | %.1f%s | %.1f%s | %.2f | %s | %.1e%s |\n",
                   shape_label(p.shape), FORM_NAME[p.f], (long long)p.m, (long long)(p.n * p.images), per_image,
                   (long long)p.k, threads[ti], best_l * 1e3, best_b * 1e3, gl, pl, gb, pb, ratio, cpu_ratio, diff, bad ? " **MISMATCH**" : "");
            fflush(stdout);
            ratio_stats *s = &st[ti][p.f == F_CONV];
            s->log_sum += log(ratio);
            s->log_sum_cpu += log(rc);
            s->rows++;
            s->at_least_09 += ratio >= 0.9;
            if (ratio < s->min) {
                s->min = ratio;
                s->min_row = p.e->name;
            }
        }
        free(p.blas_b);
        free(p.blas_c);
        frame_free(fr);
    }
    printf("\n");
    for (int ti = 0; ti < nthr; ti++)
        for (int j = 0; j < 2; j++) {
            const ratio_stats *s = &st[ti][j];
            if (!s->rows)
                continue;
            printf("%d thread%s, %s: geometric mean ratio %.2f over %d rows, %d of them at least 0.9x; lowest %.2f (%s)",
                   threads[ti], threads[ti] > 1 ? "s" : "", j ? "conv entries" : "plain GEMMs",
                   exp(s->log_sum / s->rows), s->rows, s->at_least_09, s->min, s->min_row);
            if (threads[ti] == 1)
                printf("; by CPU time %.2f", exp(s->log_sum_cpu / s->rows));
            printf(".\n");
        }
    if (mismatches)
        printf("\n**%d rows differ from OpenBLAS by more than %.0e: a wrong GEMM.**\n", mismatches, MISMATCH);
    for (int i = 0; i < nthr; i++)
        lethe_pool_free(pools[i]);
    lethe_prog_close(&prog);
    return failed || mismatches ? 1 : 0;
}
