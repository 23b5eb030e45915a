/* sema_model.c: module instances, their binding to an entry as a model,
 * reads and writes of parameters and buffers, layers (last(m, k)) and the
 * initializers of init_model.
 *
 * A module instance is a compile-time tree: members in declaration order and
 * the leaves (params and buffers) of the whole subtree numbered depth first in
 * that order, with dotted paths ("layer1.0.a.w"). Binding a root instance to
 * an entry makes a Model: the leaves become entry arguments when first read
 * or written, named "<binding>.<path>".
 */
#include <math.h>
#include <string.h>

#include "sema.h"

/* modules being instantiated, outermost first (to report cycles) */
static VEC(const Decl *) stack;

void sema_model_reset(void) { memset(&stack, 0, sizeof stack); }

static bool own_matrix_param(const ModInst *inst) {
    for (int i = 0; i < inst->members.len; i++) {
        const Member *m = &inst->members.data[i];
        if (m->kind == MI_PARAM && inst->leaves.data[m->leaf].shape.rank >= 2)
            return true;
    }
    return false;
}

ModInst *identity_module(Loc loc) {
    ModInst *m = xalloc(sizeof *m);
    m->type_name = "Identity";
    m->loc = loc;
    m->env = env_new(sema_globals());
    m->env->self = m;
    return m;
}

static void check_member_name(ModInst *inst, const char *name, Loc loc) {
    for (int i = 0; i < inst->members.len; i++)
        if (inst->members.data[i].name && !strcmp(inst->members.data[i].name, name)) {
            diag_note(inst->members.data[i].loc, "'%s' was first declared here", name);
            error_at(loc, "'%s' is declared twice in module %s", name, inst->type_name);
        }
    if (!strcmp(name, "params") || !strcmp(name, "buffers"))
        error_at(loc, "'%s' is reserved: m.%s is the tree of the module's %s", name, name, name);
}

/* Place a sub instance: copy its leaves into the parent with a path prefix. */
static void adopt(ModInst *inst, Value sub, const char *prefix, Loc loc) {
    if (sub.kind != V_MODULE)
        error_at(loc, "a sub must be a module instance (or a list of them), not %s", value_kind_name(&sub));
    if (sub.model)
        error_at(loc, "a sub must be a fresh module instance");
    if (sub.inst->placed)
        error_at(loc, "this module instance is already a sub of another module; create a new one");
    if (sub.inst->view_of)
        error_at(loc, "last(m, k) is a view, not a module that can be a sub");
    sub.inst->placed = true;
    for (int i = 0; i < sub.inst->leaves.len; i++) {
        Leaf lf = sub.inst->leaves.data[i];
        lf.path = xfmt("%s.%s", prefix, lf.path);
        vec_push(&inst->leaves, lf);
    }
}

