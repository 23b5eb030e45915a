/* test_gpt2_parity.c: GPT-2 compiled by lethec against PyTorch.
 *
 * tests/reference/gpt2_tiny_*.safetensors are written by
 * tests/reference/make_gpt2_reference.py (README.md there): a float64 GPT-2
 * written from Hugging Face's formulas, its checkpoint in exactly HF's layout
 * (gpt2_tiny_hf: GPT2Model names with the attn.bias buffers; gpt2_tiny_cls_hf:
 * GPT2ForSequenceClassification, `transformer.` + score.weight) and what it
 * computes on a batch of 3 right-padded sequences (gpt2_tiny_ref).
 *
 * The program is tests/lth/gpt2_parity.lth, compiled twice: f32 (the default
 * -O3, fast math) and f64 (--f64 -O0). Parameters enter only through the HF
 * loader (runtime/hf.c), so the test covers the layout as a user's download
 * would. Checks per mode:
 *
 *   lm        logits, LM loss with padding, d loss / d inputs_embeds, d loss
 *             / d p for every parameter (tiny_lm)
 *   cls       classification logits on the last real token, cross entropy,
 *             its input-embedding gradient and every parameter gradient
 *             (tiny_cls, loaded from the classifier's file)
 *   adamw     3 steps of graphs/train/adamw.lth's adamw_lm with the
 *             reference's lr, betas, eps, weight decay, clipping norm and
 *             linear warm-up/decay schedule: each step's loss and every
 *             parameter after the steps
 *   padding   other token ids at the padded positions: the same loss (and
 *             classifier logits) bit for bit
 *   config    the C = 32 checkpoint into a C = 48 model: the loader's error
 *   init      init_model draws HF's initial distributions
 *   schedule  adamw.lth's linear and cosine learning-rate factors against
 *             HF's formulas
 * and once: gpt2() and gpt2_medium() have HF's parameter counts; a sequence
 * longer than the positions does not compile.
 *
 * Error of a tensor: max_i |lethe_i - ref_i| / max_i |ref_i| (llm.c's
 * measure); a check reports its worst tensor. Tolerances, f32: 1e-4 on
 * forward values, 1e-3 on gradients (as the ResNet-18 parity test), 1e-4 on
 * the parameters after the AdamW steps except the key biases (the middle
 * third of c_attn.bias), 2e-2 on those: adding a constant vector to every
 * key adds the same number to a query's scores, which softmax ignores, so
 * their gradient is exactly zero and f32 leaves ~1e-9 of rounding in it;
 * AdamW divides m by sqrt(v), which turns that noise into steps of up to lr.
 * PyTorch's own f32 run ends 6e-3 away from its f64 run there (and under
 * 4e-6 everywhere else). f64: 1e-6 on everything (the references are stored
 * in f32: their rounding, 6e-8, is the floor).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hf.h"
#include "lethe.h"
#include "safetensors.h"
#include "threadpool.h"

#define REF_DIR "tests/reference/"

typedef struct Mode {
    const char *tag, *flags;
    double tol_fwd, tol_grad, tol_steps, tol_key_bias;
} Mode;

static const Mode modes[] = {
    {"f32", "", 1e-4, 1e-3, 1e-4, 2e-2},
    {"f64", "--f64 -O0", 1e-6, 1e-6, 1e-6, 1e-6},
};

static void report(const char *name, th_worst *w, double tol) {
    char line[400];
    if (w->missing) {
        th_fail(name, "a reference or an output is missing (see above)");
        return;
    }
    snprintf(line, sizeof line, "%s: max rel err %.2e at %s (tol %.0e)", name, w->err, w->what, tol);
    if (w->err <= tol)
        th_pass(line);
    else
        th_fail(line, "above tolerance");
}

/* lethe values p (dtype dt, n elements) against the reference `name`, over
 * the elements [lo, hi) (the denominator over the whole reference tensor) */
