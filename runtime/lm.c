/* lm.c: `lethe lm-step`: AdamW steps of GPT-2's language-model loss on a
 * text, starting from a checkpoint in Hugging Face's layout (a downloaded
 * `gpt2` or `gpt2-medium` model.safetensors) and saved back in that layout.
 *
 *   lethe lm-step --config gpt2-medium --init model.safetensors --text FILE \
 *       [--steps N --batch B --len T --lr X ...] [--save out.safetensors]
 *
 * The program. Without --program, lm-step writes a .lth of three lines for
 * the configuration at B x T into the compile cache ($LETHE_CACHE/lm/):
 *
 *   import "models/gpt2.lth"
 *   import "train/adamw.lth"
 *   export lm_step = adamw_lm(GPT2(layers, c, heads, vocab, positions), data(x = i32[B, T], mask = f32[B, T]))
 *
 * and opens it through lethe_prog_open like any .lth: the same configuration
 * gives the same file and cache key, so it is compiled once. With --program
 * FILE.lth --entry NAME it runs a rule of the user's instead (it must take
 * batch.x: i32[B, T] and batch.mask: f32[B, T] and report loss; B and T
 * come from its shapes).
 *
 * The data: the GPT-2 BPE ids of --text (runtime/bpe.c), or the ids of --ids
 * (whitespace-separated, as `lethe tokenize` prints them), cut into
 * consecutive windows of T tokens (a tail shorter than T is left out); step
 * k takes windows kB .. kB + B - 1, cycling over them, every position a real
 * token (mask 1).
 *
 * The model: init_model from --seed, then hf_load from --init (a checkpoint
 * of another configuration is refused with the loader's message, naming the
 * tensor and both shapes). --save writes it through hf_save in the file's
 * own layout (with or without `transformer.`), atomically.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bpe.h"
#include "fsutil.h"
#include "hf.h"
#include "lethe.h"
#include "lm.h"
#include "threadpool.h"

#define LM_MAX_FILE ((size_t)1 << 30)
#define LM_ENTRY "lm_step"

typedef struct lm_config {
    const char *name;
    long layers, c, heads, vocab, positions;
} lm_config;

/* Hugging Face's GPT-2 sizes (config.json of each model) */
static const lm_config lm_configs[] = {
    {"gpt2", 12, 768, 12, 50257, 1024},
    {"gpt2-medium", 24, 1024, 16, 50257, 1024},
    {"gpt2-large", 36, 1280, 20, 50257, 1024},
    {"gpt2-xl", 48, 1600, 25, 50257, 1024},
};

static const char lm_usage[] =
    "usage: lethe lm-step (--text FILE | --ids FILE) [options]\n"
    "  AdamW steps of GPT-2's language-model loss (graphs/train/adamw.lth's adamw_lm) on a text\n"
    "\n"
    "  --config NAME       gpt2 (default), gpt2-medium, gpt2-large or gpt2-xl\n"
    "  --layers N --c N --heads N --vocab N --positions N   override the configuration's sizes\n"
    "  --init FILE         start from this checkpoint in Hugging Face's layout (model.safetensors);\n"
    "                      without it, from HF's initial distributions drawn from --seed\n"
    "  --text FILE         the training text, tokenized with GPT-2's BPE (--bpe DIR: the folder of\n"
    "                      encoder.json and vocab.bpe, default $LETHE_BPE_DIR, else " BPE_DEFAULT_DIR ")\n"
    "  --ids FILE          token ids instead of a text (whitespace-separated, as `lethe tokenize` prints)\n"
    "  --steps N           steps to take (default 1)\n"
    "  --batch B --len T   windows per step and tokens per window (default 1 x 64)\n"
    "  --lr X --wd X --max-norm X --warmup N   AdamW's learning rate (6e-4), weight decay (0.01),\n"
    "                      clipping norm (1.0) and linear warm-up steps (0)\n"
    "  --schedule constant|linear|cosine  the learning rate after the warm-up (default constant;\n"
    "                      linear and cosine decay it over the --steps, as HF's schedules do)\n"
    "  --save FILE         write the model in the checkpoint's layout (atomically)\n"
    "  --program FILE.lth --entry NAME   run this rule instead of the generated one\n"
    "  --seed K --threads N --lethec-flags \"...\"   as for the other commands\n";

