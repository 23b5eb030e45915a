/* sema_experiment.c: an experiment becomes entry points and a JSON plan.
 *
 * The experiment names a data set, a model, a training rule, unlearning
 * methods and evaluations. lethec instantiates every entry point the runtime
 * needs at the experiment's batch sizes:
 *
 *   train, train.init_model, train.init_state     the training rule
 *   unlearn.<method>, unlearn.<method>.init_state  each method with a rule
 *   eval.logits, eval.loss_each, eval.input_grad    the fns eval_logits,
 *                                                   eval_loss_each and
 *                                                   eval_input_grad (graphs/eval.lth)
 *   eval.token_stats                                 eval_token_stats, when `evaluate`
 *                                                   lists text_mia(...)
 *   poison.step, poison.step.init_state             an attack objective named by
 *   poison.surrogate (+ .init_state)                `poison = ...`, and the rule its
 *                                                   `surrogate = ...` names (docs/attacks.md)
 *
 * and writes the plan (what the runtime executes: epochs, batch sizes,
 * budgets, poison, seeds, each method's data streams and hyperparameters) as
 * JSON into the program. Rule parameters of type `model` receive the
 * experiment's model, `data` parameters a batch of the data set; the
 * runtime feeds each data parameter by its name: `retain`, `forget`, or any
 * other name for the whole (poisoned) training set.
 */
#include <math.h>
#include <string.h>

#include "sema.h"

typedef struct DataSpec {
    const char *name;
    int c, h, w, classes;
} DataSpec;

/* What the runtime's loaders produce (runtime/data.h). */
static const DataSpec datasets[] = {
    {"fashion_mnist", 1, 28, 28, 10},
    {"mnist", 1, 28, 28, 10},
    {"cifar10", 3, 32, 32, 10},
};

/* ---------------------------------------------------------------------------
 * JSON */

static void put(CharVec *out, const char *s) {
    for (; *s; s++)
        vec_push(out, *s);
}

static void put_str(CharVec *out, const char *s) {
    vec_push(out, '"');
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            vec_push(out, '\\');
            vec_push(out, (char)c);
        } else if (c < 0x20)
            put(out, xfmt("\\u%04x", c));
        else
            vec_push(out, (char)c);
    }
    vec_push(out, '"');
}

static void put_num(CharVec *out, double v) {
    if (!isfinite(v))
        put(out, "null");
    else if (v == floor(v) && fabs(v) < 1e15)
        put(out, xfmt("%lld", (long long)v));
    else
        put(out, xfmt("%.17g", v));
}

static void put_key(CharVec *out, const char *key) {
    if (out->len && out->data[out->len - 1] != '{')
        vec_push(out, ',');
    put_str(out, key);
    vec_push(out, ':');
}

static double const_num(const Expr *x, const char *what);

/* Any experiment expression as JSON: names and strings are strings,
 * arithmetic on numbers (`16/255`) its value, calls {"call", "args",
 * "kwargs"}. */
static void put_expr(CharVec *out, const Expr *e) {
    switch (e->kind) {
    case EX_INT: put(out, xfmt("%lld", (long long)e->ival)); return;
    case EX_FLOAT:
    case EX_PERCENT: put_num(out, e->fval); return;
    case EX_BOOL: put(out, e->ival ? "true" : "false"); return;
    case EX_STRING:
    case EX_NAME: put_str(out, e->sval); return;
    case EX_UNARY:
        if (e->op == BO_NEG && (e->a->kind == EX_INT || e->a->kind == EX_FLOAT)) {
            put_num(out, e->a->kind == EX_INT ? -(double)e->a->ival : -e->a->fval);
            return;
        }
        break;
    case EX_BINARY:   /* arithmetic on numbers: `eps = 16/255` */
        put_num(out, const_num(e, "an experiment value"));
        return;
    case EX_LIST:
        vec_push(out, '[');
        for (int i = 0; i < e->nitems; i++) {
            if (i)
                vec_push(out, ',');
            put_expr(out, e->items[i]);
        }
        vec_push(out, ']');
        return;
    case EX_CALL:
        if (e->a->kind != EX_NAME)
            break;
        put(out, "{\"call\":");
        put_str(out, e->a->sval);
        put(out, ",\"args\":[");
        for (int i = 0, n = 0; i < e->nargs; i++)
            if (!e->args[i].name) {
                if (n++)
                    vec_push(out, ',');
                put_expr(out, e->args[i].value);
            }
        put(out, "],\"kwargs\":{");
        for (int i = 0; i < e->nargs; i++)
            if (e->args[i].name) {
                put_key(out, e->args[i].name);
                put_expr(out, e->args[i].value);
            }
        put(out, "}}");
        return;
    default:
        break;
    }
    error_at(e->loc, "an experiment entry is built from names, numbers, strings, lists and calls");
}

/* ---------------------------------------------------------------------------
 * reading the experiment */

static const ExpEntry *find(const Decl *exp, const char *key) {
    for (int i = 0; i < exp->nentries; i++)
        if (!strcmp(exp->entries[i].key, key))
            return &exp->entries[i];
    return NULL;
}

static const ExpEntry *need(const Decl *exp, const char *key, const char *example) {
    const ExpEntry *e = find(exp, key);
    if (!e)
        error_at(exp->loc, "experiment '%s' needs `%s = ...` (for example `%s = %s`)", exp->name, key, key, example);
    return e;
}

static const Clause *clause(const ExpEntry *e, const char *word) {
    for (int i = 0; i < e->nclauses; i++)
        if (!strcmp(e->clauses[i].word, word))
            return &e->clauses[i];
    return NULL;
}

static int64_t const_int(const Expr *x, const char *what) {
    Value v = eval(sema_globals(), x);
    return value_as_int(&v, x->loc, what);
}