static void cmp_range(const st_file *ref, const char *name, const void *p, int dt, int64_t n, int64_t lo, int64_t hi,
                      th_worst *w) {
    int64_t m = 0;
    double *b = th_ref_f64(ref, "gpt2_tiny_ref", name, &m);
    if (!b || !p || m != n) {
        if (b)
            printf("# %s has %lld elements, lethe %lld\n", name, (long long)m, (long long)n);
        if (!p)
            printf("# no lethe output for %s\n", name);
        w->missing = 1;
        free(b);
        return;
    }
    double d = 0, amax = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(lethe_elem_f64(p, dt, i) - b[i]);
        if (i >= lo && i < hi)
            d = isnan(e) || e > d ? e : d;
        amax = fmax(amax, fabs(b[i]));
    }
    th_worst_add(w, d / fmax(amax, 1e-30), name);
    free(b);
}

static void cmp(const st_file *ref, const char *name, const void *p, int dt, int64_t n, th_worst *w) {
    cmp_range(ref, name, p, dt, n, 0, n, w);
}

/* an output argument of a called frame against the reference `name` */
static void cmp_out(const st_file *ref, const char *name, lethe_frame *f, const char *arg, th_worst *w) {
    int i = th_arg(f->e, arg);
    if (i < 0) {
        printf("# entry %s has no output %s\n", f->e->name, arg);
        w->missing = 1;
        return;
    }
    cmp(ref, name, f->args[i], f->e->args[i].dtype, th_arg_numel(&f->e->args[i]), w);
}

/* sets an input argument from a reference tensor, converted to its dtype */
static int set_input(lethe_frame *f, const char *arg, const st_file *ref, const char *name) {
    int i = th_arg(f->e, arg);
    const st_tensor *t = st_find(ref, name);
    char err[LETHE_ERR_LEN];
    if (i < 0 || !t || st_read_as(t, (st_dtype)st_from_lethe(f->e->args[i].dtype), f->args[i], th_arg_numel(&f->e->args[i]), err)) {
        printf("# cannot set %s of %s from %s\n", arg, f->e->name, name);
        return 1;
    }
    return 0;
}

/* a model store filled by the entry's init_model, then from an HF file */
static int model_from_hf(const lethe_program *p, const char *entry, const char *file, ts_store *s, lethe_ctx *ctx,
                         char *err) {
    char init[128];
    snprintf(init, sizeof init, "%s.init_model", entry);
    const lethe_entry *e = th_entry(p, init);
    if (!e)
        return lethe_errf(err, LETHE_ENOTFOUND, "no entry %s", init);
    frame_models fm = {NULL, s};
    lethe_frame *f = frame_new(e, &fm, 1, NULL, err);
    if (!f)
        return LETHE_EARG;
    int rc = frame_call(f, ctx, err);
    frame_free(f);
    if (rc)
        return rc;
    char prefix[HF_PREFIX_LEN];
    rc = hf_load(s, file, &hf_gpt2, NULL, prefix, err);
    if (!rc && *prefix)
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: unexpected prefix %s", file, prefix);
    return rc;
}

/* runs `entry` on the reference batch: logits, loss, embedding and parameter
 * gradients against <pfx>logits, <pfx>loss, ... */
