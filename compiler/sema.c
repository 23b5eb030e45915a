/* sema.c: the tracer. Declarations, scopes, expression evaluation, calls of
 * functions, rules and objectives, and the instantiation of exports into
 * entry points (see sema.h for the value model).
 *
 * Evaluation is staged: compile-time values are computed here and now,
 * tensors become graph nodes. A rule's body is traced once per export into a
 * step function; its state writes are collected and applied at the end, so
 * every read in a rule sees the state at the start of the step.
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sema.h"

Trace *cur;

typedef struct Global {
    const char *name;
    const Decl *decl;
} Global;

static VEC(Global) globals;
static VEC(const Decl *) exports;
static VEC(const Decl *) experiments;
static Env *global_env;
static const SemaOptions *options;
static uint64_t sources_hash;

/* ---------------------------------------------------------------------------
 * values and scopes */

Value v_int(int64_t i, Loc loc) { return (Value){.kind = V_INT, .i = i, .loc = loc}; }
Value v_float(double f, Loc loc) { return (Value){.kind = V_FLOAT, .f = f, .loc = loc}; }
Value v_bool(bool b, Loc loc) { return (Value){.kind = V_BOOL, .i = b, .loc = loc}; }
Value v_tensor(Node *n) { return (Value){.kind = V_TENSOR, .node = n, .loc = n->loc}; }

Value v_tree_new(int n, bool is_list, Loc loc) {
    Value v = {.kind = V_TREE, .loc = loc};
    v.tree = xalloc(sizeof(Tree));
    v.tree->n = n;
    v.tree->is_list = is_list;
    v.tree->names = xalloc(sizeof(char *) * (size_t)(n ? n : 1));
    v.tree->vals = xalloc(sizeof(Value) * (size_t)(n ? n : 1));
    return v;
}

Env *sema_globals(void) { return global_env; }

Env *env_new(Env *parent) {
    Env *e = xalloc(sizeof *e);
    e->parent = parent;
    if (parent) {
        e->self = parent->self;
        e->model = parent->model;
    }
    return e;
}

void env_bind(Env *env, const char *name, Value v) {
    for (int i = 0; i < env->names.len; i++)
        if (!strcmp(env->names.data[i], name)) {
            env->vals.data[i] = v;
            return;
        }
    vec_push(&env->names, name);
    vec_push(&env->vals, v);
}

bool env_lookup(Env *env, const char *name, Value *out) {
    for (Env *e = env; e; e = e->parent)
        for (int i = e->names.len - 1; i >= 0; i--)
            if (!strcmp(e->names.data[i], name)) {
                *out = e->vals.data[i];
                return true;
            }
    return false;
}

DType promote_dtype(DType d) {
    return options && options->promote_f64 && d == DT_F32 ? DT_F64 : d;
}

const char *value_kind_name(const Value *v) {
    switch (v->kind) {
    case V_NONE: return "nothing";
    case V_INT: return "int";
    case V_FLOAT: return "float";
    case V_BOOL: return "bool";
    case V_STR: return "string";
    case V_TENSOR: return type_str(v->node->dtype, v->node->shape);
    case V_TREE: return v->tree->is_list ? xfmt("list of %d", v->tree->n) : xfmt("tree of %d", v->tree->n);
    case V_MODULE: return xfmt("module %s", v->inst->type_name);
    case V_FN: return xfmt("fn %s", v->fn->name ? v->fn->name : "(default)");
    case V_CALLABLE:
        switch (v->decl->kind) {
        case D_MODULE: return xfmt("module type %s", v->decl->name);
        case D_RULE: return xfmt("rule %s", v->decl->name);
        case D_OBJECTIVE: return xfmt("objective %s", v->decl->name);
        default: return v->decl->name;
        }
    case V_BUILTIN: return xfmt("builtin %s", builtin_name(v->builtin));
    case V_TYPE: return xfmt("type %s", type_str(v->dtype, v->shape));
    case V_SPEC: return xfmt("%s(...)", v->s);
    }
    return "?";
}

bool is_scalar_value(const Value *v) { return v->kind == V_INT || v->kind == V_FLOAT || v->kind == V_BOOL; }

double value_as_double(const Value *v, Loc loc, const char *what) {
    if (v->kind == V_INT || v->kind == V_BOOL)
        return (double)v->i;
    if (v->kind == V_FLOAT)
        return v->f;
    error_at(loc, "%s must be a compile-time number, not %s", what, value_kind_name(v));
}

int64_t value_as_int(const Value *v, Loc loc, const char *what) {
    if (v->kind == V_INT || v->kind == V_BOOL)
        return v->i;
    if (v->kind == V_FLOAT && v->f == floor(v->f) && fabs(v->f) < 9e15)
        return (int64_t)v->f;
    error_at(loc, "%s must be a compile-time integer, not %s", what, value_kind_name(v));
}

static void need_trace(Loc loc, const char *what) {
    if (!cur)
        error_at(loc, "%s needs tensors, which only exist inside an exported fn, rule or objective", what);
}

Node *value_as_node(Value v, Loc loc, const char *what) {
    switch (v.kind) {
    case V_TENSOR:
        return v.node;
    case V_INT:
        need_trace(loc, what);
        return g_scalar(cur->g, (double)v.i, DT_I32, loc);
    case V_BOOL:
        need_trace(loc, what);
        return g_scalar(cur->g, (double)v.i, DT_BOOL, loc);
    case V_FLOAT:
        need_trace(loc, what);
        return g_scalar(cur->g, v.f, promote_dtype(DT_F32), loc);
    default:
        error_at(loc, "%s must be a tensor, not %s", what, value_kind_name(&v));
    }
}

/* ---------------------------------------------------------------------------
 * globals and imports */

static const Decl *global_decl(const char *name) {
    for (int i = 0; i < globals.len; i++)
        if (!strcmp(globals.data[i].name, name))
            return globals.data[i].decl;
    return NULL;
}

static void add_global(const Decl *d) {
    const Decl *old = global_decl(d->name);
    if (old) {
        diag_note(old->loc, "'%s' was first defined here", d->name);
        error_at(d->loc, "'%s' is defined twice", d->name);
    }
    if (builtin_lookup(d->name) && d->kind != D_EXPERIMENT && d->kind != D_EXPORT)
        error_at(d->loc, "'%s' is a builtin and cannot be redefined", d->name);
    vec_push(&globals, ((Global){d->name, d}));
}

typedef struct Loaded {
    const char *path;
    bool done;
} Loaded;
static VEC(Loaded) loaded;

static const char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? xstrndup(path, (size_t)(slash - path)) : ".";
}

static char *canonical(const char *path) {
    char *real = realpath(path, NULL);
    if (!real)
        return NULL;
    char *c = xstrdup(real);
    free(real);
    return c;
}

static void load_program(const Program *p, int depth);

static void load_import(const Decl *d, int depth) {
    const char *want = d->name;
    const char *found = NULL;
    VEC(const char *) tried = {0};
    const char *candidates[64];
    int nc = 0;
    candidates[nc++] = want[0] == '/' ? want : xfmt("%s/%s", dir_of(d->file->path), want);
    for (int i = 0; options && i < options->ninclude && nc < 63; i++)
        candidates[nc++] = xfmt("%s/%s", options->include_dirs[i], want);
    for (int i = 0; i < nc && !found; i++) {
        vec_push(&tried, candidates[i]);
        FILE *f = fopen(candidates[i], "rb");
        if (f) {
            fclose(f);
            found = candidates[i];
        }
    }
    if (!found) {
        for (int i = 0; i < tried.len; i++)
            diag_note(d->loc, "looked for %s", tried.data[i]);
        error_at(d->loc, "cannot find imported file \"%s\"", want);
    }
    char *canon = canonical(found);
    if (!canon)
        error_at(d->loc, "cannot resolve \"%s\"", found);
    for (int i = 0; i < loaded.len; i++)
        if (!strcmp(loaded.data[i].path, canon)) {
            if (!loaded.data[i].done)
                error_at(d->loc, "import cycle: \"%s\" imports itself (directly or through other files)", want);
            return;
        }
    if (depth > 32)
        error_at(d->loc, "imports nested more than 32 deep");
    vec_push(&loaded, ((Loaded){canon, false}));
    int slot = loaded.len - 1;
    if (options->print_deps)
        printf("%s\n", found);
    SrcFile *f = srcfile_read(found);
    if (!f)
        error_at(d->loc, "cannot read \"%s\"", found);
    sources_hash = hash_bytes(f->text, f->len, sources_hash);
    load_program(parse_file(f), depth + 1);
    loaded.data[slot].done = true;
}

