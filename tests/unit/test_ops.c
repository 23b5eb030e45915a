/* test_ops.c: the forward value of every builtin, through the real compiler.
 *
 * tests/lth/ops.lth holds one export per case. It is compiled twice with
 * build/lethec (as written, f32; and with --f64), loaded, and every entry is
 * called on random inputs (th_fill: never zeros). Each output is compared
 * with naive C loops written here, independent of the compiler and of the
 * reference evaluator, in double precision from the very inputs the entry
 * read. Errors are relative to max(|ref|, 0.1 * max|ref|) ("relative-ish";
 * purely relative for exp, log, sqrt, rsqrt, tanh, sigmoid and pow);
 * tolerances: f64 1e-12, f32 1e-5 (2e-6 for transcendental elementwise ops).
 * Each check prints one PASS/FAIL line with its worst error.
 *
 * Randomness (normal_like, uniform_like, init_model) is checked three ways:
 * moments; determinism (same seed and counter give the same bits, another
 * counter or seed different ones); and bit-exactly against runtime/philox.h
 * with the stream id read from `lethec -d shapes`.
 *
 * Also: batch norm inside rules (gradient through batch statistics, running
 * statistics chained across calls, eval reads of the step's start); and in
 * ops_state.c (the same binary, sharing this file's case machinery through
 * ops_case.h) state rewritten from itself (transpose, rotation, w @ w,
 * swaps, references), dtype promotion, numerically hard inputs, and tensors
 * big enough for parallel loops, run serially, with a parallel_for that
 * runs reordered chunks, and on a 2-thread lethe_pool. Workspaces and
 * outputs start as 0xFF bytes so that reads of unwritten memory show.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_case.h"

/* lethec's main.c defines these; the compiler library may refer to them */
__attribute__((weak)) unsigned dump_flags;
__attribute__((weak)) FILE *dump_file;

/* ---------------------------------------------------------------------------
 * scratch memory, freed after every case (the sanitizer build checks leaks) */

static void **scratch;
static int nscratch, capscratch;

static void *S(size_t bytes) {
    if (nscratch == capscratch) {
        capscratch = capscratch ? 2 * capscratch : 64;
        scratch = realloc(scratch, sizeof(void *) * (size_t)capscratch);
    }
    void *p = calloc(1, bytes ? bytes : 1);
    scratch[nscratch++] = p;
    return p;
}
double *D(int64_t n) { return S(sizeof(double) * (size_t)(n > 0 ? n : 1)); }

static void S_reset(void) {
    for (int i = 0; i < nscratch; i++)
        free(scratch[i]);
    nscratch = 0;
}

/* ---------------------------------------------------------------------------
 * shapes and index arithmetic for the references */

Sh sh(int r, ...) {
    Sh s = {.r = r};
    va_list ap;
    va_start(ap, r);
    for (int i = 0; i < r; i++)
        s.d[i] = va_arg(ap, int);
    va_end(ap);
    return s;
}
static int64_t sh_n(Sh s) {
    int64_t n = 1;
    for (int i = 0; i < s.r; i++)
        n *= s.d[i];
    return n;
}
static void unravel(Sh s, int64_t i, int64_t *ix) {
    for (int d = s.r - 1; d >= 0; d--) {
        ix[d] = i % s.d[d];
        i /= s.d[d];
    }
}
static int64_t ravel(Sh s, const int64_t *ix) {
    int64_t i = 0;
    for (int d = 0; d < s.r; d++)
        i = i * s.d[d] + ix[d];
    return i;
}
/* flat index into `in` of the element that NumPy broadcasting sends to out[oix] */
static int64_t bidx(Sh in, Sh out, const int64_t *oix) {
    int64_t i = 0;
    for (int d = 0; d < in.r; d++) {
        int od = out.r - in.r + d;
        i = i * in.d[d] + (in.d[d] == 1 ? 0 : oix[od]);
    }
    return i;
}
static Sh bshape(Sh a, Sh b) {
    Sh o = {.r = a.r > b.r ? a.r : b.r};
    for (int d = 0; d < o.r; d++) {
        int ia = d - (o.r - a.r), ib = d - (o.r - b.r);
        int64_t x = ia >= 0 ? a.d[ia] : 1, y = ib >= 0 ? b.d[ib] : 1;
        o.d[d] = x > y ? x : y;
    }
    return o;
}

/* ---------------------------------------------------------------------------
 * the mode (f32 or f64 program) and the case being run */

Mode *M;

th_frame *F;           /* the call frame of the current case */
const char *VARIANT = "";  /* appended to check names */
double FLOOR_FRAC = 0.1;   /* errors relative to max(|ref|, FLOOR_FRAC max|ref|) */
static const char *CASE;      /* its entry name */
static uint64_t next_seed = 1;

void end_case(void) {
    th_frame_free(F);
    F = NULL;
    S_reset();
}

const lethe_arg *argd(const char *name) {
    int i = th_arg(F->entry, name);
    return i < 0 ? NULL : &F->entry->args[i];
}

int64_t numel(const char *name) {
    const lethe_arg *a = argd(name);
    return a ? th_arg_numel(a) : 0;
}

/* overwrite an argument with uniform values in [lo, hi) (integers for i32) */
void fill(const char *name, double lo, double hi) {
    int i = th_arg(F->entry, name);
    if (i < 0) {
        fprintf(stderr, "test_ops: %s has no argument %s\n", CASE, name);
        return;
    }
    const lethe_arg *a = &F->entry->args[i];
    th_fill(F->args[i], a->dtype, th_arg_numel(a), lo, hi, next_seed++);
}

/* a double copy of an argument's current contents */
double *get(const char *name) {
    int i = th_arg(F->entry, name);
    if (i < 0)
        return D(1);
    const lethe_arg *a = &F->entry->args[i];
    int64_t n = th_arg_numel(a);
    double *v = D(n);
    for (int64_t k = 0; k < n; k++) {
        switch (a->dtype) {
        case LETHE_F32: v[k] = ((float *)F->args[i])[k]; break;
        case LETHE_F64: v[k] = ((double *)F->args[i])[k]; break;
        case LETHE_I32: v[k] = ((int32_t *)F->args[i])[k]; break;
        default: v[k] = ((uint8_t *)F->args[i])[k]; break;
        }
    }
    return v;
}

void put(const char *name, const double *v) {
    int i = th_arg(F->entry, name);
    if (i < 0)
        return;
    const lethe_arg *a = &F->entry->args[i];
    for (int64_t k = 0; k < th_arg_numel(a); k++) {
        switch (a->dtype) {
        case LETHE_F32: ((float *)F->args[i])[k] = (float)v[k]; break;
        case LETHE_F64: ((double *)F->args[i])[k] = v[k]; break;
        case LETHE_I32: ((int32_t *)F->args[i])[k] = (int32_t)v[k]; break;
        default: ((uint8_t *)F->args[i])[k] = v[k] != 0; break;
        }
    }
}

/* Fill the workspace and every output with 0xFF bytes (NaN, -1, 255) so that
 * a kernel that reads memory it did not write shows up. */
static void poison(th_frame *f) {
    memset(f->workspace, 0xFF, (size_t)f->entry->workspace_bytes);
    for (int i = 0; i < f->entry->nargs; i++)
        if (f->entry->args[i].kind == LETHE_OUTPUT)
            memset(f->args[i], 0xFF, (size_t)th_arg_numel(&f->entry->args[i]) * th_dtype_size(f->entry->args[i].dtype));
}

/* The name of the current check: ops.<entry>.<f32|f64> */
const char *cname(void) {
    static char buf[128];
    snprintf(buf, sizeof buf, "ops.%s.%s%s", CASE, M->tag, VARIANT);
    return buf;
}

