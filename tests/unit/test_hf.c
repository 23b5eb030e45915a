/* test_hf.c: Hugging Face checkpoint layouts (runtime/hf.c) without a
 * compiler: the model store is built here with the names and shapes that
 * graphs/models/gpt2.lth gives a 2-layer GPT-2 with C = 32, vocabulary 64
 * and 20 positions, the configuration of tests/reference/gpt2_tiny_hf.safetensors
 * (written by make_gpt2_reference.py in exactly HF's layout).
 *
 *   round trip   load, save, load: every tensor bit-identical to the file's;
 *                saving twice writes the same bytes; the saved file has HF's
 *                names and no buffers
 *   prefixes     a GPT2LMHeadModel file (transformer.*, a tied lm_head
 *                copy) loads into GPT2 and reports its prefix, which saves
 *                back the same names; a GPT2Model file starts a classifier
 *                (transformer.*) with score.weight optional
 *   errors       missing, extra, mis-shaped, untied head, a truncated file,
 *                a missing file: each refused with a message naming the
 *                tensor (and both shapes), the store left as it was
 *   dtypes       an F64 file loads into the F32 store, converted
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "harness.h"
#include "hf.h"
#include "lethe.h"
#include "safetensors.h"

#define HF_FILE "tests/reference/gpt2_tiny_hf.safetensors"

/* the GPT-2 store of graphs/models/gpt2.lth (names and shapes), filled with
 * a pattern that no file holds; prefix is "" or "transformer." */
static void gpt2_store(ts_store *s, const char *prefix, int layers, int c, int vocab, int positions) {
    char name[256], err[LETHE_ERR_LEN];
    struct {
        const char *n;
        int rank;
        int64_t d0, d1;
    } block[] = {
        {"ln_1.weight", 1, c, 0}, {"ln_1.bias", 1, c, 0}, {"attn.c_attn.weight", 2, c, 3 * c},
        {"attn.c_attn.bias", 1, 3 * c, 0}, {"attn.c_proj.weight", 2, c, c}, {"attn.c_proj.bias", 1, c, 0},
        {"ln_2.weight", 1, c, 0}, {"ln_2.bias", 1, c, 0}, {"mlp.c_fc.weight", 2, c, 4 * c},
        {"mlp.c_fc.bias", 1, 4 * c, 0}, {"mlp.c_proj.weight", 2, 4 * c, c}, {"mlp.c_proj.bias", 1, c, 0},
    };
    int64_t sh[2] = {vocab, c};
    snprintf(name, sizeof name, "%swte.weight", prefix);
    ts_put(s, name, LETHE_F32, 2, sh, err);
    sh[0] = positions;
    snprintf(name, sizeof name, "%swpe.weight", prefix);
    ts_put(s, name, LETHE_F32, 2, sh, err);
    for (int l = 0; l < layers; l++)
        for (size_t i = 0; i < sizeof block / sizeof *block; i++) {
            int64_t d[2] = {block[i].d0, block[i].d1};
            snprintf(name, sizeof name, "%sh.%d.%s", prefix, l, block[i].n);
            ts_put(s, name, LETHE_F32, block[i].rank, d, err);
        }
    sh[0] = c;
    snprintf(name, sizeof name, "%sln_f.weight", prefix);
    ts_put(s, name, LETHE_F32, 1, sh, err);
    snprintf(name, sizeof name, "%sln_f.bias", prefix);
    ts_put(s, name, LETHE_F32, 1, sh, err);
    for (int i = 0; i < s->n; i++)
        for (size_t j = 0; j < s->t[i].nbytes / 4; j++)
            ((float *)s->t[i].data)[j] = -7.0f;
}

static int stores_equal(const ts_store *a, const ts_store *b) {
    if (a->n != b->n)
        return 0;
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->t[i].name, b->t[i].name) || a->t[i].nbytes != b->t[i].nbytes ||
            memcmp(a->t[i].data, b->t[i].data, a->t[i].nbytes))
            return 0;
    return 1;
}

/* writes the HF file's tensors to `path`, renamed by prefix, dropping `drop`,
 * adding `extra` (may be NULL), every float tensor as `dtype` */
static void rewrite(const char *path, const char *prefix, const char *drop, const st_tensor *extra, st_dtype dtype) {
    char err[LETHE_ERR_LEN];
    st_file *f = NULL;
    if (st_load(HF_FILE, 0, &f, err)) {
        printf("# %s\n", err);
        return;
    }
    st_tensor *ts = calloc(f->ntensors + 2, sizeof *ts);
    char (*names)[256] = calloc(f->ntensors + 1, sizeof *names);
    void **bufs = calloc(f->ntensors + 1, sizeof *bufs);
    size_t n = 0;
    for (size_t i = 0; i < f->ntensors; i++) {
        if (drop && !strcmp(f->tensors[i].name, drop))
            continue;
        ts[n] = f->tensors[i];
        snprintf(names[n], sizeof names[n], "%s%s", prefix, f->tensors[i].name);
        ts[n].name = names[n];
        if (dtype != ST_F32) {
            bufs[n] = malloc((size_t)st_numel(&ts[n]) * st_dtype_size(dtype) + 8);
            st_read_as(&f->tensors[i], dtype, bufs[n], st_numel(&ts[n]), err);
            ts[n].data = bufs[n];
            ts[n].dtype = dtype;
        }
        n++;
    }
    if (extra)
        ts[n++] = *extra;
    if (st_save(path, ts, n, NULL, 0, err))
        printf("# %s\n", err);
    for (size_t i = 0; i < n; i++)
        free(bufs[i]);
    free(bufs);
    free(names);
    free(ts);
    st_free(f);
}