static void load_program(const Program *p, int depth) {
    for (int i = 0; i < p->ndecls; i++) {
        const Decl *d = p->decls[i];
        switch (d->kind) {
        case D_IMPORT:
            load_import(d, depth);
            break;
        case D_EXPORT:
            if (depth == 0)
                vec_push(&exports, d);
            break;
        case D_EXPERIMENT:
            if (depth == 0)
                vec_push(&experiments, d);
            break;
        default:
            add_global(d);
            break;
        }
    }
}

/* ---------------------------------------------------------------------------
 * names */

static Value refresh(Value v);

static Value lookup_name(Env *env, const char *name, Loc loc) {
    Value v;
    if (env_lookup(env, name, &v))
        return cur ? refresh(v) : v;
    if (env->self)   /* inside a module: its params, buffers, subs, lets and fns */
        for (int i = 0; i < env->self->members.len; i++)
            if (env->self->members.data[i].name && !strcmp(env->self->members.data[i].name, name)) {
                Value mod = {.kind = V_MODULE, .inst = env->self, .model = env->model, .loc = loc};
                return module_member(mod, name, loc);
            }
    const Decl *d = global_decl(name);
    if (d) {
        if (d->kind == D_FN)
            return (Value){.kind = V_FN, .fn = d->fn, .env = global_env, .loc = loc};
        return (Value){.kind = V_CALLABLE, .decl = d, .loc = loc};
    }
    int b = builtin_lookup(name);
    if (b)
        return (Value){.kind = V_BUILTIN, .builtin = b, .loc = loc};
    error_at(loc, "unknown name '%s'", name);
}

/* ---------------------------------------------------------------------------
 * types and dimension variables */

static bool is_dim_var(const char *name) { return isupper((unsigned char)name[0]); }

/* Evaluate a dimension expression; unbound upper-case names bind to `actual`
 * (when actual >= 0) in `dims`. */
static int64_t eval_dim(Env *env, Env *dims, const Expr *d, int64_t actual, bool *bound_here) {
    if (d->kind == EX_NAME) {
        Value v;
        if (!env_lookup(dims, d->sval, &v) && !env_lookup(env, d->sval, &v) && is_dim_var(d->sval)) {
            if (actual < 0)
                error_at(d->loc, "dimension '%s' is not bound here", d->sval);
            env_bind(dims, d->sval, v_int(actual, d->loc));
            if (bound_here)
                *bound_here = true;
            return actual;
        }
    }
    Value v = eval(dims, d);
    int64_t n = value_as_int(&v, d->loc, "a dimension");
    if (n < 0)
        error_at(d->loc, "dimension %lld is negative", (long long)n);
    return n;
}

/* A written tensor type with all dims fixed (module params, exports). */
Shape eval_fixed_shape(Env *env, const TypeExpr *t) {
    Shape s = {.rank = t->rank};
    if (t->rank > MAX_RANK)
        error_at(t->loc, "tensors have at most %d dimensions", MAX_RANK);
    for (int i = 0; i < t->rank; i++) {
        const Expr *d = t->dims[i];
        if (d->kind == EX_NAME && is_dim_var(d->sval)) {
            Value v;
            if (!env_lookup(env, d->sval, &v) && !(env->self && 0))
                error_at(d->loc, "dimension '%s' must be fixed here (by a module argument or a number)", d->sval);
        }
        Value v = eval(env, d);
        s.dim[i] = value_as_int(&v, d->loc, "a dimension");
        if (s.dim[i] < 0)
            error_at(d->loc, "dimension %lld is negative", (long long)s.dim[i]);
    }
    return s;
}

/* Check a value against a declared parameter type; binds dimension variables
 * into `dims`. Returns the value to bind (numbers stay compile-time). */
static Value check_param_type(Env *env, Env *dims, const Param *p, Value v, Loc argloc) {
    const TypeExpr *t = p->type;
    switch (t->kind) {
    case TY_NONE:
        return v;
    case TY_INT:
        value_as_int(&v, argloc, xfmt("argument '%s'", p->name));
        return v.kind == V_INT ? v : v_int(value_as_int(&v, argloc, "argument"), v.loc);
    case TY_FLOAT:
        return v_float(value_as_double(&v, argloc, xfmt("argument '%s'", p->name)), v.loc);
    case TY_MODEL:
        if (v.kind != V_MODULE)
            error_at(argloc, "argument '%s' must be a model, not %s", p->name, value_kind_name(&v));
        return v;
    case TY_DATA:
        if (v.kind != V_TREE || v.tree->is_list)
            error_at(argloc, "argument '%s' must be data (a record such as batch.x, batch.y), not %s", p->name,
                     value_kind_name(&v));
        return v;
    case TY_TENSOR:
        break;
    }
    DType want = promote_dtype(t->dtype);
    if (t->rank == 0 && is_scalar_value(&v))
        return v;   /* a compile-time number passed for a scalar stays compile-time */
    if (v.kind != V_TENSOR)
        error_at(argloc, "argument '%s' must be %s, not %s", p->name, want == DT_F32 || want == DT_F64 ? "a tensor" : dtype_name(want),
                 value_kind_name(&v));
    Node *n = v.node;
    if (n->shape.rank != t->rank) {
        diag_note(t->loc, "'%s' is declared here", p->name);
        diag_note(n->loc, "%s comes from here", type_str(n->dtype, n->shape));
        error_at(argloc, "argument '%s' has rank %d but is declared with rank %d", p->name, n->shape.rank, t->rank);
    }
    for (int i = 0; i < t->rank; i++) {
        int64_t want_d = eval_dim(env, dims, t->dims[i], n->shape.dim[i], NULL);
        if (want_d != n->shape.dim[i]) {
            diag_note(t->dims[i]->loc, "declared here as %lld", (long long)want_d);
            diag_note(n->loc, "%s comes from here", type_str(n->dtype, n->shape));
            error_at(argloc, "argument '%s' has size %lld in dimension %d, but the signature needs %lld", p->name,
                     (long long)n->shape.dim[i], i, (long long)want_d);
        }
    }
    if (n->dtype != want) {
        diag_note(n->loc, "%s comes from here", type_str(n->dtype, n->shape));
        error_at(argloc, "argument '%s' must be %s, not %s", p->name, dtype_name(want), dtype_name(n->dtype));
    }
    return v;
}

static void check_return_type(Env *dims, const TypeExpr *t, Value v, Loc loc) {
    if (!t || t->kind == TY_NONE)
        return;
    if (t->kind != TY_TENSOR)
        return;
    if (t->rank == 0 && is_scalar_value(&v))
        return;
    if (v.kind != V_TENSOR)
        error_at(loc, "the function must return %s, not %s", dtype_name(promote_dtype(t->dtype)), value_kind_name(&v));
    Node *n = v.node;
    DType want = promote_dtype(t->dtype);
    bool ok = n->shape.rank == t->rank && n->dtype == want;
    for (int i = 0; ok && i < t->rank; i++)
        ok = eval_dim(dims, dims, t->dims[i], n->shape.dim[i], NULL) == n->shape.dim[i];
    if (!ok) {
        diag_note(t->loc, "declared return type");
        diag_note(n->loc, "%s comes from here", type_str(n->dtype, n->shape));
        error_at(loc, "the function returns %s, which does not match its declared type", type_str(n->dtype, n->shape));
    }
}

/* ---------------------------------------------------------------------------
 * argument binding, shared by fns, modules, rules and builtins */

Bound bind_args(const char *what, const Param *params, int nparams, Value *pos, int npos, const char **kwnames,
                       Value *kwvals, int nkw, Loc loc) {
    Bound b = {nparams, xalloc(sizeof(Value) * (size_t)(nparams + 1)), xalloc((size_t)nparams + 1),
               xalloc(sizeof(Loc) * (size_t)(nparams + 1))};
    if (npos > nparams)
        error_at(pos[nparams].loc.file ? pos[nparams].loc : loc, "%s takes %d argument%s but %d were given", what, nparams,
                 nparams == 1 ? "" : "s", npos);
    for (int i = 0; i < npos; i++) {
        b.vals[i] = pos[i];
        b.given[i] = true;
        b.locs[i] = pos[i].loc.file ? pos[i].loc : loc;
    }
    for (int k = 0; k < nkw; k++) {
        int j = -1;
        for (int i = 0; i < nparams; i++)
            if (!strcmp(params[i].name, kwnames[k]))
                j = i;
        Loc kl = kwvals[k].loc.file ? kwvals[k].loc : loc;
        if (j < 0)
            error_at(kl, "%s has no parameter named '%s'", what, kwnames[k]);
        if (b.given[j])
            error_at(kl, "argument '%s' of %s is given twice", kwnames[k], what);
        b.vals[j] = kwvals[k];
        b.given[j] = true;
        b.locs[j] = kl;
    }
    return b;
}

