/* ops_state.c: the checks of test_ops.c (one binary with it, see the
 * Makefile) that need more than a forward value: randomness (moments,
 * determinism, bit-exact Philox streams), numerically hard inputs and dtype
 * promotion, state rewritten from itself, and tensors big enough for
 * parallel loops under three schedules. The case machinery (begin, call,
 * get, expect, ...) is test_ops.c's, declared in ops_case.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_case.h"
#include "philox.h"
#include "threadpool.h"

/* ---------------------------------------------------------------------------
 * randomness */

typedef struct Stream {
    char entry[64], op[16], type[64];
    uint64_t stream;
} Stream;
static Stream streams[64];
static int nstreams;

/* Read the stream ids of every rand node from `lethec -d shapes`. */
void read_streams(const char *flags) {
    nstreams = 0;
    char path[600], args[1400];
    snprintf(path, sizeof path, "%s/ops_shapes.txt", th_tmpdir());
    snprintf(args, sizeof args, "%s --check %s -d shapes --dump-to=%s", OPS_LTH, flags, path);
    char *out = NULL;
    int rc = th_run_lethec(args, &out);
    free(out);
    FILE *f = rc == 0 ? fopen(path, "r") : NULL;
    if (!f)
        return;
    char line[1024], entry[64] = "";
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "entry ", 6)) {
            sscanf(line + 6, "%63s", entry);
            continue;
        }
        char *r = strstr(line, "= rand_");
        if (!r || nstreams == 64)
            continue;
        Stream *s = &streams[nstreams];
        unsigned long long id;
        char op[16], type[64];
        if (sscanf(r, "= %15s {stream=%llu} : %63[^@]", op, &id, type) == 3) {
            for (char *e = type + strlen(type) - 1; e >= type && (*e == ' ' || *e == '\n'); e--)
                *e = 0;
            snprintf(s->entry, sizeof s->entry, "%s", entry);
            snprintf(s->op, sizeof s->op, "%s", op);
            snprintf(s->type, sizeof s->type, "%s", type);
            s->stream = id;
            nstreams++;
        }
    }
    fclose(f);
}

static bool find_stream(const char *entry, const char *op, const char *shape, uint64_t *id) {
    for (int i = 0; i < nstreams; i++)
        if (!strcmp(streams[i].entry, entry) && !strcmp(streams[i].op, op) && strstr(streams[i].type, shape)) {
            *id = streams[i].stream;
            return true;
        }
    return false;
}

/* number of elements that differ bitwise between two copies of an argument */
static int64_t ndiff(const double *a, const double *b, int64_t n) {
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++)
        k += memcmp(&a[i], &b[i], sizeof(double)) != 0;
    return k;
}

/* the exact value generated code must produce for element i */
/* mean, unbiased variance and range of n draws */
typedef struct Moments {
    double mean, var, lo, hi;
} Moments;

static Moments moments(const double *v, int64_t n) {
    Moments m = {0, 0, INFINITY, -INFINITY};
    for (int64_t i = 0; i < n; i++)
        m.mean += v[i] / (double)n;
    for (int64_t i = 0; i < n; i++) {
        m.var += (v[i] - m.mean) * (v[i] - m.mean) / (double)(n - 1);
        m.lo = fmin(m.lo, v[i]);
        m.hi = fmax(m.hi, v[i]);
    }
    return m;
}

static double philox_ref(bool normal, uint64_t seed, uint64_t stream, uint64_t step, uint64_t i) {
    if (normal) {
        double v = philox_normal_at(seed, stream, step, i);
        return M->f64 ? v : (double)(float)v;
    }
    return philox_uniform_at(seed, stream, step, i, !M->f64);
}

