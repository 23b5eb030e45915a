/* lethec.h: the compiler's front half: memory, diagnostics, source files and
 * the syntax tree. The graph IR is in graph.h, the loop IR in loopir.h.
 *
 * Sections follow the files that define them (chibicc style).
 */
#ifndef LETHEC_H
#define LETHEC_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdnoreturn.h>

#define LETHEC_VERSION "0.1.0"

/* ----------------------------------------------------------------------------
 * util.c: one arena per compilation, growable arrays, strings
 *
 * Everything the compiler allocates lives in the current arena and is freed at
 * once by arena_reset(); nothing is freed piecemeal. This makes error recovery
 * by longjmp leak-free (the fuzzer relies on it).
 */
void *xalloc(size_t n);                 /* zeroed; out of memory is fatal */
void *xrealloc(void *p, size_t old, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xfmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void arena_reset(void);                 /* free everything xalloc'd so far */
size_t arena_bytes(void);

/* Growable array of T in the arena: VEC(Node *) v = {0}; vec_push(&v, n); */
#define VEC(T) struct { T *data; int len, cap; }
#define vec_push(v, x) do { \
        if ((v)->len == (v)->cap) { \
            int nc_ = (v)->cap ? 2 * (v)->cap : 8; \
            (v)->data = xrealloc((v)->data, sizeof(*(v)->data) * (size_t)(v)->cap, sizeof(*(v)->data) * (size_t)nc_); \
            (v)->cap = nc_; \
        } \
        (v)->data[(v)->len++] = (x); \
    } while (0)

uint64_t hash_bytes(const void *p, size_t n, uint64_t h); /* FNV-1a 64 */

/* A pointer-keyed map in the arena; walks over expression DAGs use one to
 * visit each node once. ptrmap_slot returns key's value slot (NULL when the
 * key is new); the slot moves when the map grows. */
typedef struct PtrMap {
    const void **key;
    void **val;
    unsigned cap, len;
} PtrMap;
void **ptrmap_slot(PtrMap *m, const void *key);

/* ----------------------------------------------------------------------------
 * diag.c: errors in the chibicc style
 *
 *   file.lth:12:9: error: shapes f32[4, 3] and f32[5] do not broadcast
 *      12 |     let y = a + b
 *         |             ^
 *   file.lth:10:9: note: f32[4, 3] comes from here
 *
 * error_at() prints the error and every queued note, then jumps to the
 * recovery point (diag_recover) or, if none is set, exits with status 1.
 */
typedef struct SrcFile {
    const char *path;     /* as given on the command line / in the import */
    const char *text;     /* contents, NUL-terminated */
    size_t len;
} SrcFile;

typedef struct Loc {
    const SrcFile *file;  /* NULL: no location (internal / command line) */
    int line, col;        /* 1-based */
    int len;              /* characters to underline, >= 1 */
} Loc;

SrcFile *srcfile_read(const char *path);               /* NULL if unreadable */
SrcFile *srcfile_from_string(const char *path, const char *text, size_t len);

extern jmp_buf *diag_recover;   /* set by the driver / fuzzer; NULL = exit(1) */
extern int diag_error_count;