noreturn void missing_arg(const char *what, const Param *p, Loc loc) {
    diag_note(p->loc, "'%s' is declared here", p->name);
    error_at(loc, "%s needs an argument for '%s'", what, p->name);
}

/* ---------------------------------------------------------------------------
 * functions */

static Value eval_body(Env *env, const Expr *body);

static uint64_t push_salt(Loc loc) {
    uint64_t old = cur ? cur->stream_salt : 0;
    if (cur) {
        uint64_t h = hash_bytes(&loc.line, sizeof loc.line, old ^ 0x5bd1e995u);
        cur->stream_salt = hash_bytes(&loc.col, sizeof loc.col, h);
    }
    return old;
}

static void pop_salt(uint64_t old) {
    if (cur)
        cur->stream_salt = old;
}

Value call_fn(Value fnv, Value *pos, int npos, const char **kwnames, Value *kwvals, int nkw, Loc loc) {
    const FnDecl *fn = fnv.fn;
    const char *what = fn->name ? xfmt("fn '%s'", fn->name) : "the module's fn";
    Bound b = bind_args(what, fn->params, fn->nparams, pos, npos, kwnames, kwvals, nkw, loc);
    if (cur && ++cur->call_depth > 200)
        error_at(loc, "calls nested more than 200 deep (is a function calling itself?)");
    Env *env = env_new(fnv.env);
    Env *dims = env_new(env);
    for (int i = 0; i < fn->nparams; i++) {
        const Param *p = &fn->params[i];
        if (!b.given[i]) {
            if (!p->deflt)
                missing_arg(what, p, loc);
            b.vals[i] = eval(dims, p->deflt);
            b.locs[i] = p->deflt->loc;
        }
        Value v = check_param_type(env, dims, p, b.vals[i], b.locs[i]);
        env_bind(dims, p->name, v);
    }
    uint64_t salt = push_salt(loc);
    Value r = eval_body(dims, fn->body);
    pop_salt(salt);
    check_return_type(dims, fn->ret, r, fn->body->loc);
    if (cur)
        cur->call_depth--;
    return r;
}

/* Evaluate call arguments: positional ones first, then named ones. */
static void eval_args(Env *env, const Arg *args, int nargs, ValueVec *pos, NameVec *kwn, ValueVec *kwv) {
    for (int i = 0; i < nargs; i++) {
        Value v = eval(env, args[i].value);
        v.loc = args[i].value->loc;   /* errors about an argument point at it; a tensor keeps its origin in node->loc */
        if (args[i].name) {
            vec_push(kwn, args[i].name);
            vec_push(kwv, v);
        } else {
            if (kwn->len)
                error_at(args[i].value->loc, "positional argument after a named one");
            vec_push(pos, v);
        }
    }
}

static Value call_list(Value list, Value *pos, int npos, Loc loc) {
    if (npos != 1)
        error_at(loc, "a list of modules is applied to exactly one argument");
    Value x = pos[0];
    for (int i = 0; i < list.tree->n; i++) {
        Value m = list.tree->vals[i];
        if (m.kind != V_MODULE)
            error_at(loc, "only a list of modules can be applied; element %d is %s", i, value_kind_name(&m));
        x = module_call(m, NULL, &x, 1, loc);
    }
    return x;
}

static Value instantiate_callable(const Decl *d, Value *pos, int npos, const char **kwn, Value *kwv, int nkw, Loc loc);

Value call_value(Env *env, Value callee, const Arg *args, int nargs, Loc loc) {
    ValueVec pos = {0};
    NameVec kwn = {0};
    ValueVec kwv = {0};
    eval_args(env, args, nargs, &pos, &kwn, &kwv);
    switch (callee.kind) {
    case V_FN:
        return call_fn(callee, pos.data, pos.len, kwn.data, kwv.data, kwn.len, loc);
    case V_BUILTIN:
        return builtin_call(callee.builtin, pos.data, pos.len, kwn.data, kwv.data, kwn.len, loc);
    case V_MODULE:
        if (kwn.len)
            error_at(loc, "a module is called with positional arguments only");
        return module_call(callee, callee.fn, pos.data, pos.len, loc);
    case V_TREE:
        if (callee.tree->is_list)
            return call_list(callee, pos.data, pos.len, loc);
        break;
    case V_TYPE:
        if (callee.shape.rank == 0) {   /* f32(x): a conversion */
            if (pos.len != 1 || kwn.len)
                error_at(loc, "%s(x) takes one argument", dtype_name(callee.dtype));
            Value x = pos.data[0];
            DType to = promote_dtype(callee.dtype);
            if (is_scalar_value(&x)) {
                if (to == DT_I32) return v_int((int64_t)value_as_double(&x, loc, "x"), loc);
                if (to == DT_BOOL) return v_bool(value_as_double(&x, loc, "x") != 0, loc);
                return v_float(value_as_double(&x, loc, "x"), loc);
            }
            return v_tensor(g_cast(cur->g, value_as_node(x, loc, "x"), to, loc));
        }
        break;
    case V_CALLABLE:
        return instantiate_callable(callee.decl, pos.data, pos.len, kwn.data, kwv.data, kwn.len, loc);
    default:
        break;
    }
    error_at(loc, "%s cannot be called", value_kind_name(&callee));
}

/* ---------------------------------------------------------------------------
 * expressions */

static Value binary_scalar(int op, Value a, Value b, Loc loc) {
    bool ints = (a.kind == V_INT || a.kind == V_BOOL) && (b.kind == V_INT || b.kind == V_BOOL);
    if (ints) {
        int64_t x = a.i, y = b.i;
        switch (op) {
        case BO_ADD: return v_int(x + y, loc);
        case BO_SUB: return v_int(x - y, loc);
        case BO_MUL: return v_int(x * y, loc);
        case BO_DIV:
        case BO_MOD:
            if (y == 0)
                error_at(loc, "division by zero");
            /* ints divide like C: `pad = k / 2` is an int */
            return v_int(op == BO_DIV ? x / y : x % y, loc);
        case BO_POW:
            if (y < 0 || y > 62)
                return v_float(pow((double)x, (double)y), loc);
            else {
                int64_t r = 1;
                for (int64_t i = 0; i < y; i++)
                    r *= x;
                return v_int(r, loc);
            }
        case BO_EQ: return v_bool(x == y, loc);
        case BO_NE: return v_bool(x != y, loc);
        case BO_LT: return v_bool(x < y, loc);
        case BO_LE: return v_bool(x <= y, loc);
        case BO_GT: return v_bool(x > y, loc);
        case BO_GE: return v_bool(x >= y, loc);
        case BO_AND: return v_bool(x && y, loc);
        case BO_OR: return v_bool(x || y, loc);
        default: break;
        }
    } else {
        double x = value_as_double(&a, loc, "operand"), y = value_as_double(&b, loc, "operand");
        switch (op) {
        case BO_ADD: return v_float(x + y, loc);
        case BO_SUB: return v_float(x - y, loc);
        case BO_MUL: return v_float(x * y, loc);
        case BO_DIV: return v_float(x / y, loc);
        case BO_MOD: return v_float(fmod(x, y), loc);
        case BO_POW: return v_float(pow(x, y), loc);
        case BO_EQ: return v_bool(x == y, loc);
        case BO_NE: return v_bool(x != y, loc);
        case BO_LT: return v_bool(x < y, loc);
        case BO_LE: return v_bool(x <= y, loc);
        case BO_GT: return v_bool(x > y, loc);
        case BO_GE: return v_bool(x >= y, loc);
        case BO_AND: return v_bool(x && y, loc);
        case BO_OR: return v_bool(x || y, loc);
        default: break;
        }
    }
    error_at(loc, "operator '%s' does not apply to numbers", binop_spelling(op));
}

static Op graph_op(int binop) {
    switch (binop) {
    case BO_ADD: return OP_ADD;
    case BO_SUB: return OP_SUB;
    case BO_MUL: return OP_MUL;
    case BO_DIV: return OP_DIV;
    case BO_MOD: return OP_MOD;
    case BO_POW: return OP_POW;
    case BO_EQ: return OP_EQ;
    case BO_NE: return OP_NE;
    case BO_LT: return OP_LT;
    case BO_LE: return OP_LE;
    case BO_GT: return OP_GT;
    case BO_GE: return OP_GE;
    case BO_AND: return OP_AND;
    case BO_OR: return OP_OR;
    }
    unreachable();
}