static void check_exact(const char *what, const double *got, bool normal, uint64_t seed, uint64_t stream, uint64_t step, int64_t n,
                        double scale, double shift, double tol) {
    char name[300];
    snprintf(name, sizeof name, "%s.philox", what);
    double worst = 0;
    int64_t at = 0;
    for (int64_t i = 0; i < n; i++) {
        double r = philox_ref(normal, seed, stream, step, (uint64_t)i);
        if (!M->f64)
            r = (double)(float)((float)r * (float)scale + (float)shift);
        else
            r = r * scale + shift;
        double e = fabs(got[i] - r);
        if (!(e <= worst)) {   /* NaN counts as worst */
            worst = e;
            at = i;
        }
    }
    if (worst <= tol) {
        char n2[400];
        snprintf(n2, sizeof n2, "%s (worst abs err %.2e)", name, worst);
        th_pass(n2);
    } else {
        double r = philox_ref(normal, seed, stream, step, (uint64_t)at);
        th_fail(name, "not the runtime/philox.h stream (stream %llu, step %llu): worst abs err %.3e at %lld: got %.17g, philox %.17g",
                (unsigned long long)stream, (unsigned long long)step, worst, (long long)at, got[at], r);
    }
}

void test_random(void) {
    static const struct {
        const char *name;
        bool normal;
        double a, b;   /* normal: std, mean; uniform: lo, hi */
    } cs[] = {
        {"rnd_normal", 1, 1, 0}, {"rnd_normal_ms", 1, 2, 1}, {"rnd_uniform", 0, 0, 1}, {"rnd_uniform_lh", 0, -2, 3},
    };
    for (int c = 0; c < 4; c++) {
        if (!begin(cs[c].name))
            continue;
        char nm[256];
        snprintf(nm, sizeof nm, "%s.uses_rng", cname());
        th_check(F->entry->uses_rng == 1, nm, "uses_rng is %u for an entry that draws random numbers", F->entry->uses_rng);
        lethe_ctx ctx = {.seed = 0x1234abcd5678ull, .counter = 3};
        if (!call_ctx(&ctx))
            continue;
        int64_t n = numel("out");
        double *v1 = get("out");
        if (!call_ctx(&ctx))
            continue;
        double *v2 = get("out");
        ctx.counter = 4;
        if (!call_ctx(&ctx))
            continue;
        double *v3 = get("out");
        ctx.counter = 3;
        ctx.seed ^= 1ull << 40;
        if (!call_ctx(&ctx))
            continue;
        double *v4 = get("out");
        int64_t same = ndiff(v1, v2, n), dc = ndiff(v1, v3, n), ds = ndiff(v1, v4, n);
        snprintf(nm, sizeof nm, "%s.determinism", cname());
        th_check(same == 0 && dc > n * 9 / 10 && ds > n * 9 / 10, nm,
                 "same seed+counter: %lld of %lld elements differ; new counter: %lld differ; new seed: %lld differ", (long long)same,
                 (long long)n, (long long)dc, (long long)ds);
        /* moments over 4096 draws: mean within 5 standard errors, variance within 10% */
        Moments m = moments(v1, n);
        double mean = m.mean, var = m.var, lo = m.lo, hi = m.hi;
        double emean = cs[c].normal ? cs[c].b : (cs[c].a + cs[c].b) / 2;
        double evar = cs[c].normal ? cs[c].a * cs[c].a : (cs[c].b - cs[c].a) * (cs[c].b - cs[c].a) / 12;
        bool inrange = cs[c].normal || (lo > cs[c].a && hi < cs[c].b);
        double zm = fabs(mean - emean) / sqrt(evar / (double)n), rv = fabs(var / evar - 1);
        snprintf(nm, sizeof nm, "%s.moments (mean %.4f var %.4f)", cname(), mean, var);
        th_check(zm < 5 && rv < 0.1 && inrange, nm, "mean %.5f (expected %.3f, z = %.1f), variance %.5f (expected %.4f), range [%g, %g]", mean,
                 emean, zm, var, evar, lo, hi);
        uint64_t stream;
        snprintf(nm, sizeof nm, "%s", cname());
        if (find_stream(cs[c].name, cs[c].normal ? "rand_normal" : "rand_uniform", "[64, 64]", &stream))
            check_exact(nm, v1, cs[c].normal, 0x1234abcd5678ull, stream, 3, n, cs[c].normal ? cs[c].a : cs[c].b - cs[c].a,
                        cs[c].normal ? cs[c].b : cs[c].a, cs[c].a == (cs[c].normal ? 1 : 0) && cs[c].b == (cs[c].normal ? 0 : 1) ? 0 : 1e-6);
        else
            th_skip(nm, "no stream id for %s in `lethec -d shapes` output: checked by moments only", cs[c].name);
        end_case();
    }
    /* f32 deterministic ops must not claim randomness */
    if (begin("u_exp")) {
        char nm[256];
        snprintf(nm, sizeof nm, "%s.uses_rng", cname());
        th_check(F->entry->uses_rng == 0, nm, "uses_rng is %u for an entry without randomness", F->entry->uses_rng);
        end_case();
    }

    /* init_model: parameters drawn from their initializers with ctx->seed */
    if (!begin("rnd_init.init_model"))
        return;
    static const struct {
        const char *arg, *op, *shape;
        double scale, shift;
    } ps[] = {
        {"m.wn", "rand_normal", "[32, 32]", 1, 0},
        {"m.wu", "rand_uniform", "[32, 32]", 1, 0},
        {"m.wkn", "rand_normal", "[16, 8]", 0.5, 0},   /* kaiming_normal(fan_in = 8): std sqrt(2/8) */
        {"m.wku", "rand_uniform", "[16, 8]", 0, 0},    /* kaiming_uniform(fan_in = 8): +-1/sqrt(8) */
    };
    lethe_ctx ctx = {.seed = 987654321, .counter = 0};
    if (!call_ctx(&ctx))
        return;
    for (int i = 0; i < 4; i++) {
        double *v = get(ps[i].arg);
        int64_t n = numel(ps[i].arg);
        char nm[256];
        snprintf(nm, sizeof nm, "%s:%s", cname(), ps[i].arg);
        if (n == 0) {
            th_fail(nm, "init_model does not write %s", ps[i].arg);
            continue;
        }
        double scale = ps[i].scale, shift = ps[i].shift, bound = 1 / sqrt(8.0);
        if (i == 3)
            scale = 2 * bound, shift = -bound;
        bool normal = ps[i].op[5] == 'n';
        /* moments */
        Moments m = moments(v, n);
        double mean = m.mean, var = m.var, lo = m.lo, hi = m.hi;
        double emean = normal ? shift : shift + scale / 2, evar = normal ? scale * scale : scale * scale / 12;
        double zm = fabs(mean - emean) / sqrt(evar / (double)n), rv = fabs(var / evar - 1);
        bool inrange = normal || (lo > shift && hi < shift + scale);
        char nm2[400];
        snprintf(nm2, sizeof nm2, "%s.moments (mean %.4f var %.4f)", nm, mean, var);
        th_check(zm < 5 && rv < (n > 500 ? 0.12 : 0.3) && inrange, nm2, "mean %.5f (expected %.3f), variance %.5f (expected %.4f), range [%g, %g]",
                 mean, emean, var, evar, lo, hi);
        uint64_t stream;
        if (find_stream("rnd_init.init_model", ps[i].op, ps[i].shape, &stream))
            check_exact(nm, v, normal, ctx.seed, stream, ctx.counter, n, scale, shift, i == 3 ? 1e-6 : 0);
        else
            th_skip(nm, "no stream id in `lethec -d shapes` output: checked by moments only");
    }
    double ref[5] = {0.25, 0.25, 0.25, 0.25, 0.25};
    check_arg("m.c", ref, 0, sh(1, 5));
    end_case();
}

