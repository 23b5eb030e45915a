/* audit.c: `lethe audit` and `lethe poison --export` (see audit.h). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "fsutil.h"
#include "hf.h"
#include "json.h"
#include "run_internal.h"

/* ---------------------------------------------------------------------------
 * the data a model trained elsewhere needs */

int audit_export_data(Run *r, const char *path, char *err) {
    const lethe_dataset *tr = &r->train, *te = &r->test;
    ts_store s = {0};
    int64_t xs[4] = {tr->n, tr->c, tr->h, tr->w}, txs[4] = {te->n, te->c, te->h, te->w};
    ts_tensor *x = ts_put(&s, "train.x", LETHE_F32, 4, xs, err);
    ts_tensor *y = x ? ts_put(&s, "train.y", LETHE_I32, 1, &tr->n, err) : NULL;
    ts_tensor *id = y ? ts_put(&s, "train.id", LETHE_I32, 1, &tr->n, err) : NULL;
    ts_tensor *pm = id ? ts_put(&s, "train.poison", LETHE_BOOL, 1, &tr->n, err) : NULL;
    ts_tensor *tx = pm ? ts_put(&s, "test.x", LETHE_F32, 4, txs, err) : NULL;
    ts_tensor *ty = tx ? ts_put(&s, "test.y", LETHE_I32, 1, &te->n, err) : NULL;
    int64_t nidx = tr->n > te->n ? tr->n : te->n;
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)nidx + 1);
    int rc = ty && idx ? LETHE_OK : lethe_errf(err, LETHE_ENOMEM, "out of memory exporting %s", path);
    /* through the batch builder, so the noise is the one training adds
     * (regenerated from the seed and each sample's id; no augmentation) */
    ds_poison p = run_poison_of(r);
    for (int64_t i = 0; !rc && i < nidx; i++)
        idx[i] = i;
    if (!rc)
        rc = ds_batch(tr, idx, tr->n, &p, NULL, x->data, y->data, err);
    if (!rc)
        rc = ds_batch(te, idx, te->n, NULL, NULL, tx->data, ty->data, err);
    for (int64_t i = 0; !rc && i < tr->n; i++) {
        ((int32_t *)id->data)[i] = (int32_t)tr->id[i];
        ((uint8_t *)pm->data)[i] = tr->id[i] < r->mask_n && r->mask[tr->id[i]];
    }
    char seed[32], key[65], eps[32], mean[128] = "", std[128] = "", aug[64];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)r->seed);
    snprintf(eps, sizeof eps, "%.17g", r->plan->has_attack ? 0 : r->plan->poison_eps);
    snprintf(aug, sizeof aug, "crop_pad %d, flip %d", r->plan->crop_pad, r->plan->flip);
    for (int c = 0; c < r->norm.c && c < 8; c++) {
        snprintf(mean + strlen(mean), sizeof mean - strlen(mean), "%s%.9g", c ? "," : "", r->norm.mean[c]);
        snprintf(std + strlen(std), sizeof std - strlen(std), "%s%.9g", c ? "," : "", r->norm.std[c]);
    }
    poison_key(r->plan, r->seed, r->data_hash, key);
    const char *meta[] = {"format", "lethe-data", "experiment", r->plan->name, "seed", seed, "poison_key", key,
                          "eps", eps, "norm_mean", mean, "norm_std", std, "augmentation", aug,
                          "data_hash", r->data_hash, NULL};
    if (!rc)
        rc = ts_save(&s, path, meta, err);
    free(idx);
    ts_clear(&s);
    return rc;
}

/* ---------------------------------------------------------------------------
 * the poison set on disk */

typedef struct PoisonFile {
    int seed;
    char key[65];               /* "" in a folder written before keys existed */
    int64_t n;
    int64_t *ids;
} PoisonFile;