/* Start a case: find the entry, make a frame, fill every tensor the entry
 * reads with values in [-1, 1) (i32: [0, 3)). False (after a FAIL line) if
 * the entry is missing from the program. */
bool begin(const char *entry) {
    CASE = entry;
    const lethe_entry *e = th_entry(M->p, entry);
    if (!e) {
        th_fail(cname(), "no entry %s in the compiled program", entry);
        return false;
    }
    F = th_frame_new(e);
    poison(F);
    for (int i = 0; i < e->nargs; i++) {
        const lethe_arg *a = &e->args[i];
        if (a->kind == LETHE_INPUT || a->kind == LETHE_PARAM || a->kind == LETHE_BUFFER || a->kind == LETHE_STATE) {
            if (a->dtype == LETHE_I32)
                th_fill(F->args[i], a->dtype, th_arg_numel(a), 0, 3, next_seed++);
            else
                th_fill(F->args[i], a->dtype, th_arg_numel(a), -1, 1, next_seed++);
        }
    }
    return true;
}

bool call_ctx(lethe_ctx *ctx) {
    int rc = th_call(F, ctx);
    if (rc != 0) {
        th_fail(cname(), "entry returned %d", rc);
        end_case();
        return false;
    }
    return true;
}
bool call(void) { return call_ctx(NULL); }

/* worst relative-ish error: |got - ref| / max(|ref|, 0.1 max|ref|) (pure
 * relative error when FLOOR_FRAC is 0); equal
 * infinities and NaNs match */
static double rel_err(const double *got, const double *ref, int64_t n, int64_t *at) {
    double mx = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(ref[i]) && fabs(ref[i]) > mx)
            mx = fabs(ref[i]);
    double floor = mx > 0 ? (FLOOR_FRAC > 0 ? FLOOR_FRAC * mx : 1e-300) : 1;
    double worst = 0;
    *at = 0;
    for (int64_t i = 0; i < n; i++) {
        double e;
        if (isnan(ref[i]) || isnan(got[i]))
            e = isnan(ref[i]) && isnan(got[i]) ? 0 : INFINITY;
        else if (isinf(ref[i]) || isinf(got[i]))
            e = got[i] == ref[i] ? 0 : INFINITY;
        else
            e = fabs(got[i] - ref[i]) / fmax(fabs(ref[i]), floor);
        if (e > worst || (e == INFINITY && worst != INFINITY)) {
            worst = e;
            *at = i;
        }
    }
    return worst;
}

static const char *shape_s(int rank, const int64_t *d) {
    static char buf[4][96];
    static int k;
    char *b = buf[k++ & 3];
    int o = snprintf(b, 96, "[");
    for (int i = 0; i < rank; i++)
        o += snprintf(b + o, 96 - o, "%s%lld", i ? ", " : "", (long long)d[i]);
    snprintf(b + o, 96 - o, "]");
    return b;
}

/* Compare argument `arg` (usually "out") with ref; the argument must have
 * the given shape. Ends the case if `last`. Returns pass. */
bool check_arg(const char *arg, const double *ref, double tol, Sh want) {
    const lethe_arg *a = argd(arg);
    if (!a) {
        th_fail(cname(), "entry has no argument '%s'", arg);
        return false;
    }
    bool same = a->rank == want.r;
    for (int i = 0; same && i < want.r; i++)
        same = a->shape[i] == want.d[i];
    if (!same) {
        th_fail(cname(), "%s has shape %s, expected %s", arg, shape_s(a->rank, a->shape), shape_s(want.r, want.d));
        return false;
    }
    double *got = get(arg);
    int64_t at;
    double e = rel_err(got, ref, sh_n(want), &at);
    if (e <= tol) {
        char name[256];
        snprintf(name, sizeof name, "%s%s%s (worst err %.2e)", cname(), strcmp(arg, "out") ? ":" : "", strcmp(arg, "out") ? arg : "", e);
        th_pass(name);
        return true;
    }
    char name[256];
    snprintf(name, sizeof name, "%s%s%s", cname(), strcmp(arg, "out") ? ":" : "", strcmp(arg, "out") ? arg : "");
    th_fail(name, "worst err %.3e > %.1e at element %lld: got %.17g, expected %.17g", e, tol, (long long)at, got[at], ref[at]);
    return false;
}

/* the common case: check "out" and end */
void expect(const double *ref, double tol, Sh want) {
    check_arg("out", ref, tol, want);
    end_case();
}

/* ---------------------------------------------------------------------------
 * elementwise */

double r_sigmoid(double x) { return 1 / (1 + exp(-x)); }
static double r_relu(double x) { return x > 0 ? x : 0; }
double r_gelu(double x) { return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }
static double r_rsqrt(double x) { return 1 / sqrt(x); }
static double r_sign(double x) { return x > 0 ? 1 : x < 0 ? -1 : 0; }
static double r_neg(double x) { return -x; }
static double r_lit(double x) { return 2 * x - x / 4 + 1.5 - fmod(3, x); }
static double r_sq(double x) { return x * x; }
static double r_cube(double x) { return x * x * x; }

static void test_unary(void) {
    static const struct {
        const char *name;
        double (*f)(double);
        double lo, hi;
        bool tr;
    } cs[] = {
        {"u_exp", exp, -3, 3, true},        {"u_log", log, 0.05, 4, true},       {"u_sqrt", sqrt, 0.05, 4, true},
        {"u_rsqrt", r_rsqrt, 0.05, 4, true}, {"u_tanh", tanh, -3, 3, true},       {"u_sigmoid", r_sigmoid, -5, 5, true},
        {"u_relu", r_relu, -1, 1, false},   {"u_gelu", r_gelu, -4, 4, true},     {"u_abs", fabs, -1, 1, false},
        {"u_sign", r_sign, -1, 1, false},   {"u_neg", r_neg, -1, 1, false},      {"l_lit", r_lit, 0.5, 2, false},
        {"l_sq", r_sq, -2, 2, false},       {"l_cube", r_cube, -2, 2, true},     {"l_half", sqrt, 0.1, 3, true},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        if (!begin(cs[c].name))
            continue;
        fill("x", cs[c].lo, cs[c].hi);
        if (!call())
            continue;
        double *x = get("x");
        int64_t n = numel("x");
        double *ref = D(n);
        for (int64_t i = 0; i < n; i++)
            ref[i] = cs[c].f(x[i]);
        /* transcendentals other than gelu (whose 1 + tanh cancels for
         * negative x in any float format): pure relative error */
        FLOOR_FRAC = cs[c].tr && strcmp(cs[c].name, "u_gelu") ? 0 : 0.1;
        expect(ref, cs[c].tr ? M->tol_tr : M->tol, sh(2, 3, 7));
        FLOOR_FRAC = 0.1;
    }
}

static double r_add(double a, double b) { return a + b; }
static double r_sub(double a, double b) { return a - b; }
static double r_mul(double a, double b) { return a * b; }
static double r_div(double a, double b) { return a / b; }
static double r_max(double a, double b) { return a > b ? a : b; }
static double r_min(double a, double b) { return a < b ? a : b; }
static double r_lt(double a, double b) { return a < b; }
static double r_le(double a, double b) { return a <= b; }
static double r_gt(double a, double b) { return a > b; }
static double r_ge(double a, double b) { return a >= b; }
static double r_eq(double a, double b) { return a == b; }
static double r_ne(double a, double b) { return a != b; }
static double r_and(double a, double b) { return a > 0 && b > 0; }
static double r_or(double a, double b) { return a > 0 || b > 0; }
static double r_not(double a, double b) { return !(a > b); }
static double r_logic(double a, double b) { return !(a > 0 && b < 0) || a == b; }
static double r_where(double a, double b) { return a > b ? a : 2 * b; }
static double r_wheref(double a, double b) { return (a > b) * 3.0 - (a <= 0); }
static double r_idiv(double a, double b) { return (double)((int32_t)a / (int32_t)b); }
static double r_imod(double a, double b) { return (double)((int32_t)a % (int32_t)b); }
static double r_imax(double a, double b) { return r_max(a, b) - r_min(a, b) + fabs(a) * r_sign(b); }