static void check_probe(const Mode *mode, const lethe_program *p, const char *entry, const char *file,
                        const char *pfx, const char *model_prefix, const st_file *ref, lethe_ctx *ctx) {
    char name[256], err[LETHE_ERR_LEN];
    ts_store s = {0};
    const lethe_entry *e = th_entry(p, entry);
    lethe_frame *f = NULL;
    if (!e || model_from_hf(p, entry, file, &s, ctx, err)) {
        snprintf(name, sizeof name, "%s %s", mode->tag, entry);
        th_fail(name, "%s", e ? err : "no such entry");
        goto out;
    }
    frame_models fm = {NULL, &s};
    f = frame_new(e, &fm, 1, NULL, err);
    if (!f || set_input(f, "idx", ref, "input.idx") || set_input(f, "mask", ref, "input.mask") ||
        (th_arg(e, "y") >= 0 && set_input(f, "y", ref, "input.labels")) || frame_call(f, ctx, err)) {
        snprintf(name, sizeof name, "%s %s", mode->tag, entry);
        th_fail(name, "cannot run it: %s", err);
        goto out;
    }
    th_worst wl = {0}, wloss = {0}, we = {0}, wg = {0};
    snprintf(name, sizeof name, "%slogits", pfx);
    cmp_out(ref, name, f, "out.0", &wl);
    snprintf(name, sizeof name, "%s", *pfx ? "cls_loss" : "lm_loss");
    cmp_out(ref, name, f, "out.1", &wloss);
    snprintf(name, sizeof name, "%sgrad_embeds", pfx);
    cmp_out(ref, name, f, "out.2", &we);
    for (int i = 0; i < e->nargs; i++) {
        const lethe_arg *a = &e->args[i];
        if (a->kind != LETHE_PARAM)
            continue;
        const char *path = a->path;
        if (model_prefix && !strncmp(path, model_prefix, strlen(model_prefix)))
            path += strlen(model_prefix);
        char out[300];
        snprintf(out, sizeof out, "out.3.%s", a->path);
        snprintf(name, sizeof name, "%sgrad/%s", pfx, path);
        cmp_out(ref, name, f, out, &wg);
    }
    snprintf(name, sizeof name, "%s %s logits", mode->tag, entry);
    report(name, &wl, mode->tol_fwd);
    snprintf(name, sizeof name, "%s %s loss", mode->tag, entry);
    report(name, &wloss, mode->tol_fwd);
    snprintf(name, sizeof name, "%s %s input-embedding gradient", mode->tag, entry);
    report(name, &we, mode->tol_grad);
    snprintf(name, sizeof name, "%s %s every parameter gradient", mode->tag, entry);
    report(name, &wg, mode->tol_grad);

    /* other token ids at the padded positions change neither the loss nor
     * the classifier's logits, bit for bit */
    {
        int ii = th_arg(e, "idx"), im = th_arg(e, "mask"), il = th_arg(e, "out.1"), io = th_arg(e, "out.0");
        int64_t n = th_arg_numel(&e->args[ii]), no = th_arg_numel(&e->args[io]);
        size_t lb = th_dtype_size(e->args[il].dtype), ob = (size_t)no * th_dtype_size(e->args[io].dtype);
        char loss0[8], *logits0 = malloc(ob);
        memcpy(loss0, f->args[il], lb);
        memcpy(logits0, f->args[io], ob);
        int32_t *idx = f->args[ii];
        for (int64_t j = 0; j < n; j++)
            if (lethe_elem_f64(f->args[im], e->args[im].dtype, j) == 0)
                idx[j] = (int32_t)((j * 7) % 60);
        snprintf(name, sizeof name, "%s %s padding ignored", mode->tag, entry);
        if (frame_call(f, ctx, err))
            th_fail(name, "%s", err);
        else
            th_check(!memcmp(loss0, f->args[il], lb) && (!*pfx || !memcmp(logits0, f->args[io], ob)), name,
                     "the loss%s changed with the padded token ids", *pfx ? " or the logits" : "");
        free(logits0);
    }
out:
    frame_free(f);
    ts_clear(&s);
}

static double meta_num(const st_file *ref, const char *key) {
    const char *v = st_meta_get(ref, key);
    return v ? strtod(v, NULL) : NAN;
}