static int read_poison_json(const char *dir, PoisonFile *pf, char *err) {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/poison.json", dir);
    memset(pf, 0, sizeof *pf);
    uint8_t *text = NULL;
    size_t len = 0;
    json_doc *doc = NULL;
    int rc = fs_read_file(path, 64 << 20, &text, &len, err);
    if (rc == LETHE_ENOTFOUND)
        return lethe_errf(err, rc, "%s: no poison set there (write one with `lethe poison EXPERIMENT --seed K --out OUT`)",
                          path);
    char why[LETHE_ERR_LEN];
    if (!rc && (rc = json_parse((const char *)text, len, NULL, &doc, why)))
        lethe_errf(err, rc, "%s: %s", path, why);
    const json_value *root = rc ? NULL : json_doc_root(doc);
    const json_value *seed = root ? json_obj_get(root, "seed") : NULL, *key = root ? json_obj_get(root, "key") : NULL,
                     *ids = root ? json_obj_get(root, "ids") : NULL;
    if (!rc && (!seed || !seed->is_int || seed->i64 < 0 || seed->i64 > INT_MAX || !ids || ids->type != JSON_ARRAY))
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: not a poison set (it needs a seed and the ids)", path);
    if (!rc && key && (key->type != JSON_STRING || key->len != 64))
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: the key is not a SHA-256", path);
    if (!rc) {
        pf->seed = (int)seed->i64;
        snprintf(pf->key, sizeof pf->key, "%s", key ? key->str : "");
        pf->n = (int64_t)ids->len;
        if (!(pf->ids = malloc(sizeof(int64_t) * (size_t)pf->n + 1)))
            rc = lethe_errf(err, LETHE_ENOMEM, "out of memory");
    }
    for (int64_t i = 0; !rc && i < pf->n; i++) {
        if (!ids->items[i].is_int)
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: ids[%lld] is not an integer", path, (long long)i);
        else
            pf->ids[i] = ids->items[i].i64;
    }
    json_doc_free(doc);
    free(text);
    return rc;
}

/* The folder's set must be the one this experiment makes for its seed. */
static int check_poisons(const Run *r, const PoisonFile *pf, const char *dir, char *err) {
    char key[65];
    poison_key(r->plan, r->seed, r->data_hash, key);
    if (strcmp(key, pf->key))
        return lethe_errf(err, LETHE_EFORMAT,
                          "%s: the poison set of another experiment, seed or data (key %.12s; experiment %s, seed %d "
                          "with this data has %.12s)", dir, pf->key, r->plan->name, pf->seed, key);
    int same = pf->n == r->n_poison;
    for (int64_t i = 0; same && i < pf->n; i++)
        same = pf->ids[i] == r->train.id[r->poison[i]];
    if (!same)
        return lethe_errf(err, LETHE_EFORMAT, "%s/poison.json: its key is right but its ids are not the seed's: an edited file?",
                          dir);
    return LETHE_OK;
}

/* ---------------------------------------------------------------------------
 * the model */

static const struct {
    const char *name;
    const hf_layout *layout;
} name_maps[] = {
    {"lethe", &hf_lethe},
    {"torchvision", &hf_torchvision_resnet18},
    {"kuangliu", &hf_kuangliu_resnet18},
    {"hf-gpt2", &hf_gpt2},
};

static const hf_layout *name_map(const char *map) {
    for (size_t i = 0; i < sizeof name_maps / sizeof name_maps[0]; i++)
        if (!strcmp(map, name_maps[i].name))
            return name_maps[i].layout;
    return NULL;
}

static int load_model(Run *r, const audit_opts *a, const hf_layout *L, ts_store *model, char *err) {
    /* every tensor of the experiment's model, at its shape: the file must fill them all */
    int rc = run_init_model(r, model, r->seed, err);
    if (rc || !(rc = hf_load(model, a->model, L, NULL, NULL, err)) || rc != LETHE_EFORMAT)
        return rc;
    /* hf_load's message names the first fault: list them all */
    char why[LETHE_ERR_LEN];
    int n = hf_list_faults(model, a->model, L, NULL, NULL, why);
    if (n <= 0)
        return rc;
    fprintf(stderr, "lethe: %s does not match experiment %s's model (%s names):\n", a->model, r->plan->name, L->name);
    hf_list_faults(model, a->model, L, NULL, stderr, why);
    const char *hint = L == &hf_lethe ? "\n---> HINT: a PyTorch state dict? --name-map torchvision or kuangliu" : "";
    return lethe_errf(err, LETHE_EFORMAT, "%s: %d %s missing, mis-shaped or extra (listed above)%s", a->model, n,
                      n == 1 ? "tensor" : "tensors", hint);
}

/* ---------------------------------------------------------------------------
 * the verdict and the record */

typedef struct Verdict {
    int has;                    /* 0: no per-model verdict (an attack that adds samples) */
    int detected;
    double z, p, z_empirical;   /* Gaussian: the exact and the empirical-null statistics */
    char text[256];
} Verdict;

