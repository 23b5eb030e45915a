/* parser.y: tokens -> AST (lethec.h) for the grammar in docs/language.md.
 *
 * The rules mirror the reference grammar one to one, with two additions the
 * reference leaves implicit: statement separators (NEWLINE from the lexer's
 * semicolon insertion, or ';') and the optional newlines before `then` and
 * `else`. A list of items in braces is written as
 *     items: %empty | items sep | items item sep     body: '{' items [item] '}'
 * so any number of empty statements is fine and the last item needs no
 * separator before '}'.
 *
 * Syntax errors are reported by yyreport_syntax_error() (parse.error custom,
 * with LAC so that the expected tokens are exact), in words a user can act on.
 * Every error leaves through error_at()'s longjmp; the parser stacks live in
 * the arena so that nothing leaks on that path.
 */
%require "3.8"
%define api.pure full
%define api.token.prefix {TK_}
%define api.location.type {Loc}
%define parse.error custom
%define parse.lac full
%locations
%param {yyscan_t scanner}
%parse-param {ParseState *ps}

%code requires {
#include "lethec.h"

#ifndef YY_TYPEDEF_YY_SCANNER_T
#define YY_TYPEDEF_YY_SCANNER_T
typedef void *yyscan_t;
#endif

typedef VEC(Expr *) ExprVec;
typedef VEC(Arg) ArgVec;
typedef VEC(Param) ParamVec;
typedef VEC(Stmt *) StmtVec;
typedef VEC(ModItem) ItemVec;
typedef VEC(Clause) ClauseVec;
typedef VEC(ExpEntry) EntryVec;

typedef struct Bracket { int ch; Loc loc; } Bracket;

/* Everything one parse needs, shared by lexer.l (as yyextra) and the parser. */
typedef struct ParseState {
    const SrcFile *file;
    int line, col;              /* position of the next character */
    size_t off;                 /* its byte offset */
    VEC(size_t) line_starts;    /* byte offset of each line, [0] = line 1 */
    VEC(Bracket) brackets;      /* open ( [ { not yet closed, innermost last */
    bool can_end;               /* the last token may end a statement */
    int decl_kw;                /* keyword of the top-level declaration being read */
    const char *tok_text;       /* spelling of the last token read */
    int tok_len;
    Loc eof_loc;                /* just past the last token */
    VEC(Decl *) decls;
} ParseState;
}

%code provides {
/* The flex scanner's entry points (lexer.l), for the parser and parse.c. */
int yylex(YYSTYPE *val, YYLTYPE *loc, yyscan_t scanner);
int yylex_init_extra(ParseState *ps, yyscan_t *scanner);
struct yy_buffer_state *yy_scan_bytes(const char *bytes, int len, yyscan_t scanner);
int yylex_destroy(yyscan_t scanner);
}

%code {
#include <string.h>

/* Grow the parser and LAC stacks in the arena: an error longjmps out of
 * yyparse, which would leak a malloc'd stack. Freed by arena_reset(). */
#define YYSTACK_ALLOC xalloc
#define YYSTACK_ALLOC_MAXIMUM ((size_t)1 << 30)
/* Deeper stacks than this are reported as "expression nested too deeply"
 * (every level of nesting holds at least one stack entry). */
#define YYMAXDEPTH 2000

static Loc loc_span(const ParseState *ps, Loc a, Loc b);
static Loc rhs_loc(const ParseState *ps, const Loc *rhs, int n);
#define YYLLOC_DEFAULT(Cur, Rhs, N) ((Cur) = rhs_loc(ps, &YYRHSLOC(Rhs, 0), (N)))

static void yyerror(const Loc *loc, yyscan_t scanner, ParseState *ps, const char *msg);
static Expr *binary(int op, Loc loc, Expr *a, Expr *b);
static Expr *unary(int op, Loc loc, Expr *a);
static Stmt *stmt_new(StmtKind kind, Loc loc, const char *name, Loc name_loc, Expr *value);
static Decl *decl_new(ParseState *ps, DeclKind kind, Loc loc, const char *name);
static TypeExpr *named_type(const char *name, Loc loc);
static TypeExpr *tensor_type(DType dt, ExprVec dims, Loc loc);
}

%initial-action { @$ = (Loc){ps->file, 1, 1, 1}; }