/* ---------------------------------------------------------------------------
 * edge cases: dtypes, views feeding reductions, hard numerics */

static bool out_dtype_is(int dtype) {
    const lethe_arg *a = argd("out");
    if (a && a->dtype == dtype)
        return true;
    th_fail(cname(), "the result has dtype %d, expected %d", a ? a->dtype : -1, dtype);
    end_case();
    return false;
}

void test_edge(void) {
    int fdt = M->f64 ? LETHE_F64 : LETHE_F32;
    if (begin("edge_promote")) {   /* i32 + f32 -> f32 */
        fill("a", -5, 5);
        if (call() && out_dtype_is(fdt)) {
            double *a = get("a"), *b = get("b"), *ref = D(24);
            for (int i = 0; i < 24; i++)
                ref[i] = a[i] + 2 * b[i];
            expect(ref, M->tol, sh(2, 4, 6));
        }
    }
    if (begin("edge_cast64") && call() && out_dtype_is(LETHE_F64)) {   /* computed in f64 even in an f32 program */
        double *x = get("x"), *ref = D(24);
        for (int i = 0; i < 24; i++)
            ref[i] = x[i] * 2 + 1;
        expect(ref, 1e-15, sh(2, 4, 6));
    }
    if (begin("edge_bool") && call() && out_dtype_is(LETHE_BOOL)) {   /* bool(i32(x * 3)) && !bool(x > 0.5) */
        double *x = get("x"), *ref = D(24);
        for (int i = 0; i < 24; i++) {
            double v = x[i] * 3;
            if (!M->f64)
                v = (float)v;
            ref[i] = trunc(v) != 0 && !(x[i] > 0.5);
        }
        expect(ref, 0, sh(2, 4, 6));
    }
    if (begin("edge_isum")) {   /* sum(a, axis = 1) + max(a, axis = 1) * 100 - min(a), all i32 */
        fill("a", -20, 20);
        if (call() && out_dtype_is(LETHE_I32)) {
            double *a = get("a"), *ref = D(4), mn = INFINITY;
            for (int i = 0; i < 24; i++)
                mn = fmin(mn, a[i]);
            for (int r = 0; r < 4; r++) {
                double s = 0, mx = -INFINITY;
                for (int c = 0; c < 6; c++)
                    s += a[r * 6 + c], mx = fmax(mx, a[r * 6 + c]);
                ref[r] = s + mx * 100 - mn;
            }
            expect(ref, 0, sh(1, 4));
        }
    }
    if (begin("edge_ineg")) {
        fill("a", -20, 20);
        if (call() && out_dtype_is(LETHE_I32)) {
            double *a = get("a"), *ref = D(24);
            for (int i = 0; i < 24; i++)
                ref[i] = -a[i] + fabs(a[i]) * 2;
            expect(ref, 0, sh(2, 4, 6));
        }
    }
    if (begin("edge_where_lit") && call()) {
        double *x = get("x"), *ref = D(24);
        for (int i = 0; i < 24; i++)
            ref[i] = x[i] > 0 ? x[i] : 0.5;
        expect(ref, M->tol, sh(2, 4, 6));
    }
    if (begin("view_red") && call()) {   /* sum(transpose(x)[1:, ::2, :], axis = 0): out[j,k] = sum_{i=1,2} x[i,k,2j] */
        double *x = get("x"), *ref = D(12);
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 4; k++)
                ref[j * 4 + k] = x[(1 * 4 + k) * 5 + 2 * j] + x[(2 * 4 + k) * 5 + 2 * j];
        expect(ref, M->tol, sh(2, 3, 4));
    }
    if (begin("bcast_slice") && call()) {   /* broadcast(x, [4, 3, 5])[1:3, :, ::2] * 2 */
        double *x = get("x"), *ref = D(18);
        for (int a = 0; a < 2; a++)
            for (int b = 0; b < 3; b++)
                for (int c = 0; c < 3; c++)
                    ref[(a * 3 + b) * 3 + c] = 2 * x[b * 5 + 2 * c];
        expect(ref, M->tol, sh(3, 2, 3, 3));
    }
    /* exp and log over wide ranges, pure relative error */
    FLOOR_FRAC = 0;
    if (begin("exp_wide")) {
        fill("x", -80, 80);
        if (call()) {
            double *x = get("x"), *ref = D(400);
            for (int i = 0; i < 400; i++)
                ref[i] = exp(x[i]);
            expect(ref, M->tol_tr, sh(2, 8, 50));
        }
    }
    if (begin("log_wide")) {
        fill("x", -60, 60);
        double *u = get("x");
        for (int i = 0; i < 400; i++)
            u[i] = exp(u[i]);
        put("x", u);
        if (call()) {
            double *x = get("x"), *ref = D(400);
            for (int i = 0; i < 400; i++)
                ref[i] = log(x[i]);
            expect(ref, M->tol_tr, sh(2, 8, 50));
        }
    }
    FLOOR_FRAC = 0.1;
    /* large logits: the max must be subtracted first */
    static const struct {
        const char *name;
        double lo, hi;
    } lg[] = {{"lse_big", 80, 120}, {"lse_neg", -120, -80}};
    for (int c = 0; c < 2; c++) {
        if (!begin(lg[c].name))
            continue;
        fill("x", lg[c].lo, lg[c].hi);
        if (!call())
            continue;
        int64_t no;
        expect(ref_reduce(get("x"), sh(2, 6, 50), 2, R_LSE, &no), M->tol, sh(1, 6));
    }
    if (begin("softmax_big")) {
        fill("x", 80, 120);
        if (call())
            expect(ref_softmax(get("x"), sh(2, 6, 50), 1, false), M->tol, sh(2, 6, 50));
    }
    if (begin("log_softmax_big")) {
        fill("x", -100, 100);
        if (call())
            expect(ref_softmax(get("x"), sh(2, 50, 6), 0, true), M->tol, sh(2, 50, 6));
    }
}