/* out = f(a, b) with NumPy broadcasting */
static double *ref_binary(const double *a, Sh sa, const double *b, Sh sb, double (*f)(double, double), Sh *so) {
    *so = bshape(sa, sb);
    double *o = D(sh_n(*so));
    int64_t ix[8];
    for (int64_t i = 0; i < sh_n(*so); i++) {
        unravel(*so, i, ix);
        o[i] = f(a[bidx(sa, *so, ix)], b[bidx(sb, *so, ix)]);
    }
    return o;
}

static void test_binary(void) {
    static const struct {
        const char *name;
        double (*f)(double, double);
        double alo, ahi, blo, bhi;
        bool tr;
    } cs[] = {
        {"b_add", r_add, -1, 1, -1, 1, false},   {"b_sub", r_sub, -1, 1, -1, 1, false},
        {"b_mul", r_mul, -1, 1, -1, 1, false},   {"b_div", r_div, -1, 1, -2, 2, false},
        {"b_mod", fmod, -3, 3, 0.3, 2, false},   {"b_powop", pow, 0.2, 2, -2, 2, true},
        {"b_pow", pow, 0.2, 2, -2, 2, true},     {"b_maximum", r_max, -1, 1, -1, 1, false},
        {"b_minimum", r_min, -1, 1, -1, 1, false}, {"c_ltb", r_lt, -1, 1, -1, 1, false},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        if (!begin(cs[c].name))
            continue;
        fill("a", cs[c].alo, cs[c].ahi);
        fill("b", cs[c].blo, cs[c].bhi);
        if (!strcmp(cs[c].name, "b_mod")) {   /* divisors of both signs */
            double *b = get("b");
            for (int64_t i = 0; i < numel("b"); i += 2)
                b[i] = -b[i];
            put("b", b);
        }
        if (!call())
            continue;
        Sh so;
        double *ref = ref_binary(get("a"), sh(3, 3, 1, 4), get("b"), sh(2, 5, 1), cs[c].f, &so);
        FLOOR_FRAC = cs[c].tr ? 0 : 0.1;   /* pow: pure relative error */
        expect(ref, cs[c].tr ? M->tol_tr : M->tol, so);
        FLOOR_FRAC = 0.1;
    }
}

static void test_compare(void) {
    static const struct {
        const char *name;
        double (*f)(double, double);
        bool ints;
    } cs[] = {
        {"c_lt", r_lt, 0},   {"c_le", r_le, 0},     {"c_gt", r_gt, 0},       {"c_ge", r_ge, 0},
        {"c_eq", r_eq, 0},   {"c_ne", r_ne, 0},     {"c_and", r_and, 0},     {"c_or", r_or, 0},
        {"c_not", r_not, 0}, {"c_logic", r_logic, 0}, {"c_where", r_where, 0}, {"c_where_f", r_wheref, 0},
        {"i_add", r_add, 1}, {"i_sub", r_sub, 1},   {"i_mul", r_mul, 1},     {"i_div", r_idiv, 1},
        {"i_mod", r_imod, 1}, {"i_max", r_imax, 1}, {"i_eq", r_eq, 1},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        if (!begin(cs[c].name))
            continue;
        if (cs[c].ints) {
            bool small = !strcmp(cs[c].name, "i_eq");
            fill("a", small ? 0 : -20, small ? 3 : 21);
            fill("b", small ? 0 : -7, small ? 3 : 8);
            double *b = get("b");
            for (int64_t i = 0; i < numel("b"); i++)
                if (b[i] == 0)
                    b[i] = 3;   /* no division by zero */
            put("b", b);
        } else {
            /* every third element equal, so == != <= >= see ties */
            double *a = get("a"), *b = get("b");
            for (int64_t i = 0; i < numel("a"); i += 3)
                b[i] = a[i];
            put("b", b);
        }
        if (!call())
            continue;
        Sh so;
        double *ref = ref_binary(get("a"), sh(2, 4, 6), get("b"), sh(2, 4, 6), cs[c].f, &so);
        expect(ref, M->tol, so);
    }
    /* where with a broadcast condition and branches: where(c > 0, a[3,4], b[4]) */
    if (begin("c_whereb") && call()) {
        double *cc = get("c"), *a = get("a"), *b = get("b"), *ref = D(24);
        for (int i = 0; i < 24; i++)
            ref[i] = cc[i] > 0 ? a[i % 12] : b[i % 4];
        expect(ref, M->tol, sh(3, 2, 3, 4));
    }
    /* float -> int conversion truncates toward zero */
    if (begin("i_cast")) {
        fill("x", -3, 3);
        if (call()) {
            double *x = get("x"), *ref = D(24);
            for (int i = 0; i < 24; i++) {
                double v = x[i] * 10;
                if (!M->f64)
                    v = (float)v;
                ref[i] = trunc(v);
            }
            expect(ref, 0, sh(2, 4, 6));
        }
    }
}

/* ---------------------------------------------------------------------------
 * reductions */

/* reduce x (shape s) over the axes in mask; the result in row-major order of
 * the kept axes (the same order with or without keep) */
double *ref_reduce(const double *x, Sh s, unsigned mask, int kind, int64_t *nout) {
    Sh o = s;
    for (int d = 0; d < s.r; d++)
        if (mask >> d & 1)
            o.d[d] = 1;
    int64_t no = sh_n(o), n = sh_n(s), ix[8];
    double *out = D(no), *sum = D(no), *mx = D(no), *mn = D(no), *se = D(no), *sq = D(no), *ss = D(no);
    int64_t *dst = S(sizeof(int64_t) * (size_t)n), *cnt = S(sizeof(int64_t) * (size_t)no);
    for (int64_t k = 0; k < no; k++)
        mx[k] = -INFINITY, mn[k] = INFINITY;
    for (int64_t i = 0; i < n; i++) {   /* the output each element belongs to */
        unravel(s, i, ix);
        for (int d = 0; d < s.r; d++)
            if (mask >> d & 1)
                ix[d] = 0;
        int64_t k = dst[i] = ravel(o, ix);
        cnt[k]++;
        sum[k] += x[i];
        mx[k] = fmax(mx[k], x[i]);
        mn[k] = fmin(mn[k], x[i]);
    }
    for (int64_t i = 0; i < n; i++) {
        int64_t k = dst[i];
        double mean = sum[k] / (double)cnt[k];
        se[k] += exp(x[i] - mx[k]);
        sq[k] += (x[i] - mean) * (x[i] - mean);
        ss[k] += x[i] * x[i];
    }
    for (int64_t k = 0; k < no; k++) {
        switch (kind) {
        case R_SUM: out[k] = sum[k]; break;
        case R_MEAN: out[k] = sum[k] / (double)cnt[k]; break;
        case R_MAX: out[k] = mx[k]; break;
        case R_MIN: out[k] = mn[k]; break;
        case R_LSE: out[k] = mx[k] + log(se[k]); break;
        case R_VAR: out[k] = sq[k] / (double)cnt[k]; break;
        default: out[k] = sqrt(ss[k]); break;
        }
    }
    *nout = no;
    return out;
}