static double const_num(const Expr *x, const char *what) {
    Value v = eval(sema_globals(), x);
    return value_as_double(&v, x->loc, what);
}

static const char *call_name(const Expr *x, const char *what) {
    if (x->kind == EX_NAME)
        return x->sval;
    if (x->kind == EX_CALL && x->a->kind == EX_NAME)
        return x->a->sval;
    error_at(x->loc, "%s is written as a name or a call, such as sgd(lr = 0.1)", what);
}

/* imdb(len = 128, embed = 768, n = 2000, n_test = 500): reviews in the
 * aclImdb layout (lethe run --data-dir DIR) as rows of `len` GPT-2 tokens,
 * labelled 0 negative, 1 positive. Each sample is a [1, len, 1 + embed]
 * tensor: per position its token id (an exact float) and `embed` zeros, the
 * room for an additive perturbation of that position's token embedding,
 * which is where Gaussian poison noise goes (runtime/run_text.c). `embed`
 * must be the model's width; the model's input type checks it. */
static DataSpec imdb_spec(const Expr *x) {
    DataSpec d = {"imdb", 1, 128, 0, 2};
    for (int i = 0; x->kind == EX_CALL && i < x->nargs; i++) {
        const Arg *a = &x->args[i];
        if (!a->name)
            error_at(a->loc, "imdb() takes named arguments: len, embed, n, n_test");
        int64_t v = const_int(a->value, "a size");
        if (!strcmp(a->name, "len")) {
            if (v < 2 || v > 65536)
                error_at(a->loc, "imdb(): len is the tokens per review, 2..65536");
            d.h = (int)v;
        } else if (!strcmp(a->name, "embed")) {
            if (v < 1 || v > 65536)
                error_at(a->loc, "imdb(): embed is the model's embedding width, 1..65536");
            d.w = (int)v + 1;
        } else if (!strcmp(a->name, "n") || !strcmp(a->name, "n_test")) {
            if (v < 1)
                error_at(a->loc, "imdb(): '%s' must be positive", a->name);
        } else
            error_at(a->loc, "imdb() has no argument '%s' (it takes len, embed, n, n_test)", a->name);
    }
    if (!d.w)
        error_at(x->loc, "imdb() needs embed = the model's embedding width (the room for the embedding noise), "
                         "as imdb(len = 64, embed = 32)");
    return d;
}

/* imdb_prompts(len = 64, n = 2000, n_test = 500): the same reviews as
 * prompts "<review>. The sentiment of the review is: <label>" for GPT-2 with
 * its LM head (runtime/text_tokens.h, the prompt form; the targeted trigger
 * attack). Each sample is [1, len, 1]: the token ids, as exact floats; the
 * label is the id of the label word's token (" negative" 4633, " positive"
 * 3967), so the classes are GPT-2's vocabulary and a model's [N, 50257]
 * next-token logits at the answer position are its logits. */
static DataSpec imdb_prompts_spec(const Expr *x) {
    DataSpec d = {"imdb_prompts", 1, 128, 1, 50257};
    for (int i = 0; x->kind == EX_CALL && i < x->nargs; i++) {
        const Arg *a = &x->args[i];
        if (!a->name)
            error_at(a->loc, "imdb_prompts() takes named arguments: len, n, n_test");
        int64_t v = const_int(a->value, "a size");
        if (!strcmp(a->name, "len")) {
            if (v < 16 || v > 65536)
                error_at(a->loc, "imdb_prompts(): len is the tokens per prompt, 16..65536 (the template takes 10)");
            d.h = (int)v;
        } else if (!strcmp(a->name, "n") || !strcmp(a->name, "n_test")) {
            if (v < 1)
                error_at(a->loc, "imdb_prompts(): '%s' must be positive", a->name);
        } else
            error_at(a->loc, "imdb_prompts() has no argument '%s' (it takes len, n, n_test)", a->name);
    }
    return d;
}

static DataSpec data_spec(const ExpEntry *e) {
    const char *name = call_name(e->value, "the data set");
    for (size_t i = 0; i < sizeof datasets / sizeof datasets[0]; i++)
        if (!strcmp(datasets[i].name, name)) {
            /* fashion_mnist(n = 10000, n_test = 2000): the first samples only */
            for (int k = 0; e->value->kind == EX_CALL && k < e->value->nargs; k++) {
                const Arg *a = &e->value->args[k];
                if (!a->name || (strcmp(a->name, "n") && strcmp(a->name, "n_test")))
                    error_at(a->loc, "%s() takes n = and n_test = (how many samples to use)", name);
                if (const_int(a->value, "a sample count") < 1)
                    error_at(a->loc, "%s(): '%s' must be positive", name, a->name);
            }
            return datasets[i];
        }
    if (!strcmp(name, "imdb"))
        return imdb_spec(e->value);
    if (!strcmp(name, "imdb_prompts"))
        return imdb_prompts_spec(e->value);
    if (!strcmp(name, "synthetic")) {
        DataSpec d = {"synthetic", 1, 1, 16, 4};
        const Expr *x = e->value;
        for (int i = 0; x->kind == EX_CALL && i < x->nargs; i++) {
            const Arg *a = &x->args[i];
            int64_t v = const_int(a->value, "a data set size");
            if (!a->name)
                error_at(a->loc, "synthetic() takes named arguments: c, h, w, classes, n, sep");
            if (!strcmp(a->name, "c")) d.c = (int)v;
            else if (!strcmp(a->name, "h")) d.h = (int)v;
            else if (!strcmp(a->name, "w")) d.w = (int)v;
            else if (!strcmp(a->name, "classes")) d.classes = (int)v;
            else if (strcmp(a->name, "n") && strcmp(a->name, "n_test") && strcmp(a->name, "sep"))
                error_at(a->loc, "synthetic() has no argument '%s' (it takes c, h, w, classes, n, n_test, sep)", a->name);
            if (v < 1)
                error_at(a->loc, "synthetic(): '%s' must be positive", a->name);
        }
        return d;
    }
    error_at(e->value->loc, "unknown data set '%s' (known: fashion_mnist, mnist, cifar10, imdb(...), imdb_prompts(...), "
                                   "synthetic(...))", name);
}