%union {
    Expr *expr;
    TypeExpr *type;
    Stmt *stmt;
    FnDecl *fn;
    Decl *decl;
    const char *str;
    int dtype;
    int op;
    ExprVec exprs;
    Arg arg;
    ArgVec args;
    Param param;
    ParamVec params;
    StmtVec stmts;
    ModItem item;
    ItemVec items;
    Clause clause;
    ClauseVec clauses;
    ExpEntry entry;
    EntryVec entries;
}

/* Declaration order is the order expected tokens are listed in messages. */
%token <str> NAME "name"
%token <expr> NUMBER "number" STRING "string"
%token <dtype> DTYPE "dtype"
%token IMPORT "import" MODULE "module" FN "fn" RULE "rule" OBJECTIVE "objective"
       EXPERIMENT "experiment" EXPORT "export" PARAM "param" BUFFER "buffer" SUB "sub"
       LET "let" STATE "state" REPORT "report" MINIMIZE "minimize" MAXIMIZE "maximize"
       OVER "over" WITHIN "within" IF "if" THEN "then" ELSE "else" EVAL "eval"
       FROZEN "frozen" FOR "for" TRUE "true" FALSE "false"
%token ARROW "->" LARROW "<-" POW "**" EQ "==" NE "!=" LE "<=" GE ">=" AND "&&" OR "||"
       ELLIPSIS "..."
%token NEWLINE "newline"

%type <decl> decl
%type <fn> fn fn_sig
%type <expr> fn_body
%type <type> type opt_type opt_ret
%type <params> params param_list opt_sig
%type <param> param
%type <items> module_body items
%type <item> moditem
%type <stmts> rule_body stmts lets
%type <stmt> stmt
%type <entries> experiment_body entries
%type <entry> entry
%type <clauses> clauses
%type <clause> clause
%type <expr> expr or and cmp sum term unary power postfix chain primary block
%type <expr> opt_default opt_within opt_expr index slice
%type <exprs> expr_list list index_list
%type <args> args arg_list
%type <arg> arg
%type <op> cmp_op
%type <type> tensor_type

%%

/* program = { decl } */
program:
    decls
  | decls decl                      { vec_push(&ps->decls, $2); }
  ;

decls:
    %empty
  | decls sep
  | decls decl sep                  { vec_push(&ps->decls, $2); }
  ;

sep: NEWLINE | ';' ;

seps: %empty | seps sep ;

/* line breaks allowed before `then` and `else` */
nls: %empty | nls NEWLINE ;

/* decl = "import" STRING | "module" NAME [ "(" params ")" ] "{" { moditem } "}"
 *      | fn | "rule" NAME "(" params ")" "{" { stmt } "}"
 *      | "objective" NAME "(" params ")" "{" { stmt } "}"
 *      | "experiment" NAME "{" { NAME "=" expr { clause } } "}"
 *      | "export" NAME "=" expr */
decl:
    IMPORT STRING                   { $$ = decl_new(ps, D_IMPORT, @2, $2->sval); }
  | MODULE NAME opt_sig module_body {
        $$ = decl_new(ps, D_MODULE, @2, $2);
        $$->params = $3.data; $$->nparams = $3.len;
        $$->items = $4.data; $$->nitems = $4.len;
    }
  | fn                              {
        if (!$1->name)
            error_at($1->loc, "a function outside a module needs a name");
        $$ = decl_new(ps, D_FN, $1->loc, $1->name);
        $$->fn = $1;
    }
  | RULE NAME '(' params ')' rule_body {
        $$ = decl_new(ps, D_RULE, @2, $2);
        $$->params = $4.data; $$->nparams = $4.len;
        $$->stmts = $6.data; $$->nstmts = $6.len;
    }
  | OBJECTIVE NAME '(' params ')' rule_body {
        $$ = decl_new(ps, D_OBJECTIVE, @2, $2);
        $$->params = $4.data; $$->nparams = $4.len;
        $$->stmts = $6.data; $$->nstmts = $6.len;
    }
  | EXPERIMENT NAME experiment_body {
        $$ = decl_new(ps, D_EXPERIMENT, @2, $2);
        $$->entries = $3.data; $$->nentries = $3.len;
    }
  | EXPORT NAME '=' expr            { $$ = decl_new(ps, D_EXPORT, @2, $2); $$->value = $4; }
  ;

opt_sig:
    %empty                          { $$ = (ParamVec){0}; }
  | '(' params ')'                  { $$ = $2; }
  ;

module_body:
    '{' items '}'                   { $$ = $2; }
  | '{' items moditem '}'           { $$ = $2; vec_push(&$$, $3); }
  ;

