/* sema.h: the tracer's private types, shared by sema.c (declarations,
 * modules, rules, exports), sema_model.c (model state, init entries, layers)
 * and builtins*.c (the language's builtin functions).
 *
 * The tracer is a compile-time evaluator: it walks the syntax tree with an
 * environment of *values*. Compile-time values (ints, floats, module
 * instances, lists) are computed on the spot; runtime tensors are graph nodes,
 * so evaluating an expression appends the ops it denotes to the entry's graph,
 * with every shape checked as it goes.
 */
#ifndef LETHE_SEMA_H
#define LETHE_SEMA_H

#include "graph.h"

typedef struct Value Value;
typedef struct Env Env;
typedef struct ModInst ModInst;
typedef struct Model Model;
typedef struct Tree Tree;

typedef enum VKind {
    V_NONE,
    V_INT, V_FLOAT, V_BOOL, V_STR,   /* compile-time scalars */
    V_TENSOR,                        /* a graph node */
    V_TREE,                          /* named collection, or a list when is_list */
    V_MODULE,                        /* a module instance, bound to a model or not */
    V_FN,                            /* an fn with its defining scope */
    V_CALLABLE,                      /* a top-level rule/objective/module name */
    V_BUILTIN,                       /* a builtin function */
    V_TYPE,                          /* a tensor type: dtype + shape */
    V_SPEC,                          /* an unevaluated call: initializers, constraints, experiment items */
} VKind;

struct Value {
    VKind kind;
    int64_t i;          /* V_INT, V_BOOL */
    double f;           /* V_FLOAT */
    const char *s;      /* V_STR; V_SPEC: its name */
    Node *node;         /* V_TENSOR */
    Model *leaf_model;  /* V_TENSOR read straight from a model leaf: which one */
    int leaf;           /*   ... and its index (-1 otherwise) */
    int state_slot;     /* V_TENSOR read straight from rule state: 1 + slot index, 0 otherwise */
    Tree *tree;         /* V_TREE, V_SPEC (its arguments) */
    ModInst *inst;      /* V_MODULE */
    Model *model;       /* V_MODULE: the binding, NULL when unbound */
    const FnDecl *fn;   /* V_FN */
    Env *env;           /* V_FN: scope of definition */
    const Decl *decl;   /* V_CALLABLE */
    int builtin;        /* V_BUILTIN */
    DType dtype;        /* V_TYPE */
    Shape shape;        /* V_TYPE */
    Loc loc;            /* where the value was made (for error notes) */
};

struct Tree {
    int n;
    bool is_list;
    const char **names; /* NULL entries for list elements */
    Value *vals;
};

/* Scopes: a chain of small name -> value tables. */
struct Env {
    Env *parent;
    VEC(const char *) names;
    VEC(Value) vals;
    ModInst *self;      /* innermost module scope (params/buffers/subs resolve through it) */
    Model *model;       /* its binding */
};

/* One parameter or buffer of a module tree, numbered depth first. */
typedef struct Leaf {
    const char *path;   /* "layer1.0.a.w" */
    bool is_buffer;
    DType dtype;
    Shape shape;
    Value spec;         /* evaluated initializer: zeros, normal(std = ...), ... */
    ModInst *owner;
    Loc loc;
} Leaf;

typedef struct Member {
    ModItemKind kind;   /* MI_PARAM, MI_BUFFER, MI_SUB, MI_LET, MI_FN */
    const char *name;
    int leaf;           /* MI_PARAM/MI_BUFFER: local leaf index */
    Value value;        /* MI_SUB: V_MODULE or list of them; MI_LET: the value */
    const FnDecl *fn;   /* MI_FN */
    Loc loc;
} Member;

