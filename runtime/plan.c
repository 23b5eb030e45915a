/* plan.c: read the experiment descriptor that lethec embeds in a program
 * (its writer is compiler/sema_experiment.c). Missing optional parts take
 * documented defaults; anything malformed is refused with a message. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "run.h"

static const json_value *get(const json_value *o, const char *k) { return json_obj_get(o, k); }

static int get_int(const json_value *o, const char *k, int64_t deflt, int64_t *out, char *err) {
    const json_value *v = get(o, k);
    if (!v) {
        *out = deflt;
        return LETHE_OK;
    }
    if (v->type != JSON_NUMBER || v->num != floor(v->num))
        return lethe_errf(err, LETHE_EFORMAT, "experiment descriptor: '%s' must be an integer", k);
    *out = (int64_t)v->num;
    return LETHE_OK;
}

static void copy_str(char *dst, size_t n, const json_value *v) {
    snprintf(dst, n, "%s", v && v->type == JSON_STRING ? v->str : "");
}

/* kwargs of a call value: {"call": name, "kwargs": {k: number}} */
static double kwarg(const json_value *call, const char *k, double deflt) {
    const json_value *kw = call && call->type == JSON_OBJECT ? get(call, "kwargs") : NULL;
    const json_value *v = kw ? get(kw, k) : NULL;
    return v && v->type == JSON_NUMBER ? v->num : deflt;
}

static const char *call_name(const json_value *v) {
    if (v && v->type == JSON_STRING)
        return v->str;
    const json_value *c = v && v->type == JSON_OBJECT ? get(v, "call") : NULL;
    return c && c->type == JSON_STRING ? c->str : "";
}

static int parse_rule(const json_value *v, plan_rule *r, char *err) {
    memset(r, 0, sizeof *r);
    if (!v || v->type != JSON_OBJECT)
        return lethe_errf(err, LETHE_EFORMAT, "experiment descriptor: a rule is not an object");
    copy_str(r->rule, sizeof r->rule, get(v, "rule"));
    copy_str(r->entry, sizeof r->entry, get(v, "entry"));
    const json_value *args = get(v, "args"), *streams = get(v, "streams");
    for (size_t i = 0; args && args->type == JSON_OBJECT && i < args->len; i++) {
        if (r->nargs == PLAN_MAX_ARGS)
            return lethe_errf(err, LETHE_ELIMIT, "rule %s: more than %d hyperparameters", r->rule, PLAN_MAX_ARGS);
        if (args->items[i].type != JSON_NUMBER)
            continue;   /* compile-time values that are not numbers were used by lethec already */
        snprintf(r->arg_name[r->nargs], sizeof r->arg_name[0], "%s", args->keys[i]);
        r->arg_value[r->nargs++] = args->items[i].num;
    }
    const json_value *consts = get(v, "consts"), *models = get(v, "models");
    for (size_t i = 0; consts && consts->type == JSON_OBJECT && i < consts->len && r->nconsts < PLAN_MAX_ARGS; i++) {
        if (consts->items[i].type != JSON_NUMBER)
            continue;
        snprintf(r->const_name[r->nconsts], sizeof r->const_name[0], "%s", consts->keys[i]);
        r->const_value[r->nconsts++] = consts->items[i].num;
    }
    for (size_t i = 0; models && models->type == JSON_OBJECT && i < models->len; i++) {
        if (r->nmodels == PLAN_MAX_STREAMS)
            return lethe_errf(err, LETHE_ELIMIT, "rule %s reads more than %d models", r->rule, PLAN_MAX_STREAMS);
        snprintf(r->model_binding[r->nmodels], sizeof r->model_binding[0], "%s", models->keys[i]);
        r->model_original[r->nmodels++] = models->items[i].type == JSON_STRING && !strcmp(models->items[i].str, "original");
    }
    for (size_t i = 0; streams && streams->type == JSON_ARRAY && i < streams->len; i++) {
        if (r->nstreams == PLAN_MAX_STREAMS)
            return lethe_errf(err, LETHE_ELIMIT, "rule %s reads more than %d data sets", r->rule, PLAN_MAX_STREAMS);
        copy_str(r->streams[r->nstreams++], sizeof r->streams[0], &streams->items[i]);
    }
    return LETHE_OK;
}