/* hf_load must fail with `status`, a message holding each of `want` (NULL-
 * terminated), and leave the store as it was */
static void expect_error(const char *test, ts_store *s, const char *path, const char *const *optional, int status,
                         const char *const *want) {
    char err[LETHE_ERR_LEN] = "";
    ts_store before = {0};
    ts_copy(&before, s, err);
    int rc = hf_load(s, path, &hf_gpt2, optional, NULL, err);
    int ok = rc == status;
    for (const char *const *w = want; ok && *w; w++)
        ok = strstr(err, *w) != NULL;
    printf("# %s: %s\n", test, err);
    th_check(ok && stores_equal(&before, s), test, "status %d (want %d), message: %s%s", rc, status, err,
             stores_equal(&before, s) ? "" : "; the store changed");
    ts_clear(&before);
}

int main(void) {
    char err[LETHE_ERR_LEN], path[600], path2[600], prefix[HF_PREFIX_LEN];
    const char *tmp = th_tmpdir();
    st_file *orig = NULL;
    if (st_load(HF_FILE, 0, &orig, err)) {
        th_fail("reference", "%s", err);
        return th_exit();
    }

    /* round trip */
    {
        ts_store s = {0}, back = {0};
        gpt2_store(&s, "", 2, 32, 64, 20);
        int rc = hf_load(&s, HF_FILE, &hf_gpt2, NULL, prefix, err);
        int same = rc == 0 && !*prefix;
        for (int i = 0; same && i < s.n; i++) {
            const st_tensor *t = st_find(orig, s.t[i].name);
            same = t && t->nbytes == s.t[i].nbytes && !memcmp(t->data, s.t[i].data, t->nbytes);
        }
        th_check(same, "hf load: every parameter bit-identical to the file", "rc %d prefix '%s' %s", rc, prefix, err);
        snprintf(path, sizeof path, "%s/saved.safetensors", tmp);
        snprintf(path2, sizeof path2, "%s/saved2.safetensors", tmp);
        rc = hf_save(&s, path, &hf_gpt2, prefix, err);
        gpt2_store(&back, "", 2, 32, 64, 20);
        rc = rc ? rc : hf_load(&back, path, &hf_gpt2, NULL, NULL, err);
        th_check(!rc && stores_equal(&s, &back), "hf round trip: load(save(load(file))) bit-identical", "%s", err);
        rc = hf_save(&back, path2, &hf_gpt2, "", err);
        size_t n1 = 0, n2 = 0;
        uint8_t *b1 = NULL, *b2 = NULL;
        fs_read_file(path, SIZE_MAX, &b1, &n1, err);
        fs_read_file(path2, SIZE_MAX, &b2, &n2, err);
        th_check(!rc && b1 && b2 && n1 == n2 && !memcmp(b1, b2, n1), "hf save: the same store writes the same bytes",
                 "%zu vs %zu bytes", n1, n2);
        free(b1);
        free(b2);
        st_file *sv = NULL;
        rc = st_load(path, 0, &sv, err);
        int layout = !rc && sv->ntensors == (size_t)s.n && st_find(sv, "h.1.mlp.c_proj.weight") &&
                     !st_find(sv, "h.0.attn.bias") && st_meta_get(sv, "format") && !strcmp(st_meta_get(sv, "format"), "pt");
        th_check(layout, "hf save: HF's names, no buffers, format pt", "%s", err);
        st_free(sv);

        /* dtypes: an F64 copy of the file loads converted */
        snprintf(path, sizeof path, "%s/f64.safetensors", tmp);
        rewrite(path, "", NULL, NULL, ST_F64);
        gpt2_store(&back, "", 2, 32, 64, 20);
        rc = hf_load(&back, path, &hf_gpt2, NULL, NULL, err);
        th_check(!rc && stores_equal(&s, &back), "hf load: an F64 file into the F32 model", "%s", err);
        ts_clear(&back);
        ts_clear(&s);
    }

    /* prefixes */
    {
        ts_store s = {0}, ref = {0};
        gpt2_store(&ref, "", 2, 32, 64, 20);
        hf_load(&ref, HF_FILE, &hf_gpt2, NULL, NULL, err);
        const st_tensor *wte = st_find(orig, "wte.weight");
        st_tensor head = *wte;
        head.name = "lm_head.weight";
        snprintf(path, sizeof path, "%s/lmhead.safetensors", tmp);
        rewrite(path, "transformer.", NULL, &head, ST_F32);
        gpt2_store(&s, "", 2, 32, 64, 20);
        int rc = hf_load(&s, path, &hf_gpt2, NULL, prefix, err);
        th_check(!rc && !strcmp(prefix, "transformer.") && stores_equal(&s, &ref),
                 "hf load: GPT2LMHeadModel layout (transformer., tied lm_head) into GPT2", "rc %d prefix '%s' %s", rc,
                 prefix, err);
        snprintf(path2, sizeof path2, "%s/lmhead_saved.safetensors", tmp);
        st_file *sv = NULL;
        rc = rc ? rc : hf_save(&s, path2, &hf_gpt2, prefix, err);
        rc = rc ? rc : st_load(path2, 0, &sv, err);
        th_check(!rc && st_find(sv, "transformer.h.0.ln_1.weight") && !st_find(sv, "h.0.ln_1.weight"),
                 "hf save: back in the file's prefixed layout", "%s", err);
        st_free(sv);

        /* an untied head is another model */
        float *other = malloc(wte->nbytes);
        memcpy(other, wte->data, wte->nbytes);
        other[5] += 1;
        head.data = other;
        snprintf(path, sizeof path, "%s/untied.safetensors", tmp);
        rewrite(path, "transformer.", NULL, &head, ST_F32);
        expect_error("hf error: untied lm_head", &s, path, NULL, LETHE_EFORMAT,
                     (const char *const[]){"lm_head.weight is not a copy of wte.weight", "untied.safetensors", NULL});
        free(other);
        ts_clear(&s);

        /* a pretrained GPT2Model starts a classifier: score.weight optional */
        gpt2_store(&s, "transformer.", 2, 32, 64, 20);
        int64_t sh[2] = {3, 32};
        ts_tensor *score = ts_put(&s, "score.weight", LETHE_F32, 2, sh, err);
        float s0 = ((float *)score->data)[0];
        rc = hf_load(&s, HF_FILE, &hf_gpt2, (const char *const[]){"score.", NULL}, prefix, err);
        const ts_tensor *w = ts_get(&s, "transformer.wte.weight");
        th_check(!rc && !*prefix && ((float *)ts_get(&s, "score.weight")->data)[0] == s0 && w &&
                     !memcmp(w->data, wte->data, wte->nbytes),
                 "hf load: GPT2Model file into GPT2Classifier, score kept", "rc %d %s", rc, err);
        gpt2_store(&s, "transformer.", 2, 32, 64, 20);
        expect_error("hf error: missing score.weight", &s, HF_FILE, NULL, LETHE_EFORMAT,
                     (const char *const[]){"no tensor for score.weight [3, 32]", NULL});
        ts_clear(&s);
        ts_clear(&ref);
    }

    /* errors */
    {
        ts_store s = {0};
        gpt2_store(&s, "", 2, 32, 64, 20);
        snprintf(path, sizeof path, "%s/missing.safetensors", tmp);
        rewrite(path, "", "h.1.mlp.c_fc.bias", NULL, ST_F32);
        expect_error("hf error: missing tensor", &s, path, NULL, LETHE_EFORMAT,
                     (const char *const[]){"no tensor for h.1.mlp.c_fc.bias [128]", "missing.safetensors", NULL});
        ts_clear(&s);

        gpt2_store(&s, "", 1, 32, 64, 20);
        expect_error("hf error: extra tensors (a deeper model's file)", &s, HF_FILE, NULL, LETHE_EFORMAT,
                     (const char *const[]){"tensor h.1.", "is not in the model", "(and 11 more)", NULL});
        ts_clear(&s);

        gpt2_store(&s, "", 2, 32, 65, 20);
        expect_error("hf error: mis-shaped tensor", &s, HF_FILE, NULL, LETHE_EFORMAT,
                     (const char *const[]){"wte.weight is [64, 32] in the file, [65, 32] in the model", NULL});

        size_t n = 0;
        uint8_t *bytes = NULL;
        fs_read_file(HF_FILE, SIZE_MAX, &bytes, &n, err);
        snprintf(path, sizeof path, "%s/truncated.safetensors", tmp);
        FILE *f = fopen(path, "wb");
        if (f && bytes) {
            fwrite(bytes, 1, n - 1000, f);
            fclose(f);
        }
        free(bytes);
        expect_error("hf error: truncated file", &s, path, NULL, LETHE_EFORMAT,
                     (const char *const[]){"truncated.safetensors", NULL});
        snprintf(path, sizeof path, "%s/absent.safetensors", tmp);
        expect_error("hf error: no such file", &s, path, NULL, LETHE_ENOTFOUND,
                     (const char *const[]){"absent.safetensors", NULL});
        ts_clear(&s);
    }
    st_free(orig);
    return th_exit();
}