typedef struct lm_opts {
    lm_config cfg;
    const char *init, *text, *ids, *bpe_dir, *save, *program, *entry, *flags, *schedule;
    long steps, batch, len, warmup, threads, seed;
    double lr, wd, max_norm;
    int have_lr, have_wd, have_max_norm;
} lm_opts;

static int parse_long(const char *opt, const char *s, long min, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < min) {
        fprintf(stderr, "lethe: error: lm-step: %s needs an integer of at least %ld, not '%s'\n", opt, min, s);
        return 1;
    }
    *out = v;
    return 0;
}

static int parse_double(const char *opt, const char *s, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v) || v < 0) {
        fprintf(stderr, "lethe: error: lm-step: %s needs a non-negative number, not '%s'\n", opt, s);
        return 1;
    }
    *out = v;
    return 0;
}

/* 0, 1 (error printed) or 2 (--help printed) */
static int parse_args(int argc, char **argv, lm_opts *o) {
    o->cfg = lm_configs[0];
    o->steps = 1, o->batch = 1, o->len = 64, o->seed = 0;
    o->schedule = "constant";
    o->flags = "";
    o->bpe_dir = bpe_default_dir();
    /* --config first, wherever it stands, so that --layers and the like override it */
    for (int i = 0; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--config")) {
            size_t k = 0, n = sizeof lm_configs / sizeof *lm_configs;
            while (k < n && strcmp(lm_configs[k].name, argv[i + 1]))
                k++;
            if (k < n)
                o->cfg = lm_configs[k];
        }
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(lm_usage, stdout);
            return 2;
        }
        if (a[0] != '-' || !v) {
            fprintf(stderr, "lethe: error: lm-step: %s '%s'\n%s", a[0] == '-' ? "missing value after" : "unexpected argument",
                    a, lm_usage);
            return 1;
        }
        i++;
        int bad = 0;
        if (!strcmp(a, "--config")) {   /* applied above: only checked here */
            size_t k = 0, n = sizeof lm_configs / sizeof *lm_configs;
            while (k < n && strcmp(lm_configs[k].name, v))
                k++;
            if (k == n) {
                fprintf(stderr, "lethe: error: lm-step: unknown config '%s' (gpt2, gpt2-medium, gpt2-large, gpt2-xl; "
                                "or give --layers, --c, --heads, --vocab and --positions)\n", v);
                return 1;
            }
        } else if (!strcmp(a, "--layers")) bad = parse_long(a, v, 1, &o->cfg.layers);
        else if (!strcmp(a, "--c")) bad = parse_long(a, v, 1, &o->cfg.c);
        else if (!strcmp(a, "--heads")) bad = parse_long(a, v, 1, &o->cfg.heads);
        else if (!strcmp(a, "--vocab")) bad = parse_long(a, v, 2, &o->cfg.vocab);
        else if (!strcmp(a, "--positions")) bad = parse_long(a, v, 2, &o->cfg.positions);
        else if (!strcmp(a, "--init")) o->init = v;
        else if (!strcmp(a, "--text")) o->text = v;
        else if (!strcmp(a, "--ids")) o->ids = v;
        else if (!strcmp(a, "--bpe")) o->bpe_dir = v;
        else if (!strcmp(a, "--save")) o->save = v;
        else if (!strcmp(a, "--program")) o->program = v;
        else if (!strcmp(a, "--entry")) o->entry = v;
        else if (!strcmp(a, "--lethec-flags")) o->flags = v;
        else if (!strcmp(a, "--schedule")) o->schedule = v;
        else if (!strcmp(a, "--steps")) bad = parse_long(a, v, 1, &o->steps);
        else if (!strcmp(a, "--batch")) bad = parse_long(a, v, 1, &o->batch);
        else if (!strcmp(a, "--len")) bad = parse_long(a, v, 2, &o->len);
        else if (!strcmp(a, "--warmup")) bad = parse_long(a, v, 0, &o->warmup);
        else if (!strcmp(a, "--threads")) bad = parse_long(a, v, 0, &o->threads);
        else if (!strcmp(a, "--seed")) bad = parse_long(a, v, 0, &o->seed);
        else if (!strcmp(a, "--lr")) bad = parse_double(a, v, &o->lr), o->have_lr = 1;
        else if (!strcmp(a, "--wd")) bad = parse_double(a, v, &o->wd), o->have_wd = 1;
        else if (!strcmp(a, "--max-norm")) bad = parse_double(a, v, &o->max_norm), o->have_max_norm = 1;
        else {
            fprintf(stderr, "lethe: error: lm-step: unknown option '%s'\n%s", a, lm_usage);
            return 1;
        }
        if (bad)
            return 1;
    }
    if (!o->text == !o->ids) {
        fprintf(stderr, "lethe: error: lm-step: give one of --text FILE or --ids FILE\n%s", lm_usage);
        return 1;
    }
    if (strcmp(o->schedule, "constant") && strcmp(o->schedule, "linear") && strcmp(o->schedule, "cosine")) {
        fprintf(stderr, "lethe: error: lm-step: unknown --schedule '%s' (constant, linear or cosine)\n", o->schedule);
        return 1;
    }
    if (!o->program != !o->entry) {
        fprintf(stderr, "lethe: error: lm-step: --program and --entry go together\n");
        return 1;
    }
    return 0;
}