static void check_adamw(const Mode *mode, const lethe_program *p, const st_file *ref, lethe_ctx *ctx) {
    char name[256], err[LETHE_ERR_LEN];
    ts_store s = {0}, state = {0};
    lethe_frame *f = NULL, *fi = NULL;
    const lethe_entry *e = th_entry(p, "tiny_adamw"), *ei = th_entry(p, "tiny_adamw.init_state");
    snprintf(name, sizeof name, "%s adamw", mode->tag);
    frame_models fm = {NULL, &s};
    if (!e || !ei || model_from_hf(p, "tiny_adamw", REF_DIR "gpt2_tiny_hf.safetensors", &s, ctx, err) ||
        !(fi = frame_new(ei, &fm, 1, &state, err)) || frame_call(fi, ctx, err) || !(f = frame_new(e, &fm, 1, &state, err)) ||
        set_input(f, "batch.x", ref, "input.idx") || set_input(f, "batch.mask", ref, "input.mask")) {
        th_fail(name, "cannot set up the step: %s", e && ei ? err : "no entry");
        goto out;
    }
    static const char *const scalars[] = {"lr", "beta1", "beta2", "eps", "wd", "max_norm", "warmup", "total"};
    for (size_t i = 0; i < sizeof scalars / sizeof *scalars; i++) {
        char key[64];
        snprintf(key, sizeof key, "adamw.%s", scalars[i]);
        double v = meta_num(ref, key);
        if (isnan(v) || frame_set_scalar(f, scalars[i], v)) {
            th_fail(name, "cannot set scalar %s", scalars[i]);
            goto out;
        }
    }
    long steps = (long)meta_num(ref, "adamw_steps");
    int64_t nl = 0;
    double *ref_loss = th_ref_f64(ref, "gpt2_tiny_ref", "adamw_loss", &nl);
    th_worst wl = {0}, wp = {0}, wk = {0};
    if (!ref_loss || nl != steps) {
        th_fail(name, "the reference has no adamw_loss for %ld steps", steps);
        free(ref_loss);
        goto out;
    }
    for (long k = 0; k < steps; k++) {
        if (frame_call(f, ctx, err)) {
            th_fail(name, "step %ld: %s", k + 1, err);
            free(ref_loss);
            goto out;
        }
        int li = th_arg(e, "loss");
        double loss = lethe_elem_f64(f->args[li], e->args[li].dtype, 0);
        char what[64];
        snprintf(what, sizeof what, "step %ld", k + 1);
        th_worst_add(&wl, fabs(loss - ref_loss[k]) / fabs(ref_loss[k]), what);
    }
    free(ref_loss);
    for (int i = 0; i < s.n; i++) {
        char rn[300];
        const ts_tensor *t = &s.t[i];
        int64_t n = (int64_t)(t->nbytes / ts_dtype_size(t->dtype)), c = n / 3;
        snprintf(rn, sizeof rn, "adamw/%s", t->name);
        if (strstr(t->name, "attn.c_attn.bias")) {   /* [q | k | v] biases */
            cmp_range(ref, rn, t->data, t->dtype, n, 0, c, &wp);
            cmp_range(ref, rn, t->data, t->dtype, n, 2 * c, n, &wp);
            cmp_range(ref, rn, t->data, t->dtype, n, c, 2 * c, &wk);
        } else {
            cmp(ref, rn, t->data, t->dtype, n, &wp);
        }
    }
    snprintf(name, sizeof name, "%s adamw loss at each step", mode->tag);
    report(name, &wl, mode->tol_fwd);
    snprintf(name, sizeof name, "%s adamw every parameter after %ld steps, key biases aside", mode->tag, steps);
    report(name, &wp, mode->tol_steps);
    snprintf(name, sizeof name, "%s adamw key biases after %ld steps", mode->tag, steps);
    report(name, &wk, mode->tol_key_bias);
out:
    frame_free(f);
    frame_free(fi);
    ts_clear(&s);
    ts_clear(&state);
}

/* HF's _init_weights: std 0.02 for weights and embeddings, 0.02 / sqrt(2
 * layers) for c_proj, zero biases, unit layer-norm weights (the sample std
 * of 640 or more draws is within 15% of the intended one: 5 standard errors;
 * c_proj at 0.02 instead would be 100% off) */
static void check_init(const Mode *mode, const lethe_program *p, lethe_ctx *ctx) {
    char name[128], err[LETHE_ERR_LEN] = "", what[300] = "";
    ts_store s = {0};
    const lethe_entry *e = th_entry(p, "tiny_lm.init_model");
    frame_models fm = {NULL, &s};
    lethe_frame *f = e ? frame_new(e, &fm, 1, NULL, err) : NULL;
    snprintf(name, sizeof name, "%s init as HF's _init_weights", mode->tag);
    if (!f || frame_call(f, ctx, err)) {
        th_fail(name, "%s", e ? err : "no init_model entry");
        frame_free(f);
        return;
    }
    int bad = 0;
    for (int i = 0; i < s.n; i++) {
        const ts_tensor *t = &s.t[i];
        int64_t n = (int64_t)(t->nbytes / ts_dtype_size(t->dtype));
        double sum = 0, sq = 0;
        for (int64_t j = 0; j < n; j++) {
            double v = lethe_elem_f64(t->data, t->dtype, j);
            sum += v, sq += v * v;
        }
        double mean = sum / n, sd = sqrt(sq / n - mean * mean), want_mean = 0, want_sd = 0.02;
        if (t->rank == 1)
            want_mean = strstr(t->name, "ln_") && strstr(t->name, ".weight") ? 1 : 0, want_sd = 0;
        else if (strstr(t->name, "c_proj.weight"))
            want_sd = 0.02 / sqrt(2.0 * 2);
        int ok = want_sd == 0 ? sd == 0 && mean == want_mean : fabs(sd / want_sd - 1) < 0.15 && fabs(mean) < want_sd / 5;
        if (!ok && !bad++)
            snprintf(what, sizeof what, "%s: mean %.4g sd %.4g, want %.4g and %.4g", t->name, mean, sd, want_mean, want_sd);
    }
    th_check(s.n > 0 && !bad, name, "%d tensors off, first %s", bad, what);
    frame_free(f);
    ts_clear(&s);
}

