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
const SemaOptions *sema_options;
static uint64_t sources_hash;
CompUnit *sema_unit;

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
    return sema_options && sema_options->promote_f64 && d == DT_F32 ? DT_F64 : d;
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
    for (int i = 0; sema_options && i < sema_options->ninclude && nc < 63; i++)
        candidates[nc++] = xfmt("%s/%s", sema_options->include_dirs[i], want);
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
    if (sema_options->print_deps)
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
int64_t eval_dim(Env *env, Env *dims, const Expr *d, int64_t actual, bool *bound_here) {
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

void check_return_type(Env *dims, const TypeExpr *t, Value v, Loc loc) {
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
        /* every element is called from the same place: its index keeps the
         * random streams (dropout, uniform_like) of the elements apart */
        uint64_t salt = cur ? cur->stream_salt : 0;
        if (cur)
            cur->stream_salt = hash_bytes(&i, sizeof i, salt ^ 0x2545f491u);
        x = module_call(m, NULL, &x, 1, loc);
        if (cur)
            cur->stream_salt = salt;
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

Value eval_body(Env *env, const Expr *body) {
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
    case EX_COMP: {
        Value src = eval(env, e->b);
        if (src.kind != V_TREE || !src.tree->is_list)
            error_at(e->b->loc, "a comprehension runs over a list (such as range(n) or split(batch, k)), not %s",
                     value_kind_name(&src));
        Value r = v_tree_new(src.tree->n, true, e->loc);
        for (int i = 0; i < src.tree->n; i++) {
            Env *inner = env_new(env);
            env_bind(inner, e->sval, src.tree->vals[i]);
            r.tree->vals[i] = eval(inner, e->a);
        }
        return r;
    }
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
    sema_options = opt ? opt : &none;
    memset(&globals, 0, sizeof globals);
    memset(&exports, 0, sizeof exports);
    memset(&experiments, 0, sizeof experiments);
    memset(&loaded, 0, sizeof loaded);
    sema_entry_reset();
    sema_model_reset();
    cur = NULL;
    sema_unit = xalloc(sizeof *sema_unit);
    global_env = env_new(NULL);
    sources_hash = p->file ? hash_bytes(p->file->text, p->file->len, 0) : 0;
    if (p->file && sema_options->print_deps)
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
    if (experiments.len > 1 && !sema_options->experiment)
        error_at(experiments.data[1]->loc, "this file defines several experiments; choose one with --experiment=NAME");
    for (int i = 0; i < experiments.len; i++)
        if (!sema_options->experiment || !strcmp(sema_options->experiment, experiments.data[i]->name))
            sema_unit->experiment_json = experiment_compile(experiments.data[i]);
    if (sema_options->experiment && !sema_unit->experiment_json)
        error_noloc("no experiment named '%s' in %s", sema_options->experiment, p->file ? p->file->path : "the input");
    sema_unit->source_hash = xfmt("%016llx", (unsigned long long)sources_hash);
    cur = NULL;
    return sema_unit;
}