static void test_reductions(void) {
    /* unordered axes, no keep: sum(x, axis = [2, 0]), max(x, axis = [-1, 0]) */
    for (int k = 0; k < 2; k++) {
        if (!begin(k ? "max_e" : "sum_e"))
            continue;
        fill("x", -2, 2);
        if (!call())
            continue;
        int64_t no;
        expect(ref_reduce(get("x"), sh(3, 3, 4, 5), 5, k ? R_MAX : R_SUM, &no), M->tol, sh(1, 4));
    }
    static const char *ops[] = {"sum", "mean", "max", "min", "lse", "var", "norm"};
    for (int k = 0; k < 7; k++) {
        static const struct {
            char v;
            unsigned mask;
            Sh want;
        } vs[] = {
            {'a', 2, {2, {3, 5}}}, {'b', 5, {3, {1, 4, 1}}}, {'c', 7, {0, {0}}}, {'d', 4, {3, {3, 4, 1}}},
        };
        for (int v = 0; v < 4; v++) {
            char name[32];
            snprintf(name, sizeof name, "%s_%c", ops[k], vs[v].v);
            static char names[7][4][32];
            strcpy(names[k][v], name);
            if (!begin(names[k][v]))
                continue;
            fill("x", -2, 2);
            if (!call())
                continue;
            int64_t no;
            double *ref = ref_reduce(get("x"), sh(3, 3, 4, 5), vs[v].mask, k, &no);
            expect(ref, M->tol, vs[v].want);
        }
    }
}

/* ---------------------------------------------------------------------------
 * matmul: NumPy semantics, 1-D operands promoted and their axis removed */

double *ref_matmul(const double *a, Sh sa, const double *b, Sh sb, Sh *so) {
    bool va = sa.r == 1, vb = sb.r == 1;
    Sh A = va ? sh(2, 1, (int)sa.d[0]) : sa, B = vb ? sh(2, (int)sb.d[0], 1) : sb;
    int64_t M_ = A.d[A.r - 2], K = A.d[A.r - 1], N = B.d[B.r - 1];
    Sh ba = {.r = A.r - 2}, bb = {.r = B.r - 2};
    for (int d = 0; d < ba.r; d++)
        ba.d[d] = A.d[d];
    for (int d = 0; d < bb.r; d++)
        bb.d[d] = B.d[d];
    Sh bo = bshape(ba, bb);
    Sh full = bo;
    full.d[full.r++] = M_;
    full.d[full.r++] = N;
    double *o = D(sh_n(full));
    int64_t ix[8];
    for (int64_t bi = 0; bi < sh_n(bo); bi++) {
        unravel(bo, bi, ix);
        int64_t ai = bidx(ba, bo, ix), bj = bidx(bb, bo, ix);
        for (int64_t i = 0; i < M_; i++)
            for (int64_t j = 0; j < N; j++) {
                double s = 0;
                for (int64_t k = 0; k < K; k++)
                    s += a[ai * M_ * K + i * K + k] * b[bj * K * N + k * N + j];
                o[(bi * M_ + i) * N + j] = s;
            }
    }
    *so = bo;
    if (!va)
        so->d[so->r++] = M_;
    if (!vb)
        so->d[so->r++] = N;
    return o;
}

Sh arg_shape(const char *name) {
    const lethe_arg *a = argd(name);
    Sh s = {0};
    if (a) {
        s.r = a->rank;
        for (int i = 0; i < a->rank; i++)
            s.d[i] = a->shape[i];
    }
    return s;
}

static void test_matmul(void) {
    static const char *cs[] = {"mm", "bmm", "bcmm", "mm2b", "vm", "mv", "vv", "bmv"};
    static const Sh sa[] = {{2, {3, 4}}, {3, {2, 3, 4}}, {4, {2, 1, 3, 4}}, {3, {2, 3, 4}}, {1, {4}}, {2, {3, 4}}, {1, {4}}, {3, {2, 3, 4}}};
    static const Sh sb[] = {{2, {4, 5}}, {3, {2, 4, 5}}, {3, {3, 4, 5}}, {2, {4, 5}}, {2, {4, 5}}, {1, {4}}, {1, {4}}, {1, {4}}};
    for (int c = 0; c < 8; c++) {
        if (!begin(cs[c]) || !call())
            continue;
        Sh so;
        double *ref = ref_matmul(get("a"), sa[c], get("b"), sb[c], &so);
        expect(ref, M->tol, so);
    }
    if (begin("mmt") && call()) {   /* a @ transpose(b), big enough for a library GEMM */
        double *a = get("a"), *b = get("b"), *ref = D(17 * 9);
        for (int i = 0; i < 17; i++)
            for (int j = 0; j < 9; j++) {
                double s = 0;
                for (int k = 0; k < 33; k++)
                    s += a[i * 33 + k] * b[j * 33 + k];
                ref[i * 9 + j] = s;
            }
        expect(ref, M->tol, sh(2, 17, 9));
    }
}

/* ---------------------------------------------------------------------------
 * shapes */

/* x[start + step * i] per axis, count[d] elements per axis */
static double *ref_slice(const double *x, Sh s, const int64_t *start, const int64_t *step, Sh count) {
    double *o = D(sh_n(count));
    int64_t ix[8], jx[8];
    for (int64_t i = 0; i < sh_n(count); i++) {
        unravel(count, i, ix);
        for (int d = 0; d < s.r; d++)
            jx[d] = start[d] + step[d] * ix[d];
        o[i] = x[ravel(s, jx)];
    }
    return o;
}

static double *ref_permute(const double *x, Sh s, const int *perm, Sh *so) {
    so->r = s.r;
    for (int d = 0; d < s.r; d++)
        so->d[d] = s.d[perm[d]];
    double *o = D(sh_n(s));
    int64_t ix[8], jx[8];
    for (int64_t i = 0; i < sh_n(*so); i++) {
        unravel(*so, i, ix);
        for (int d = 0; d < s.r; d++)
            jx[perm[d]] = ix[d];
        o[i] = x[ravel(s, jx)];
    }
    return o;
}