ModInst *module_instantiate(const Decl *d, Value *pos, int npos, const char **kwnames, Value *kwvals, int nkw, Loc loc) {
    for (int i = 0; i < stack.len; i++)
        if (stack.data[i] == d) {
            const char *chain = "";
            for (int k = i; k < stack.len; k++)
                chain = xfmt("%s%s -> ", chain, stack.data[k]->name);
            stack.len = 0;   /* the error unwinds every frame */
            error_at(loc, "module %s contains itself: %s%s", d->name, chain, d->name);
        }
    if (stack.len > 64) {
        stack.len = 0;
        error_at(loc, "modules nested more than 64 deep");
    }
    vec_push(&stack, d);
    ModInst *inst = xalloc(sizeof *inst);
    inst->decl = d;
    inst->type_name = d->name;
    inst->loc = loc;
    inst->env = env_new(sema_globals());
    inst->env->self = inst;
    const char *what = xfmt("module %s", d->name);
    Bound b = bind_args(what, d->params, d->nparams, pos, npos, kwnames, kwvals, nkw, loc);
    for (int i = 0; i < d->nparams; i++) {
        const Param *p = &d->params[i];
        Value v = b.vals[i];
        Loc vl = b.locs[i];
        if (!b.given[i]) {
            if (!p->deflt)
                missing_arg(what, p, loc);
            v = eval(inst->env, p->deflt);
            vl = p->deflt->loc;
        }
        switch (p->type->kind) {
        case TY_INT:
            v = v_int(value_as_int(&v, vl, xfmt("argument '%s' of %s", p->name, what)), vl);
            break;
        case TY_FLOAT:
        case TY_TENSOR:
            if (p->type->kind == TY_TENSOR && p->type->rank > 0)
                error_at(p->type->loc, "module arguments are compile-time values; a tensor cannot be one");
            if (p->type->kind == TY_TENSOR && (p->type->dtype == DT_BOOL || p->type->dtype == DT_I32))
                v = p->type->dtype == DT_BOOL ? v_bool(value_as_double(&v, vl, p->name) != 0, vl)
                                              : v_int(value_as_int(&v, vl, xfmt("argument '%s' of %s", p->name, what)), vl);
            else
                v = v_float(value_as_double(&v, vl, xfmt("argument '%s' of %s", p->name, what)), vl);
            break;
        case TY_MODEL:
        case TY_DATA:
            error_at(p->type->loc, "module arguments are compile-time values (int, float, bool, or untyped)");
        case TY_NONE:
            if (v.kind == V_TENSOR)
                error_at(vl, "module arguments are compile-time values, not tensors");
            break;
        }
        env_bind(inst->env, p->name, v);
    }

    for (int i = 0; i < d->nitems; i++) {
        const ModItem *it = &d->items[i];
        Member m = {.kind = it->kind, .name = it->name, .loc = it->loc, .leaf = -1};
        if (it->name)
            check_member_name(inst, it->name, it->loc);
        switch (it->kind) {
        case MI_LET:
            m.value = eval(inst->env, it->value);
            env_bind(inst->env, it->name, m.value);
            break;
        case MI_PARAM:
        case MI_BUFFER: {
            if (it->type->kind != TY_TENSOR)
                error_at(it->type->loc, "a %s is a tensor: write its type as f32[...]", it->kind == MI_PARAM ? "param" : "buffer");
            Leaf lf = {.path = it->name, .is_buffer = it->kind == MI_BUFFER, .dtype = promote_dtype(it->type->dtype),
                       .shape = eval_fixed_shape(inst->env, it->type), .owner = inst, .loc = it->loc};
            if (it->kind == MI_PARAM && lf.dtype != DT_F32 && lf.dtype != DT_F64)
                error_at(it->type->loc, "a param is trained, so it must be f32 or f64");
            lf.spec = eval(inst->env, it->value);
            if (lf.spec.kind != V_SPEC && lf.spec.kind != V_BUILTIN && !is_scalar_value(&lf.spec))
                error_at(it->value->loc, "an initializer is zeros, ones, constant(v), normal(...), uniform(...), "
                                         "kaiming_normal(...) or kaiming_uniform(...)");
            if (lf.spec.kind == V_BUILTIN) {   /* a bare name: zeros, ones */
                const char *bn = builtin_name(lf.spec.builtin);
                if (strcmp(bn, "zeros") && strcmp(bn, "ones"))
                    error_at(it->value->loc, "'%s' is not an initializer", bn);
            }
            m.leaf = inst->leaves.len;
            vec_push(&inst->leaves, lf);
            break;
        }
        case MI_SUB: {
            Value v = eval(inst->env, it->value);
            if (v.kind == V_BUILTIN && !strcmp(builtin_name(v.builtin), "Identity"))
                v = (Value){.kind = V_MODULE, .inst = identity_module(it->loc), .loc = it->loc};
            if (v.kind == V_TREE && v.tree->is_list) {
                for (int k = 0; k < v.tree->n; k++) {
                    Value e = v.tree->vals[k];
                    if (e.kind == V_BUILTIN && !strcmp(builtin_name(e.builtin), "Identity"))
                        v.tree->vals[k] = e = (Value){.kind = V_MODULE, .inst = identity_module(it->loc), .loc = it->loc};
                    adopt(inst, e, xfmt("%s.%d", it->name, k), it->value->loc);
                }
            } else
                adopt(inst, v, it->name, it->value->loc);
            m.value = v;
            break;
        }
        case MI_FN:
            m.fn = it->fn;
            if (!it->name)
                for (int k = 0; k < inst->members.len; k++)
                    if (inst->members.data[k].kind == MI_FN && !inst->members.data[k].name) {
                        diag_note(inst->members.data[k].loc, "the first one is here");
                        error_at(it->loc, "module %s has two default fns", d->name);
                    }
            break;
        }
        vec_push(&inst->members, m);
    }
    stack.len--;
    return inst;
}

