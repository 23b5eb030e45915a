/* sema_entry.c: building entry points. Arguments (params and buffers of the
 * models, rule state, inputs, runtime scalars, outputs) in their canonical
 * order; rule statements with in-order state writes; objectives; the
 * init_model and init_state entries; and sema_instantiate, which turns a
 * fn, rule or objective with bound arguments into an Entry (used by exports
 * and experiments).
 */
#include <math.h>
#include <string.h>

#include "sema.h"

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
    if (n > 0)   /* an entry without arguments (init_model of a model without params) has no array */
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
    t->opt = sema_options;
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
/* 1 + the slot of the tensor an objective's minimize/maximize has stepped:
 * a later write would silently undo the projection, so it is an error */
static int optimised_slot;

/* forget the previous compilation's arena pointers */
void sema_entry_reset(void) {
    memset(&state_slots, 0, sizeof state_slots);
    memset(&arg_order, 0, sizeof arg_order);
    optimised_slot = 0;
}

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
Value refresh(Value v) {
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
        if (target.state_slot == optimised_slot)
            error_at(texpr->loc, "'%s' is written after its minimize/maximize statement; write the step before it, "
                                 "so that 'within' projects it", s->name);
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

/* A constraint bound must broadcast to the `over` tensor: a scalar, a
 * per-channel [C, 1, 1] or a full-size bound, never one of another shape. */
static Node *constraint_bound(Value v, const Node *x, const char *what, Loc loc) {
    Node *b = value_as_node(v, loc, "a constraint bound");
    bool ok = b->shape.rank <= x->shape.rank;
    for (int i = 0; ok && i < b->shape.rank; i++) {
        int64_t bd = b->shape.dim[b->shape.rank - 1 - i], xd = x->shape.dim[x->shape.rank - 1 - i];
        ok = bd == xd || bd == 1;
    }
    if (!ok) {
        diag_note(b->loc, "%s comes from here", type_str(b->dtype, b->shape));
        error_at(loc, "the bound of %s is %s, which does not match the optimised tensor %s", what, type_str(b->dtype, b->shape),
                 type_str(x->dtype, x->shape));
    }
    if (b->dtype != x->dtype)
        b = g_cast(cur->g, b, x->dtype, loc);
    return b;
}

/* Project x onto the constraint `spec`; a list of constraints is applied in
 * order (`within [linf(eps), box(lo - x0, hi - x0)]`). */
static Value constrain(Value spec, Node *x, Loc loc) {
    Graph *g = cur->g;
    if (spec.kind == V_TREE && spec.tree->is_list) {
        Value r = v_tensor(x);
        for (int i = 0; i < spec.tree->n; i++)
            r = constrain(spec.tree->vals[i], r.node, loc);
        return r;
    }
    if (spec.kind != V_SPEC)
        error_at(loc, "'within' takes a constraint: linf(eps), l2(eps) or box(lo, hi), or a list of them");
    Tree *a = spec.tree;
    const char *what = xfmt("%s(...)", spec.s);
    Node *arg0 = a->n > 0 ? constraint_bound(a->vals[0], x, what, loc) : NULL;
    if (!strcmp(spec.s, "linf"))
        return v_tensor(g_binary(g, OP_MIN, g_binary(g, OP_MAX, x, g_unary(g, OP_NEG, arg0, loc), loc), arg0, loc));
    if (!strcmp(spec.s, "box")) {
        Node *hi = constraint_bound(a->vals[1], x, what, loc);
        return v_tensor(g_binary(g, OP_MIN, g_binary(g, OP_MAX, x, arg0, loc), hi, loc));
    }
    if (!strcmp(spec.s, "l2")) {
        if (arg0->shape.rank != 0)
            error_at(loc, "l2(eps) takes a scalar radius, not %s", type_str(arg0->dtype, arg0->shape));
        uint32_t all = x->shape.rank ? (1u << x->shape.rank) - 1 : 0;
        Node *nrm = g_unary(g, OP_SQRT, g_reduce(g, OP_SUM, g_binary(g, OP_MUL, x, x, loc), all, false, loc), loc);
        Node *tiny = g_scalar(g, 1e-12, x->dtype, loc);
        Node *scale = g_binary(g, OP_MIN, g_scalar(g, 1, x->dtype, loc),
                               g_binary(g, OP_DIV, arg0, g_binary(g, OP_ADD, nrm, tiny, loc), loc), loc);
        return v_tensor(g_binary(g, OP_MUL, x, scale, loc));
    }
    unreachable();
}

/* `minimize f over x within C`. The objective's own statements may write x
 * before this statement (`x <- x - lr * step`, with any optimiser state
 * they keep): then that write is the step and `within` projects it. Without
 * such a write the step is signed gradient descent (ascent for maximize)
 * with the runtime scalar `lr`. Either way the step reports `loss` and
 * writes d f / d x to the output `grad`. */
static void trace_optimize(Env *env, const Stmt *s, const Decl *d) {
    Graph *g = cur->g;
    Node *loss = value_as_node(eval(env, s->value), s->value->loc, "the objective");
    if (loss->shape.rank != 0 || (loss->dtype != DT_F32 && loss->dtype != DT_F64))
        error_at(s->value->loc, "the objective must be a float scalar, not %s", type_str(loss->dtype, loss->shape));
    Value over;
    bool is_param = false;
    for (int i = 0; i < d->nparams; i++)
        is_param |= !strcmp(d->params[i].name, s->name);
    if (!is_param || !env_lookup(env, s->name, &over) || !over.state_slot)
        error_at(s->name_loc, "'%s' must be a tensor parameter of the objective (the input it optimises, such as "
                              "delta: f32[P, C, H, W])", s->name);
    StateSlot *slot = &state_slots.data[over.state_slot - 1];
    Node *x = entry_input(slot->arg, s->loc), *gx;
    autodiff(g, &loss, NULL, 1, &x, 1, &gx, s->loc);
    Node *next = slot->pending;
    if (!next) {
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
        next = g_binary(g, s->kind == ST_MINIMIZE ? OP_SUB : OP_ADD, x, step, s->loc);
    }
    Value nv = v_tensor(next);
    if (s->within)
        nv = constrain(eval(env, s->within), next, s->within->loc);
    assign(over, nv, s->loc, s->value);
    optimised_slot = over.state_slot;
    add_output("loss", v_tensor(loss), s->loc);
    add_output("grad", v_tensor(gx), s->loc);
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
            if (d->kind != D_RULE && d->kind != D_OBJECTIVE)
                error_at(s->loc, "'state' is only allowed in a rule or an objective");
            bool saved = cur->train;
            cur->train = false;   /* an initializer never updates running statistics */
            Value init = eval(env, s->value);
            cur->train = saved;
            env_bind(env, s->name, declare_state(s->name, init, s->loc));
            break;
        }
        case ST_ASSIGN: {
            if (d->kind != D_RULE && d->kind != D_OBJECTIVE)
                error_at(s->loc, "'<-' is only allowed in a rule or an objective");
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
    vec_push(&sema_unit->entries, e);
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
    Env *env = env_new(sema_globals());
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
    vec_push(&sema_unit->entries, e);
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
            b.vals[i] = eval(sema_globals(), params[i].deflt);
            b.locs[i] = params[i].deflt->loc;
        }

    Trace t;
    const char *kind = d->kind == D_FN ? "fn" : d->kind == D_RULE ? "rule" : "objective";
    Entry *e = new_entry(name, kind, loc, &t);
    t.in_rule = d->kind != D_FN;
    t.data_parallel = (extras & SEMA_DATA_PARALLEL) != 0;
    state_slots.len = 0;
    optimised_slot = 0;
    const char *over = d->kind == D_OBJECTIVE ? over_name(d) : NULL;
    Env *env = env_new(sema_globals());
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
    vec_push(&sema_unit->entries, e);
    Model **models = t.models.data;
    int nmodels = t.models.len;
    cur = NULL;
    if (nmodels && (extras & SEMA_INIT_MODEL))
        add_model_init(name, models, nmodels, loc);
    if (d->kind != D_FN && (extras & SEMA_INIT_STATE))
        add_state_init(name, d, b.vals, b.given, b.locs, loc);
}