struct ModInst {
    const Decl *decl;   /* NULL for Identity */
    const char *type_name;
    Env *env;           /* arguments and lets */
    VEC(Member) members;
    VEC(Leaf) leaves;   /* own + subs', depth first; indices are local to this instance */
    int leaf_base;      /* index of leaves.data[0] in the root's numbering (set when a root is numbered) */
    bool numbered;
    bool placed;        /* already a sub of some module (one instance, one place) */
    ModInst *view_of;   /* last(m, k): a view of some leaves of view_of ... */
    int *view_map;      /*   leaves.data[i] is view_of's local leaf view_map[i] */
    Loc loc;
};

/* A module tree bound to an entry: where its leaves come from and go to. */
struct Model {
    ModInst *root;
    const char *binding;   /* signature parameter name: "m", "student" */
    bool frozen;
    bool writable;         /* rules may write it (a rule's non-frozen model) */
    int nleaves;
    Leaf *leaves;          /* the root's leaves (root numbering) */
    int *arg;              /* entry arg per leaf, -1 until read or written */
    Node **in;             /* INPUT node per leaf, NULL until read */
    Node **pending;        /* value written at the end of the step, NULL if none */
    Node **running;        /* buffers: value after the chained train-mode updates so far */
    Loc *pending_loc;
    VEC(struct CallMemo *) memo;
};

typedef struct CallMemo {
    const ModInst *inst;
    const FnDecl *fn;
    bool train;
    int nargs;
    Node *args[8];
    Value result;
} CallMemo;

/* One instantiation in progress. */
typedef struct Trace {
    Entry *e;
    Graph *g;
    bool train;           /* call mode: true unless inside `eval` */
    bool in_rule;         /* model state updates are recorded (rules, objectives) */
    VEC(Model *) models;
    int call_depth;       /* recursion guard */
    uint64_t stream_salt; /* mixes into RAND stream ids (call-site + entry) */
    const SemaOptions *opt;
    bool data_parallel;   /* SEMA_DATA_PARALLEL */
} Trace;

typedef VEC(Value) ValueVec;
typedef VEC(const char *) NameVec;
typedef VEC(char) CharVec;

/* sema.c */
extern Trace *cur;
extern const SemaOptions *sema_options;
extern CompUnit *sema_unit;              /* the unit being built */
Env *sema_globals(void);                 /* the top-level scope */
Value eval_body(Env *env, const Expr *body);          /* an fn body: a block's lets, then its value */
void check_return_type(Env *dims, const TypeExpr *t, Value v, Loc loc);
int64_t eval_dim(Env *env, Env *dims, const Expr *d, int64_t actual, bool *bound_here);

enum { ORDER_MODEL = 0, ORDER_STATE = 1, ORDER_INPUT = 2, ORDER_SCALAR = 3, ORDER_OUTPUT = 4 };
static inline int64_t order_key(int group, int64_t sub) { return ((int64_t)group << 50) + sub; }

typedef struct Bound {  /* arguments matched to parameters */
    int n;
    Value *vals;
    bool *given;
    Loc *locs;
} Bound;
Bound bind_args(const char *what, const Param *params, int nparams, Value *pos, int npos, const char **kwnames,
                Value *kwvals, int nkw, Loc loc);
noreturn void missing_arg(const char *what, const Param *p, Loc loc);
Shape eval_fixed_shape(Env *env, const TypeExpr *t);
Node *conform(Node *v, DType dt, Shape sh, const char *what, Loc loc);   /* broadcast + float cast to a slot's type */                       /* the trace being built (NULL at top level) */
Value eval(Env *env, const Expr *e);
Value call_value(Env *env, Value callee, const Arg *args, int nargs, Loc loc);
Value call_fn(Value fnv, Value *pos, int npos, const char **kwnames, Value *kwvals, int nkw, Loc loc);
Env *env_new(Env *parent);
void env_bind(Env *env, const char *name, Value v);
bool env_lookup(Env *env, const char *name, Value *out);
Value v_int(int64_t i, Loc loc);
Value v_float(double f, Loc loc);
Value v_bool(bool b, Loc loc);
Value v_tensor(Node *n);
Value v_tree_new(int n, bool is_list, Loc loc);
const char *value_kind_name(const Value *v);  /* "int", "f32[4, 3]", "module Linear", ... */
DType promote_dtype(DType d);             /* --f64: f32 -> f64 */
bool is_scalar_value(const Value *v);     /* compile-time number/bool */
double value_as_double(const Value *v, Loc loc, const char *what);
int64_t value_as_int(const Value *v, Loc loc, const char *what);
Node *value_as_node(Value v, Loc loc, const char *what);   /* tensors; numbers become rank-0 CONST */