static void test_shapes(void) {
    Sh s234 = sh(3, 2, 3, 4);
    if (begin("reshape_a") && call())
        expect(get("x"), M->tol, sh(2, 4, 6));
    if (begin("reshape_b") && call()) {
        double *x = get("x"), *ref = D(24);
        for (int i = 0; i < 24; i++)
            ref[i] = 2 * x[i];
        expect(ref, M->tol, sh(1, 24));
    }
    if (begin("transpose_a") && call()) {
        Sh so;
        double *ref = ref_permute(get("x"), s234, (int[]){0, 2, 1}, &so);
        expect(ref, M->tol, so);
    }
    if (begin("transpose_p") && call()) {
        Sh so;
        double *ref = ref_permute(get("x"), s234, (int[]){2, 0, 1}, &so);
        expect(ref, M->tol, so);
    }
    if (begin("broadcast_a") && call()) {
        double *x = get("x"), *ref = D(24);
        for (int a = 0; a < 2; a++)
            for (int b = 0; b < 3; b++)
                for (int c = 0; c < 4; c++)
                    ref[(a * 3 + b) * 4 + c] = x[b];
        expect(ref, M->tol, s234);
    }
    if (begin("unsqueeze_a") && call())
        expect(get("x"), M->tol, sh(3, 3, 1, 4));
    if (begin("unsqueeze_b") && call()) {   /* out[i,j,k] = x[i,j] + x[k,j] */
        double *x = get("x"), *ref = D(64);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++)
                for (int k = 0; k < 4; k++)
                    ref[(i * 4 + j) * 4 + k] = x[i * 4 + j] + x[k * 4 + j];
        expect(ref, M->tol, sh(3, 4, 4, 4));
    }
    if (begin("squeeze_a") && call())
        expect(get("x"), M->tol, sh(2, 3, 4));
    if (begin("squeeze_b") && call())
        expect(get("x"), M->tol, sh(2, 3, 4));
    if (begin("flatten_a") && call())
        expect(get("x"), M->tol, sh(2, 2, 12));
    if (begin("flatten_b") && call())
        expect(get("x"), M->tol, sh(1, 24));
    /* slices: start / step / count per axis (dropped axes have count 1) */
    static const struct {
        const char *name;
        Sh xs;
        int64_t start[3], step[3];
        Sh count, want;
    } sl[] = {
        {"slice_a", {3, {6, 5, 4}}, {1, 4, 0}, {2, 1, 3}, {3, {2, 1, 2}}, {2, {2, 2}}},   /* x[1:5:2, -1, ::3] */
        {"slice_b", {3, {6, 5, 4}}, {3, 1, 0}, {1, 1, 1}, {3, {3, 3, 4}}, {3, {3, 3, 4}}}, /* x[-3:, 1:-1, ...] */
        {"slice_c", {3, {6, 5, 4}}, {0, 0, 2}, {1, 1, 1}, {3, {6, 5, 1}}, {2, {6, 5}}},    /* x[..., 2] */
        {"slice_d", {3, {6, 5, 4}}, {0, 3, 1}, {4, 1, 1}, {3, {2, 1, 2}}, {2, {2, 2}}},    /* x[::4, -2, 1:3] */
        {"slice_e", {3, {9, 7, 4}}, {2, 3, 1}, {3, 2, 1}, {3, {2, 2, 1}}, {2, {2, 2}}},    /* x[2:-1:3, -4:-1:2, -3] */
    };
    for (int c = 0; c < 5; c++) {
        if (!begin(sl[c].name) || !call())
            continue;
        double *ref = ref_slice(get("x"), sl[c].xs, sl[c].start, sl[c].step, sl[c].count);
        expect(ref, M->tol, sl[c].want);
    }
    if (begin("concat_a") && call()) {
        double *a = get("a"), *b = get("b"), *ref = D(16);
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 8; j++)
                ref[i * 8 + j] = j < 3 ? a[i * 3 + j] : b[i * 5 + j - 3];
        expect(ref, M->tol, sh(2, 2, 8));
    }
    if (begin("concat_b") && call()) {
        double *a = get("a"), *b = get("b"), *ref = D(24);
        for (int i = 0; i < 8; i++)
            for (int j = 0; j < 3; j++)
                ref[i * 3 + j] = i < 2 ? a[i * 3 + j] : i < 6 ? b[(i - 2) * 3 + j] : a[(i - 6) * 3 + j];
        expect(ref, M->tol, sh(2, 8, 3));
    }
    if (begin("split_a") && call()) {
        double *x = get("x"), *ref = D(8);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 2; j++)
                ref[i * 2 + j] = x[i * 6 + 2 + j];
        expect(ref, M->tol, sh(2, 4, 2));
    }
    if (begin("split_b") && call()) {
        double *x = get("x"), *ref = D(12);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 3; j++)
                ref[i * 3 + j] = i < 3 ? x[(i + 1) * 3 + j] : 2 * x[j];
        expect(ref, M->tol, sh(2, 4, 3));
    }
    if (begin("chain_a") && call()) {   /* transpose(reshape(x[:, 1:, :], [2, -1]))[3:, :] * 3 */
        double *x = get("x"), *ref = D(10);
        for (int i = 3; i < 8; i++)
            for (int j = 0; j < 2; j++)
                ref[(i - 3) * 2 + j] = 3 * x[(j * 3 + 1 + i / 4) * 4 + i % 4];
        expect(ref, M->tol, sh(2, 5, 2));
    }
}

/* ---------------------------------------------------------------------------
 * indexing */

static void test_indexing(void) {
    if (begin("take_a")) {   /* take(x[5,4], idx[3,2]) -> [3,2,4] */
        fill("idx", 0, 5);
        if (call()) {
            double *x = get("x"), *idx = get("idx"), *ref = D(24);
            for (int i = 0; i < 6; i++)
                for (int c = 0; c < 4; c++)
                    ref[i * 4 + c] = x[(int)idx[i] * 4 + c];
            expect(ref, M->tol, sh(3, 3, 2, 4));
        }
    }
    if (begin("take_b")) {   /* take(x[5,4], idx[3], axis = 1) -> [5,3] */
        fill("idx", 0, 4);
        if (call()) {
            double *x = get("x"), *idx = get("idx"), *ref = D(15);
            for (int r = 0; r < 5; r++)
                for (int i = 0; i < 3; i++)
                    ref[r * 3 + i] = x[r * 4 + (int)idx[i]];
            expect(ref, M->tol, sh(2, 5, 3));
        }
    }
    if (begin("take_row")) {   /* per row: out[r] = x[r, y[r]] */
        fill("y", 0, 4);
        if (call()) {
            double *x = get("x"), *y = get("y"), *ref = D(5);
            for (int r = 0; r < 5; r++)
                ref[r] = x[r * 4 + (int)y[r]];
            expect(ref, M->tol, sh(1, 5));
        }
    }
    if (begin("take_row3")) {   /* out[a,b] = x[a,b,y[a,b]] */
        fill("y", 0, 4);
        if (call()) {
            double *x = get("x"), *y = get("y"), *ref = D(6);
            for (int r = 0; r < 6; r++)
                ref[r] = x[r * 4 + (int)y[r]];
            expect(ref, M->tol, sh(2, 2, 3));
        }
    }
    if (begin("one_hot_a")) {
        fill("y", 0, 4);
        if (call()) {
            double *y = get("y"), *ref = D(24);
            for (int r = 0; r < 6; r++)
                for (int c = 0; c < 4; c++)
                    ref[r * 4 + c] = (int)y[r] == c;
            expect(ref, 0, sh(2, 6, 4));
        }
    }
    if (begin("embedding_a")) {
        fill("idx", 0, 7);
        if (call()) {
            double *w = get("w"), *idx = get("idx"), *ref = D(24);
            for (int i = 0; i < 8; i++)
                for (int c = 0; c < 3; c++)
                    ref[i * 3 + c] = w[(int)idx[i] * 3 + c];
            expect(ref, M->tol, sh(3, 2, 4, 3));
        }
    }
    if (begin("arange_a") && call()) {
        double *x = get("x"), *ref = D(5);
        for (int i = 0; i < 5; i++)
            ref[i] = x[i] * i;
        expect(ref, M->tol, sh(1, 5));
    }
    if (begin("arange_b")) {
        fill("x", -5, 5);
        if (call()) {
            double *x = get("x"), *ref = D(5);
            for (int i = 0; i < 5; i++)
                ref[i] = 3 * i + x[i];
            expect(ref, 0, sh(1, 5));
        }
    }
}

/* ---------------------------------------------------------------------------
 * convolution and pooling */

Conv conv_dims(Sh xs, Sh ws, int s, int p) {
    Conv c = {xs.d[0], xs.d[1], xs.d[2], xs.d[3], ws.d[0], ws.d[2], ws.d[3], 0, 0, s, p};
    c.OH = (c.H + 2 * p - c.KH) / s + 1;
    c.OW = (c.W + 2 * p - c.KW) / s + 1;
    return c;
}