/* Give every instance in the tree its offset in the root's leaf numbering. */
static void number_at(ModInst *inst, int base) {
    inst->leaf_base = base;
    inst->numbered = true;
    int offset = 0;
    for (int i = 0; i < inst->members.len; i++) {
        Member *m = &inst->members.data[i];
        if (m->kind == MI_PARAM || m->kind == MI_BUFFER)
            offset++;
        else if (m->kind == MI_SUB) {
            if (m->value.kind == V_MODULE) {
                number_at(m->value.inst, base + offset);
                offset += m->value.inst->leaves.len;
            } else
                for (int k = 0; k < m->value.tree->n; k++) {
                    ModInst *s = m->value.tree->vals[k].inst;
                    number_at(s, base + offset);
                    offset += s->leaves.len;
                }
        }
    }
    ASSERT(offset == inst->leaves.len);
}

void module_number(ModInst *root) { number_at(root, 0); }

Model *model_bind(ModInst *root, const char *binding, bool frozen, bool writable) {
    module_number(root);
    Model *m = xalloc(sizeof *m);
    int n = root->leaves.len;
    m->root = root;
    m->binding = binding;
    m->frozen = frozen;
    m->writable = writable;
    m->nleaves = n;
    m->leaves = root->leaves.data;
    m->arg = xalloc(sizeof(int) * (size_t)(n + 1));
    for (int i = 0; i < n; i++)
        m->arg[i] = -1;
    m->in = xalloc(sizeof(Node *) * (size_t)(n + 1));
    m->pending = xalloc(sizeof(Node *) * (size_t)(n + 1));
    m->running = xalloc(sizeof(Node *) * (size_t)(n + 1));
    m->pending_loc = xalloc(sizeof(Loc) * (size_t)(n + 1));
    return m;
}

static int model_index(const Model *m) {
    for (int i = 0; i < cur->models.len; i++)
        if (cur->models.data[i] == m)
            return i;
    unreachable();
}

const Leaf *module_layer_info(const Model *m, int leaf, int *layer, int *counts) {
    /* layers are the leaf-owning instances, numbered by their first leaf */
    int n = -1;
    const ModInst *prev = NULL;
    for (int i = 0; i <= leaf; i++) {
        const ModInst *o = m->leaves[i].owner;
        bool seen = false;
        for (int j = 0; j < i && !seen; j++)
            seen = m->leaves[j].owner == o;
        if (!seen)
            n++;
        prev = o;
    }
    *layer = n;
    *counts = own_matrix_param(prev);
    return &m->leaves[leaf];
}

int model_leaf_arg(Model *m, int leaf) {
    if (m->arg[leaf] < 0) {
        const Leaf *lf = &m->leaves[leaf];
        int layer, counts;
        module_layer_info(m, leaf, &layer, &counts);
        m->arg[leaf] = entry_add_arg(xfmt("%s.%s", m->binding, lf->path), m->binding, lf->path, lf->is_buffer ? 1 : 0, lf->dtype,
                                     lf->shape, order_key(ORDER_MODEL, ((int64_t)model_index(m) << 30) + leaf));
        cur->e->args.data[m->arg[leaf]].layer = layer;
        cur->e->args.data[m->arg[leaf]].layer_counts = counts;
    }
    return m->arg[leaf];
}