static void decide(const Run *r, const Eval *ev, Verdict *v) {
    memset(v, 0, sizeof *v);
    const exp_plan *p = r->plan;
    if (p->has_attack && p->attack.added) {
        snprintf(v->text, sizeof v->text, "no verdict: %s adds samples, measured by the accuracy it costs against a clean "
                                          "model (accuracy %.4f)", p->attack.name, ev->accuracy);
        return;
    }
    v->has = 1;
    if (p->has_attack) {
        v->detected = ev->target_pred == r->choice.adv;
        snprintf(v->text, sizeof v->text, "%s: target test sample %lld is classified as %d (the attack wants %d, "
                                          "p(adv) = %.4f)", v->detected ? "the poisons still work" : "the poisons do not work",
                 (long long)r->choice.target, ev->target_pred, r->choice.adv, ev->target_adv_prob);
        return;
    }
    double n = (double)r->n_poison;
    v->z = ev->gus.mean * sqrt(n);
    v->p = mt_normal_cdf(v->z);
    double se = sqrt(ev->gus.se * ev->gus.se + ev->gus_null.se * ev->gus_null.se);
    v->z_empirical = se > 0 ? (ev->gus.mean - ev->gus_null.mean) / se : 0;
    v->detected = v->p < RUN_ALPHA;
    snprintf(v->text, sizeof v->text, "%s (GUS %.3f over %lld poisons: z = %.2f, one-sided p = %.3g against N(0, 1), "
                                      "level %g)",
             v->detected ? "poisons detected: the model still carries them" : "not detected", ev->gus.mean,
             (long long)r->n_poison, v->z, v->p, RUN_ALPHA);
}

static int write_record(const Run *r, const audit_opts *a, const Eval *ev, const Verdict *v, const char *path, char *err) {
    char key[65];
    poison_key(r->plan, r->seed, r->data_hash, key);
    jw w;
    jw_init(&w);
    jw_obj_begin(&w);
    jw_kv_str(&w, "audit", a->model);
    jw_kv_str(&w, "name_map", a->name_map ? a->name_map : "lethe");
    jw_kv_str(&w, "experiment", r->plan->name);
    jw_kv_int(&w, "seed", (int64_t)r->seed);
    jw_kv_str(&w, "poison_key", key);
    jw_kv_int(&w, "n_poison", r->n_poison);
    jw_kv_int(&w, "n_test", r->test.n);
    jw_kv_num(&w, "accuracy", ev->accuracy);
    jw_kv_num(&w, "test_loss", ev->test_loss);
    if (r->n_poison && !r->plan->has_attack) {
        jw_kv_num(&w, "gus", ev->gus.mean);
        jw_kv_num(&w, "gus_se", ev->gus.se);
        jw_kv_num(&w, "gus_null", ev->gus_null.mean);
        jw_kv_num(&w, "gus_null_se", ev->gus_null.se);
        jw_kv_num(&w, "z", v->z);
        jw_kv_num(&w, "p_one_sided", v->p);
        jw_kv_num(&w, "z_empirical_null", v->z_empirical);
        jw_kv_num(&w, "alpha", RUN_ALPHA);
        run_put_detection(&w, ev);
    }
    if (r->plan->has_attack && !r->plan->attack.added) {
        jw_kv_int(&w, "target", r->choice.target);
        jw_kv_int(&w, "adv", r->choice.adv);
        jw_kv_int(&w, "target_pred", ev->target_pred);
        jw_kv_num(&w, "target_adv_prob", ev->target_adv_prob);
    }
    jw_key(&w, "detected");
    if (v->has)
        jw_bool(&w, v->detected);
    else
        jw_null(&w);
    jw_kv_str(&w, "verdict", v->text);
    jw_key(&w, "run");
    jw_obj_begin(&w);
    jw_kv_str(&w, "data_hash", r->data_hash);
    jw_kv_bool(&w, "synthetic_stand_in", r->synthetic_stand_in);
    jw_kv_int(&w, "train_limit", r->o->train_limit);
    jw_kv_int(&w, "test_limit", r->o->test_limit);
    jw_kv_str(&w, "program", r->prog->so_path);
    jw_kv_str(&w, "source_hash", r->prog->p->source_hash ? r->prog->p->source_hash : "");
    jw_obj_end(&w);
    jw_obj_end(&w);
    size_t len;
    const char *text = jw_finish(&w, &len);
    int rc = text ? fs_write_atomic(path, text, len, err) : lethe_errf(err, LETHE_EFORMAT, "audit record is not valid JSON");
    jw_free(&w);
    return rc;
}

/* ---------------------------------------------------------------------------
 * the command */

/* dir without trailing slashes, its parent, and the K of its name seed<K> */
static int split_seed_dir(const char *poisons, char *dir, size_t ndir, char *parent, size_t nparent, int *k, char *err) {
    snprintf(dir, ndir, "%s", poisons);
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        dir[--n] = 0;
    const char *slash = strrchr(dir, '/');
    const char *base = slash ? slash + 1 : dir;
    char *end;
    long v = !strncmp(base, "seed", 4) ? strtol(base + 4, &end, 10) : -1;
    if (v < 0 || v > INT_MAX || end == base + 4 || *end)
        return lethe_errf(err, LETHE_EARG, "--poisons %s: not a seed folder (OUT/seed<K>, as lethe poison writes it)", poisons);
    *k = (int)v;
    snprintf(parent, nparent, "%.*s", slash ? (int)(slash - dir) : 1, slash ? dir : ".");
    if (!*parent)
        snprintf(parent, nparent, "/");
    return LETHE_OK;
}