/* y[n,o,p,q] = sum_{c,i,j} x[n,c,p*s+i-pad,q*s+j-pad] w[o,c,i,j] */
double *ref_conv(const double *x, const double *w, Conv k) {
    double *y = D(k.N * k.O * k.OH * k.OW);
    for (int64_t n = 0; n < k.N; n++)
        for (int64_t o = 0; o < k.O; o++)
            for (int64_t p = 0; p < k.OH; p++)
                for (int64_t q = 0; q < k.OW; q++) {
                    double s = 0;
                    for (int64_t c = 0; c < k.C; c++)
                        for (int64_t i = 0; i < k.KH; i++)
                            for (int64_t j = 0; j < k.KW; j++) {
                                int64_t h = p * k.s + i - k.p, v = q * k.s + j - k.p;
                                if (h >= 0 && h < k.H && v >= 0 && v < k.W)
                                    s += x[((n * k.C + c) * k.H + h) * k.W + v] * w[((o * k.C + c) * k.KH + i) * k.KW + j];
                            }
                    y[((n * k.O + o) * k.OH + p) * k.OW + q] = s;
                }
    return y;
}

/* dx[n,c,h,v] = sum over (o,i,j) with h = p*s+i-pad, v = q*s+j-pad for some
 * output position (p,q): dy[n,o,p,q] w[o,c,i,j]  (gather form) */
static double *ref_conv_dx(const double *dy, const double *w, Conv k) {
    double *dx = D(k.N * k.C * k.H * k.W);
    for (int64_t n = 0; n < k.N; n++)
        for (int64_t c = 0; c < k.C; c++)
            for (int64_t h = 0; h < k.H; h++)
                for (int64_t v = 0; v < k.W; v++) {
                    double s = 0;
                    for (int64_t o = 0; o < k.O; o++)
                        for (int64_t i = 0; i < k.KH; i++)
                            for (int64_t j = 0; j < k.KW; j++) {
                                int64_t ph = h + k.p - i, pw = v + k.p - j;
                                if (ph < 0 || pw < 0 || ph % k.s || pw % k.s)
                                    continue;
                                int64_t p = ph / k.s, q = pw / k.s;
                                if (p >= k.OH || q >= k.OW)
                                    continue;
                                s += dy[((n * k.O + o) * k.OH + p) * k.OW + q] * w[((o * k.C + c) * k.KH + i) * k.KW + j];
                            }
                    dx[((n * k.C + c) * k.H + h) * k.W + v] = s;
                }
    return dx;
}

/* dw[o,c,i,j] = sum_{n,p,q} x[n,c,p*s+i-pad,q*s+j-pad] dy[n,o,p,q] */
static double *ref_conv_dw(const double *x, const double *dy, Conv k) {
    double *dw = D(k.O * k.C * k.KH * k.KW);
    for (int64_t o = 0; o < k.O; o++)
        for (int64_t c = 0; c < k.C; c++)
            for (int64_t i = 0; i < k.KH; i++)
                for (int64_t j = 0; j < k.KW; j++) {
                    double s = 0;
                    for (int64_t n = 0; n < k.N; n++)
                        for (int64_t p = 0; p < k.OH; p++)
                            for (int64_t q = 0; q < k.OW; q++) {
                                int64_t h = p * k.s + i - k.p, v = q * k.s + j - k.p;
                                if (h >= 0 && h < k.H && v >= 0 && v < k.W)
                                    s += x[((n * k.C + c) * k.H + h) * k.W + v] * dy[((n * k.O + o) * k.OH + p) * k.OW + q];
                            }
                    dw[((o * k.C + c) * k.KH + i) * k.KW + j] = s;
                }
    return dw;
}

static void test_conv(void) {
    static const struct {
        const char *name;
        int s, p;
    } fw[] = {{"conv_s1p0", 1, 0}, {"conv_s1p1", 1, 1}, {"conv_s2p0", 2, 0}, {"conv_s2p1", 2, 1},
              {"conv_rect", 2, 1}, {"conv_1x1", 1, 0},  {"conv_big", 1, 1},  {"conv_k5", 1, 2}};
    for (int c = 0; c < (int)(sizeof fw / sizeof *fw); c++) {
        if (!begin(fw[c].name) || !call())
            continue;
        Conv k = conv_dims(arg_shape("x"), arg_shape("w"), fw[c].s, fw[c].p);
        double *ref = ref_conv(get("x"), get("w"), k);
        expect(ref, M->tol, sh(4, (int)k.N, (int)k.O, (int)k.OH, (int)k.OW));
    }
    static const struct {
        const char *name;
        int s, p;
        bool dx;
    } bw[] = {
        {"convgx_s1p0", 1, 0, 1}, {"convgw_s1p0", 1, 0, 0}, {"convgx_s2p1", 2, 1, 1}, {"convgw_s2p1", 2, 1, 0},
        {"convgx_s1p1", 1, 1, 1}, {"convgw_s1p1", 1, 1, 0}, {"convgx_rect", 2, 1, 1}, {"convgw_rect", 2, 1, 0},
        {"convgx_big", 1, 1, 1},  {"convgw_big", 1, 1, 0},  {"convgx_k5", 1, 2, 1},   {"convgw_k5", 1, 2, 0},
        {"convgx_s2_small", 2, 1, 1}, {"convgx_1x1s2", 2, 0, 1}, {"convgx_s2_big", 2, 1, 1},
    };
    for (int c = 0; c < (int)(sizeof bw / sizeof *bw); c++) {
        if (!begin(bw[c].name))
            continue;
        /* the gradient of sum(conv(x, w) * dy) w.r.t. x does not read x (nor
         * w.r.t. w read w): the result has its shape */
        Conv k = bw[c].dx ? conv_dims(arg_shape("out"), arg_shape("w"), bw[c].s, bw[c].p)
                          : conv_dims(arg_shape("x"), arg_shape("out"), bw[c].s, bw[c].p);
        if (!call())
            continue;
        double *ref = bw[c].dx ? ref_conv_dx(get("dy"), get("w"), k) : ref_conv_dw(get("x"), get("dy"), k);
        Sh want = bw[c].dx ? sh(4, (int)k.N, (int)k.C, (int)k.H, (int)k.W) : sh(4, (int)k.O, (int)k.C, (int)k.KH, (int)k.KW);
        expect(ref, M->tol, want);
    }
    /* the NN weight gradient (32+ output channels); x read through relu or
     * a transposed view in the last two */
    static const struct {
        const char *name;
        int s, p, x_form;   /* 0 as given, 1 relu(x), 2 x with its last two axes swapped */
    } nn[] = {{"convgw_nn_small", 1, 1, 0}, {"convgw_nn_s2p1", 2, 1, 0}, {"convgw_nn_1x1s2", 2, 0, 0},
              {"convgw_nn_wide", 1, 1, 0},  {"convgw_nn_k5", 1, 2, 0},  {"convgw_nn_relu", 1, 1, 1},
              {"convgw_nn_tr", 1, 1, 2}};
    for (int c = 0; c < (int)(sizeof nn / sizeof *nn); c++) {
        if (!begin(nn[c].name))
            continue;
        Sh xs = arg_shape("x");
        if (nn[c].x_form == 2) {
            int64_t t = xs.d[2];
            xs.d[2] = xs.d[3], xs.d[3] = t;
        }
        Conv k = conv_dims(xs, arg_shape("out"), nn[c].s, nn[c].p);
        if (!call())
            continue;
        double *x = get("x");
        if (nn[c].x_form) {
            double *xf = D(k.N * k.C * k.H * k.W);
            for (int64_t nc = 0; nc < k.N * k.C; nc++)
                for (int64_t h = 0; h < k.H; h++)
                    for (int64_t v = 0; v < k.W; v++) {
                        int64_t i = (nc * k.H + h) * k.W + v;
                        xf[i] = nn[c].x_form == 1 ? fmax(x[i], 0) : x[(nc * k.W + v) * k.H + h];
                    }
            x = xf;
        }
        expect(ref_conv_dw(x, get("dy"), k), M->tol, sh(4, (int)k.O, (int)k.C, (int)k.KH, (int)k.KW));
    }
}