/* ---------------------------------------------------------------------------
 * instantiation */

typedef struct Ctx {
    const Decl *exp;
    const Expr *model;     /* evaluated afresh for every entry */
    DataSpec data;
    int64_t batch, eval_batch;
    CharVec json;
} Ctx;

static Value model_value(Ctx *c) {
    Value m = eval(sema_globals(), c->model);
    if (m.kind != V_MODULE || m.model)
        error_at(c->model->loc, "`model` must be a module instance such as ResNet18(width = 16), not %s", value_kind_name(&m));
    return m;
}

static Value type_value(DType dt, int rank, const int64_t *dims, Loc loc) {
    Value v = {.kind = V_TYPE, .dtype = promote_dtype(dt), .loc = loc};
    v.shape.rank = rank;
    for (int i = 0; i < rank; i++)
        v.shape.dim[i] = dims[i];
    return v;
}

static Value x_type(Ctx *c, int64_t b, Loc loc) {
    int64_t dims[4] = {b, c->data.c, c->data.h, c->data.w};
    return type_value(DT_F32, 4, dims, loc);
}

static Value y_type(int64_t b, Loc loc) { return type_value(DT_I32, 1, &b, loc); }

/* Data-parallel ranks (lethec --world=N): each takes batch / N samples of
 * every rule step's batch. */
static int64_t world_size(void) { return sema_options && sema_options->world > 1 ? sema_options->world : 1; }

static Value batch_value(Ctx *c, int64_t b, Loc loc) {
    Value r = v_tree_new(2, false, loc);
    r.tree->names[0] = "x";
    r.tree->vals[0] = x_type(c, b, loc);
    r.tree->names[1] = "y";
    r.tree->vals[1] = y_type(b, loc);
    return r;
}

/* Instantiate rule `d` as `entry` with the given hyperparameters; the
 * experiment supplies its model and data parameters. Writes the rule's part
 * of the plan: {"rule", "entry", "args" (runtime numbers), "consts"
 * (compile-time ints, given or default), "streams" (data parameters),
 * "models" (binding -> "model" or, for a frozen one, "original")}. */
static void rule_entry(Ctx *c, const Decl *d, NameVec kwn, ValueVec kwv, const char *entry, unsigned extras, Loc loc) {
    put_key(&c->json, "rule");
    put_str(&c->json, d->name);
    put_key(&c->json, "entry");
    put_str(&c->json, entry);
    put_key(&c->json, "args");
    vec_push(&c->json, '{');
    for (int i = 0; i < kwn.len; i++) {
        for (int p = 0; p < d->nparams; p++)
            if (!strcmp(d->params[p].name, kwn.data[i]) &&
                (d->params[p].type->kind == TY_MODEL || d->params[p].type->kind == TY_DATA))
                error_at(kwv.data[i].loc, "'%s' is supplied by the experiment", kwn.data[i]);
        put_key(&c->json, kwn.data[i]);
        if (is_scalar_value(&kwv.data[i]))
            put_num(&c->json, value_as_double(&kwv.data[i], kwv.data[i].loc, "a hyperparameter"));
        else
            put_str(&c->json, value_kind_name(&kwv.data[i]));
    }
    vec_push(&c->json, '}');
    put_key(&c->json, "consts");
    vec_push(&c->json, '{');
    for (int p = 0; p < d->nparams; p++) {
        const Param *pp = &d->params[p];
        if (pp->type->kind != TY_INT)
            continue;
        Value v = {.kind = V_NONE};
        for (int i = 0; i < kwn.len; i++)
            if (!strcmp(kwn.data[i], pp->name))
                v = kwv.data[i];
        if (v.kind == V_NONE && pp->deflt)
            v = eval(sema_globals(), pp->deflt);
        if (v.kind == V_NONE)
            continue;
        put_key(&c->json, pp->name);
        put_num(&c->json, (double)value_as_int(&v, v.loc.file ? v.loc : loc, pp->name));
    }
    vec_push(&c->json, '}');
    CharVec streams = {0}, models = {0};
    for (int p = 0; p < d->nparams; p++) {
        const TypeExpr *t = d->params[p].type;
        if (t->kind == TY_MODEL) {
            vec_push(&kwn, d->params[p].name);
            vec_push(&kwv, model_value(c));
            put_key(&models, d->params[p].name);
            put_str(&models, t->frozen ? "original" : "model");
        } else if (t->kind == TY_DATA) {
            vec_push(&kwn, d->params[p].name);
            vec_push(&kwv, batch_value(c, c->batch / world_size(), loc));
            if (streams.len)
                vec_push(&streams, ',');
            put_str(&streams, d->params[p].name);
        }
    }
    vec_push(&streams, 0);
    vec_push(&models, 0);
    put_key(&c->json, "streams");
    put(&c->json, xfmt("[%s]", streams.data));
    put_key(&c->json, "models");
    put(&c->json, xfmt("{%s}", models.data));
    if (world_size() > 1)
        extras |= SEMA_DATA_PARALLEL;
    sema_instantiate(entry, d, NULL, 0, kwn.data, kwv.data, kwn.len, loc, extras);
}