/* The leaf's current value: the last write of this step, else its input. */
Value model_leaf_read(Model *m, int leaf, Loc loc) {
    if (!m->in[leaf])
        m->in[leaf] = entry_input(model_leaf_arg(m, leaf), m->leaves[leaf].loc);
    Value v = v_tensor(m->pending[leaf] ? m->pending[leaf] : m->in[leaf]);
    v.leaf_model = m;
    v.leaf = leaf;
    v.loc = loc;
    return v;
}

void model_record_write(Model *m, int leaf, Node *value, Loc loc) {
    const Leaf *lf = &m->leaves[leaf];
    if (!m->writable)
        error_at(loc, m->frozen ? "'%s' is a frozen model: its state cannot be written" : "'%s' cannot be written here (only rules write models)",
                 m->binding);
    model_leaf_arg(m, leaf);
    m->memo.len = 0;   /* calls after the write see the new state */
    m->pending[leaf] = conform(value, lf->dtype, lf->shape, xfmt("'%s.%s'", m->binding, lf->path), loc);
    m->pending_loc[leaf] = loc;
}

Node *model_running(Model *m, int leaf, Loc loc) {
    return m->running[leaf] ? m->running[leaf] : model_leaf_read(m, leaf, loc).node;
}

void model_train_update(Model *m, int leaf, Node *value, Loc loc) {
    if (!m->writable)
        return;   /* frozen models and fns compute with batch statistics but keep their buffers */
    const Leaf *lf = &m->leaves[leaf];
    model_leaf_arg(m, leaf);
    m->running[leaf] = conform(value, lf->dtype, lf->shape, xfmt("'%s.%s'", m->binding, lf->path), loc);
    if (!m->pending[leaf])
        m->pending_loc[leaf] = loc;
}

/* ---------------------------------------------------------------------------
 * members */

static noreturn void unbound(const ModInst *inst, const char *name, Loc loc) {
    error_at(loc, "'%s' of module %s has no value here: params and buffers exist only for a model passed to an "
                  "exported fn, rule or objective", name, inst->type_name);
}

static Value sub_value(Value sub, Model *model) {
    if (sub.kind == V_MODULE) {
        sub.model = model;
        return sub;
    }
    Value r = v_tree_new(sub.tree->n, true, sub.loc);
    for (int i = 0; i < sub.tree->n; i++) {
        r.tree->vals[i] = sub.tree->vals[i];
        r.tree->vals[i].model = model;
    }
    return r;
}

static int global_leaf(const ModInst *inst, int local) {
    if (inst->view_of)
        return inst->view_of->leaf_base + inst->view_map[local];
    return inst->leaf_base + local;
}

Value module_params_tree(ModInst *inst, Model *m, bool buffers, Loc loc) {
    int n = 0;
    for (int i = 0; i < inst->leaves.len; i++)
        n += inst->leaves.data[i].is_buffer == buffers;
    Value r = v_tree_new(n, false, loc);
    int j = 0;
    for (int i = 0; i < inst->leaves.len; i++) {
        const Leaf *lf = &inst->leaves.data[i];
        if (lf->is_buffer != buffers)
            continue;
        if (!m)
            unbound(inst, buffers ? "buffers" : "params", loc);
        r.tree->names[j] = lf->path;
        r.tree->vals[j++] = model_leaf_read(m, global_leaf(inst, i), loc);
    }
    return r;
}

int module_has_fn(Value modv, const char *name) {
    for (int i = 0; modv.kind == V_MODULE && modv.inst && i < modv.inst->members.len; i++) {
        const Member *m = &modv.inst->members.data[i];
        if (m->kind == MI_FN && m->name && !strcmp(m->name, name))
            return 1;
    }
    return 0;
}