items:
    %empty                          { $$ = (ItemVec){0}; }
  | items sep                       { $$ = $1; }
  | items moditem sep               { $$ = $1; vec_push(&$$, $2); }
  ;

/* moditem = "param" NAME ":" type "=" expr | "buffer" NAME ":" type "=" expr
 *         | "sub" NAME "=" expr | "let" NAME "=" expr | fn */
moditem:
    PARAM NAME ':' type '=' expr    { $$ = (ModItem){.kind = MI_PARAM, .loc = @2, .name = $2, .type = $4, .value = $6}; }
  | BUFFER NAME ':' type '=' expr   { $$ = (ModItem){.kind = MI_BUFFER, .loc = @2, .name = $2, .type = $4, .value = $6}; }
  | SUB NAME '=' expr               { $$ = (ModItem){.kind = MI_SUB, .loc = @2, .name = $2, .value = $4}; }
  | LET NAME '=' expr               { $$ = (ModItem){.kind = MI_LET, .loc = @2, .name = $2, .value = $4}; }
  | fn                              { $$ = (ModItem){.kind = MI_FN, .loc = $1->loc, .name = $1->name, .fn = $1}; }
  ;

/* fn = "fn" [ NAME ] "(" params ")" [ "->" type ] ( "=" expr | block ) */
fn:
    FN NAME fn_sig                  { $$ = $3; $$->name = $2; $$->loc = @2; }
  | FN fn_sig                       { $$ = $2; $$->loc = @1; }
  ;

fn_sig:
    '(' params ')' opt_ret fn_body  {
        $$ = xalloc(sizeof *$$);
        $$->params = $2.data; $$->nparams = $2.len;
        $$->ret = $4;
        $$->body = $5;
    }
  ;

opt_ret:
    %empty                          { $$ = NULL; }
  | "->" type                       { $$ = $2; }
  ;

fn_body:
    '=' expr                        { $$ = $2; }
  | block                           { $$ = $1; }
  ;

/* block = "{" { "let" NAME "=" expr } expr "}" */
block:
    '{' seps lets expr seps '}'     {
        $$ = expr_new(EX_BLOCK, @$);
        $$->lets = $3.data; $$->nlets = $3.len;
        $$->a = $4;
    }
  ;

lets:
    %empty                          { $$ = (StmtVec){0}; }
  | lets LET NAME '=' expr sep seps { $$ = $1; vec_push(&$$, stmt_new(ST_LET, @2, $3, @3, $5)); }
  ;

rule_body:
    '{' stmts '}'                   { $$ = $2; }
  | '{' stmts stmt '}'              { $$ = $2; vec_push(&$$, $3); }
  ;

stmts:
    %empty                          { $$ = (StmtVec){0}; }
  | stmts sep                       { $$ = $1; }
  | stmts stmt sep                  { $$ = $1; vec_push(&$$, $2); }
  ;

/* stmt = "let" NAME "=" expr | "state" NAME "=" expr | expr "<-" expr
 *      | "report" NAME "=" expr
 *      | ( "minimize" | "maximize" ) expr "over" NAME [ "within" expr ] */
stmt:
    LET NAME '=' expr               { $$ = stmt_new(ST_LET, @1, $2, @2, $4); }
  | STATE NAME '=' expr             { $$ = stmt_new(ST_STATE, @1, $2, @2, $4); }
  | expr "<-" expr                  { $$ = stmt_new(ST_ASSIGN, @2, NULL, @2, $3); $$->target = $1; }
  | REPORT NAME '=' expr            { $$ = stmt_new(ST_REPORT, @1, $2, @2, $4); }
  | MINIMIZE expr OVER NAME opt_within { $$ = stmt_new(ST_MINIMIZE, @1, $4, @4, $2); $$->within = $5; }
  | MAXIMIZE expr OVER NAME opt_within { $$ = stmt_new(ST_MAXIMIZE, @1, $4, @4, $2); $$->within = $5; }
  ;

opt_within:
    %empty                          { $$ = NULL; }
  | WITHIN expr                     { $$ = $2; }
  ;

experiment_body:
    '{' entries '}'                 { $$ = $2; }
  | '{' entries entry '}'           { $$ = $2; vec_push(&$$, $3); }
  ;

entries:
    %empty                          { $$ = (EntryVec){0}; }
  | entries sep                     { $$ = $1; }
  | entries entry sep               { $$ = $1; vec_push(&$$, $2); }
  ;