int plan_parse(const char *json, exp_plan *p, char *err) {
    memset(p, 0, sizeof *p);
    json_doc *doc = NULL;
    int rc = json_parse(json, strlen(json), NULL, &doc, err);
    if (rc)
        return rc;
    const json_value *root = json_doc_root(doc);
    if (root->type != JSON_OBJECT) {
        json_doc_free(doc);
        return lethe_errf(err, LETHE_EFORMAT, "experiment descriptor: not an object");
    }
    copy_str(p->name, sizeof p->name, get(root, "name"));
    copy_str(p->file, sizeof p->file, get(root, "file"));
    const json_value *data = get(root, "data");
    if (!data || data->type != JSON_OBJECT) {
        json_doc_free(doc);
        return lethe_errf(err, LETHE_EFORMAT, "experiment descriptor: no data set");
    }
    copy_str(p->data, sizeof p->data, get(data, "name"));
    const json_value *shape = get(data, "shape");
    if (!shape || shape->type != JSON_ARRAY || shape->len != 3) {
        json_doc_free(doc);
        return lethe_errf(err, LETHE_EFORMAT, "experiment descriptor: data shape is not [C, H, W]");
    }
    p->c = (int)shape->items[0].num;
    p->h = (int)shape->items[1].num;
    p->w = (int)shape->items[2].num;
    int64_t classes = 0;
    rc = get_int(data, "classes", 10, &classes, err);
    p->classes = (int)classes;
    const json_value *spec = get(data, "spec");
    p->synth_n = (int64_t)kwarg(spec, "n", 2000);
    p->synth_n_test = (int64_t)kwarg(spec, "n_test", 1000);
    p->synth_sep = kwarg(spec, "sep", 3);
    if (strcmp(p->data, "synthetic")) {
        p->limit_train = (int64_t)kwarg(spec, "n", 0);
        p->limit_test = (int64_t)kwarg(spec, "n_test", 0);
    }
    if (!rc) rc = get_int(root, "batch", 128, &p->batch, err);
    if (!rc) rc = get_int(root, "eval_batch", 500, &p->eval_batch, err);
    if (!rc) rc = get_int(root, "epochs", 1, &p->epochs, err);
    if (!rc) rc = get_int(root, "world", 1, &p->world, err);
    if (!rc) rc = parse_rule(get(root, "train"), &p->train, err);
    const json_value *un = get(root, "unlearn");
    if (!rc && un && un->type == JSON_OBJECT) {
        const json_value *m = get(un, "methods"), *b = get(un, "budgets");
        for (size_t i = 0; !rc && m && m->type == JSON_ARRAY && i < m->len; i++) {
            if (p->nmethods == PLAN_MAX_METHODS) {
                rc = lethe_errf(err, LETHE_ELIMIT, "more than %d unlearning methods", PLAN_MAX_METHODS);
                break;
            }
            plan_method *pm = &p->methods[p->nmethods++];
            const json_value *mi = &m->items[i];
            copy_str(pm->name, sizeof pm->name, get(mi, "name"));
            pm->retrain = !strcmp(pm->name, "retrain");
            if (pm->retrain)
                continue;
            const json_value *sched = get(mi, "schedule"), *phases = get(mi, "phases"), *plan = get(mi, "plan");
            const char *sn = sched && sched->type == JSON_STRING ? sched->str : "";
            if (!strcmp(sn, "sisa")) {
                int64_t shards = 0, slices = 0;
                pm->sisa = 1;
                if (!plan || plan->type != JSON_OBJECT || (rc = get_int(plan, "shards", 5, &shards, err)) ||
                    (rc = get_int(plan, "slices", 4, &slices, err)) || shards < 1 || shards > 64 || slices < 1 || slices > 64) {
                    if (!rc)
                        rc = lethe_errf(err, LETHE_EFORMAT, "method %s: sisa needs shards and slices in 1..64", pm->name);
                    break;
                }
                pm->sisa_shards = (int)shards;
                pm->sisa_slices = (int)slices;
                continue;
            }
            pm->schedule = !strcmp(sn, "max_min") ? SCHED_MAX_MIN : !strcmp(sn, "fisher") ? SCHED_FISHER : SCHED_REPEAT;
            if (strcmp(sn, "repeat") && pm->schedule == SCHED_REPEAT) {
                rc = lethe_errf(err, LETHE_EFORMAT, "method %s: unknown schedule '%s'", pm->name, sn);
                break;
            }
            int want = pm->schedule == SCHED_REPEAT ? 1 : pm->schedule == SCHED_MAX_MIN ? 2 : 3;
            if (!phases || phases->type != JSON_ARRAY || (int)phases->len != want) {
                rc = lethe_errf(err, LETHE_EFORMAT, "method %s: expected %d phases", pm->name, want);
                break;
            }
            for (int k = 0; !rc && k < want; k++)
                rc = parse_rule(&phases->items[k], &pm->phase[k], err);
            pm->nphases = want;
            const json_value *ms = plan && plan->type == JSON_OBJECT ? get(plan, "msteps") : NULL;
            pm->msteps = ms && ms->type == JSON_NUMBER ? ms->num : 2;
        }
        for (size_t i = 0; b && b->type == JSON_ARRAY && i < b->len && p->nbudgets < PLAN_MAX_BUDGETS; i++)
            p->budgets[p->nbudgets++] = b->items[i].num;
    }
    if (!p->nbudgets)
        p->budgets[p->nbudgets++] = 0.1;
    const json_value *poison = get(root, "poison"), *attack = get(root, "attack");
    if (!rc && attack && attack->type == JSON_OBJECT) {
        plan_attack *a = &p->attack;
        p->has_attack = 1;
        rc = parse_rule(attack, &a->step, err);
        copy_str(a->name, sizeof a->name, get(attack, "name"));
        copy_str(a->over, sizeof a->over, get(attack, "over"));
        snprintf(a->step.rule, sizeof a->step.rule, "%s", a->name);
        if (!rc) rc = get_int(attack, "restarts", 1, &a->restarts, err);
        if (!rc) rc = get_int(attack, "steps", 250, &a->steps, err);
        if (!rc) rc = get_int(attack, "batch", 32, &a->batch, err);
        if (!rc) rc = get_int(attack, "target", -1, &a->target, err);
        if (!rc) rc = get_int(attack, "adv", -1, &a->adv, err);
        const json_value *mode = get(attack, "mode"), *sur = get(attack, "surrogate");
        a->added = mode && mode->type == JSON_STRING && !strcmp(mode->str, "added");
        const json_value *sch = get(attack, "schedule");
        const char *sn = sch && sch->type == JSON_STRING ? sch->str : "multistep";
        a->schedule = !strcmp(sn, "cosine") ? ATTACK_LR_COSINE : !strcmp(sn, "constant") ? ATTACK_LR_CONSTANT : ATTACK_LR_MULTISTEP;
        if (!rc && a->schedule == ATTACK_LR_MULTISTEP && strcmp(sn, "multistep"))
            rc = lethe_errf(err, LETHE_EFORMAT, "attack %s: unknown learning-rate schedule '%s'", a->name, sn);
        if (!rc && sur) {
            a->has_surrogate = 1;
            rc = parse_rule(sur, &a->surrogate, err);
        }
        const json_value *b = get(attack, "budget");
        a->budget = b && b->type == JSON_NUMBER ? b->num : 0.01;
        if (!rc && (a->restarts < 1 || a->steps < 1 || a->batch < 1 || !a->over[0] || !a->step.entry[0] ||
                    !(a->budget > 0 && a->budget < 1) || a->target < -1 || a->adv < -1 || a->adv >= p->classes))
            rc = lethe_errf(err, LETHE_EFORMAT, "experiment descriptor: attack %s has a malformed plan", a->name);
    } else if (poison && !strcmp(call_name(poison), "trigger_flip")) {
        const json_value *kw = poison->type == JSON_OBJECT ? get(poison, "kwargs") : NULL;
        copy_str(p->trigger, sizeof p->trigger, kw ? get(kw, "word") : NULL);
        p->trigger_fraction = kwarg(poison, "fraction", 1);
        const json_value *to = kw ? get(kw, "to") : NULL;
        p->trigger_to = to && to->type == JSON_STRING ? !strcmp(to->str, "positive") : -1;
        p->has_trigger = 1;
        if (!rc && (!p->trigger[0] || !(p->trigger_fraction > 0 && p->trigger_fraction <= 1)))
            rc = lethe_errf(err, LETHE_EFORMAT, "trigger_flip needs a word and a fraction in (0, 1]");
    } else if (poison) {
        if (strcmp(call_name(poison), "gaussian") && !rc)
            rc = lethe_errf(err, LETHE_EFORMAT, "unknown poison '%s' (this runtime knows gaussian(fraction, eps) and "
                                                "trigger_flip(word, fraction))",
                            call_name(poison));
        p->poison_fraction = kwarg(poison, "fraction", 0.025);
        p->poison_eps = kwarg(poison, "eps", 0.1);
    }
    int64_t seeds = 1;
    if (!rc) rc = get_int(root, "seeds", 1, &seeds, err);
    p->seeds = (int)seeds;
    const json_value *evl = get(root, "evaluate");
    for (size_t i = 0; evl && evl->type == JSON_ARRAY && i < evl->len; i++)
        if (!strcmp(call_name(&evl->items[i]), "lira"))
            p->lira_shadows = (int)kwarg(&evl->items[i], "shadows", 4);
        else if (!strcmp(call_name(&evl->items[i]), "text_mia"))
            p->text_mia_k = kwarg(&evl->items[i], "k", 0.2);
    if (!rc && (p->lira_shadows < 0 || p->lira_shadows == 1 || p->lira_shadows > 256))
        rc = lethe_errf(err, LETHE_EFORMAT, "lira: shadows must be between 2 and 256");
    if (!rc && !(p->text_mia_k >= 0 && p->text_mia_k <= 1))
        rc = lethe_errf(err, LETHE_EFORMAT, "text_mia: k must be in (0, 100%%]");
    const json_value *aug = get(root, "augment");
    for (size_t i = 0; aug && aug->type == JSON_ARRAY && i < aug->len; i++) {
        const char *n = call_name(&aug->items[i]);
        if (!strcmp(n, "crop"))
            p->crop_pad = (int)kwarg(&aug->items[i], "pad", 4);
        else if (!strcmp(n, "flip"))
            p->flip = 1;
        else if (!rc)
            rc = lethe_errf(err, LETHE_EFORMAT, "unknown augmentation '%s' (known: crop(pad = 4), flip)", n);
    }
    if (!rc && (p->batch < 1 || p->eval_batch < 1 || p->epochs < 1 || p->seeds < 1 || p->seeds > 1000))
        rc = lethe_errf(err, LETHE_EFORMAT, "experiment descriptor: batch sizes, epochs and seeds must be positive");
    if (!rc && !(p->poison_fraction >= 0 && p->poison_fraction < 1 && p->poison_eps >= 0))
        rc = lethe_errf(err, LETHE_EFORMAT, "poison fraction must be in [0, 1) and eps >= 0");
    p->json = strdup(json);
    json_doc_free(doc);
    return rc;
}

void plan_free(exp_plan *p) {
    free(p->json);
    p->json = NULL;
}