int audit_run(const lethe_prog *prog, exp_plan *plan, run_opts *o, const audit_opts *a, char *err) {
    if (!a->model)
        return lethe_errf(err, LETHE_EARG, "audit needs --model FILE.safetensors");
    const hf_layout *L = name_map(a->name_map ? a->name_map : "lethe");
    if (!L)
        return lethe_errf(err, LETHE_EARG, "unknown name map '%s' (the maps are lethe, torchvision, kuangliu and hf-gpt2)",
                          a->name_map);
    char dir[PATH_MAX], parent[PATH_MAX];
    int seed = a->seed >= 0 ? a->seed : 0, rc;
    if (a->poisons) {
        int k = 0;
        if ((rc = split_seed_dir(a->poisons, dir, sizeof dir, parent, sizeof parent, &k, err)))
            return rc;
        if (a->seed >= 0 && a->seed != k)
            return lethe_errf(err, LETHE_EARG, "--seed %d but --poisons %s is seed %d", a->seed, dir, k);
        seed = k;
        o->out = parent;
    } else {
        snprintf(dir, sizeof dir, "%s/seed%d", o->out, seed);
    }
    PoisonFile pf;
    if ((rc = read_poison_json(dir, &pf, err)))
        return rc;
    if (pf.seed != seed) {
        free(pf.ids);
        return lethe_errf(err, LETHE_EFORMAT, "%s/poison.json is the poison set of seed %d, not %d", dir, pf.seed, seed);
    }
    if (!*pf.key) {
        free(pf.ids);
        return lethe_errf(err, LETHE_EFORMAT,
                          "%s/poison.json was written by an older lethe, without the key\n---> HINT: run `lethe "
                          "poison` for this seed to write it again (the set is regenerated from the seed)", dir);
    }
    char crafted[PATH_MAX + 32];
    snprintf(crafted, sizeof crafted, "%s/poison.safetensors", dir);
    /* an audit reads poisons, it never crafts them */
    if (plan->has_attack && !fs_exists(crafted)) {
        free(pf.ids);
        return lethe_errf(err, LETHE_ENOTFOUND, "%s: no crafted poisons (run `lethe poison` for this seed first)", crafted);
    }
    Run r;
    ts_store model = {0};
    Eval ev;
    Verdict v;
    rc = run_open_seed(&r, prog, plan, o, seed, err);
    if (!rc)
        rc = check_poisons(&r, &pf, dir, err);
    if (!rc)
        rc = load_model(&r, a, L, &model, err);
    if (!rc)
        rc = run_evaluate(&r, &model, &ev, err);
    char record[PATH_MAX * 2];
    if (!rc) {
        decide(&r, &ev, &v);
        if (a->record) {
            snprintf(record, sizeof record, "%s", a->record);
        } else {
            const char *slash = strrchr(a->model, '/'), *base = slash ? slash + 1 : a->model;
            size_t n = strlen(base);
            if (n > 12 && !strcmp(base + n - 12, ".safetensors"))
                n -= 12;
            snprintf(record, sizeof record, "%s/audits", r.dir);
            rc = fs_mkdir_p(record, 0755, err);
            snprintf(record, sizeof record, "%s/audits/%.*s_seed%d.json", r.dir, (int)n, base, seed);
        }
    }
    if (!rc)
        rc = write_record(&r, a, &ev, &v, record, err);
    if (!rc) {
        printf("audit of %s against %s seed %d (%lld poisons, %lld test samples)\n", a->model, plan->name, seed,
               (long long)r.n_poison, (long long)r.test.n);
        printf("  accuracy      %.4f (test loss %.4f)\n", ev.accuracy, ev.test_loss);
        if (r.n_poison && !plan->has_attack) {
            printf("  GUS           %.4f +- %.4f (fresh-noise null %.4f +- %.4f; z %.2f against it)\n", ev.gus.mean,
                   ev.gus.se, ev.gus_null.mean, ev.gus_null.se, v.z_empirical);
            printf("  TPR at FPR %g  %.4f against fresh noise, %.4f against N(0, 1) (two-sided)\n", RUN_ALPHA,
                   ev.two_emp.tpr, ev.two_norm.tpr);
            printf("  loss MIA      TPR %.4f at FPR %.4f\n", ev.mia.tpr, ev.mia.fpr);
        }
        printf("verdict: %s\nrecord: %s\n", v.text, record);
    }
    ts_clear(&model);
    run_close(&r);
    free(pf.ids);
    return rc;
}