static Value eval_binary(Env *env, const Expr *e) {
    Value a = eval(env, e->a);
    Value b = eval(env, e->b);
    if (is_scalar_value(&a) && is_scalar_value(&b))
        return binary_scalar(e->op, a, b, e->loc);
    if (a.kind == V_STR && b.kind == V_STR && (e->op == BO_EQ || e->op == BO_NE))
        return v_bool((strcmp(a.s, b.s) == 0) == (e->op == BO_EQ), e->loc);
    need_trace(e->loc, xfmt("operator '%s' on %s", binop_spelling(e->op), value_kind_name(a.kind == V_TENSOR ? &a : &b)));
    if (e->op == BO_MATMUL)
        return v_tensor(g_matmul(cur->g, value_as_node(a, e->a->loc, "the left operand of '@'"),
                                 value_as_node(b, e->b->loc, "the right operand of '@'"), e->loc));
    if (e->op == BO_POW && b.kind == V_INT && b.i == 2 && a.kind == V_TENSOR)
        return v_tensor(g_binary(cur->g, OP_MUL, a.node, a.node, e->loc));   /* x ** 2: exact and cheap */
    return tree_map2(graph_op(e->op), a, b, e->loc);
}

static Value eval_unary(Env *env, const Expr *e) {
    Value a = eval(env, e->a);
    if (e->op == BO_NEG) {
        if (a.kind == V_INT) return v_int(-a.i, e->loc);
        if (a.kind == V_FLOAT) return v_float(-a.f, e->loc);
        if (a.kind == V_TREE) {
            Value r = v_tree_new(a.tree->n, a.tree->is_list, e->loc);
            for (int i = 0; i < a.tree->n; i++) {
                r.tree->names[i] = a.tree->names[i];
                r.tree->vals[i] = v_tensor(g_unary(cur->g, OP_NEG, value_as_node(a.tree->vals[i], e->loc, "operand"), e->loc));
            }
            return r;
        }
        need_trace(e->loc, "'-'");
        return v_tensor(g_unary(cur->g, OP_NEG, value_as_node(a, e->a->loc, "the operand of '-'"), e->loc));
    }
    if (a.kind == V_BOOL || a.kind == V_INT)
        return v_bool(!a.i, e->loc);
    need_trace(e->loc, "'!'");
    Node *n = value_as_node(a, e->a->loc, "the operand of '!'");
    if (n->dtype != DT_BOOL)
        error_at(e->loc, "'!' needs a bool tensor, not %s", type_str(n->dtype, n->shape));
    return v_tensor(g_unary(cur->g, OP_NOT, n, e->loc));
}

/* x[i, a:b:s, ..., :] with NumPy semantics for ints and slices (step >= 1). */
static Value eval_index(Env *env, const Expr *e) {
    Value base = eval(env, e->a);
    if (base.kind == V_TREE && base.tree->is_list) {
        if (e->nitems != 1 || e->items[0]->kind == EX_SLICE || e->items[0]->kind == EX_ELLIPSIS)
            error_at(e->loc, "a list is indexed by one integer");
        Value iv = eval(env, e->items[0]);
        int64_t i = value_as_int(&iv, e->items[0]->loc, "a list index");
        if (i < 0)
            i += base.tree->n;
        if (i < 0 || i >= base.tree->n)
            error_at(e->items[0]->loc, "index %lld is out of range for a list of %d", (long long)iv.i, base.tree->n);
        return base.tree->vals[i];
    }
    need_trace(e->loc, "indexing");
    Node *x = value_as_node(base, e->a->loc, "the indexed value");
    int rank = x->shape.rank, nell = 0, nreal = 0;
    for (int i = 0; i < e->nitems; i++)
        e->items[i]->kind == EX_ELLIPSIS ? nell++ : nreal++;
    if (nell > 1)
        error_at(e->loc, "at most one '...' in an index");
    if (nreal > rank)
        error_at(e->loc, "%d indices for a tensor of rank %d (%s)", nreal, rank, type_str(x->dtype, x->shape));
    int64_t start[MAX_RANK], count[MAX_RANK], step[MAX_RANK];
    bool drop[MAX_RANK] = {0};
    int d = 0;
    for (int i = 0; i < e->nitems; i++) {
        const Expr *it = e->items[i];
        if (it->kind == EX_ELLIPSIS) {
            for (int k = 0; k < rank - nreal; k++, d++) {
                start[d] = 0;
                count[d] = x->shape.dim[d];
                step[d] = 1;
            }
            continue;
        }
        int64_t n = x->shape.dim[d];
        if (it->kind == EX_SLICE) {
            int64_t s = 1, lo, hi;
            if (it->c) {
                Value sv = eval(env, it->c);
                s = value_as_int(&sv, it->c->loc, "a slice step");
                if (s < 1)
                    error_at(it->c->loc, "slice steps must be positive");
            }
            lo = 0;
            hi = n;
            if (it->a) {
                Value v = eval(env, it->a);
                lo = value_as_int(&v, it->a->loc, "a slice start");
                if (lo < 0) lo += n;
                lo = lo < 0 ? 0 : lo > n ? n : lo;
            }
            if (it->b) {
                Value v = eval(env, it->b);
                hi = value_as_int(&v, it->b->loc, "a slice end");
                if (hi < 0) hi += n;
                hi = hi < 0 ? 0 : hi > n ? n : hi;
            }
            start[d] = lo;
            step[d] = s;
            count[d] = hi > lo ? (hi - lo + s - 1) / s : 0;
        } else {
            Value v = eval(env, it);
            int64_t i0 = value_as_int(&v, it->loc, "an index (use take() to index with a tensor)");
            if (i0 < 0)
                i0 += n;
            if (i0 < 0 || i0 >= n)
                error_at(it->loc, "index %lld is out of range for dimension %d of size %lld", (long long)v.i, d, (long long)n);
            start[d] = i0;
            count[d] = 1;
            step[d] = 1;
            drop[d] = true;
        }
        d++;
    }
    for (; d < rank; d++) {
        start[d] = 0;
        count[d] = x->shape.dim[d];
        step[d] = 1;
    }
    Node *y = g_slice(cur->g, x, start, count, step, e->loc);
    Shape out = {0};
    for (int i = 0; i < rank; i++)
        if (!drop[i])
            out.dim[out.rank++] = count[i];
    if (out.rank != rank)
        y = g_reshape(cur->g, y, out, e->loc);
    return v_tensor(y);
}

static Value eval_field(Env *env, const Expr *e) {
    Value base = eval(env, e->a);
    const char *name = e->sval;
    switch (base.kind) {
    case V_MODULE:
        return module_member(base, name, e->loc);
    case V_TREE:
        for (int i = 0; i < base.tree->n; i++)
            if (base.tree->names[i] && !strcmp(base.tree->names[i], name))
                return base.tree->vals[i];
        /* a flat tree of dotted paths: t.stem selects the "stem." leaves */
        {
            size_t len = strlen(name);
            int n = 0;
            for (int i = 0; i < base.tree->n; i++)
                if (base.tree->names[i] && !strncmp(base.tree->names[i], name, len) && base.tree->names[i][len] == '.')
                    n++;
            if (n) {
                Value r = v_tree_new(n, false, e->loc);
                int j = 0;
                for (int i = 0; i < base.tree->n; i++)
                    if (base.tree->names[i] && !strncmp(base.tree->names[i], name, len) && base.tree->names[i][len] == '.') {
                        r.tree->names[j] = base.tree->names[i] + len + 1;
                        r.tree->vals[j++] = base.tree->vals[i];
                    }
                return r;
            }
        }
        if (base.tree->n && base.tree->names[0]) {
            const char *fields = "";
            for (int i = 0; i < base.tree->n && i < 6; i++)
                fields = xfmt("%s%s'%s'", fields, i ? ", " : "", base.tree->names[i]);
            error_at(e->loc, "no field '%s' here (it has %s%s)", name, fields, base.tree->n > 6 ? ", ..." : "");
        }
        error_at(e->loc, "no field '%s' in %s", name, value_kind_name(&base));
    case V_TENSOR:
        if (!strcmp(name, "shape")) {
            Value r = v_tree_new(base.node->shape.rank, true, e->loc);
            for (int i = 0; i < base.node->shape.rank; i++)
                r.tree->vals[i] = v_int(base.node->shape.dim[i], e->loc);
            return r;
        }
        error_at(e->loc, "a tensor has no field '%s' (only .shape)", name);
    default:
        error_at(e->loc, "%s has no fields", value_kind_name(&base));
    }
}

static Value eval_list(Env *env, const Expr *e) {
    Value r = v_tree_new(e->nitems, true, e->loc);
    for (int i = 0; i < e->nitems; i++)
        r.tree->vals[i] = eval(env, e->items[i]);
    return r;
}