Value module_member(Value modv, const char *name, Loc loc) {
    ModInst *inst = modv.inst;
    if (!strcmp(name, "params") || !strcmp(name, "buffers"))
        return module_params_tree(inst, modv.model, name[0] == 'b', loc);
    for (int i = 0; i < inst->members.len; i++) {
        const Member *m = &inst->members.data[i];
        if (!m->name || strcmp(m->name, name))
            continue;
        switch (m->kind) {
        case MI_PARAM:
        case MI_BUFFER:
            if (!modv.model)
                unbound(inst, name, loc);
            return model_leaf_read(modv.model, global_leaf(inst, m->leaf), loc);
        case MI_SUB:
            return sub_value(m->value, modv.model);
        case MI_LET:
            return m->value;
        case MI_FN:
            return (Value){.kind = V_MODULE, .inst = inst, .model = modv.model, .fn = m->fn, .loc = loc};
        }
    }
    const char *names = "";
    int shown = 0;
    for (int i = 0; i < inst->members.len && shown < 8; i++)
        if (inst->members.data[i].name)
            names = xfmt("%s%s'%s'", names, shown++ ? ", " : "", inst->members.data[i].name);
    error_at(loc, "module %s has no member '%s'%s%s", inst->type_name, name, shown ? "; it has " : "", names);
}

Value module_call(Value modv, const FnDecl *fn, Value *args, int nargs, Loc loc) {
    ModInst *inst = modv.inst;
    if (!inst->decl) {   /* Identity */
        if (nargs != 1)
            error_at(loc, "Identity takes one argument");
        return args[0];
    }
    if (inst->view_of)
        error_at(loc, "last(m, k) selects layers; it cannot be called");
    if (!fn) {
        for (int i = 0; i < inst->members.len; i++)
            if (inst->members.data[i].kind == MI_FN && !inst->members.data[i].name)
                fn = inst->members.data[i].fn;
        if (!fn)
            error_at(loc, "module %s has no default fn to call (declare `fn (x) = ...`)", inst->type_name);
    }
    /* One module applied to the same tensors in the same mode is computed once:
     * `report loss = f(m(x))` after a gradient of f(m(x)) costs nothing, and
     * batch-norm statistics are not updated twice. */
    Model *model = modv.model;
    bool memo = model && cur && nargs <= 8;
    for (int i = 0; memo && i < nargs; i++)
        memo = args[i].kind == V_TENSOR;
    if (memo)
        for (int i = 0; i < model->memo.len; i++) {
            CallMemo *c = model->memo.data[i];
            bool same = c->inst == inst && c->fn == fn && c->train == cur->train && c->nargs == nargs;
            for (int k = 0; same && k < nargs; k++)
                same = c->args[k] == args[k].node;
            if (same)
                return c->result;
        }
    Env *env = env_new(inst->env);
    env->self = inst;
    env->model = model;
    Value fnv = {.kind = V_FN, .fn = fn, .env = env, .loc = loc};
    Value r = call_fn(fnv, args, nargs, NULL, NULL, 0, loc);
    if (memo) {
        CallMemo *c = xalloc(sizeof *c);
        c->inst = inst;
        c->fn = fn;
        c->train = cur->train;
        c->nargs = nargs;
        for (int k = 0; k < nargs; k++)
            c->args[k] = args[k].node;
        c->result = r;
        vec_push(&model->memo, c);
    }
    return r;
}

/* last(m, k): walking the leaves from the output end, the layers up to and
 * including the k-th one that holds a matrix (Conv/Linear weight), with every
 * norm-like layer passed on the way (ALGORITHMS.md 3.6, reading 1). */