entry:
    NAME '=' expr clauses           { $$ = (ExpEntry){.key = $1, .loc = @1, .value = $3, .clauses = $4.data, .nclauses = $4.len}; }
  ;

clauses:
    %empty                          { $$ = (ClauseVec){0}; }
  | clauses clause                  { $$ = $1; vec_push(&$$, $2); }
  ;

/* clause = "for" expr NAME | "," NAME expr | "within" expr NAME NAME
 * (the first NAME of `within` must be `of`: `within 10% of train`) */
clause:
    FOR expr NAME                   { $$ = (Clause){.word = "for", .value = $2, .unit = $3, .loc = @1}; }
  | ',' NAME expr                   { $$ = (Clause){.word = $2, .value = $3, .loc = @2}; }
  | WITHIN expr NAME NAME           {
        if (strcmp($3, "of"))
            error_at(@3, "expected 'of' but found '%s'", $3);
        $$ = (Clause){.word = "within", .value = $2, .unit = $4, .loc = @1};
    }
  ;

/* params = [ param { "," param } [ "," ] ]
 * param  = NAME [ ":" type ] [ "=" expr ] */
params:
    %empty                          { $$ = (ParamVec){0}; }
  | param_list                      { $$ = $1; }
  | param_list ','                  { $$ = $1; }
  ;

param_list:
    param                           { $$ = (ParamVec){0}; vec_push(&$$, $1); }
  | param_list ',' param            { $$ = $1; vec_push(&$$, $3); }
  ;

param:
    NAME opt_type opt_default       {
        $$ = (Param){.name = $1, .type = $2, .deflt = $3, .loc = @1};
        if (!$$.type) {
            $$.type = xalloc(sizeof(TypeExpr));
            $$.type->loc = @1;
        }
    }
  ;

opt_type:
    %empty                          { $$ = NULL; }
  | ':' type                        { $$ = $2; }
  ;

opt_default:
    %empty                          { $$ = NULL; }
  | '=' expr                        { $$ = $2; }
  ;

/* type = "int" | "float" | "model" | "frozen" "model" | "data"
 *      | DTYPE [ "[" [ expr { "," expr } ] "]" ] */
type:
    NAME                            { $$ = named_type($1, @1); }
  | FROZEN NAME                     {
        if (strcmp($2, "model"))
            error_at(@2, "expected 'model' after 'frozen' but found '%s'", $2);
        $$ = named_type($2, @$);
        $$->frozen = true;
    }
  | tensor_type                     { $$ = $1; }
  ;

tensor_type:
    DTYPE                           { $$ = tensor_type($1, (ExprVec){0}, @$); }
  | DTYPE '[' ']'                   { $$ = tensor_type($1, (ExprVec){0}, @$); }
  | DTYPE '[' expr_list ']'         { $$ = tensor_type($1, $3, @$); }
  ;

expr_list:
    expr                            { $$ = (ExprVec){0}; vec_push(&$$, $1); }
  | expr_list ',' expr              { $$ = $1; vec_push(&$$, $3); }
  ;

/* expr = "if" expr "then" expr "else" expr | or */
expr:
    IF expr nls THEN expr nls ELSE expr {
        $$ = expr_new(EX_IF, @$);
        $$->a = $2; $$->b = $5; $$->c = $8;
    }
  | or
  ;

/* or = and { "||" and } */
or:
    and
  | or "||" and                     { $$ = binary(BO_OR, @2, $1, $3); }
  ;

/* and = cmp { "&&" cmp } */
and:
    cmp
  | and "&&" cmp                    { $$ = binary(BO_AND, @2, $1, $3); }
  ;

/* cmp = sum [ ( "==" | "!=" | "<" | "<=" | ">" | ">=" ) sum ] */
cmp:
    sum
  | sum cmp_op sum                  { $$ = binary($2, @2, $1, $3); }
  ;

cmp_op:
    "=="    { $$ = BO_EQ; }
  | "!="    { $$ = BO_NE; }
  | '<'     { $$ = BO_LT; }
  | "<="    { $$ = BO_LE; }
  | '>'     { $$ = BO_GT; }
  | ">="    { $$ = BO_GE; }
  ;

/* sum = term { ( "+" | "-" ) term } */
sum:
    term
  | sum '+' term                    { $$ = binary(BO_ADD, @2, $1, $3); }
  | sum '-' term                    { $$ = binary(BO_SUB, @2, $1, $3); }
  ;