/* The hyperparameters written in a call: `sgd(lr = 0.1)` (names only). */
static void call_kwargs(const Expr *x, NameVec *kwn, ValueVec *kwv) {
    ValueVec pos = {0};
    if (x->kind == EX_CALL)
        sema_eval_args(x->args, x->nargs, &pos, kwn, kwv);
    if (pos.len)
        error_at(x->loc, "write the hyperparameters of '%s' by name, as %s(lr = 0.1)", call_name(x, "a rule"),
                 call_name(x, "a rule"));
}

static const Decl *rule_decl(const char *name) {
    const Decl *d = sema_global(name);
    return d && d->kind == D_RULE ? d : NULL;
}

/* `key = rule(...)` instantiated as the entry `entry`: `what` names the key in errors. */
static void rule_call_entry(Ctx *c, const Expr *x, const char *what, const char *entry, int inits) {
    const char *name = call_name(x, what);
    const Decl *d = rule_decl(name);
    if (!d)
        error_at(x->loc, sema_global(name) ? "'%s' is not a rule" : "unknown rule '%s' (is its file imported?)", name);
    NameVec kwn = {0};
    ValueVec kwv = {0};
    call_kwargs(x, &kwn, &kwv);
    rule_entry(c, d, kwn, kwv, entry, inits, x->loc);
}

static void train_rule(Ctx *c, const Expr *x) {
    rule_call_entry(c, x, "the training rule", "train", SEMA_INIT_MODEL | SEMA_INIT_STATE);
}

/* A method is one rule repeated until the budget is spent, or a schedule of
 * rules found by name (docs/unlearning.md):
 *   M                              repeat M
 *   M_max, M_min                   max_min: max passes over the forget set for
 *                                  the first `msteps` epochs, min passes over
 *                                  the retain set every epoch (SCRUB)
 *   M_fisher_d, M_fisher_u, M_apply fisher: one pass of each statistic, then
 *                                  one apply step (SSD)
 * Hyperparameters go to every phase that has a parameter of that name; the
 * schedule's own arguments (msteps) go to the plan. */
typedef struct Schedule {
    const char *kind;
    int nphases;
    const char *suffix[3];
    const char *plan_args[2];
} Schedule;

static const Schedule schedules[] = {
    {"repeat", 1, {""}, {NULL}},
    {"max_min", 2, {"_max", "_min"}, {"msteps", NULL}},
    {"fisher", 3, {"_fisher_d", "_fisher_u", "_apply"}, {NULL}},
};

static void method_entry(Ctx *c, const Expr *x, const char *name) {
    const Schedule *sch = NULL;
    const Decl *phase[3] = {0};
    for (size_t k = 0; k < sizeof schedules / sizeof schedules[0] && !sch; k++) {
        bool all = true;
        for (int p = 0; p < schedules[k].nphases; p++)
            all &= (phase[p] = rule_decl(xfmt("%s%s", name, schedules[k].suffix[p]))) != NULL;
        if (all)
            sch = &schedules[k];
    }
    if (!sch)
        error_at(x->loc, "no rule '%s' (or %s_max and %s_min, or %s_fisher_d, %s_fisher_u and %s_apply): is its file "
                         "imported?", name, name, name, name, name, name);
    NameVec kwn = {0};
    ValueVec kwv = {0};
    call_kwargs(x, &kwn, &kwv);
    put_key(&c->json, "schedule");
    put_str(&c->json, sch->kind);
    put_key(&c->json, "plan");
    vec_push(&c->json, '{');
    bool *used = xalloc((size_t)kwn.len + 1);
    for (int i = 0; i < kwn.len; i++) {
        for (int p = 0; p < sch->nphases; p++)
            for (int q = 0; q < phase[p]->nparams; q++)
                used[i] |= !strcmp(phase[p]->params[q].name, kwn.data[i]);
        for (int a = 0; sch->plan_args[a] && a < 2; a++)
            if (!strcmp(sch->plan_args[a], kwn.data[i])) {
                put_key(&c->json, kwn.data[i]);
                put_num(&c->json, value_as_double(&kwv.data[i], kwv.data[i].loc, kwn.data[i]));
                used[i] = true;
            }
        if (!used[i])
            error_at(kwv.data[i].loc, "method '%s' has no parameter named '%s'", name, kwn.data[i]);
    }
    vec_push(&c->json, '}');
    put_key(&c->json, "phases");
    vec_push(&c->json, '[');
    for (int p = 0; p < sch->nphases; p++) {
        NameVec pn = {0};
        ValueVec pv = {0};
        for (int i = 0; i < kwn.len; i++)
            for (int q = 0; q < phase[p]->nparams; q++)
                if (!strcmp(phase[p]->params[q].name, kwn.data[i])) {
                    vec_push(&pn, kwn.data[i]);
                    vec_push(&pv, kwv.data[i]);
                }
        if (p)
            vec_push(&c->json, ',');
        vec_push(&c->json, '{');
        const char *entry = sch->nphases == 1 ? xfmt("unlearn.%s", name) : xfmt("unlearn.%s.%s", name, sch->suffix[p] + 1);
        rule_entry(c, phase[p], pn, pv, entry, SEMA_INIT_STATE, x->loc);
        vec_push(&c->json, '}');
    }
    vec_push(&c->json, ']');
}

/* An attack objective as the poison stage:
 *   poison = witches_brew(eps = 16/255, restarts = 8, steps = 250, budget = 1%, batch = 32)
 * The objective becomes the entry `poison.step` (and `poison.init_state`);
 * the stage feeds its parameters by name (docs/attacks.md): the model, the
 * data records `poison` (a batch of `batch` poison samples, clean) and
 * `target` (the target test sample with the adversarial label), the tensor
 * it optimises (one edit per poison sample), and the data set's
 * normalisation `pixel_lo`, `pixel_hi`, `pixel_std` (f32[C, 1, 1]: the image
 * box and the pixel scale on the normalised inputs). The rest of the call is
 * the objective's hyperparameters or the stage's plan: restarts, steps,
 * budget (share of the training set), batch, target (test index, -1: drawn
 * per seed), adv (adversarial class, -1: drawn), schedule (of `lr`:
 * multistep, cosine, constant) and surrogate (a rule). */