static Value eval_body(Env *env, const Expr *body) {
    if (body->kind != EX_BLOCK)
        return eval(env, body);
    Env *inner = env_new(env);
    for (int i = 0; i < body->nlets; i++)
        env_bind(inner, body->lets[i]->name, eval(inner, body->lets[i]->value));
    return eval(inner, body->a);
}

Value eval(Env *env, const Expr *e) {
    switch (e->kind) {
    case EX_INT: return v_int(e->ival, e->loc);
    case EX_FLOAT:
    case EX_PERCENT: return v_float(e->fval, e->loc);
    case EX_BOOL: return v_bool(e->ival != 0, e->loc);
    case EX_STRING: return (Value){.kind = V_STR, .s = e->sval, .loc = e->loc};
    case EX_NAME: {
        Value v = lookup_name(env, e->sval, e->loc);
        if (v.kind != V_TENSOR)
            v.loc = e->loc;
        return v;
    }
    case EX_UNARY: return eval_unary(env, e);
    case EX_BINARY: return eval_binary(env, e);
    case EX_CALL: {
        Value callee = eval(env, e->a);
        return call_value(env, callee, e->args, e->nargs, e->loc);
    }
    case EX_FIELD: return eval_field(env, e);
    case EX_INDEX: return eval_index(env, e);
    case EX_SLICE:
    case EX_ELLIPSIS: error_at(e->loc, "a slice is only allowed inside [ ]");
    case EX_LIST: return eval_list(env, e);
    case EX_IF: {
        Value c = eval(env, e->a);
        if (c.kind == V_TENSOR)
            error_at(e->a->loc, "'if' needs a compile-time condition; use where(cond, a, b) for tensors");
        if (c.kind != V_BOOL && c.kind != V_INT)
            error_at(e->a->loc, "'if' needs a bool, not %s", value_kind_name(&c));
        return eval(env, c.i ? e->b : e->c);
    }
    case EX_BLOCK: return eval_body(env, e);
    case EX_EVAL: {
        if (e->a->kind != EX_CALL)
            error_at(e->loc, "'eval' applies to a call, as in eval m(x)");
        if (!cur)
            return eval(env, e->a);
        bool saved = cur->train;
        cur->train = false;
        Value v = eval(env, e->a);
        cur->train = saved;
        return v;
    }
    case EX_TYPE: {
        Shape s = {.rank = e->type->rank};
        if (s.rank > MAX_RANK)
            error_at(e->loc, "tensors have at most %d dimensions", MAX_RANK);
        for (int i = 0; i < s.rank; i++) {
            Value d = eval(env, e->type->dims[i]);
            s.dim[i] = value_as_int(&d, e->type->dims[i]->loc, "a dimension");
            if (s.dim[i] < 0)
                error_at(e->type->dims[i]->loc, "dimension %lld is negative", (long long)s.dim[i]);
        }
        return (Value){.kind = V_TYPE, .dtype = promote_dtype(e->type->dtype), .shape = s, .loc = e->loc};
    }
    }
    unreachable();
}

/* ---------------------------------------------------------------------------
 * entry arguments */

static VEC(int64_t) arg_order;
static int64_t arg_seq;


int entry_add_arg(const char *name, const char *binding, const char *path, int kind, DType dt, Shape sh, int64_t order) {
    Entry *e = cur->e;
    for (int i = 0; i < e->args.len; i++)
        if (!strcmp(e->args.data[i].name, name))
            internal_error(__FILE__, __LINE__, "argument %s added twice to %s", name, e->name);
    EntryArg a = {.name = name, .binding = binding, .path = path ? path : "", .kind = kind, .dtype = dt, .shape = sh,
                  .scalar_default = NAN, .layer = -1};
    vec_push(&e->args, a);
    vec_push(&arg_order, order);
    return e->args.len - 1;
}

Node *entry_input(int arg, Loc loc) {
    EntryArg *a = &cur->e->args.data[arg];
    if (!a->in)
        a->in = g_input(cur->g, arg, a->dtype, a->shape, a->name, loc);
    return a->in;
}

/* Conform a value to an argument's type: same shape (broadcasting a smaller
 * value) and dtype (float values convert between f32/f64). */
Node *conform(Node *v, DType dt, Shape sh, const char *what, Loc loc) {
    if (!shape_eq(v->shape, sh)) {
        bool ok = v->shape.rank <= sh.rank;
        for (int i = 0; ok && i < v->shape.rank; i++) {
            int64_t a = v->shape.dim[v->shape.rank - 1 - i], b = sh.dim[sh.rank - 1 - i];
            ok = a == b || a == 1;
        }
        if (!ok) {
            diag_note(v->loc, "%s comes from here", type_str(v->dtype, v->shape));
            error_at(loc, "%s is %s, but a value of %s was given", what, type_str(dt, sh), type_str(v->dtype, v->shape));
        }
        v = g_broadcast_to(cur->g, v, sh, loc);
    }
    if (v->dtype != dt) {
        bool fl = (v->dtype == DT_F32 || v->dtype == DT_F64) && (dt == DT_F32 || dt == DT_F64);
        if (!fl && !(v->op == OP_CONST)) {
            diag_note(v->loc, "%s comes from here", type_str(v->dtype, v->shape));
            error_at(loc, "%s is %s, but a value of %s was given", what, type_str(dt, sh), type_str(v->dtype, v->shape));
        }
        v = g_cast(cur->g, v, dt, loc);
    }
    return v;
}

void entry_set_output(int arg, Node *value, Loc loc) {
    EntryArg *a = &cur->e->args.data[arg];
    a->out = conform(value, a->dtype, a->shape, xfmt("'%s'", a->name), loc);
}

static int add_output(const char *name, Value v, Loc loc) {
    Node *n = value_as_node(v, loc, xfmt("the value of '%s'", name));
    int arg = entry_add_arg(name, name, "", 5 /* LETHE_OUTPUT */, n->dtype, n->shape, order_key(ORDER_OUTPUT, arg_seq++));
    cur->e->args.data[arg].out = n;
    return arg;
}

/* Outputs of a value that may be a tree: name, or name.path per leaf. */
static void add_outputs(const char *name, Value v, Loc loc) {
    if (v.kind == V_TREE) {
        for (int i = 0; i < v.tree->n; i++)
            add_outputs(xfmt("%s.%s", name, v.tree->names[i] ? v.tree->names[i] : xfmt("%d", i)), v.tree->vals[i], loc);
        return;
    }
    add_output(name, v, loc);
}

/* Sort the arguments into their canonical order and renumber INPUT nodes. */
static void finish_entry(Entry *e) {
    int n = e->args.len;
    int *perm = xalloc(sizeof(int) * (size_t)(n + 1));
    for (int i = 0; i < n; i++)
        perm[i] = i;
    for (int i = 1; i < n; i++)   /* insertion sort: stable, n is small */
        for (int j = i; j > 0 && arg_order.data[perm[j - 1]] > arg_order.data[perm[j]]; j--) {
            int t = perm[j];
            perm[j] = perm[j - 1];
            perm[j - 1] = t;
        }
    EntryArg *sorted = xalloc(sizeof(EntryArg) * (size_t)(n + 1));
    for (int i = 0; i < n; i++) {
        sorted[i] = e->args.data[perm[i]];
        if (sorted[i].in)
            sorted[i].in->attr.arg = i;
    }
    memcpy(e->args.data, sorted, sizeof(EntryArg) * (size_t)n);
    for (int i = 0; i < e->g->nodes.len; i++)
        if (e->g->nodes.data[i]->op == OP_RAND_NORMAL || e->g->nodes.data[i]->op == OP_RAND_UNIFORM)
            e->uses_rng = true;
}

static Entry *new_entry(const char *name, const char *kind, Loc loc, Trace *t) {
    Entry *e = xalloc(sizeof *e);
    e->name = name;
    e->kind = kind;
    e->loc = loc;
    e->g = graph_new();
    memset(t, 0, sizeof *t);
    t->e = e;
    t->g = e->g;
    t->train = true;
    t->opt = options;
    t->stream_salt = hash_bytes(name, strlen(name), 0);
    cur = t;
    arg_order.len = 0;
    arg_seq = 0;
    return e;
}

/* ---------------------------------------------------------------------------
 * rule state */

typedef struct StateSlot {
    const char *name;
    int arg;
    Node *pending;
    Loc wloc;
} StateSlot;
static VEC(StateSlot) state_slots;

/* The current value of a state slot: its last write in this step, or the
 * value it had when the step began. */