Value module_last(Value modv, int64_t k, Loc loc) {
    ModInst *inst = modv.inst;
    if (inst->view_of)
        error_at(loc, "last() of last() is not supported; use one last(m, k)");
    if (k < 1)
        error_at(loc, "last(m, k) needs k >= 1, not %lld", (long long)k);
    int n = inst->leaves.len, counted = 0, first = n;
    const ModInst *kth = NULL;
    for (int i = n - 1; i >= 0; i--) {
        const ModInst *o = inst->leaves.data[i].owner;
        bool counts = own_matrix_param(o);
        if (counted == k && o != kth)
            break;
        if (counts && o != kth) {
            bool seen = false;
            for (int j = i + 1; j < n && !seen; j++)
                seen = inst->leaves.data[j].owner == o;
            if (!seen) {
                counted++;
                kth = o;
            }
        }
        first = i;
    }
    if (counted < k)
        error_at(loc, "last(m, %lld): module %s has only %d layers with weight matrices", (long long)k, inst->type_name, counted);
    ModInst *view = xalloc(sizeof *view);
    view->type_name = xfmt("last(%s, %lld)", inst->type_name, (long long)k);
    view->view_of = inst;
    view->view_map = xalloc(sizeof(int) * (size_t)(n - first + 1));
    view->env = inst->env;
    for (int i = first; i < n; i++) {
        view->view_map[i - first] = i;
        vec_push(&view->leaves, inst->leaves.data[i]);
    }
    return (Value){.kind = V_MODULE, .inst = view, .model = modv.model, .loc = loc};
}

/* ---------------------------------------------------------------------------
 * initializers */

static double spec_arg(const Value *spec, const char *name, double deflt) {
    for (int i = 0; spec->tree && i < spec->tree->n; i++)
        if (spec->tree->names[i] && !strcmp(spec->tree->names[i], name) && spec->tree->vals[i].kind != V_NONE)
            return value_as_double(&spec->tree->vals[i], spec->tree->vals[i].loc, name);
    return deflt;
}

Node *init_leaf(const Leaf *lf, const char *path, Loc loc) {
    Graph *g = cur->g;
    const Value *s = &lf->spec;
    uint64_t stream = hash_bytes(path, strlen(path), 0x1e7e1e7eull);
    if (is_scalar_value(s))
        return g_const(g, value_as_double(s, lf->loc, "an initializer"), lf->dtype, lf->shape, lf->loc);
    const char *name = s->kind == V_BUILTIN ? builtin_name(s->builtin) : s->s;
    if (!strcmp(name, "zeros") || !strcmp(name, "ones"))
        return g_const(g, name[0] == 'o', lf->dtype, lf->shape, lf->loc);
    if (!strcmp(name, "constant"))
        return g_const(g, spec_arg(s, "value", 0), lf->dtype, lf->shape, lf->loc);
    double fan = spec_arg(s, "fan_in", -1);
    bool normal = !strcmp(name, "normal") || !strcmp(name, "kaiming_normal");
    double a, b;   /* normal: std, mean; uniform: lo, hi */
    if (!strcmp(name, "normal")) {
        a = spec_arg(s, "std", 1);
        b = spec_arg(s, "mean", 0);
    } else if (!strcmp(name, "kaiming_normal")) {
        if (fan <= 0)
            error_at(lf->loc, "kaiming_normal needs fan_in > 0");
        a = sqrt(2.0 / fan);
        b = 0;
    } else if (!strcmp(name, "uniform")) {
        a = spec_arg(s, "lo", 0);
        b = spec_arg(s, "hi", 1);
    } else if (!strcmp(name, "kaiming_uniform")) {
        if (fan <= 0)
            error_at(lf->loc, "kaiming_uniform needs fan_in > 0");
        a = -1 / sqrt(fan);
        b = 1 / sqrt(fan);
    } else
        error_at(lf->loc, "'%s' is not an initializer", name);
    Node *r = g_rand(g, normal ? OP_RAND_NORMAL : OP_RAND_UNIFORM, lf->dtype, lf->shape, stream, lf->loc);
    Node *scale = g_scalar(g, normal ? a : b - a, lf->dtype, lf->loc);
    Node *shift = g_scalar(g, normal ? b : a, lf->dtype, lf->loc);
    (void)loc;
    return g_binary(g, OP_ADD, g_binary(g, OP_MUL, r, scale, lf->loc), shift, lf->loc);
}