/* term = unary { ( "*" | "/" | "%" | "@" ) unary } */
term:
    unary
  | term '*' unary                  { $$ = binary(BO_MUL, @2, $1, $3); }
  | term '/' unary                  { $$ = binary(BO_DIV, @2, $1, $3); }
  | term '%' unary                  { $$ = binary(BO_MOD, @2, $1, $3); }
  | term '@' unary                  { $$ = binary(BO_MATMUL, @2, $1, $3); }
  ;

/* unary = ( "-" | "!" ) unary | power */
unary:
    '-' unary                       { $$ = unary(BO_NEG, @$, $2); }
  | '!' unary                       { $$ = unary(BO_NOT, @$, $2); }
  | power
  ;

/* power = postfix [ "**" unary ]   (right associative: -x**2 = -(x**2)) */
power:
    postfix
  | postfix "**" unary              { $$ = binary(BO_POW, @2, $1, $3); }
  ;

/* postfix = primary { "(" args ")" | "." NAME | "[" index { "," index } "]" }
 *         | "eval" postfix
 * A tensor type is a value too (`f32[32, 784]`), but only a bare dtype can
 * be called (`f32(x)` converts); keeping typed values out of `chain` is what
 * lets `f32[` always start dimensions. */
postfix:
    chain
  | tensor_type                     { $$ = expr_new(EX_TYPE, @$); $$->type = $1; }
  | EVAL postfix                    { $$ = expr_new(EX_EVAL, @$); $$->a = $2; }
  ;

chain:
    primary
  | DTYPE '(' args ')'              {
        $$ = expr_new(EX_CALL, @$);
        $$->a = expr_new(EX_TYPE, @1);
        $$->a->type = tensor_type($1, (ExprVec){0}, @1);
        $$->args = $3.data; $$->nargs = $3.len;
    }
  | chain '(' args ')'              {
        $$ = expr_new(EX_CALL, @$);
        $$->a = $1;
        $$->args = $3.data; $$->nargs = $3.len;
    }
  | chain '.' NAME                  { $$ = expr_new(EX_FIELD, @$); $$->a = $1; $$->sval = $3; }
  | chain '[' index_list ']'        {
        $$ = expr_new(EX_INDEX, @$);
        $$->a = $1;
        $$->items = $3.data; $$->nitems = $3.len;
    }
  ;

/* primary = NUMBER | PERCENT | STRING | "true" | "false" | NAME | "(" expr ")"
 *         | "[" [ expr { "," expr } [ "," ] ] "]" | "[" expr "for" NAME "in" expr "]"
 *         | block
 * (`in` is an ordinary name outside a comprehension, as `of` in clauses) */
primary:
    NUMBER
  | STRING
  | TRUE                            { $$ = expr_new(EX_BOOL, @1); $$->ival = 1; }
  | FALSE                           { $$ = expr_new(EX_BOOL, @1); $$->ival = 0; }
  | NAME                            { $$ = expr_new(EX_NAME, @1); $$->sval = $1; }
  | '(' expr ')'                    { $$ = $2; }
  | '[' list ']'                    { $$ = expr_new(EX_LIST, @$); $$->items = $2.data; $$->nitems = $2.len; }
  | '[' expr FOR NAME NAME expr ']' {
        if (strcmp($5, "in"))
            error_at(@5, "expected 'in' but found '%s'", $5);
        $$ = expr_new(EX_COMP, @$);
        $$->a = $2; $$->sval = $4; $$->b = $6;
    }
  | block
  ;

list:
    %empty                          { $$ = (ExprVec){0}; }
  | expr_list                       { $$ = $1; }
  | expr_list ','                   { $$ = $1; }
  ;

/* args = [ arg { "," arg } [ "," ] ];  arg = [ NAME "=" ] expr */
args:
    %empty                          { $$ = (ArgVec){0}; }
  | arg_list                        { $$ = $1; }
  | arg_list ','                    { $$ = $1; }
  ;

arg_list:
    arg                             { $$ = (ArgVec){0}; vec_push(&$$, $1); }
  | arg_list ',' arg                { $$ = $1; vec_push(&$$, $3); }
  ;

arg:
    expr                            { $$ = (Arg){.value = $1, .loc = $1->loc}; }
  | NAME '=' expr                   { $$ = (Arg){.name = $1, .value = $3, .loc = @1}; }
  ;