static Value state_read(int slot, Loc loc) {
    StateSlot *s = &state_slots.data[slot];
    Value v = v_tensor(s->pending ? s->pending : entry_input(s->arg, loc));
    v.state_slot = slot + 1;
    return v;
}

/* Names bound to state or model leaves are references: reading one after a
 * write (`v <- ...`) sees the new value, so rules read like imperative code. */
static Value refresh(Value v) {
    if (v.kind == V_TENSOR) {
        Loc loc = v.loc;
        if (v.state_slot)
            v = state_read(v.state_slot - 1, loc);
        else if (v.leaf_model)
            v = model_leaf_read(v.leaf_model, v.leaf, loc);
        v.loc = loc;
        return v;
    }
    if (v.kind != V_TREE)
        return v;
    Value r = v_tree_new(v.tree->n, v.tree->is_list, v.loc);
    for (int i = 0; i < v.tree->n; i++) {
        r.tree->names[i] = v.tree->names[i];
        r.tree->vals[i] = refresh(v.tree->vals[i]);
    }
    return r;
}

static Value declare_state(const char *name, Value init, Loc loc) {
    if (init.kind == V_TREE) {
        Value r = v_tree_new(init.tree->n, init.tree->is_list, loc);
        for (int i = 0; i < init.tree->n; i++) {
            const char *leaf = init.tree->names[i] ? init.tree->names[i] : xfmt("%d", i);
            r.tree->names[i] = init.tree->names[i];
            r.tree->vals[i] = declare_state(xfmt("%s.%s", name, leaf), init.tree->vals[i], loc);
        }
        return r;
    }
    Node *n = value_as_node(init, loc, xfmt("the initial value of state '%s'", name));
    const char *dot = strchr(name, '.');
    const char *binding = dot ? xstrndup(name, (size_t)(dot - name)) : name;
    int arg = entry_add_arg(name, binding, dot ? dot + 1 : "", 2 /* LETHE_STATE */, n->dtype, n->shape,
                            order_key(ORDER_STATE, arg_seq++));
    vec_push(&state_slots, ((StateSlot){name, arg, NULL, loc}));
    return state_read(state_slots.len - 1, loc);
}

/* `target <- value`: every leaf of target must be writable state. */
static void assign(Value target, Value value, Loc loc, const Expr *texpr) {
    if (target.kind == V_TREE) {
        if (value.kind == V_TREE) {
            bool same = value.tree->n == target.tree->n;
            for (int i = 0; same && i < target.tree->n; i++)
                same = (!target.tree->names[i] && !value.tree->names[i]) ||
                       (target.tree->names[i] && value.tree->names[i] && !strcmp(target.tree->names[i], value.tree->names[i]));
            if (!same) {
                diag_note(value.loc, "the value is a tree of %d leaves%s%s", value.tree->n, value.tree->n ? " starting with " : "",
                          value.tree->n && value.tree->names[0] ? value.tree->names[0] : "");
                error_at(loc, "assigning a tree of the wrong structure: the target has %d leaves%s%s", target.tree->n,
                         target.tree->n ? " starting with " : "", target.tree->n && target.tree->names[0] ? target.tree->names[0] : "");
            }
            for (int i = 0; i < target.tree->n; i++)
                assign(target.tree->vals[i], value.tree->vals[i], loc, texpr);
        } else {
            /* a number (or 0-d tensor) broadcasts to every leaf; a bigger tensor is a mistake */
            if (value.kind == V_TENSOR && value.node->shape.rank > 0) {
                diag_note(value.node->loc, "%s comes from here", type_str(value.node->dtype, value.node->shape));
                error_at(loc, "assigning a tree of the wrong structure: a single %s to a tree of %d leaves",
                         type_str(value.node->dtype, value.node->shape), target.tree->n);
            }
            for (int i = 0; i < target.tree->n; i++)
                assign(target.tree->vals[i], value, loc, texpr);
        }
        return;
    }
    if (target.kind == V_TENSOR && !target.state_slot && !target.leaf_model && target.node->op == OP_INPUT)
        error_at(texpr->loc, "'%s' is an input of the step; only state can be written (a model's params or buffers, or a "
                             "rule's `state`)", target.node->name ? target.node->name : "this");
    if (target.kind != V_TENSOR || (!target.state_slot && !target.leaf_model)) {
        error_at(texpr->loc, "only state can be written: a model's params or buffers, or a rule's `state`%s",
                 target.kind == V_TENSOR ? " (this is a computed value)" : "");
    }
    if (value.kind == V_TREE)
        error_at(loc, "assigning a tree to a single tensor");
    Node *v = value_as_node(value, loc, "the assigned value");
    if (target.state_slot) {
        StateSlot *s = &state_slots.data[target.state_slot - 1];
        EntryArg *a = &cur->e->args.data[s->arg];
        s->pending = conform(v, a->dtype, a->shape, xfmt("state '%s'", s->name), loc);
        s->wloc = loc;
        return;
    }
    model_record_write(target.leaf_model, target.leaf, v, loc);
}

/* ---------------------------------------------------------------------------
 * binding the parameters of an exported fn, rule or objective */

static const char *over_name(const Decl *d) {
    for (int i = 0; i < d->nstmts; i++)
        if (d->stmts[i]->kind == ST_MINIMIZE || d->stmts[i]->kind == ST_MAXIMIZE)
            return d->stmts[i]->name;
    return NULL;
}

static Value bind_entry_param(Env *dims, const Param *p, Value v, bool given, Loc argloc, bool is_rule, const char *over) {
    const TypeExpr *t = p->type;
    if (t->kind == TY_MODEL) {
        if (v.kind != V_MODULE)
            error_at(argloc, "'%s' must be a model (a module instance such as MLP(784, 64, 10)), not %s", p->name,
                     value_kind_name(&v));
        if (v.model)
            error_at(argloc, "'%s' must be a fresh module instance", p->name);
        if (v.inst->placed)
            error_at(argloc, "this module instance is already part of another module");
        Model *m = model_bind(v.inst, p->name, t->frozen, is_rule && !t->frozen);
        vec_push(&cur->models, m);
        return (Value){.kind = V_MODULE, .inst = v.inst, .model = m, .loc = argloc};
    }
    if (t->kind == TY_DATA) {
        if (v.kind != V_TREE || v.tree->is_list)
            error_at(argloc, "'%s' must be a data record such as data(x = f32[32, 784], y = i32[32]), not %s", p->name,
                     value_kind_name(&v));
        Value r = v_tree_new(v.tree->n, false, argloc);
        for (int i = 0; i < v.tree->n; i++) {
            Value f = v.tree->vals[i];
            if (f.kind != V_TYPE)
                error_at(f.loc.file ? f.loc : argloc, "field '%s' of data '%s' must be a tensor type such as f32[32, 784]",
                         v.tree->names[i], p->name);
            int arg = entry_add_arg(xfmt("%s.%s", p->name, v.tree->names[i]), p->name, v.tree->names[i], 3 /* LETHE_INPUT */,
                                    f.dtype, f.shape, order_key(ORDER_INPUT, arg_seq++));
            r.tree->names[i] = v.tree->names[i];
            r.tree->vals[i] = v_tensor(entry_input(arg, argloc));
        }
        return r;
    }
    if (t->kind == TY_INT)
        return v_int(value_as_int(&v, argloc, xfmt("'%s'", p->name)), argloc);
    if (t->kind == TY_FLOAT)
        return v_float(value_as_double(&v, argloc, xfmt("'%s'", p->name)), argloc);
    bool tensorish = t->kind == TY_TENSOR || (t->kind == TY_NONE && v.kind == V_TYPE);
    if (!tensorish)
        return v;
    if (v.kind == V_TYPE) {
        if (t->kind == TY_TENSOR) {
            if (v.shape.rank != t->rank)
                error_at(argloc, "'%s' is declared with rank %d but bound to %s", p->name, t->rank, type_str(v.dtype, v.shape));
            for (int i = 0; i < t->rank; i++) {
                int64_t d = eval_dim(dims, dims, t->dims[i], v.shape.dim[i], NULL);
                if (d != v.shape.dim[i]) {
                    diag_note(t->dims[i]->loc, "declared here as %lld", (long long)d);
                    error_at(argloc, "'%s' is bound to %s, which has size %lld in dimension %d", p->name,
                             type_str(v.dtype, v.shape), (long long)v.shape.dim[i], i);
                }
            }
            if (v.dtype != promote_dtype(t->dtype))
                error_at(argloc, "'%s' must be %s, not %s", p->name, dtype_name(promote_dtype(t->dtype)), dtype_name(v.dtype));
        }
        bool state = over && !strcmp(over, p->name);
        bool scalar = v.shape.rank == 0 && !state;
        int kind = state ? 2 : scalar ? 4 : 3;
        int arg = entry_add_arg(p->name, p->name, "", kind, v.dtype, v.shape,
                                order_key(state ? ORDER_STATE : scalar ? ORDER_SCALAR : ORDER_INPUT, arg_seq++));
        if (state) {
            vec_push(&state_slots, ((StateSlot){p->name, arg, NULL, argloc}));
            return state_read(state_slots.len - 1, argloc);
        }
        return v_tensor(entry_input(arg, argloc));
    }
    if (t->kind == TY_TENSOR && t->rank == 0 && is_scalar_value(&v) && (is_rule || !given)) {
        /* a runtime hyperparameter: the number is its default */
        DType dt = promote_dtype(t->dtype);
        int arg = entry_add_arg(p->name, p->name, "", 4 /* LETHE_SCALAR */, dt, shape_scalar(), order_key(ORDER_SCALAR, arg_seq++));
        cur->e->args.data[arg].scalar_default = value_as_double(&v, argloc, "a default");
        return v_tensor(entry_input(arg, argloc));
    }
    if (t->kind == TY_TENSOR && t->rank > 0 && v.kind != V_TENSOR)
        error_at(argloc, "'%s' must be bound to a tensor type such as %s[...], not %s", p->name, dtype_name(promote_dtype(t->dtype)),
                 value_kind_name(&v));
    return v;
}