static void test_pool(void) {
    static const struct {
        const char *name;
        int k, s, p;
        bool max;
        double lo, hi;
    } cs[] = {
        {"maxpool_k2", 2, 2, 0, 1, -1, 1},      {"maxpool_k3p1", 3, 2, 1, 1, -1, 1}, {"maxpool_k3p1_neg", 3, 2, 1, 1, -2, -0.1},
        {"maxpool_k3s1", 3, 1, 0, 1, -1, 1},    {"avgpool_k2", 2, 2, 0, 0, -1, 1},   {"avgpool_k3p1", 3, 2, 1, 0, -1, 1},
        {"avgpool_k2s1", 2, 1, 0, 0, -1, 1},    {"maxpool_odd", 2, 2, 0, 1, -1, 1},  {"avgpool_odd", 2, 2, 0, 0, -1, 1},
    };
    for (int c = 0; c < 9; c++) {
        if (!begin(cs[c].name))
            continue;
        fill("x", cs[c].lo, cs[c].hi);
        if (!call())
            continue;
        Sh xs = arg_shape("x");
        int64_t N = xs.d[0], C = xs.d[1], H = xs.d[2], W = xs.d[3], k = cs[c].k, s = cs[c].s, p = cs[c].p;
        int64_t OH = (H + 2 * p - k) / s + 1, OW = (W + 2 * p - k) / s + 1;
        double *x = get("x"), *ref = D(N * C * OH * OW);
        for (int64_t nc = 0; nc < N * C; nc++)
            for (int64_t oh = 0; oh < OH; oh++)
                for (int64_t ow = 0; ow < OW; ow++) {
                    double acc = cs[c].max ? -INFINITY : 0;
                    for (int64_t i = 0; i < k; i++)
                        for (int64_t j = 0; j < k; j++) {
                            int64_t h = oh * s + i - p, w = ow * s + j - p;
                            if (h < 0 || h >= H || w < 0 || w >= W)
                                continue;   /* padding: never the max; counts as 0 in the average */
                            double v = x[(nc * H + h) * W + w];
                            acc = cs[c].max ? fmax(acc, v) : acc + v;
                        }
                    ref[(nc * OH + oh) * OW + ow] = cs[c].max ? acc : acc / (double)(k * k);
                }
        expect(ref, M->tol, sh(4, (int)N, (int)C, (int)OH, (int)OW));
    }
}

/* ---------------------------------------------------------------------------
 * normalisation */

/* batch norm of x [N, C, rest...] with per-channel statistics */
static void test_batchnorm(void) {
    static const struct {
        const char *name;
        bool train;
        double momentum, eps;
    } cs[] = {
        {"bn_train", 1, 0.1, 1e-5}, {"bn_train_mom", 1, 0.25, 1e-3}, {"bn_eval", 0, 0.1, 1e-5}, {"bn_eval2", 0, 0.1, 1e-3},
        {"bn_train_3d", 1, 0.1, 1e-5},
    };
    for (int c = 0; c < 5; c++) {
        if (!begin(cs[c].name))
            continue;
        const char *xn = cs[c].train ? "batch.x" : "x", *yn = cs[c].train ? "y" : "out";
        fill(xn, -2, 3);
        fill("m.gamma", 0.5, 1.5);
        fill("m.beta", -1, 1);
        fill("m.mean", -0.5, 0.5);
        fill("m.var", 0.5, 2);
        Sh xs = arg_shape(xn);
        double *x = get(xn), *g = get("m.gamma"), *b = get("m.beta"), *rm = get("m.mean"), *rv = get("m.var");
        if (!call())
            continue;
        int64_t N = xs.d[0], C = xs.d[1], R = sh_n(xs) / (N * C);
        double *y = D(sh_n(xs)), *nm = D(C), *nv = D(C);
        for (int64_t ch = 0; ch < C; ch++) {
            double mu = rm[ch], var = rv[ch];
            if (cs[c].train) {
                double s = 0, q = 0;
                for (int64_t n = 0; n < N; n++)
                    for (int64_t r = 0; r < R; r++)
                        s += x[(n * C + ch) * R + r];
                mu = s / (double)(N * R);
                for (int64_t n = 0; n < N; n++)
                    for (int64_t r = 0; r < R; r++)
                        q += (x[(n * C + ch) * R + r] - mu) * (x[(n * C + ch) * R + r] - mu);
                var = q / (double)(N * R);
                double m = cs[c].momentum;
                nm[ch] = (1 - m) * rm[ch] + m * mu;
                nv[ch] = (1 - m) * rv[ch] + m * var * (double)(N * R) / (double)(N * R - 1);
            }
            for (int64_t n = 0; n < N; n++)
                for (int64_t r = 0; r < R; r++) {
                    int64_t i = (n * C + ch) * R + r;
                    y[i] = (x[i] - mu) / sqrt(var + cs[c].eps) * g[ch] + b[ch];
                }
        }
        check_arg(yn, y, M->tol, xs);
        if (cs[c].train) {
            check_arg("m.mean", nm, M->tol, sh(1, (int)C));
            check_arg("m.var", nv, M->tol, sh(1, (int)C));
        }
        end_case();
    }
}

/* per-channel batch statistics of x [N, C, R] (population variance) */
static void bn_stats(const double *x, int64_t N, int64_t C, int64_t R, double *mu, double *var) {
    for (int64_t c = 0; c < C; c++) {
        double s = 0, q = 0;
        for (int64_t n = 0; n < N; n++)
            for (int64_t r = 0; r < R; r++)
                s += x[(n * C + c) * R + r];
        mu[c] = s / (double)(N * R);
        for (int64_t n = 0; n < N; n++)
            for (int64_t r = 0; r < R; r++)
                q += (x[(n * C + c) * R + r] - mu[c]) * (x[(n * C + c) * R + r] - mu[c]);
        var[c] = q / (double)(N * R);
    }
}

/* batch norm inside rules: grad through batch statistics, parameter writes,
 * reports before and after them (a call after the write is a new call: two
 * chained running-statistics updates), and chained updates of two
 * train-mode calls next to an eval call */