/* ---------------------------------------------------------------------------
 * state updated from itself: m.w <- transpose(m.w), rotations, m.w @ m.w,
 * swaps of two states, writes through a `let` reference; outputs that are
 * inputs. Statements run in order (docs/language.md, Rules). */

void test_inplace(void) {
    if (begin("ip_view_a")) {
        double *w = get("m.w"), *u = get("m.u");
        if (call()) {
            double *nw = D(25), *nu = D(5);
            for (int i = 0; i < 5; i++)
                for (int j = 0; j < 5; j++)
                    nw[i * 5 + j] = w[j * 5 + i];
            for (int i = 0; i < 5; i++)
                nu[i] = u[(i + 1) % 5];
            check_arg("m.w", nw, 0, sh(2, 5, 5));
            check_arg("m.u", nu, 0, sh(1, 5));
            end_case();
        }
    }
    if (begin("ip_mm_a")) {   /* in order: w' = w @ w, u' = u @ w', y = x @ w' + u' */
        double *w = get("m.w"), *u = get("m.u"), *x = get("batch.x");
        if (call()) {
            double *nw = D(25), *nu = D(5), *y = D(15);
            for (int i = 0; i < 5; i++)
                for (int j = 0; j < 5; j++)
                    for (int k = 0; k < 5; k++)
                        nw[i * 5 + j] += w[i * 5 + k] * w[k * 5 + j];
            for (int j = 0; j < 5; j++)
                for (int k = 0; k < 5; k++)
                    nu[j] += u[k] * nw[k * 5 + j];
            for (int n = 0; n < 3; n++)
                for (int j = 0; j < 5; j++) {
                    y[n * 5 + j] = nu[j];
                    for (int k = 0; k < 5; k++)
                        y[n * 5 + j] += x[n * 5 + k] * nw[k * 5 + j];
                }
            check_arg("m.w", nw, M->tol, sh(2, 5, 5));
            check_arg("m.u", nu, M->tol, sh(1, 5));
            check_arg("y", y, M->tol, sh(2, 3, 5));
            end_case();
        }
    }
    if (begin("ip_swap_a")) {   /* old = m.params * 1; m.params <- s; s <- old: a swap; y with the new m */
        double *w = get("m.w"), *u = get("m.u"), *sw = get("s.w"), *su = get("s.u"), *x = get("batch.x");
        if (call()) {
            double *y = D(15);
            for (int n = 0; n < 3; n++)
                for (int j = 0; j < 5; j++) {
                    y[n * 5 + j] = su[j];
                    for (int k = 0; k < 5; k++)
                        y[n * 5 + j] += x[n * 5 + k] * sw[k * 5 + j];
                }
            check_arg("m.w", sw, 0, sh(2, 5, 5));
            check_arg("m.u", su, 0, sh(1, 5));
            check_arg("s.w", w, 0, sh(2, 5, 5));
            check_arg("s.u", u, 0, sh(1, 5));
            check_arg("y", y, M->tol, sh(2, 3, 5));
            end_case();
        }
    }
    if (begin("ip_ref_a")) {   /* let p = m.params (a reference); p <- p * 2 writes m; a sum taken before keeps the old value */
        double *w = get("m.w"), *u = get("m.u");
        if (call()) {
            double *nw = D(25), *nu = D(5), b = 0;
            for (int i = 0; i < 25; i++)
                nw[i] = 2 * w[i], b += w[i];
            for (int i = 0; i < 5; i++)
                nu[i] = 2 * u[i];
            check_arg("m.w", nw, 0, sh(2, 5, 5));
            check_arg("m.u", nu, 0, sh(1, 5));
            check_arg("w2", nw, 0, sh(2, 5, 5));
            check_arg("b", &b, M->tol, sh(0));
            end_case();
        }
    }
    for (int c = 0; c < 2; c++) {   /* out = x, out = transpose(transpose(x)) */
        if (!begin(c ? "ident_b" : "ident_a") || !call())
            continue;
        expect(get("x"), 0, sh(2, 3, 4));
    }
}