/* instantiation (sema.c), used by exports and experiments */
/* SEMA_DATA_PARALLEL: an experiment's rule under --world=N; its gradients
 * with respect to replicated tensors are averaged over the ranks (grad). */
enum { SEMA_INIT_MODEL = 1, SEMA_INIT_STATE = 2, SEMA_DATA_PARALLEL = 4 };
void sema_instantiate(const char *name, const Decl *d, Value *pos, int npos, const char **kwn, Value *kwv, int nkw,
                      Loc loc, unsigned extras);
const Decl *sema_global(const char *name);
void sema_eval_args(const Arg *args, int nargs, ValueVec *pos, NameVec *kwn, ValueVec *kwv);

/* sema_experiment.c: an experiment's entry points and its JSON plan */
const char *experiment_compile(const Decl *exp);

/* sema_model.c */
void sema_model_reset(void);                 /* forget the previous compilation's arena pointers */
ModInst *module_instantiate(const Decl *d, Value *pos, int npos, const char **kwnames, Value *kwvals, int nkw, Loc loc);
ModInst *identity_module(Loc loc);
void module_number(ModInst *root);
Model *model_bind(ModInst *root, const char *binding, bool frozen, bool writable);
Value model_leaf_read(Model *m, int leaf, Loc loc);
Value module_member(Value modv, const char *name, Loc loc);  /* m.params, m.fc, m.features, ... */
int module_has_fn(Value modv, const char *name);            /* an fn member of that name */
Value module_call(Value modv, const FnDecl *fn, Value *args, int nargs, Loc loc);
Value module_params_tree(ModInst *inst, Model *m, bool buffers, Loc loc);
Value module_last(Value modv, int64_t k, Loc loc);           /* last(m, k) */
void model_record_write(Model *m, int leaf, Node *value, Loc loc);
void model_train_update(Model *m, int leaf, Node *value, Loc loc);  /* batchnorm running stats */
Node *model_running(Model *m, int leaf, Loc loc);           /* current running value (chained updates) */
int model_leaf_arg(Model *m, int leaf);                     /* the entry argument of a leaf (created once) */
Node *init_leaf(const Leaf *lf, const char *path, Loc loc);  /* initializer graph for init_model */
const Leaf *module_layer_info(const Model *m, int leaf, int *layer, int *counts);

/* builtins.c / builtins_nn.c */
enum { BUILTIN_NONE = 0 };
int builtin_lookup(const char *name);                 /* 0 if not a builtin */
const char *builtin_name(int id);
Value builtin_call(int id, Value *pos, int npos, const char **kwnames, Value *kwvals, int nkw, Loc loc);
uint32_t axes_arg(const Value *axis, int rank, Loc loc);    /* int or list, negative ok; absent = all */
Value tree_map2(Op op, Value a, Value b, Loc loc);    /* leafwise binary with tree/scalar broadcasting */
void tree_leaves(Value v, ValueVec *out);              /* flatten depth first */

/* entry args and state (sema_entry.c) */
Value refresh(Value v);                 /* a name bound to state reads its current value */
void sema_entry_reset(void);
/* order: arguments are sorted by it when the entry is finished (models' leaves
 * first in leaf order, then state, inputs, scalars, outputs) */
int entry_add_arg(const char *name, const char *binding, const char *path, int kind, DType dt, Shape sh, int64_t order);
Node *entry_input(int arg, Loc loc);                  /* the INPUT node reading arg (created once) */
void entry_set_output(int arg, Node *value, Loc loc);

#endif