/* adamw.lth's learning-rate factor at s = 0..39 against Hugging Face's
 * get_linear_schedule_with_warmup and get_cosine_schedule_with_warmup
 * (progress clamped at 1 past total, where HF's cosine would rise again),
 * computed here with libm's cos; 1e-6 absolute (the .lth cos_pi is a
 * polynomial within 6e-8) */
static void check_schedule(const Mode *mode, const lethe_program *p, lethe_ctx *ctx) {
    static const double cases[][3] = {{5, 30, 0}, {5, 30, 1}, {0, 30, 1}, {0, 30, 0}, {3, 0, 0}, {3, 0, 1}};
    const lethe_entry *e = th_entry(p, "lr_schedule");
    char name[128], what[160] = "";
    snprintf(name, sizeof name, "%s adamw learning-rate schedule (linear, cosine) as HF's", mode->tag);
    if (!e) {
        th_fail(name, "no entry lr_schedule");
        return;
    }
    double worst = 0;
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        th_frame *f = th_frame_new(e);
        const double w = cases[c][0], total = cases[c][1], cosine = cases[c][2];
        const char *scal[] = {"warmup", "total", "cosine"};
        for (int k = 0; k < 3; k++) {
            int i = th_arg(e, scal[k]);
            if (e->args[i].dtype == LETHE_F64)
                *(double *)f->args[i] = cases[c][k];
            else
                *(float *)f->args[i] = (float)cases[c][k];
        }
        int is = th_arg(e, "s"), io = th_arg(e, "out");
        for (int k = 0; k < 40; k++) {
            if (e->args[is].dtype == LETHE_F64)
                ((double *)f->args[is])[k] = k;
            else
                ((float *)f->args[is])[k] = (float)k;
        }
        th_call(f, ctx);
        for (int k = 0; k < 40; k++) {
            double want;
            if (k < w)
                want = k / fmax(1, w);
            else if (total == 0)
                want = 1;
            else if (!cosine)
                want = fmax(0, (total - k) / fmax(1, total - w));
            else
                want = 0.5 * (1 + cos(M_PI * fmin(1, (k - w) / fmax(1, total - w))));
            double d = fabs(lethe_elem_f64(f->args[io], e->args[io].dtype, k) - want);
            if (!(d <= worst)) {
                worst = d;
                snprintf(what, sizeof what, "warmup %g total %g cosine %g step %d", w, total, cosine, k);
            }
        }
        th_frame_free(f);
    }
    snprintf(name, sizeof name, "%s adamw learning-rate schedule (linear, cosine) as HF's: max abs err %.1e (tol 1e-06)",
             mode->tag, worst);
    th_check(worst <= 1e-6, name, "off by %.2e at %s", worst, what);
}

/* the C = 32 checkpoint into the C = 48 model: refused, with both shapes */
static void check_config(const Mode *mode, const lethe_program *p, lethe_ctx *ctx) {
    char name[128], err[LETHE_ERR_LEN] = "";
    ts_store s = {0};
    snprintf(name, sizeof name, "%s wrong configuration refused", mode->tag);
    int rc = model_from_hf(p, "tiny_wide", REF_DIR "gpt2_tiny_hf.safetensors", &s, ctx, err);
    printf("# %s\n", err);
    th_check(rc == LETHE_EFORMAT && strstr(err, "wte.weight is [64, 32] in the file, [64, 48] in the model") &&
                 strstr(err, "more"),
             name, "status %d, message: %s", rc, err);
    ts_clear(&s);
}

/* gpt2() and gpt2_medium() have HF's parameter counts (124,439,808 and
 * 354,823,168); checked on the entries' declarations, nothing is run */