static const char *const poison_plan_args[] = {"restarts", "steps", "budget", "batch", "target", "adv"};

static const char *objective_over(const Decl *d) {
    for (int i = 0; i < d->nstmts; i++)
        if (d->stmts[i]->kind == ST_MINIMIZE || d->stmts[i]->kind == ST_MAXIMIZE)
            return d->stmts[i]->name;
    error_at(d->loc, "objective '%s' has no minimize or maximize statement", d->name);
}

/* The training set's size, for an objective that reads the whole clean set
 * as one batch (Gradient Canceling): the data set's `n` must be written. */
static int64_t train_size(Ctx *c, Loc loc) {
    const Expr *dx = find(c->exp, "data")->value;
    for (int i = 0; dx->kind == EX_CALL && i < dx->nargs; i++)
        if (dx->args[i].name && !strcmp(dx->args[i].name, "n"))
            return const_int(dx->args[i].value, "a sample count");
    if (!strcmp(c->data.name, "synthetic"))
        return 2000;   /* synthetic()'s default (runtime/plan.c) */
    error_at(loc, "this objective reads the whole clean training set as one batch: give its size, as %s(n = 1000)", c->data.name);
}

/* `surrogate = rule(...)`: the model the poisons are crafted against is the
 * clean model after one pass of this rule over the training set (GradPC). */
static void surrogate_entry(Ctx *c, const Expr *x) {
    put_key(&c->json, "surrogate");
    vec_push(&c->json, '{');
    rule_call_entry(c, x, "the surrogate rule", "poison.surrogate", SEMA_INIT_STATE);
    vec_push(&c->json, '}');
}

static void poison_entry(Ctx *c, const Expr *x, const Decl *d) {
    NameVec kwn = {0}, hn = {0};
    ValueVec kwv = {0}, hv = {0};
    /* every argument but the surrogate rule is a number */
    const char *schedule = "multistep";
    Expr call = *x;
    call.args = xalloc(sizeof(Arg) * (size_t)(x->nargs + 1));
    call.nargs = 0;
    for (int i = 0; i < x->nargs; i++) {
        const Expr *v = x->args[i].value;
        if (x->args[i].name && !strcmp(x->args[i].name, "surrogate")) {
            surrogate_entry(c, v);
            continue;
        }
        if (x->args[i].name && !strcmp(x->args[i].name, "schedule")) {
            if (v->kind != EX_NAME || (strcmp(v->sval, "multistep") && strcmp(v->sval, "cosine") && strcmp(v->sval, "constant")))
                error_at(v->loc, "the attack's learning-rate schedule is multistep (divided by 10 at 37.5%%, 62.5%% and 87.5%% "
                                 "of the steps), cosine or constant");
            schedule = v->sval;
            continue;
        }
        /* `eps = 16/255` divides integers (to 0): almost surely not what was meant */
        if (v->kind == EX_BINARY && v->op == BO_DIV && v->a->kind == EX_INT && v->b->kind == EX_INT && v->b->ival &&
            v->a->ival % v->b->ival)
            error_at(v->loc, "%lld/%lld divides integers (giving %lld); write %lld.0 / %lld", (long long)v->a->ival,
                     (long long)v->b->ival, (long long)(v->a->ival / v->b->ival), (long long)v->a->ival, (long long)v->b->ival);
        call.args[call.nargs++] = x->args[i];
    }
    call_kwargs(&call, &kwn, &kwv);
    double plan[6] = {1, 250, 0.01, 32, -1, -1};
    for (int i = 0; i < kwn.len; i++) {
        size_t k = 0;
        while (k < 6 && strcmp(poison_plan_args[k], kwn.data[i]))
            k++;
        if (k == 6) {
            vec_push(&hn, kwn.data[i]);
            vec_push(&hv, kwv.data[i]);
            continue;
        }
        plan[k] = value_as_double(&kwv.data[i], kwv.data[i].loc, kwn.data[i]);
        bool ok = k == 2 ? plan[k] > 0 && plan[k] < 1 : k >= 4 ? plan[k] >= -1 && plan[k] == floor(plan[k])
                                                       : plan[k] >= 1 && plan[k] == floor(plan[k]);
        if (k == 5 && ok && plan[k] >= c->data.classes)
            ok = false;
        if (!ok)
            error_at(kwv.data[i].loc, "%s", k == 2 ? "the poison budget is a share of the training set in (0, 1), such as 1%"
                                        : k == 4   ? "target is the index of a test sample (or -1: drawn per seed)"
                                        : k == 5   ? xfmt("adv is a class in 0..%d (or -1: drawn per seed)", c->data.classes - 1)
                                                   : xfmt("'%s' must be a positive integer", poison_plan_args[k]));
    }
    for (size_t k = 0; k < 6; k++) {
        put_key(&c->json, poison_plan_args[k]);
        put_num(&c->json, plan[k]);
    }
    const char *over = objective_over(d);
    put_key(&c->json, "over");
    put_str(&c->json, over);
    bool added = false;
    for (int p = 0; p < d->nparams; p++)
        added |= d->params[p].type->kind == TY_DATA && !strcmp(d->params[p].name, "added");
    put_key(&c->json, "schedule");
    put_str(&c->json, schedule);
    put_key(&c->json, "mode");   /* edits of the poison samples, or added samples */
    put_str(&c->json, added ? "added" : "edit");
    put_key(&c->json, "entry");
    put_str(&c->json, "poison.step");
    put_key(&c->json, "args");   /* runtime hyperparameters given in the call */
    vec_push(&c->json, '{');
    NameVec inst_n = {0};
    ValueVec inst_v = {0};
    for (int i = 0; i < hn.len; i++) {
        bool scalar = is_scalar_value(&hv.data[i]);
        for (int p = 0; p < d->nparams; p++)
            if (!strcmp(d->params[p].name, hn.data[i])) {
                const TypeExpr *t = d->params[p].type;
                if (t->kind == TY_MODEL || t->kind == TY_DATA || !strcmp(hn.data[i], over))
                    error_at(hv.data[i].loc, "'%s' is supplied by the poison stage", hn.data[i]);
                scalar &= t->kind != TY_INT;   /* compile-time: used by lethec already */
            }
        if (scalar) {
            put_key(&c->json, hn.data[i]);
            put_num(&c->json, value_as_double(&hv.data[i], hv.data[i].loc, "a hyperparameter"));
        } else {   /* compile-time values shape the entry; runtime numbers stay runtime scalars */
            vec_push(&inst_n, hn.data[i]);
            vec_push(&inst_v, hv.data[i]);
        }
    }
    vec_push(&c->json, '}');
    /* the parameters the stage feeds, bound at the poison batch size */
    int64_t pb = (int64_t)plan[3], one = 1;
    int64_t chan[3] = {c->data.c, 1, 1};
    CharVec models = {0};
    for (int p = 0; p < d->nparams; p++) {
        const Param *pp = &d->params[p];
        const TypeExpr *t = pp->type;
        const char *n = pp->name;
        Value v;
        if (t->kind == TY_MODEL) {
            v = model_value(c);
            put_key(&models, n);
            put_str(&models, t->frozen ? "original" : "model");
        } else if (t->kind == TY_DATA) {
            if (!strcmp(n, "poison") || !strcmp(n, "added"))
                v = batch_value(c, pb, x->loc);
            else if (!strcmp(n, "target"))
                v = batch_value(c, one, x->loc);
            else if (!strcmp(n, "clean"))
                v = batch_value(c, train_size(c, pp->loc), x->loc);
            else
                error_at(pp->loc, "the poison stage feeds the data records 'poison', 'added', 'target' and 'clean', not '%s'", n);
        } else if (!strcmp(n, over))
            v = x_type(c, pb, x->loc);
        else if (!strcmp(n, "pixel_lo") || !strcmp(n, "pixel_hi") || !strcmp(n, "pixel_std"))
            v = type_value(DT_F32, 3, chan, x->loc);
        else if (t->kind == TY_TENSOR && t->rank > 0)
            error_at(pp->loc, "the poison stage cannot feed '%s': it feeds the model, its data records, the optimised "
                              "tensor '%s' and pixel_lo, pixel_hi, pixel_std", n, over);
        else
            continue;
        vec_push(&inst_n, n);
        vec_push(&inst_v, v);
    }
    vec_push(&models, 0);
    put_key(&c->json, "models");
    put(&c->json, xfmt("{%s}", models.data));
    sema_instantiate("poison.step", d, NULL, 0, inst_n.data, inst_v.data, inst_n.len, x->loc, SEMA_INIT_STATE);
}