/* The ids of a file of whitespace-separated decimal integers. */
static int read_id_file(const char *path, bpe_ids *ids, char *err) {
    uint8_t *text;
    size_t len;
    int rc = fs_read_file(path, LM_MAX_FILE, &text, &len, err);
    if (rc)
        return rc;
    rc = bpe_parse_ids(path, (const char *)text, len, ids, err);
    free(text);
    return rc;
}

/* The training tokens of --text or --ids. */
static int load_tokens(const lm_opts *o, bpe_ids *ids, char *err) {
    int rc;
    if (o->text) {
        bpe *b;
        if ((rc = bpe_load_dir(o->bpe_dir, &b, err)))
            return rc;
        uint8_t *text;
        size_t len;
        if (!(rc = fs_read_file(o->text, LM_MAX_FILE, &text, &len, err))) {
            rc = bpe_encode(b, text, len, 0, ids, err);
            free(text);
        }
        bpe_free(b);
    } else
        rc = read_id_file(o->ids, ids, err);
    return rc;
}

/* The generated program of the configuration at B x T (see the top of the
 * file), written into the cache unless it is there; its path into lth. */
static int write_program(const lm_config *c, long batch, long len, char *lth, size_t n, char *err) {
    if (c->c % c->heads)
        return lethe_errf(err, LETHE_EARG, "the width %ld is not a multiple of the %ld heads", c->c, c->heads);
    if (len > c->positions)
        return lethe_errf(err, LETHE_EARG, "--len %ld is longer than the model's %ld positions", len, c->positions);
    char dir[PATH_MAX], text[1024];
    snprintf(dir, sizeof dir, "%s/lm", lethe_cache_dir());
    int rc = fs_mkdir_p(dir, 0755, err);
    if (rc)
        return rc;
    int k = snprintf(text, sizeof text,
                     "# written by `lethe lm-step` (runtime/lm.c): AdamW steps of GPT-2's LM loss\n"
                     "import \"models/gpt2.lth\"\n"
                     "import \"train/adamw.lth\"\n"
                     "export " LM_ENTRY " = adamw_lm(GPT2(layers = %ld, c = %ld, heads = %ld, vocab = %ld, positions = %ld),\n"
                     "                          data(x = i32[%ld, %ld], mask = f32[%ld, %ld]))\n",
                     c->layers, c->c, c->heads, c->vocab, c->positions, batch, len, batch, len);
    snprintf(lth, n, "%s/gpt2_l%ld_c%ld_h%ld_v%ld_p%ld_b%ld_t%ld.lth", dir, c->layers, c->c, c->heads, c->vocab,
             c->positions, batch, len);
    uint8_t *old = NULL;
    size_t oldn = 0;
    char ignore[LETHE_ERR_LEN];
    int same = !fs_read_file(lth, 1 << 16, &old, &oldn, ignore) && oldn == (size_t)k && !memcmp(old, text, oldn);
    free(old);
    return same ? LETHE_OK : fs_write_atomic(lth, text, (size_t)k, err);
}