static void test_bn_rules(void) {
    const double eps = 1e-5;
    if (begin("bn_sgd_a")) {
        fill("batch.x", -2, 3);
        fill("m.gamma", 0.5, 1.5);
        fill("m.mean", -0.5, 0.5);
        fill("m.var", 0.5, 2);
        double *x = get("batch.x"), *g = get("m.gamma"), *b = get("m.beta"), *rm = get("m.mean"), *rv = get("m.var");
        if (call()) {
            const int64_t N = 4, C = 3, R = 6, n = N * R;
            double mu[3], var[3], ng[3], nb[3], nm[3], nv[3];
            double *y0 = D(N * C * R), *y = D(N * C * R), *y2 = D(N * C * R);
            bn_stats(x, N, C, R, mu, var);
            for (int64_t c = 0; c < C; c++) {
                double dg = 0, db = 0;
                for (int64_t k = 0; k < N; k++)
                    for (int64_t r = 0; r < R; r++) {
                        int64_t i = (k * C + c) * R + r;
                        double xh = (x[i] - mu[c]) / sqrt(var[c] + eps);
                        y0[i] = xh * g[c] + b[c];
                        dg += 2 * y0[i] * xh;
                        db += 2 * y0[i];
                    }
                ng[c] = g[c] - 0.1 * dg;
                nb[c] = b[c] - 0.1 * db;
                for (int64_t k = 0; k < N; k++)
                    for (int64_t r = 0; r < R; r++) {
                        int64_t i = (k * C + c) * R + r;
                        y[i] = (x[i] - mu[c]) / sqrt(var[c] + eps) * ng[c] + nb[c];
                        y2[i] = 2 * y[i];
                    }
                /* two train-mode calls (old and new parameters), same batch statistics */
                nm[c] = 0.9 * (0.9 * rm[c] + 0.1 * mu[c]) + 0.1 * mu[c];
                nv[c] = 0.9 * (0.9 * rv[c] + 0.1 * var[c] * n / (n - 1)) + 0.1 * var[c] * n / (n - 1);
            }
            check_arg("y_before", y0, M->tol, sh(4, 4, 3, 2, 3));
            check_arg("y", y, M->tol, sh(4, 4, 3, 2, 3));
            check_arg("y2", y2, M->tol, sh(4, 4, 3, 2, 3));
            check_arg("m.gamma", ng, M->tol, sh(1, 3));
            check_arg("m.beta", nb, M->tol, sh(1, 3));
            check_arg("m.mean", nm, M->tol, sh(1, 3));
            check_arg("m.var", nv, M->tol, sh(1, 3));
            end_case();
        }
    }
    if (begin("bn_chain_a")) {   /* y = bn(a) + 2 bn(b) + 3 eval bn(a); momentum 0.2 */
        fill("a.x", -2, 3);
        fill("b.x", -1, 4);
        fill("m.gamma", 0.5, 1.5);
        fill("m.mean", -0.5, 0.5);
        fill("m.var", 0.5, 2);
        double *a = get("a.x"), *bx = get("b.x"), *g = get("m.gamma"), *be = get("m.beta"), *rm = get("m.mean"), *rv = get("m.var");
        if (call()) {
            const int64_t N = 4, C = 3, R = 5, n = N * R;
            double mua[3], vara[3], mub[3], varb[3], *y = D(N * C * R), nm[3], nv[3];
            bn_stats(a, N, C, R, mua, vara);
            bn_stats(bx, N, C, R, mub, varb);
            for (int64_t c = 0; c < C; c++) {
                for (int64_t k = 0; k < N; k++)
                    for (int64_t r = 0; r < R; r++) {
                        int64_t i = (k * C + c) * R + r;
                        y[i] = (a[i] - mua[c]) / sqrt(vara[c] + eps) * g[c] + be[c] + 2 * ((bx[i] - mub[c]) / sqrt(varb[c] + eps) * g[c] + be[c]) +
                               3 * ((a[i] - rm[c]) / sqrt(rv[c] + eps) * g[c] + be[c]);
                    }
                nm[c] = 0.8 * (0.8 * rm[c] + 0.2 * mua[c]) + 0.2 * mub[c];
                nv[c] = 0.8 * (0.8 * rv[c] + 0.2 * vara[c] * n / (n - 1)) + 0.2 * varb[c] * n / (n - 1);
            }
            check_arg("y", y, M->tol, sh(3, 4, 3, 5));
            check_arg("m.mean", nm, M->tol, sh(1, 3));
            check_arg("m.var", nv, M->tol, sh(1, 3));
            end_case();
        }
    }
}

static void test_layernorm(void) {
    static const struct {
        const char *name;
        int inner;   /* elements normalised together */
        double eps;
    } cs[] = {{"layernorm_a", 8, 1e-5}, {"layernorm_b", 24, 1e-3}};
    for (int c = 0; c < 2; c++) {
        if (!begin(cs[c].name))
            continue;
        fill("x", -2, 3);
        fill("g", 0.5, 1.5);
        if (!call())
            continue;
        double *x = get("x"), *g = get("g"), *b = get("b"), *y = D(48);
        int k = cs[c].inner;
        for (int r = 0; r < 48 / k; r++) {
            double mu = 0, var = 0;
            for (int i = 0; i < k; i++)
                mu += x[r * k + i] / k;
            for (int i = 0; i < k; i++)
                var += (x[r * k + i] - mu) * (x[r * k + i] - mu) / k;
            for (int i = 0; i < k; i++)
                y[r * k + i] = (x[r * k + i] - mu) / sqrt(var + cs[c].eps) * g[i] + b[i];
        }
        expect(y, M->tol, sh(3, 2, 3, 8));
    }
}

/* softmax / log_softmax of x (shape s) along axis */
double *ref_softmax(const double *x, Sh s, int axis, bool lg) {
    double *o = D(sh_n(s));
    int64_t ix[8];
    for (int64_t i = 0; i < sh_n(s); i++) {
        unravel(s, i, ix);
        int64_t at = ix[axis];
        double mx = -INFINITY, sum = 0;
        for (int64_t k = 0; k < s.d[axis]; k++) {
            ix[axis] = k;
            mx = fmax(mx, x[ravel(s, ix)]);
        }
        for (int64_t k = 0; k < s.d[axis]; k++) {
            ix[axis] = k;
            sum += exp(x[ravel(s, ix)] - mx);
        }
        o[i] = lg ? x[i] - mx - log(sum) : exp(x[i] - mx) / sum;
        (void)at;
    }
    return o;
}

static void test_softmax(void) {
    static const struct {
        const char *name;
        Sh s;
        int axis;
        bool lg;
    } cs[] = {
        {"softmax_a", {2, {3, 5}}, 1, 0}, {"softmax_b", {2, {3, 5}}, 0, 0}, {"log_softmax_a", {2, {3, 5}}, 1, 1}, {"log_softmax_b", {3, {2, 3, 4}}, 1, 1},
    };
    for (int c = 0; c < 4; c++) {
        if (!begin(cs[c].name))
            continue;
        fill("x", -3, 3);
        if (!call())
            continue;
        expect(ref_softmax(get("x"), cs[c].s, cs[c].axis, cs[c].lg), M->tol, cs[c].s);
    }
    for (int c = 0; c < 2; c++) {
        if (!begin(c ? "causal_b" : "causal_a") || !call())
            continue;
        double *s = get("s"), *m = D(32);
        for (int b = 0; b < 2; b++)
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++)
                    m[(b * 4 + i) * 4 + j] = j <= i ? s[(b * 4 + i) * 4 + j] : -INFINITY;
        expect(c ? ref_softmax(m, sh(3, 2, 4, 4), 2, false) : m, M->tol, sh(3, 2, 4, 4));
    }
}

/* ---------------------------------------------------------------------------
 * driver */

static void run_mode(Mode *m, const char *flags) {
    M = m;
    char *err = NULL;
    m->p = th_compile_file(OPS_LTH, flags, &err);
    if (!m->p) {
        char nm[64];
        snprintf(nm, sizeof nm, "ops.compile.%s", m->tag);
        th_fail(nm, "lethec %s %s failed:\n%s", OPS_LTH, flags, err ? err : "?");
        free(err);
        return;
    }
    read_streams(flags);
    test_unary();
    test_binary();
    test_compare();
    test_reductions();
    test_matmul();
    test_shapes();
    test_indexing();
    test_conv();
    test_pool();
    test_batchnorm();
    test_bn_rules();
    test_layernorm();
    test_softmax();
    test_random();
    test_edge();
    test_inplace();
    test_big();
}

int main(void) {
    Mode f32 = {.tag = "f32", .f64 = false, .tol = 1e-5, .tol_tr = 2e-6};
    Mode f64 = {.tag = "f64", .f64 = true, .tol = 1e-12, .tol_tr = 1e-12};
    run_mode(&f32, "");
    run_mode(&f64, "--f64");
    free(scratch);
    return th_exit();
}