/* ---------------------------------------------------------------------------
 * rules and objectives */

static Value constrain(Value spec, Node *x, Loc loc) {
    Graph *g = cur->g;
    if (spec.kind != V_SPEC)
        error_at(loc, "'within' takes a constraint: linf(eps), l2(eps) or box(lo, hi)");
    Tree *a = spec.tree;
    Node *arg0 = a->n > 0 ? value_as_node(a->vals[0], loc, "a constraint bound") : NULL;
    if (!strcmp(spec.s, "linf"))
        return v_tensor(g_binary(g, OP_MIN, g_binary(g, OP_MAX, x, g_unary(g, OP_NEG, arg0, loc), loc), arg0, loc));
    if (!strcmp(spec.s, "box")) {
        Node *hi = value_as_node(a->vals[1], loc, "a constraint bound");
        return v_tensor(g_binary(g, OP_MIN, g_binary(g, OP_MAX, x, arg0, loc), hi, loc));
    }
    if (!strcmp(spec.s, "l2")) {
        uint32_t all = x->shape.rank ? (1u << x->shape.rank) - 1 : 0;
        Node *nrm = g_unary(g, OP_SQRT, g_reduce(g, OP_SUM, g_binary(g, OP_MUL, x, x, loc), all, false, loc), loc);
        Node *tiny = g_scalar(g, 1e-12, x->dtype, loc);
        Node *scale = g_binary(g, OP_MIN, g_scalar(g, 1, x->dtype, loc),
                               g_binary(g, OP_DIV, arg0, g_binary(g, OP_ADD, nrm, tiny, loc), loc), loc);
        return v_tensor(g_binary(g, OP_MUL, x, scale, loc));
    }
    unreachable();
}

static void trace_optimize(Env *env, const Stmt *s, const Decl *d) {
    Graph *g = cur->g;
    Node *loss = value_as_node(eval(env, s->value), s->value->loc, "the objective");
    if (loss->shape.rank != 0 || (loss->dtype != DT_F32 && loss->dtype != DT_F64))
        error_at(s->value->loc, "the objective must be a float scalar, not %s", type_str(loss->dtype, loss->shape));
    Value over;
    if (!env_lookup(env, s->name, &over) || !over.state_slot)
        error_at(s->name_loc, "'%s' must be a tensor parameter of the objective", s->name);
    Node *x = over.node, *gx;
    autodiff(g, &loss, NULL, 1, &x, 1, &gx, s->loc);
    Value lrv;
    Node *lr;
    if (env_lookup(env, "lr", &lrv))
        lr = value_as_node(lrv, s->loc, "lr");
    else {
        int arg = entry_add_arg("lr", "lr", "", 4 /* LETHE_SCALAR */, x->dtype, shape_scalar(), order_key(ORDER_SCALAR, arg_seq++));
        cur->e->args.data[arg].scalar_default = 0.01;
        lr = entry_input(arg, s->loc);
    }
    Node *step = g_binary(g, OP_MUL, lr, g_unary(g, OP_SIGN, gx, s->loc), s->loc);
    Node *next = g_binary(g, s->kind == ST_MINIMIZE ? OP_SUB : OP_ADD, x, step, s->loc);
    Value nv = v_tensor(next);
    if (s->within)
        nv = constrain(eval(env, s->within), next, s->within->loc);
    assign(over, nv, s->loc, s->value);
    add_output("loss", v_tensor(loss), s->loc);
    add_output("grad", v_tensor(gx), s->loc);
    (void)d;
}

static void trace_stmts(const Decl *d, Env *env) {
    bool seen_opt = false;
    for (int i = 0; i < d->nstmts; i++) {
        const Stmt *s = d->stmts[i];
        switch (s->kind) {
        case ST_LET:
            env_bind(env, s->name, eval(env, s->value));
            break;
        case ST_STATE: {
            if (d->kind != D_RULE)
                error_at(s->loc, "'state' is only allowed in a rule");
            bool saved = cur->train;
            cur->train = false;   /* an initializer never updates running statistics */
            Value init = eval(env, s->value);
            cur->train = saved;
            env_bind(env, s->name, declare_state(s->name, init, s->loc));
            break;
        }
        case ST_ASSIGN: {
            if (d->kind != D_RULE && d->kind != D_OBJECTIVE)
                error_at(s->loc, "'<-' is only allowed in a rule");
            Value target = eval(env, s->target);
            Value value = eval(env, s->value);
            assign(target, value, s->loc, s->target);
            break;
        }
        case ST_REPORT:
            add_outputs(s->name, eval(env, s->value), s->loc);
            break;
        case ST_MINIMIZE:
        case ST_MAXIMIZE:
            if (d->kind != D_OBJECTIVE)
                error_at(s->loc, "'%s' is only allowed in an objective", s->kind == ST_MINIMIZE ? "minimize" : "maximize");
            if (seen_opt)
                error_at(s->loc, "an objective has one minimize or maximize statement");
            seen_opt = true;
            trace_optimize(env, s, d);
            break;
        }
    }
    if (d->kind == D_OBJECTIVE && !seen_opt)
        error_at(d->loc, "objective '%s' has no minimize or maximize statement", d->name);
}

/* Apply the pending writes of state and models at the end of the step. */
static void finish_writes(void) {
    for (int i = 0; i < state_slots.len; i++)
        if (state_slots.data[i].pending)
            cur->e->args.data[state_slots.data[i].arg].out = state_slots.data[i].pending;
    for (int mi = 0; mi < cur->models.len; mi++) {
        Model *m = cur->models.data[mi];
        for (int l = 0; l < m->nleaves; l++) {
            Node *v = m->pending[l] ? m->pending[l] : (m->writable ? m->running[l] : NULL);
            if (v)
                entry_set_output(m->arg[l], v, m->pending_loc[l]);
        }
    }
}

/* ---------------------------------------------------------------------------
 * exports */

static CompUnit *unit;

static void add_model_init(const char *name, Model **models, int nmodels, Loc loc) {
    Trace t;
    Entry *e = new_entry(xfmt("%s.init_model", name), "init", loc, &t);
    for (int mi = 0; mi < nmodels; mi++) {
        Model *m = models[mi];
        for (int l = 0; l < m->nleaves; l++) {
            const Leaf *lf = &m->leaves[l];
            Node *v = init_leaf(lf, lf->path, loc);
            int layer, counts;
            module_layer_info(m, l, &layer, &counts);
            int arg = entry_add_arg(xfmt("%s.%s", m->binding, lf->path), m->binding, lf->path, lf->is_buffer ? 1 : 0, lf->dtype,
                                    lf->shape, order_key(ORDER_MODEL, ((int64_t)mi << 30) + l));
            e->args.data[arg].layer = layer;
            e->args.data[arg].layer_counts = counts;
            entry_set_output(arg, v, lf->loc);
        }
    }
    finish_entry(e);
    vec_push(&unit->entries, e);
    cur = NULL;
}