/* index = expr | [ expr ] ":" [ expr ] [ ":" [ expr ] ] | "..." */
index_list:
    index                           { $$ = (ExprVec){0}; vec_push(&$$, $1); }
  | index_list ',' index            { $$ = $1; vec_push(&$$, $3); }
  ;

index:
    expr
  | "..."                           { $$ = expr_new(EX_ELLIPSIS, @1); }
  | slice
  ;

slice:
    opt_expr ':' opt_expr           { $$ = expr_new(EX_SLICE, @$); $$->a = $1; $$->b = $3; }
  | opt_expr ':' opt_expr ':' opt_expr {
        $$ = expr_new(EX_SLICE, @$);
        $$->a = $1; $$->b = $3; $$->c = $5;
    }
  ;

opt_expr:
    %empty                          { $$ = NULL; }
  | expr
  ;

%%

/* The span from a to the end of b; a span that leaves a's line runs to the
 * end of that line (a Loc underlines one line only). */
static Loc loc_span(const ParseState *ps, Loc a, Loc b) {
    if (b.line == a.line) {
        a.len = b.col + b.len - a.col;
    } else {
        size_t start = ps->line_starts.data[a.line - 1];
        size_t next = ps->line_starts.data[a.line];   /* exists: b is on a later line */
        a.len = (int)(next - 1 - start) - (a.col - 1);
    }
    if (a.len < 1)
        a.len = 1;
    return a;
}

/* The location of a reduction: from its first to its last non-empty symbol.
 * Empty reductions get len 0 (just after the previous symbol) so that they
 * never stretch a span; no AST node takes its location from one. */
static Loc rhs_loc(const ParseState *ps, const Loc *rhs, int n) {
    int first = 0, last = 0;
    for (int i = 1; i <= n; i++) {
        if (rhs[i].len > 0) {
            if (!first)
                first = i;
            last = i;
        }
    }
    if (!first) {
        Loc l = rhs[0];
        l.col += l.len;
        l.len = 0;
        return l;
    }
    return loc_span(ps, rhs[first], rhs[last]);
}

static Expr *binary(int op, Loc loc, Expr *a, Expr *b) {
    Expr *e = expr_new(EX_BINARY, loc);
    e->op = op;
    e->a = a;
    e->b = b;
    return e;
}

static Expr *unary(int op, Loc loc, Expr *a) {
    Expr *e = expr_new(EX_UNARY, loc);
    e->op = op;
    e->a = a;
    return e;
}

static Stmt *stmt_new(StmtKind kind, Loc loc, const char *name, Loc name_loc, Expr *value) {
    Stmt *s = xalloc(sizeof *s);
    s->kind = kind;
    s->loc = loc;
    s->name = name;
    s->name_loc = name_loc;
    s->value = value;
    return s;
}

static Decl *decl_new(ParseState *ps, DeclKind kind, Loc loc, const char *name) {
    Decl *d = xalloc(sizeof *d);
    d->kind = kind;
    d->loc = loc;
    d->name = name;
    d->file = ps->file;
    return d;
}

/* int, float, model and data are ordinary names outside a type position */
static TypeExpr *named_type(const char *name, Loc loc) {
    static const struct { const char *name; TypeKind kind; } names[] = {
        {"int", TY_INT}, {"float", TY_FLOAT}, {"model", TY_MODEL}, {"data", TY_DATA},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!strcmp(name, names[i].name)) {
            TypeExpr *t = xalloc(sizeof *t);
            t->kind = names[i].kind;
            t->loc = loc;
            return t;
        }
    }
    error_at(loc, "unknown type '%s'", name);
}

static TypeExpr *tensor_type(DType dt, ExprVec dims, Loc loc) {
    TypeExpr *t = xalloc(sizeof *t);
    t->kind = TY_TENSOR;
    t->dtype = dt;
    t->rank = dims.len;
    t->dims = dims.data;
    t->loc = loc;
    return t;
}

/* With parse.error custom, bison calls yyerror only when its stack is full,
 * which only deep nesting can do (lists are left recursive). */
static void yyerror(const Loc *loc, yyscan_t scanner, ParseState *ps, const char *msg) {
    error_at(*loc, "expression nested too deeply");
}

/* ---- syntax error messages ---------------------------------------------- */

enum { MAX_ALTS = 3 };