void diag_note(Loc loc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
noreturn void error_at(Loc loc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
noreturn void error_noloc(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Internal invariant broken: a compiler bug, reported with file:line. */
#define unreachable() internal_error(__FILE__, __LINE__, "unreachable")
noreturn void internal_error(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
#define ASSERT(c) do { if (!(c)) internal_error(__FILE__, __LINE__, "assertion failed: %s", #c); } while (0)

/* ----------------------------------------------------------------------------
 * ast.c: the syntax tree produced by grammar/parser.y
 */
typedef enum DType { DT_BOOL, DT_I32, DT_F32, DT_F64, DT_I64 /* index math only, never user-visible */ } DType;

typedef enum ExprKind {
    EX_INT,      /* ival */
    EX_FLOAT,    /* fval */
    EX_PERCENT,  /* fval is already divided by 100: `10%` -> 0.1 */
    EX_BOOL,     /* ival 0/1 */
    EX_STRING,   /* sval */
    EX_NAME,     /* sval */
    EX_UNARY,    /* op ('-' or '!'), a */
    EX_BINARY,   /* op, a, b */
    EX_CALL,     /* a = callee, args */
    EX_FIELD,    /* a.sval */
    EX_INDEX,    /* a[items] : items are EX_SLICE / expressions / EX_ELLIPSIS */
    EX_SLICE,    /* lo:hi:step, each may be NULL */
    EX_ELLIPSIS, /* ... inside an index */
    EX_LIST,     /* [items] */
    EX_COMP,     /* [a for sval in b]: a list built from each element of the list b */
    EX_IF,       /* if a then b else c */
    EX_BLOCK,    /* { let ...; let ...; a } : lets + result in a */
    EX_EVAL,     /* eval a : the call a runs in evaluation mode */
    EX_TYPE,     /* a tensor type used as a value: f32[64, 784] (type) */
} ExprKind;

/* Binary / unary operator codes used in Expr.op */
/* (BO_ prefix: the graph's Op enum in graph.h owns OP_*) */
typedef enum BinOp {
    BO_ADD = 1, BO_SUB, BO_MUL, BO_DIV, BO_MOD, BO_POW, BO_MATMUL,
    BO_EQ, BO_NE, BO_LT, BO_LE, BO_GT, BO_GE, BO_AND, BO_OR,
    BO_NEG, BO_NOT,
} BinOp;
const char *binop_spelling(int op);      /* "+", "@", "&&", "-" (unary) ... */

typedef struct Expr Expr;
typedef struct TypeExpr TypeExpr;
typedef struct Stmt Stmt;

typedef struct Arg {        /* one call argument, positional (name NULL) or named */
    const char *name;
    Expr *value;
    Loc loc;                /* of the name if named, else of the value */
} Arg;

struct Expr {
    ExprKind kind;
    Loc loc;                /* whole expression; for binary ops, the operator */
    int op;                 /* BinOp */
    int64_t ival;
    double fval;
    const char *sval;
    Expr *a, *b, *c;
    Arg *args; int nargs;   /* EX_CALL */
    Expr **items; int nitems; /* EX_LIST, EX_INDEX */
    Stmt **lets; int nlets; /* EX_BLOCK: ST_LET statements */
    TypeExpr *type;         /* EX_TYPE */
};

typedef enum TypeKind {
    TY_NONE,     /* not written: inferred */
    TY_INT,      /* compile-time integer */
    TY_FLOAT,    /* compile-time float */
    TY_TENSOR,   /* dtype[dims]; rank 0 when no brackets: `f32` (in a module signature a
                    rank-0 tensor type means a compile-time scalar) */
    TY_MODEL,    /* `model` or `frozen model` */
    TY_DATA,     /* `data` */
} TypeKind;

struct TypeExpr {
    TypeKind kind;
    DType dtype;            /* TY_TENSOR */
    int rank;               /* TY_TENSOR: number of dims written (0 for `f32`) */
    Expr **dims;            /* each an expression: EX_INT, EX_NAME (N, fin), arithmetic */
    bool frozen;            /* TY_MODEL */
    Loc loc;
};

typedef struct Param {
    const char *name;
    TypeExpr *type;         /* never NULL; kind TY_NONE if not written */
    Expr *deflt;            /* NULL if none */
    Loc loc;
} Param;

typedef enum StmtKind {
    ST_LET,      /* let name = value */
    ST_STATE,    /* state name = value (initial value) */
    ST_ASSIGN,   /* target <- value */
    ST_REPORT,   /* report name = value */
    ST_MINIMIZE, /* minimize value over name [within within] */
    ST_MAXIMIZE, /* maximize value over name [within within] */
} StmtKind;

struct Stmt {
    StmtKind kind;
    Loc loc;                /* of the keyword / of `<-` */
    const char *name;
    Loc name_loc;
    Expr *target;           /* ST_ASSIGN */
    Expr *value;
    Expr *within;           /* ST_MINIMIZE/MAXIMIZE, may be NULL */
};

typedef struct FnDecl {
    const char *name;       /* NULL for a module's default fn: `fn (x) = ...` */
    Loc loc;
    Param *params; int nparams;
    TypeExpr *ret;          /* NULL if not written */
    Expr *body;             /* an expression (EX_BLOCK for `{ ... }` bodies) */
} FnDecl;

typedef enum ModItemKind { MI_PARAM, MI_BUFFER, MI_SUB, MI_LET, MI_FN } ModItemKind;

typedef struct ModItem {
    ModItemKind kind;
    Loc loc;
    const char *name;       /* NULL only for a default fn */
    TypeExpr *type;         /* MI_PARAM, MI_BUFFER */
    Expr *value;            /* initializer (param/buffer), module expr (sub), value (let) */
    FnDecl *fn;             /* MI_FN */
} ModItem;

typedef struct Clause {     /* experiment clause: `for 10 epochs`, `, batch 128`, `within 10% of train` */
    const char *word;       /* "for", "batch" (any name after a comma), "within" */
    Expr *value;
    const char *unit;       /* "epochs" for `for`, "train" for `within ... of train`; NULL otherwise */
    Loc loc;
} Clause;

typedef struct ExpEntry {
    const char *key;
    Loc loc;
    Expr *value;
    Clause *clauses; int nclauses;
} ExpEntry;

typedef enum DeclKind { D_IMPORT, D_MODULE, D_FN, D_RULE, D_OBJECTIVE, D_EXPERIMENT, D_EXPORT } DeclKind;

typedef struct Decl {
    DeclKind kind;
    Loc loc;                /* of the name (or of the import string) */
    const char *name;       /* D_IMPORT: the path string as written */
    Param *params; int nparams;      /* module args, rule/objective params */
    ModItem *items; int nitems;      /* D_MODULE */
    FnDecl *fn;                      /* D_FN */
    Stmt **stmts; int nstmts;        /* D_RULE, D_OBJECTIVE */
    ExpEntry *entries; int nentries; /* D_EXPERIMENT */
    Expr *value;                     /* D_EXPORT */
    const SrcFile *file;
} Decl;

typedef struct Program {
    Decl **decls; int ndecls;
    const SrcFile *file;
} Program;

/* parse.c (wraps the bison parser): parse one file; errors go through
 * error_at. Never returns NULL. */
Program *parse_file(const SrcFile *file);

/* ast.c */
Expr *expr_new(ExprKind kind, Loc loc);
void ast_dump(const Program *p, void *FILE_out);   /* -d ast (FILE *) */
const char *dtype_name(DType t);                   /* util.c: "f32" ... */
int dtype_size(DType t);                           /* util.c: bytes */

#endif
