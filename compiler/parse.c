/* parse.c: one file's text -> Program, by the flex scanner (grammar/lexer.l)
 * and the bison parser (grammar/parser.y).
 *
 * Errors leave by error_at()'s longjmp from deep inside yylex/yyparse. The
 * parser keeps its stacks in the arena, but flex mallocs its own buffers, so
 * parse_file catches the jump, destroys the scanner and passes the jump on
 * to whoever was recovering before (or exits, as error_at would have).
 */
#include <limits.h>
#include <stdlib.h>

#include "lethec.h"
#include "parser.h"

/* Deeper syntax trees than this are rejected, so that every recursive walk
 * over the AST (the checker's, the dumper's) has a small stack bound. The
 * parser's own stack limit (YYMAXDEPTH) cannot see left-nested trees such as
 * a long `a + b + c + ...`, which it builds without growing its stack. */
enum { MAX_EXPR_DEPTH = 1000 };

static void check_expr(const Expr *e, int depth);

static void check_stmts(Stmt *const *s, int n, int depth) {
    for (int i = 0; i < n; i++) {
        check_expr(s[i]->target, depth);
        check_expr(s[i]->value, depth);
        check_expr(s[i]->within, depth);
    }
}

static void check_type(const TypeExpr *t, int depth) {
    for (int i = 0; t && i < t->rank; i++)
        check_expr(t->dims[i], depth);
}

static void check_expr(const Expr *e, int depth) {
    if (!e)
        return;
    if (depth > MAX_EXPR_DEPTH)
        error_at(e->loc, "expression nested too deeply");
    check_expr(e->a, depth + 1);
    check_expr(e->b, depth + 1);
    check_expr(e->c, depth + 1);
    for (int i = 0; i < e->nargs; i++)
        check_expr(e->args[i].value, depth + 1);
    for (int i = 0; i < e->nitems; i++)
        check_expr(e->items[i], depth + 1);
    check_stmts(e->lets, e->nlets, depth + 1);
    check_type(e->type, depth + 1);
}

static void check_params(const Param *p, int n) {
    for (int i = 0; i < n; i++) {
        check_type(p[i].type, 1);
        check_expr(p[i].deflt, 1);
    }
}

static void check_fn(const FnDecl *fn) {
    check_params(fn->params, fn->nparams);
    check_type(fn->ret, 1);
    check_expr(fn->body, 1);
}

static void check_depth(const Program *p) {
    for (int i = 0; i < p->ndecls; i++) {
        const Decl *d = p->decls[i];
        check_params(d->params, d->nparams);
        for (int j = 0; j < d->nitems; j++) {
            check_type(d->items[j].type, 1);
            check_expr(d->items[j].value, 1);
            if (d->items[j].fn)
                check_fn(d->items[j].fn);
        }
        if (d->fn)
            check_fn(d->fn);
        check_stmts(d->stmts, d->nstmts, 1);
        for (int j = 0; j < d->nentries; j++) {
            check_expr(d->entries[j].value, 1);
            for (int k = 0; k < d->entries[j].nclauses; k++)
                check_expr(d->entries[j].clauses[k].value, 1);
        }
        check_expr(d->value, 1);
    }
}

Program *parse_file(const SrcFile *file) {
    if (file->len > INT_MAX / 2)
        error_at((Loc){file, 1, 1, 1}, "file too large");
    ParseState *ps = xalloc(sizeof *ps);
    ps->file = file;
    ps->line = ps->col = 1;
    ps->eof_loc = (Loc){file, 1, 1, 1};
    vec_push(&ps->line_starts, (size_t)0);

    yyscan_t scanner;
    if (yylex_init_extra(ps, &scanner))
        error_noloc("out of memory");
    jmp_buf *outer = diag_recover;
    jmp_buf here;
    diag_recover = &here;
    if (setjmp(here)) {
        diag_recover = outer;
        yylex_destroy(scanner);
        if (outer)
            longjmp(*outer, 1);
        exit(1);
    }
    yy_scan_bytes(file->text, (int)file->len, scanner);
    /* every failure has longjmp'd above: a syntax error, or a full stack */
    int rc = yyparse(scanner, ps);
    diag_recover = outer;
    yylex_destroy(scanner);
    ASSERT(rc == 0);

    Program *prog = xalloc(sizeof *prog);
    prog->file = file;
    prog->decls = ps->decls.data;
    prog->ndecls = ps->decls.len;
    check_depth(prog);
    return prog;
}