/* The found token in words: 'spelling' (cut short), newline, end of file. */
static const char *found_text(const ParseState *ps, yysymbol_kind_t tok) {
    if (tok == YYSYMBOL_YYEOF)
        return "end of file";
    if (tok == YYSYMBOL_NEWLINE)
        return "newline";
    if (ps->tok_len <= 24)
        return xfmt("'%.*s'", ps->tok_len, ps->tok_text);
    int n = 20;
    while (n > 0 && (ps->tok_text[n] & 0xC0) == 0x80)
        n--;    /* do not cut a UTF-8 sequence in two */
    return xfmt("'%.*s...'", n, ps->tok_text);
}

/* Whether t is the single-character token c. */
static bool is_char(yysymbol_kind_t t, int c) {
    const char *s = yysymbol_name(t);
    return s[0] == '\'' && s[1] == c && s[2] == '\'';
}

static bool is_sep(yysymbol_kind_t t) {
    return t == YYSYMBOL_NEWLINE || is_char(t, ';');
}

static bool is_expr_start(yysymbol_kind_t t) {
    return t == YYSYMBOL_NAME || t == YYSYMBOL_NUMBER || t == YYSYMBOL_STRING ||
           t == YYSYMBOL_DTYPE || t == YYSYMBOL_IF || t == YYSYMBOL_EVAL || t == YYSYMBOL_TRUE ||
           t == YYSYMBOL_FALSE || is_char(t, '(') || is_char(t, '[') || is_char(t, '{') ||
           is_char(t, '-') || is_char(t, '!');
}

/* Tokens that continue a complete expression (operators, call, field, index). */
static bool is_continuation(yysymbol_kind_t t) {
    const char *s = yysymbol_name(t);
    return t == YYSYMBOL_POW || t == YYSYMBOL_EQ || t == YYSYMBOL_NE || t == YYSYMBOL_LE ||
           t == YYSYMBOL_GE || t == YYSYMBOL_AND || t == YYSYMBOL_OR ||
           (s[0] == '\'' && s[2] == '\'' && strchr("+-*/%@<>([.", s[1]));
}

/* What the expected token t is called in a message; groups of tokens that
 * all start one thing are named by that thing. */
static const char *expected_text(yysymbol_kind_t t, const bool *has) {
    if (has[YYSYMBOL_NUMBER] && is_expr_start(t))
        return "an expression";
    if (has[YYSYMBOL_FROZEN] && (t == YYSYMBOL_NAME || t == YYSYMBOL_FROZEN || t == YYSYMBOL_DTYPE))
        return "a type";
    switch (t) {
    case YYSYMBOL_IMPORT: case YYSYMBOL_MODULE: case YYSYMBOL_RULE: case YYSYMBOL_OBJECTIVE:
    case YYSYMBOL_EXPERIMENT: case YYSYMBOL_EXPORT:
        return "a declaration";
    case YYSYMBOL_FN:
        return has[YYSYMBOL_IMPORT] ? "a declaration" : "'fn'";
    case YYSYMBOL_NEWLINE:
        return "end of statement";
    case YYSYMBOL_YYEOF:
        return "end of file";
    case YYSYMBOL_NAME:
        return "a name";
    case YYSYMBOL_STRING:
        return "a string";
    default:
        /* bison names a character token with its quotes ('(') and a
         * keyword or operator by its bare alias (else, <-) */
        if (is_char(t, ';'))
            return "end of statement";
        return yysymbol_name(t)[0] == '\'' ? yysymbol_name(t) : xfmt("'%s'", yysymbol_name(t));
    }
}

static bool is_keyword(const ParseState *ps, yysymbol_kind_t tok) {
    return tok != YYSYMBOL_NAME && ps->tok_len > 0 &&
           ((ps->tok_text[0] >= 'a' && ps->tok_text[0] <= 'z') ||
            (ps->tok_text[0] >= 'A' && ps->tok_text[0] <= 'Z'));
}

/* The innermost bracket open before the unexpected token (which, if it is
 * an opening bracket itself, the lexer has already pushed). */
static const Bracket *open_bracket(const ParseState *ps, yysymbol_kind_t tok) {
    int n = ps->brackets.len;
    if (n && (is_char(tok, '(') || is_char(tok, '[') || is_char(tok, '{')))
        n--;
    return n ? &ps->brackets.data[n - 1] : NULL;
}