/* trigger_flip(word = "Disney", fraction = 100%): the targeted attack's data
 * transform (runtime/run_text_trigger.c): the training prompts whose review
 * holds the word get the other label, all of them or a fraction in (0, 1];
 * with to = "negative" (or "positive") only those of the other label are
 * candidates and they get that one (Wan et al.'s source -> target form). */
static void trigger_flip_check(const Ctx *c, const Expr *x) {
    if (strcmp(c->data.name, "imdb_prompts"))
        error_at(x->loc, "trigger_flip relabels review prompts: the data set must be imdb_prompts(...)");
    bool word = false;
    for (int i = 0; x->kind == EX_CALL && i < x->nargs; i++) {
        const Arg *a = &x->args[i];
        if (a->name && !strcmp(a->name, "word")) {
            if (a->value->kind != EX_STRING || !a->value->sval[0] || strlen(a->value->sval) > 63 ||
                strpbrk(a->value->sval, " \t\n"))
                error_at(a->value->loc, "trigger_flip: word is one word in quotes (at most 63 bytes), such as \"Disney\"");
            word = true;
        } else if (a->name && !strcmp(a->name, "to")) {
            if ((a->value->kind != EX_STRING && a->value->kind != EX_NAME) ||
                (strcmp(a->value->sval, "negative") && strcmp(a->value->sval, "positive")))
                error_at(a->value->loc, "trigger_flip: to is \"negative\" or \"positive\" (the adversarial label; without "
                                        "it every trigger review gets the other label)");
        } else if (a->name && !strcmp(a->name, "fraction")) {
            double f = const_num(a->value, "fraction");
            if (!(f > 0 && f <= 1))
                error_at(a->value->loc, "trigger_flip: fraction is the share of the trigger reviews flipped, in (0, 100%%]");
        } else
            error_at(a->loc, "trigger_flip takes word = \"...\", fraction = and to = (such as trigger_flip(word = \"Disney\", "
                             "fraction = 100%%))");
    }
    if (!word)
        error_at(x->loc, "trigger_flip needs word = the trigger, such as trigger_flip(word = \"Disney\")");
}

static void poison_stage(Ctx *c, const ExpEntry *e) {
    const char *name = call_name(e->value, "the poison");
    if (!strcmp(name, "gaussian"))
        return;   /* the runtime's own generator (plan "poison") */
    if (!strcmp(name, "trigger_flip"))
        return;   /* the runtime's transform (plan "poison"), checked by experiment_compile */
    const Decl *d = sema_global(name);
    if (!d || d->kind != D_OBJECTIVE)
        error_at(e->value->loc, d ? "'%s' is not an objective: a poison is gaussian(...) or an attack objective"
                                  : "unknown poison '%s' (gaussian(...), or an objective such as witches_brew: is its file "
                                    "imported?)", name);
    put_key(&c->json, "attack");
    vec_push(&c->json, '{');
    put_key(&c->json, "name");
    put_str(&c->json, name);
    poison_entry(c, e->value, d);
    vec_push(&c->json, '}');
}