static void check_configs(void) {
    const char *tmp = th_tmpdir();
    char src[600], hdr[600], args[1400];
    snprintf(src, sizeof src, "%s/configs.lth", tmp);
    snprintf(hdr, sizeof hdr, "%s/configs.h", tmp);
    FILE *f = fopen(src, "w");
    if (!f) {
        th_fail("configurations", "cannot write %s", src);
        return;
    }
    fprintf(f, "import \"models/gpt2.lth\"\n"
               "fn lm_logits(m: model, idx: i32[B, T]) = eval m(idx)\n"
               "export small = lm_logits(gpt2(), i32[1, 8])\n"
               "export medium = lm_logits(gpt2_medium(), i32[1, 8])\n");
    fclose(f);
    snprintf(args, sizeof args, "'%s' --emit=header -o '%s'", src, hdr);
    char *out = NULL;
    int rc = th_run_lethec(args, &out);
    long long count[2] = {0, 0};
    char line[512];
    int which = -1;
    f = rc ? NULL : fopen(hdr, "r");
    while (f && fgets(line, sizeof line, f)) {   /* an entry's comment line, then one line per argument */
        if (strstr(line, "/* entry \"small\" "))
            which = 0;
        else if (strstr(line, "/* entry \"medium\" "))
            which = 1;
        else if (strstr(line, "/* entry "))
            which = -1;
        char *d = strstr(line, "param read f32[");
        if (which < 0 || !d)
            continue;
        long long n = 1;
        for (char *q = d + strlen("param read f32["); *q && *q != ']'; q++)
            if (*q >= '0' && *q <= '9') {
                n *= strtoll(q, &q, 10);
                q--;
            }
        count[which] += n;
    }
    if (f)
        fclose(f);
    th_check(!rc && count[0] == 124439808LL && count[1] == 354823168LL, "gpt2() and gpt2_medium() have HF's parameter counts",
             "lethec status %d, %lld and %lld parameters; %s", rc, count[0], count[1], rc ? out : "");
    free(out);
}

/* a sequence longer than the model's positions is a compile error at the
 * position embedding, never a silent read past wpe */
static void check_too_long(void) {
    char *out = NULL;
    const char *src = "import \"models/gpt2.lth\"\n"
                      "fn lm_logits(m: model, idx: i32[B, T]) = eval m(idx)\n"
                      "export long = lm_logits(GPT2(layers = 1, c = 32, heads = 4, vocab = 64, positions = 20), i32[1, 24])\n";
    const lethe_program *p = th_compile_source("too_long.lth", src, "--check", &out);
    th_check(!p && out && strstr(out, "gpt2.lth:") && strstr(out, "f32[1, 24, 32] and f32[20, 32] do not broadcast"),
             "a sequence longer than positions does not compile", "%s", out ? out : "(it compiled)");
    free(out);
}

int main(void) {
    char err[LETHE_ERR_LEN];
    st_file *ref = NULL;
    if (st_load(REF_DIR "gpt2_tiny_ref.safetensors", 0, &ref, err)) {
        th_fail("reference", "%s (run /usr/bin/python3 tests/reference/make_gpt2_reference.py)", err);
        return th_exit();
    }
    check_configs();
    check_too_long();
    lethe_pool *pool = lethe_pool_new(2);
    lethe_ctx ctx;
    lethe_ctx_init(&ctx, pool, 1);
    for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
        char *cerr = NULL;
        const lethe_program *p = th_compile_file("tests/lth/gpt2_parity.lth", modes[m].flags, &cerr);
        if (!p) {
            th_fail(modes[m].tag, "lethec tests/lth/gpt2_parity.lth %s failed:\n%s", modes[m].flags, cerr ? cerr : "");
            free(cerr);
            continue;
        }
        check_probe(&modes[m], p, "tiny_lm", REF_DIR "gpt2_tiny_hf.safetensors", "", NULL, ref, &ctx);
        check_probe(&modes[m], p, "tiny_cls", REF_DIR "gpt2_tiny_cls_hf.safetensors", "cls_", "transformer.", ref, &ctx);
        check_adamw(&modes[m], p, ref, &ctx);
        check_config(&modes[m], p, &ctx);
        check_init(&modes[m], p, &ctx);
        check_schedule(&modes[m], p, &ctx);
    }
    lethe_pool_free(pool);
    st_free(ref);
    return th_exit();
}