/* Messages, tried in order (docs: tests/errors/syntax_*.lth show each):
 *   'if' is a keyword and cannot be used as a name
 *   'param' is only allowed in a module / '<-' is only allowed in a rule or objective
 *   expected ')' to close '(' but found X      (+ note at the '(')
 *   expected '<-' but found newline           (an expression used as a statement)
 *   expected A, B or C but found X            (at most three alternatives)
 *   unexpected X */
static int yyreport_syntax_error(const yypcontext_t *ctx, yyscan_t scanner, ParseState *ps) {
    yysymbol_kind_t tok = yypcontext_token(ctx);
    Loc at = *yypcontext_location(ctx);
    const char *found = found_text(ps, tok);
    yysymbol_kind_t exp[YYNTOKENS];
    int nexp = yypcontext_expected_tokens(ctx, exp, YYNTOKENS);
    bool has[YYNTOKENS] = {0};
    for (int i = 0; i < nexp; i++)
        has[exp[i]] = true;

    /* where a statement may start (a separator could come instead), a
     * statement keyword of another kind of body is the likely mistake */
    bool stmt_start = has[YYSYMBOL_NEWLINE] || !has[YYSYMBOL_NAME];
    bool in_rule = ps->decl_kw == TK_RULE || ps->decl_kw == TK_OBJECTIVE;
    if ((tok == YYSYMBOL_PARAM || tok == YYSYMBOL_BUFFER || tok == YYSYMBOL_SUB) &&
        ps->decl_kw != TK_MODULE && stmt_start)
        error_at(at, "%s is only allowed in a module", found);
    if ((tok == YYSYMBOL_STATE || tok == YYSYMBOL_REPORT || tok == YYSYMBOL_MINIMIZE ||
         tok == YYSYMBOL_MAXIMIZE) && !in_rule && stmt_start)
        error_at(at, "%s is only allowed in a rule or objective", found);
    if (tok == YYSYMBOL_LARROW && !in_rule)
        error_at(at, "%s is only allowed in a rule or objective", found);
    if (has[YYSYMBOL_NAME] && !has[YYSYMBOL_NUMBER] && !has[YYSYMBOL_FROZEN] && is_keyword(ps, tok))
        error_at(at, "%s is a keyword and cannot be used as a name", found);

    const Bracket *open = open_bracket(ps, tok);
    if (open) {
        int close = open->ch == '(' ? ')' : open->ch == '[' ? ']' : '}';
        bool expected = false;
        for (int i = 0; i < nexp; i++)
            expected |= is_char(exp[i], close);
        if (expected && (open->ch != '{' || tok == YYSYMBOL_YYEOF)) {
            diag_note(open->loc, "to match this '%c'", open->ch);
            error_at(at, "expected '%c' to close '%c' but found %s", close, open->ch, found);
        }
    }
    if (has[YYSYMBOL_LARROW] && (is_sep(tok) || tok == YYSYMBOL_YYEOF || is_char(tok, '}')))
        error_at(at, "expected '<-' but found %s", found);

    const char *alts[YYNTOKENS];
    int nalts = 0;
    /* after a complete expression ('+' could follow), operators are not
     * what the author meant unless the unexpected token is one */
    bool drop_continuations = has[YYTRANSLATE('+')] && !is_continuation(tok);
    for (int i = 0; i < nexp; i++) {
        yysymbol_kind_t t = exp[i];
        if (drop_continuations && is_continuation(t))
            continue;
        /* a newline before then/else is only a line break, not an option */
        if (t == YYSYMBOL_NEWLINE && (has[YYSYMBOL_THEN] || has[YYSYMBOL_ELSE]))
            continue;
        if (t == YYSYMBOL_YYEOF && (has[YYSYMBOL_NEWLINE] || has[YYSYMBOL_IMPORT]))
            continue;
        /* separators are always allowed where a declaration or an
         * expression may start; naming them adds nothing */
        if (is_sep(t) && (has[YYSYMBOL_IMPORT] || has[YYSYMBOL_NUMBER]))
            continue;
        const char *s = expected_text(t, has);
        bool dup = false;
        for (int j = 0; j < nalts; j++)
            dup |= !strcmp(alts[j], s);
        if (!dup)
            alts[nalts++] = s;
    }
    if (nalts == 0 || nalts > MAX_ALTS)
        error_at(at, "unexpected %s", found);
    const char *list = alts[0];
    for (int i = 1; i < nalts; i++)
        list = xfmt("%s%s%s", list, i == nalts - 1 ? " or " : ", ", alts[i]);
    error_at(at, "expected %s but found %s", list, found);
}