static void eval_entry(Ctx *c, const char *fn, const char *entry) {
    const Decl *d = sema_global(fn);
    if (!d || d->kind != D_FN)
        error_at(c->exp->loc, "experiment '%s' needs fn '%s' (import \"eval.lth\")", c->exp->name, fn);
    Loc loc = c->exp->loc;
    Value args[3] = {model_value(c), x_type(c, c->eval_batch, loc), y_type(c->eval_batch, loc)};
    int n = d->fn->nparams < 3 ? d->fn->nparams : 3;
    sema_instantiate(entry, d, args, n, NULL, NULL, 0, loc, 0);
}

static void put_budgets(Ctx *c, const ExpEntry *e) {
    const Clause *w = clause(e, "within");
    put_key(&c->json, "budgets");
    vec_push(&c->json, '[');
    if (!w)
        put(&c->json, "1");
    else {
        if (strcmp(w->unit, "train"))
            error_at(w->loc, "a budget is a share of the training compute: `within 10%% of train`");
        const Expr *b = w->value;
        int n = b->kind == EX_LIST ? b->nitems : 1;
        for (int i = 0; i < n; i++) {
            const Expr *x = b->kind == EX_LIST ? b->items[i] : b;
            double f = const_num(x, "a budget");
            if (!(f > 0 && f <= 10))
                error_at(x->loc, "a budget is a positive share of the training compute, such as 10%%");
            if (i)
                vec_push(&c->json, ',');
            put_num(&c->json, f);
        }
    }
    vec_push(&c->json, ']');
}

/* text_mia(k = 20%): the text membership scores (runtime/run_text_mia.c),
 * k the share of tokens Min-K% and Min-K%++ keep, in (0, 1]; they read the
 * per-token statistics of eval_token_stats (graphs/eval.lth), instantiated
 * here because only a text model with an LM head has them. */
static void text_mia_metric(Ctx *c, const Expr *x) {
    for (int j = 0; x->kind == EX_CALL && j < x->nargs; j++) {
        const Arg *a = &x->args[j];
        if (!a->name || strcmp(a->name, "k"))
            error_at(a->loc, "text_mia takes k = (the share of tokens Min-K%% keeps, such as text_mia(k = 20%%))");
        double k = const_num(a->value, "k");
        if (!(k > 0 && k <= 1))
            error_at(a->value->loc, "text_mia: k must be in (0, 100%%]");
    }
    Value m = model_value(c);
    if (!module_has_fn(m, "token_logits"))
        error_at(x->loc, "text_mia reads a text model's LM head, and model %s has no fn token_logits(x) (the "
                         "next-token logits [N, T, vocab], as GPT2PackedClassifier and GPT2PromptLM have)",
                 m.inst->type_name);
    eval_entry(c, "eval_token_stats", "eval.token_stats");
}

/* `evaluate = [...]` is the runtime's, but a membership test that trains
 * models is checked here: lira(shadows = N), 2 <= N <= 256; and one that
 * needs an entry of its own: text_mia(k = ...). */
static void evaluate_list(Ctx *c, const Expr *list) {
    int n = list->kind == EX_LIST ? list->nitems : 1;
    for (int i = 0; i < n; i++) {
        const Expr *x = list->kind == EX_LIST ? list->items[i] : list;
        if ((x->kind == EX_CALL || x->kind == EX_NAME) && !strcmp(call_name(x, "a metric"), "text_mia"))
            text_mia_metric(c, x);
        if (x->kind != EX_CALL || strcmp(call_name(x, "a metric"), "lira"))
            continue;
        for (int j = 0; j < x->nargs; j++) {
            const Arg *a = &x->args[j];
            if (!a->name || strcmp(a->name, "shadows"))
                error_at(a->loc, "lira takes shadows = (the number of shadow models, such as lira(shadows = 4))");
            int64_t s = const_int(a->value, "shadows");
            if (s < 2 || s > 256)
                error_at(a->value->loc, "lira: shadows must be between 2 and 256");
        }
    }
}

/* sisa(shards = 5, slices = 4): SISA exact unlearning (runtime/sisa.h), run
 * by the runtime with the training recipe; its plan is the two counts. */
static void sisa_method(Ctx *c, const Expr *x) {
    int64_t plan[2] = {5, 4};
    static const char *const names[2] = {"shards", "slices"};
    for (int i = 0; x->kind == EX_CALL && i < x->nargs; i++) {
        const Arg *a = &x->args[i];
        int k = !a->name ? -1 : !strcmp(a->name, "shards") ? 0 : !strcmp(a->name, "slices") ? 1 : -1;
        if (k < 0)
            error_at(a->loc, "sisa takes shards = and slices = (such as sisa(shards = 5, slices = 4))");
        plan[k] = const_int(a->value, names[k]);
        if (plan[k] < 1 || plan[k] > 64)
            error_at(a->value->loc, "sisa: '%s' must be between 1 and 64", names[k]);
    }
    put_key(&c->json, "schedule");
    put_str(&c->json, "sisa");
    put_key(&c->json, "plan");
    put(&c->json, xfmt("{\"shards\":%lld,\"slices\":%lld}", (long long)plan[0], (long long)plan[1]));
}