/* ---------------------------------------------------------------------------
 * big tensors: serial, in reordered chunks, on a thread pool */

static int64_t chunked_calls;

/* a parallel_for that runs [0, n) as up to 97 chunks of >= grain iterations,
 * last chunk first, on the calling thread */
static void chunked_for(lethe_ctx *ctx, lethe_task_fn fn, void *closure, int64_t n, int64_t grain) {
    (void)ctx;
    chunked_calls++;
    int64_t chunk = grain > 0 ? grain : 1;
    if ((n + chunk - 1) / chunk > 97)
        chunk = (n + 96) / 97;
    for (int64_t c = (n + chunk - 1) / chunk - 1; c >= 0; c--)
        fn(closure, c * chunk, (c + 1) * chunk < n ? (c + 1) * chunk : n);
}

static double r_bigelem(double x) { return r_gelu(x) * r_sigmoid(x) + exp(-x * x); }

void test_big(void) {
    static const char *cs[] = {"big_elem_a", "big_sum1_a", "big_max0_a", "big_softmax_a", "big_mm_a", "big_conv_a"};
    lethe_pool *pool = lethe_pool_new(2);
    for (int c = 0; c < 6; c++) {
        for (int mode = 0; mode < 3; mode++) {
            VARIANT = mode == 0 ? ".serial" : mode == 1 ? ".chunked" : ".pool2";
            if (!begin(cs[c]))
                break;
            lethe_ctx ctx = {0};
            if (mode == 1)
                ctx.parallel_for = chunked_for;
            if (mode == 2) {
                if (!pool) {
                    th_skip(cname(), "lethe_pool_new failed");
                    end_case();
                    continue;
                }
                lethe_ctx_init(&ctx, pool, 0);
            }
            chunked_calls = 0;
            if (!call_ctx(&ctx))
                continue;
            double *ref;
            Sh want;
            if (c == 0) {
                double *x = get("x");
                ref = D(256 * 200);
                for (int i = 0; i < 256 * 200; i++)
                    ref[i] = r_bigelem(x[i]);
                want = sh(2, 256, 200);
            } else if (c == 1) {
                int64_t no;
                ref = ref_reduce(get("x"), sh(2, 300, 200), 2, R_SUM, &no);
                want = sh(1, 300);
            } else if (c == 2) {
                int64_t no;
                double *x = get("x"), *a = ref_reduce(x, sh(2, 300, 200), 1, R_MAX, &no), *b = ref_reduce(x, sh(2, 300, 200), 1, R_SUM, &no);
                ref = D(200);
                for (int i = 0; i < 200; i++)
                    ref[i] = a[i] + b[i];
                want = sh(1, 200);
            } else if (c == 3) {
                ref = ref_softmax(get("x"), sh(2, 200, 300), 1, false);
                want = sh(2, 200, 300);
            } else if (c == 4) {
                ref = ref_matmul(get("a"), sh(2, 96, 80), get("b"), sh(2, 80, 112), &want);
            } else {
                Conv k = conv_dims(arg_shape("x"), arg_shape("w"), 1, 1);
                ref = ref_conv(get("x"), get("w"), k);
                for (int64_t i = 0; i < k.N * k.O * k.OH * k.OW; i++)
                    ref[i] = fmax(ref[i], 0);
                want = sh(4, (int)k.N, (int)k.O, (int)k.OH, (int)k.OW);
            }
            if (mode == 1)
                printf("# %s: %lld parallel loops\n", cname(), (long long)chunked_calls);
            expect(ref, M->tol, want);
        }
    }
    VARIANT = "";
    lethe_pool_free(pool);
}