/* The argument `name` of e, or -1 */
static int arg_index(const lethe_entry *e, const char *name) {
    for (int i = 0; i < e->nargs; i++)
        if (!strcmp(e->args[i].name, name))
            return i;
    return -1;
}

static int call_init(const lethe_program *p, const char *suffix, ts_store *model, ts_store *state, lethe_ctx *ctx,
                     const char *entry, char *err) {
    char name[256];
    snprintf(name, sizeof name, "%s.%s", entry, suffix);
    const lethe_entry *e = lethe_entry_find(p, name);
    if (!e)
        return lethe_errf(err, LETHE_ENOTFOUND, "the program has no entry %s: is %s a rule?", name, entry);
    frame_models fm = {NULL, model};
    lethe_frame *f = frame_new(e, &fm, 1, state, err);
    if (!f)
        return LETHE_EARG;
    int rc = frame_call(f, ctx, err);
    frame_free(f);
    return rc;
}

/* every token id is a row of the token embedding (*wte.weight [vocab, C]):
 * the embedding does not check its indices */
static int check_vocab(const ts_store *model, const bpe_ids *tok, const char *path, char *err) {
    const ts_tensor *wte = NULL;
    for (int i = 0; i < model->n; i++) {
        size_t n = strlen(model->t[i].name);
        if (n >= 10 && !strcmp(model->t[i].name + n - 10, "wte.weight") && model->t[i].rank == 2)
            wte = &model->t[i];
    }
    if (!wte)
        return lethe_errf(err, LETHE_EARG, "the model has no token embedding wte.weight: is it a GPT-2?");
    for (size_t i = 0; i < tok->n; i++)
        if (tok->ids[i] >= wte->shape[0])
            return lethe_errf(err, LETHE_EFORMAT, "%s: token %zu is id %d, outside the model's vocabulary of %lld", path,
                              i, tok->ids[i], (long long)wte->shape[0]);
    return LETHE_OK;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The steps themselves, on an open program whose entry is checked. */
static int run_steps(const lm_opts *o, const lethe_program *p, const char *entry_name, const bpe_ids *tok,
                     lethe_ctx *ctx, char *err) {
    const lethe_entry *e = lethe_entry_find(p, entry_name);
    int ix = e ? arg_index(e, "batch.x") : -1, im = e ? arg_index(e, "batch.mask") : -1, il = e ? arg_index(e, "loss") : -1;
    if (!e)
        return lethe_errf(err, LETHE_ENOTFOUND, "the program has no entry %s", entry_name);
    if (ix < 0 || im < 0 || il < 0 || e->args[ix].rank != 2 || e->args[ix].dtype != LETHE_I32 ||
        e->args[im].dtype != LETHE_F32 || e->args[im].rank != 2)
        return lethe_errf(err, LETHE_EARG, "entry %s is not an LM step: it needs inputs batch.x: i32[B, T] and "
                          "batch.mask: f32[B, T] and a loss report (as adamw_lm in graphs/train/adamw.lth)", entry_name);
    const int64_t B = e->args[ix].shape[0], T = e->args[ix].shape[1];
    const size_t windows = tok->n / (size_t)T;
    if (windows == 0)
        return lethe_errf(err, LETHE_EARG, "%s has %zu tokens, fewer than one window of %lld",
                          o->text ? o->text : o->ids, tok->n, (long long)T);
    ts_store model = {0}, state = {0};
    lethe_frame *f = NULL;
    char prefix[HF_PREFIX_LEN] = "";
    int rc = call_init(p, "init_model", &model, NULL, ctx, entry_name, err);
    if (!rc && o->init)
        rc = hf_load(&model, o->init, &hf_gpt2, NULL, prefix, err);
    if (!rc)
        rc = check_vocab(&model, tok, o->text ? o->text : o->ids, err);
    if (!rc)
        rc = call_init(p, "init_state", &model, &state, ctx, entry_name, err);
    frame_models fm = {NULL, &model};
    if (!rc && !(f = frame_new(e, &fm, 1, &state, err)))
        rc = LETHE_EARG;
    if (!rc) {
        if (o->have_lr) rc |= frame_set_scalar(f, "lr", o->lr);
        if (o->have_wd) rc |= frame_set_scalar(f, "wd", o->wd);
        if (o->have_max_norm) rc |= frame_set_scalar(f, "max_norm", o->max_norm);
        if (o->warmup) rc |= frame_set_scalar(f, "warmup", (double)o->warmup);
        if (strcmp(o->schedule, "constant"))
            rc |= frame_set_scalar(f, "total", (double)o->steps) |
                  frame_set_scalar(f, "cosine", !strcmp(o->schedule, "cosine"));
        if (rc)
            rc = lethe_errf(err, LETHE_EARG, "entry %s lacks a scalar of AdamW's (lr, wd, max_norm, warmup, total, "
                            "cosine) that an option sets", entry_name);
    }
    if (!rc)
        printf("lm-step: %zu tokens, %zu windows of %lld, %lld per step; %s\n", tok->n, windows, (long long)T,
               (long long)B, o->init ? o->init : "fresh weights");
    int32_t *x = f ? f->args[ix] : NULL;
    float *mask = f ? f->args[im] : NULL;
    for (long s = 0; !rc && s < o->steps; s++) {
        for (int64_t b = 0; b < B; b++) {
            size_t w = ((size_t)s * (size_t)B + (size_t)b) % windows;
            memcpy(x + b * T, tok->ids + w * (size_t)T, (size_t)T * sizeof *x);
        }
        for (int64_t i = 0; i < B * T; i++)
            mask[i] = 1.0f;
        ctx->counter = (uint64_t)s;
        double t0 = now_s();
        rc = frame_call(f, ctx, err);
        double dt = now_s() - t0;
        if (!rc) {
            double loss = lethe_elem_f64(f->args[il], e->args[il].dtype, 0);
            printf("step %ld/%ld loss %.5f  %.3f s  %.1f tokens/s\n", s + 1, o->steps, loss, dt, (double)(B * T) / dt);
            fflush(stdout);
            if (!isfinite(loss))
                rc = lethe_errf(err, LETHE_EARG, "the loss is not finite at step %ld: lower --lr?", s + 1);
        }
    }
    if (!rc && o->save) {
        rc = lethe_ctx_sync(ctx, err);
        if (!rc && !(rc = hf_save(&model, o->save, &hf_gpt2, prefix, err)))
            printf("saved %s\n", o->save);
    }
    frame_free(f);
    ts_clear(&model);
    ts_clear(&state);
    return rc;
}

int lm_step_command(int argc, char **argv) {
    lm_opts o = {0};
    int prc = parse_args(argc, argv, &o);
    if (prc)
        return prc == 2 ? 0 : 2;
    char err[LETHE_ERR_LEN], lth[PATH_MAX + 256];
    bpe_ids tok = {0};
    int rc = load_tokens(&o, &tok, err);
    if (rc) {
        bpe_ids_free(&tok);
        return lethe_cli_fail("lm-step", err, o.text && rc == LETHE_ENOTFOUND
                                ? "--text needs GPT-2's encoder.json and vocab.bpe (`make deps`; or --bpe DIR)" : NULL);
    }
    if (!o.program && (rc = write_program(&o.cfg, o.batch, o.len, lth, sizeof lth, err))) {
        bpe_ids_free(&tok);
        return lethe_cli_fail("lm-step", err, NULL);
    }
    lethe_prog prog;
    if ((rc = lethe_prog_open(o.program ? o.program : lth, o.flags, &prog, err))) {
        bpe_ids_free(&tok);
        return lethe_cli_fail("lm-step", err, NULL);
    }
    lethe_pool *pool = lethe_pool_new((int)o.threads);
    lethe_ctx ctx;
    lethe_ctx_init(&ctx, pool, (uint64_t)o.seed);
    rc = run_steps(&o, prog.p, o.program ? o.entry : LM_ENTRY, &tok, &ctx, err);
    lethe_pool_free(pool);
    lethe_prog_close(&prog);
    bpe_ids_free(&tok);
    if (rc)
        return lethe_cli_fail("lm-step", err, NULL);
    if (fflush(stdout) || ferror(stdout))
        return lethe_cli_fail("lm-step", strerror(errno), "writing the output failed");
    return 0;
}