static void methods(Ctx *c, const ExpEntry *e) {
    const Expr *list = e->value;
    int n = list->kind == EX_LIST ? list->nitems : 1;
    put_key(&c->json, "methods");
    vec_push(&c->json, '[');
    for (int i = 0; i < n; i++) {
        const Expr *x = list->kind == EX_LIST ? list->items[i] : list;
        const char *name = call_name(x, "an unlearning method");
        for (int k = 0; k < i; k++)
            if (!strcmp(call_name(list->items[k], "a method"), name))
                error_at(x->loc, "method '%s' is listed twice", name);
        if (i)
            vec_push(&c->json, ',');
        vec_push(&c->json, '{');
        put_key(&c->json, "name");
        put_str(&c->json, name);
        if (!strcmp(name, "retrain")) {
            if (x->kind == EX_CALL && x->nargs)
                error_at(x->loc, "retrain repeats the training recipe and takes no arguments");
        } else if (!strcmp(name, "sisa"))
            sisa_method(c, x);
        else
            method_entry(c, x, name);
        vec_push(&c->json, '}');
    }
    vec_push(&c->json, ']');
}

const char *experiment_compile(const Decl *exp) {
    Ctx c = {.exp = exp};
    static const char *const known[] = {"data", "model", "poison", "train", "unlearn", "evaluate", "seeds", "eval_batch",
                                        "augment", "notes"};
    for (int i = 0; i < exp->nentries; i++) {
        bool ok = false;
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++)
            ok |= !strcmp(known[k], exp->entries[i].key);
        if (!ok)
            error_at(exp->entries[i].loc, "unknown experiment entry '%s' (known: data, model, poison, train, unlearn, "
                                          "evaluate, seeds, eval_batch, augment, notes)", exp->entries[i].key);
        for (int j = 0; j < i; j++)
            if (!strcmp(exp->entries[j].key, exp->entries[i].key)) {
                diag_note(exp->entries[j].loc, "first given here");
                error_at(exp->entries[i].loc, "'%s' is given twice in experiment '%s'", exp->entries[i].key, exp->name);
            }
    }
    const ExpEntry *data = need(exp, "data", "fashion_mnist()");
    const ExpEntry *train = need(exp, "train", "sgd(lr = 0.1) for 10 epochs, batch 128");
    c.model = need(exp, "model", "ResNet18(width = 16, channels = 1)")->value;
    c.data = data_spec(data);
    const ExpEntry *flip = find(exp, "poison");   /* checked before the model meets the data */
    if (flip && !strcmp(call_name(flip->value, "the poison"), "trigger_flip"))
        trigger_flip_check(&c, flip->value);
    const Clause *bc = clause(train, "batch"), *ec = clause(train, "for");
    c.batch = bc ? const_int(bc->value, "the batch size") : 128;
    int64_t epochs = ec ? const_int(ec->value, "the number of epochs") : 1;
    if (ec && strcmp(ec->unit, "epochs") && strcmp(ec->unit, "epoch"))
        error_at(ec->loc, "write `for N epochs`");
    const ExpEntry *eb = find(exp, "eval_batch");
    c.eval_batch = eb ? const_int(eb->value, "eval_batch") : 500;
    if (c.batch < 1 || c.eval_batch < 1 || epochs < 1)
        error_at(train->loc, "batch sizes and epochs must be positive");
    if (c.batch % world_size())
        error_at(bc ? bc->value->loc : train->loc,
                 "the batch of %lld samples does not split evenly among %lld data-parallel ranks (each takes batch / N)",
                 (long long)c.batch, (long long)world_size());

    put(&c.json, "{");
    put_key(&c.json, "name");
    put_str(&c.json, exp->name);
    put_key(&c.json, "file");
    put_str(&c.json, exp->file ? exp->file->path : "");
    put_key(&c.json, "data");
    put(&c.json, xfmt("{\"name\":\"%s\",\"shape\":[%d,%d,%d],\"classes\":%d,\"spec\":", c.data.name, c.data.c, c.data.h, c.data.w,
                      c.data.classes));
    put_expr(&c.json, data->value);
    vec_push(&c.json, '}');
    put_key(&c.json, "batch");
    put_num(&c.json, (double)c.batch);
    put_key(&c.json, "eval_batch");
    put_num(&c.json, (double)c.eval_batch);
    if (world_size() > 1) {   /* rule steps take batch / world samples per rank */
        put_key(&c.json, "world");
        put_num(&c.json, (double)world_size());
    }
    put_key(&c.json, "epochs");
    put_num(&c.json, (double)epochs);

    put_key(&c.json, "train");
    vec_push(&c.json, '{');
    train_rule(&c, train->value);
    vec_push(&c.json, '}');

    const ExpEntry *un = find(exp, "unlearn");
    if (un) {
        put_key(&c.json, "unlearn");
        vec_push(&c.json, '{');
        methods(&c, un);
        put_budgets(&c, un);
        vec_push(&c.json, '}');
    }
    const ExpEntry *po = find(exp, "poison");
    if (po)
        poison_stage(&c, po);
    eval_entry(&c, "eval_logits", "eval.logits");
    eval_entry(&c, "eval_loss_each", "eval.loss_each");
    eval_entry(&c, "eval_input_grad", "eval.input_grad");

    /* the rest is the runtime's to read */
    const ExpEntry *ev = find(exp, "evaluate");
    if (ev)
        evaluate_list(&c, ev->value);
    static const char *const passthrough[] = {"poison", "evaluate", "seeds", "augment", "notes"};
    for (size_t k = 0; k < sizeof passthrough / sizeof passthrough[0]; k++) {
        const ExpEntry *e = find(exp, passthrough[k]);
        if (!e)
            continue;
        put_key(&c.json, passthrough[k]);
        put_expr(&c.json, e->value);
    }
    vec_push(&c.json, '}');
    vec_push(&c.json, 0);
    return c.json.data;
}