/* init_state writes each state leaf with its initial value. */
static void state_outputs(const char *name, Value init, Loc loc) {
    if (init.kind == V_TREE) {
        for (int i = 0; i < init.tree->n; i++)
            state_outputs(xfmt("%s.%s", name, init.tree->names[i] ? init.tree->names[i] : xfmt("%d", i)), init.tree->vals[i], loc);
        return;
    }
    Node *n = value_as_node(init, loc, xfmt("the initial value of state '%s'", name));
    const char *dot = strchr(name, '.');
    int arg = entry_add_arg(name, dot ? xstrndup(name, (size_t)(dot - name)) : name, dot ? dot + 1 : "", 2 /* LETHE_STATE */,
                            n->dtype, n->shape, order_key(ORDER_STATE, arg_seq++));
    cur->e->args.data[arg].out = n;
}

static void add_state_init(const char *name, const Decl *d, Value *vals, bool *given, Loc *locs, Loc loc) {
    bool any = false;
    for (int i = 0; i < d->nstmts; i++)
        any |= d->stmts[i]->kind == ST_STATE;
    if (!any)
        return;
    Trace t;
    Entry *e = new_entry(xfmt("%s.init_state", name), "rule_init", loc, &t);
    t.train = false;
    state_slots.len = 0;
    Env *env = env_new(global_env);
    Env *dims = env_new(env);
    for (int i = 0; i < d->nparams; i++)
        env_bind(dims, d->params[i].name, bind_entry_param(dims, &d->params[i], vals[i], given[i], locs[i], false, NULL));
    /* lets after the last state declaration cannot feed an initializer */
    int last_state = 0;
    for (int i = 0; i < d->nstmts; i++)
        if (d->stmts[i]->kind == ST_STATE)
            last_state = i;
    for (int i = 0; i <= last_state; i++) {
        const Stmt *s = d->stmts[i];
        if (s->kind == ST_LET)
            env_bind(dims, s->name, eval(dims, s->value));
        else if (s->kind == ST_STATE) {
            Value init = eval(dims, s->value);
            state_outputs(s->name, init, s->loc);
            env_bind(dims, s->name, init);
        }
    }
    /* init_state only reads the models: their writes and inputs are not outputs */
    for (int i = 0; i < e->args.len; i++)
        if (e->args.data[i].kind == 0 || e->args.data[i].kind == 1)
            e->args.data[i].out = NULL;
    finish_entry(e);
    vec_push(&unit->entries, e);
    cur = NULL;
}

/* Instantiate fn, rule or objective `d` as the entry `name`, with arguments
 * already evaluated (modules, types, data records, numbers), plus the
 * init_model / init_state entries asked for in `extras`. */
void sema_instantiate(const char *name, const Decl *d, Value *pos, int npos, const char **kwn, Value *kwv, int nkw,
                      Loc loc, unsigned extras) {
    const Param *params = d->kind == D_FN ? d->fn->params : d->params;
    int nparams = d->kind == D_FN ? d->fn->nparams : d->nparams;
    const char *what = xfmt("%s '%s'", d->kind == D_FN ? "fn" : d->kind == D_RULE ? "rule" : "objective", d->name);
    Bound b = bind_args(what, params, nparams, pos, npos, kwn, kwv, nkw, loc);
    for (int i = 0; i < nparams; i++)
        if (!b.given[i]) {
            if (!params[i].deflt)
                missing_arg(what, &params[i], loc);
            b.vals[i] = eval(global_env, params[i].deflt);
            b.locs[i] = params[i].deflt->loc;
        }

    Trace t;
    const char *kind = d->kind == D_FN ? "fn" : d->kind == D_RULE ? "rule" : "objective";
    Entry *e = new_entry(name, kind, loc, &t);
    t.in_rule = d->kind != D_FN;
    state_slots.len = 0;
    const char *over = d->kind == D_OBJECTIVE ? over_name(d) : NULL;
    Env *env = env_new(global_env);
    Env *dims = env_new(env);
    for (int i = 0; i < nparams; i++)
        env_bind(dims, params[i].name, bind_entry_param(dims, &params[i], b.vals[i], b.given[i], b.locs[i], d->kind == D_RULE, over));
    if (d->kind == D_FN) {
        Value r = eval_body(dims, d->fn->body);
        check_return_type(dims, d->fn->ret, r, d->fn->body->loc);
        add_outputs("out", r, d->fn->body->loc);
    } else {
        trace_stmts(d, dims);
        finish_writes();
    }
    finish_entry(e);
    vec_push(&unit->entries, e);
    Model **models = t.models.data;
    int nmodels = t.models.len;
    cur = NULL;
    if (nmodels && (extras & SEMA_INIT_MODEL))
        add_model_init(name, models, nmodels, loc);
    if (d->kind == D_RULE && (extras & SEMA_INIT_STATE))
        add_state_init(name, d, b.vals, b.given, b.locs, loc);
}

const Decl *sema_global(const char *name) { return global_decl(name); }

void sema_eval_args(const Arg *args, int nargs, ValueVec *pos, NameVec *kwn, ValueVec *kwv) {
    cur = NULL;
    eval_args(global_env, args, nargs, pos, kwn, kwv);
}

static void trace_export(const Decl *x) {
    const Expr *call = x->value;
    if (call->kind != EX_CALL || call->a->kind != EX_NAME)
        error_at(call->loc, "an export instantiates a fn, rule or objective: export %s = name(arguments)", x->name);
    const Decl *d = global_decl(call->a->sval);
    if (!d) {
        if (builtin_lookup(call->a->sval))
            error_at(call->a->loc, "'%s' is a builtin; export a fn that calls it", call->a->sval);
        error_at(call->a->loc, "unknown name '%s'", call->a->sval);
    }
    if (d->kind != D_FN && d->kind != D_RULE && d->kind != D_OBJECTIVE)
        error_at(call->a->loc, "'%s' is a %s; only a fn, rule or objective can be exported", d->name,
                 d->kind == D_MODULE ? "module" : "declaration");
    ValueVec pos = {0};
    NameVec kwn = {0};
    ValueVec kwv = {0};
    sema_eval_args(call->args, call->nargs, &pos, &kwn, &kwv);
    sema_instantiate(x->name, d, pos.data, pos.len, kwn.data, kwv.data, kwn.len, call->loc, SEMA_INIT_MODEL | SEMA_INIT_STATE);
}

/* Calling a module type builds an instance; rules and objectives run only as
 * entry points. */
static Value instantiate_callable(const Decl *d, Value *pos, int npos, const char **kwn, Value *kwv, int nkw, Loc loc) {
    if (d->kind == D_MODULE) {
        ModInst *inst = module_instantiate(d, pos, npos, kwn, kwv, nkw, loc);
        return (Value){.kind = V_MODULE, .inst = inst, .loc = loc};
    }
    error_at(loc, "%s '%s' cannot be called from an expression; export it or use it in an experiment",
             d->kind == D_RULE ? "rule" : d->kind == D_OBJECTIVE ? "objective" : "declaration", d->name);
}

/* ---------------------------------------------------------------------------
 * the pass */

CompUnit *sema_program(Program *p, const SemaOptions *opt) {
    static const SemaOptions none;
    options = opt ? opt : &none;
    memset(&globals, 0, sizeof globals);
    memset(&exports, 0, sizeof exports);
    memset(&experiments, 0, sizeof experiments);
    memset(&loaded, 0, sizeof loaded);
    memset(&state_slots, 0, sizeof state_slots);
    memset(&arg_order, 0, sizeof arg_order);
    sema_model_reset();
    cur = NULL;
    unit = xalloc(sizeof *unit);
    global_env = env_new(NULL);
    sources_hash = p->file ? hash_bytes(p->file->text, p->file->len, 0) : 0;
    if (p->file && options->print_deps)
        printf("%s\n", p->file->path);
    if (p->file) {
        char *canon = canonical(p->file->path);
        if (canon)
            vec_push(&loaded, ((Loaded){canon, false}));
    }
    load_program(p, 0);
    for (int i = 0; i < exports.len; i++) {
        for (int j = 0; j < i; j++)
            if (!strcmp(exports.data[j]->name, exports.data[i]->name)) {
                diag_note(exports.data[j]->loc, "first exported here");
                error_at(exports.data[i]->loc, "'%s' is exported twice", exports.data[i]->name);
            }
        trace_export(exports.data[i]);
    }
    if (experiments.len > 1 && !options->experiment)
        error_at(experiments.data[1]->loc, "this file defines several experiments; choose one with --experiment=NAME");
    for (int i = 0; i < experiments.len; i++)
        if (!options->experiment || !strcmp(options->experiment, experiments.data[i]->name))
            unit->experiment_json = experiment_compile(experiments.data[i]);
    if (options->experiment && !unit->experiment_json)
        error_noloc("no experiment named '%s' in %s", options->experiment, p->file ? p->file->path : "the input");
    unit->source_hash = xfmt("%016llx", (unsigned long long)sources_hash);
    cur = NULL;
    return unit;
}
