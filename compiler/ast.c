/* ast.c: syntax tree constructors and the `lethec -d ast` dump.
 *
 * The dump prints one line per declaration, module item, statement and
 * experiment entry, indented by nesting, with every expression written back
 * in source syntax but fully parenthesized, so that precedence and
 * associativity are visible at a glance:
 *
 *   module Linear(fin: int, fout: int)
 *     param w: f32[fout, fin] = normal(std = sqrt((1.0 / fin)))
 *     fn (x: f32[N, fin]) -> f32[N, fout] = ((x @ transpose(w)) + b)
 *   rule sgd(m: model, batch: data, lr: f32 = 0.1)
 *     v <- ((momentum * v) + g)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lethec.h"

Expr *expr_new(ExprKind kind, Loc loc) {
    Expr *e = xalloc(sizeof *e);
    e->kind = kind;
    e->loc = loc;
    return e;
}

const char *binop_spelling(int op) {
    switch (op) {
    case BO_ADD: return "+";
    case BO_SUB: return "-";
    case BO_MUL: return "*";
    case BO_DIV: return "/";
    case BO_MOD: return "%";
    case BO_POW: return "**";
    case BO_MATMUL: return "@";
    case BO_EQ: return "==";
    case BO_NE: return "!=";
    case BO_LT: return "<";
    case BO_LE: return "<=";
    case BO_GT: return ">";
    case BO_GE: return ">=";
    case BO_AND: return "&&";
    case BO_OR: return "||";
    case BO_NEG: return "-";
    case BO_NOT: return "!";
    }
    return "?";
}

/* The shortest spelling that reads back as exactly v, always with a '.' or
 * an exponent so that a float never looks like an int. */
static void print_float(FILE *out, double v) {
    char buf[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    fputs(buf, out);
    if (!strpbrk(buf, ".eEni"))
        fputs(".0", out);
}

static void print_string(FILE *out, const char *s) {
    fputc('"', out);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fprintf(out, "\\%c", *s);
        else if (*s == '\n')
            fputs("\\n", out);
        else
            fputc(*s, out);
    }
    fputc('"', out);
}

static void print_expr(FILE *out, const Expr *e);

static void print_list(FILE *out, Expr *const *items, int n) {
    for (int i = 0; i < n; i++) {
        if (i)
            fputs(", ", out);
        print_expr(out, items[i]);
    }
}

static void print_type(FILE *out, const TypeExpr *t) {
    switch (t->kind) {
    case TY_NONE: break;
    case TY_INT: fputs("int", out); break;
    case TY_FLOAT: fputs("float", out); break;
    case TY_MODEL: fputs(t->frozen ? "frozen model" : "model", out); break;
    case TY_DATA: fputs("data", out); break;
    case TY_TENSOR:
        fputs(dtype_name(t->dtype), out);
        if (t->rank) {
            fputc('[', out);
            print_list(out, t->dims, t->rank);
            fputc(']', out);
        }
        break;
    }
}

static void print_expr(FILE *out, const Expr *e) {
    if (!e)
        return;
    switch (e->kind) {
    case EX_INT: fprintf(out, "%lld", (long long)e->ival); break;
    case EX_FLOAT: print_float(out, e->fval); break;
    case EX_PERCENT:
        /* %.15g undoes the /100 rounding: 2.5% -> 0.025 -> "2.5" */
        fprintf(out, "%.15g%%", e->fval * 100);
        break;
    case EX_BOOL: fputs(e->ival ? "true" : "false", out); break;
    case EX_STRING: print_string(out, e->sval); break;
    case EX_NAME: fputs(e->sval, out); break;
    case EX_UNARY:
        fprintf(out, "(%s", binop_spelling(e->op));
        print_expr(out, e->a);
        fputc(')', out);
        break;
    case EX_BINARY:
        fputc('(', out);
        print_expr(out, e->a);
        fprintf(out, " %s ", binop_spelling(e->op));
        print_expr(out, e->b);
        fputc(')', out);
        break;
    case EX_CALL:
        print_expr(out, e->a);
        fputc('(', out);
        for (int i = 0; i < e->nargs; i++) {
            if (i)
                fputs(", ", out);
            if (e->args[i].name)
                fprintf(out, "%s = ", e->args[i].name);
            print_expr(out, e->args[i].value);
        }
        fputc(')', out);
        break;
    case EX_FIELD:
        print_expr(out, e->a);
        fprintf(out, ".%s", e->sval);
        break;
    case EX_INDEX:
        print_expr(out, e->a);
        fputc('[', out);
        print_list(out, e->items, e->nitems);
        fputc(']', out);
        break;
    case EX_SLICE:
        print_expr(out, e->a);
        fputc(':', out);
        print_expr(out, e->b);
        if (e->c) {
            fputc(':', out);
            print_expr(out, e->c);
        }
        break;
    case EX_ELLIPSIS: fputs("...", out); break;
    case EX_LIST:
        fputc('[', out);
        print_list(out, e->items, e->nitems);
        fputc(']', out);
        break;
    case EX_COMP:
        fputc('[', out);
        print_expr(out, e->a);
        fprintf(out, " for %s in ", e->sval);
        print_expr(out, e->b);
        fputc(']', out);
        break;
    case EX_IF:
        fputs("(if ", out);
        print_expr(out, e->a);
        fputs(" then ", out);
        print_expr(out, e->b);
        fputs(" else ", out);
        print_expr(out, e->c);
        fputc(')', out);
        break;
    case EX_BLOCK:
        fputs("{ ", out);
        for (int i = 0; i < e->nlets; i++) {
            fprintf(out, "let %s = ", e->lets[i]->name);
            print_expr(out, e->lets[i]->value);
            fputs("; ", out);
        }
        print_expr(out, e->a);
        fputs(" }", out);
        break;
    case EX_EVAL:
        fputs("(eval ", out);
        print_expr(out, e->a);
        fputc(')', out);
        break;
    case EX_TYPE: print_type(out, e->type); break;
    }
}

static void print_params(FILE *out, const Param *p, int n) {
    fputc('(', out);
    for (int i = 0; i < n; i++) {
        if (i)
            fputs(", ", out);
        fputs(p[i].name, out);
        if (p[i].type->kind != TY_NONE) {
            fputs(": ", out);
            print_type(out, p[i].type);
        }
        if (p[i].deflt) {
            fputs(" = ", out);
            print_expr(out, p[i].deflt);
        }
    }
    fputc(')', out);
}

/* A function whose body is a block prints it over several lines, at the
 * given indentation; every other expression stays on one line. */
static void print_fn(FILE *out, const FnDecl *fn, const char *indent) {
    fprintf(out, "%sfn %s", indent, fn->name ? fn->name : "");
    print_params(out, fn->params, fn->nparams);
    if (fn->ret) {
        fputs(" -> ", out);
        print_type(out, fn->ret);
    }
    const Expr *body = fn->body;
    if (body->kind != EX_BLOCK) {
        fputs(" = ", out);
        print_expr(out, body);
        fputc('\n', out);
        return;
    }
    fputs(" {\n", out);
    for (int i = 0; i < body->nlets; i++) {
        fprintf(out, "%s  let %s = ", indent, body->lets[i]->name);
        print_expr(out, body->lets[i]->value);
        fputc('\n', out);
    }
    fprintf(out, "%s  ", indent);
    print_expr(out, body->a);
    fprintf(out, "\n%s}\n", indent);
}

static void print_stmt(FILE *out, const Stmt *s) {
    static const char *const kw[] = {
        [ST_LET] = "let", [ST_STATE] = "state", [ST_REPORT] = "report",
        [ST_MINIMIZE] = "minimize", [ST_MAXIMIZE] = "maximize",
    };
    fputs("  ", out);
    switch (s->kind) {
    case ST_ASSIGN:
        print_expr(out, s->target);
        fputs(" <- ", out);
        print_expr(out, s->value);
        break;
    case ST_MINIMIZE:
    case ST_MAXIMIZE:
        fprintf(out, "%s ", kw[s->kind]);
        print_expr(out, s->value);
        fprintf(out, " over %s", s->name);
        if (s->within) {
            fputs(" within ", out);
            print_expr(out, s->within);
        }
        break;
    default:
        fprintf(out, "%s %s = ", kw[s->kind], s->name);
        print_expr(out, s->value);
    }
    fputc('\n', out);
}

static void print_item(FILE *out, const ModItem *it) {
    static const char *const kw[] = {
        [MI_PARAM] = "param", [MI_BUFFER] = "buffer", [MI_SUB] = "sub", [MI_LET] = "let",
    };
    if (it->kind == MI_FN) {
        print_fn(out, it->fn, "  ");
        return;
    }
    fprintf(out, "  %s %s", kw[it->kind], it->name);
    if (it->type) {
        fputs(": ", out);
        print_type(out, it->type);
    }
    fputs(" = ", out);
    print_expr(out, it->value);
    fputc('\n', out);
}

static void print_entry(FILE *out, const ExpEntry *en) {
    fprintf(out, "  %s = ", en->key);
    print_expr(out, en->value);
    for (int i = 0; i < en->nclauses; i++) {
        const Clause *c = &en->clauses[i];
        if (!strcmp(c->word, "for")) {
            fputs(" for ", out);
            print_expr(out, c->value);
            fprintf(out, " %s", c->unit);
        } else if (!strcmp(c->word, "within")) {
            fputs(" within ", out);
            print_expr(out, c->value);
            fprintf(out, " of %s", c->unit);
        } else {
            fprintf(out, ", %s ", c->word);
            print_expr(out, c->value);
        }
    }
    fputc('\n', out);
}

void ast_dump(const Program *p, void *FILE_out) {
    FILE *out = FILE_out;
    for (int i = 0; i < p->ndecls; i++) {
        const Decl *d = p->decls[i];
        switch (d->kind) {
        case D_IMPORT:
            fputs("import ", out);
            print_string(out, d->name);
            fputc('\n', out);
            break;
        case D_MODULE:
            fprintf(out, "module %s", d->name);
            print_params(out, d->params, d->nparams);
            fputc('\n', out);
            for (int j = 0; j < d->nitems; j++)
                print_item(out, &d->items[j]);
            break;
        case D_FN:
            print_fn(out, d->fn, "");
            break;
        case D_RULE:
        case D_OBJECTIVE:
            fprintf(out, "%s %s", d->kind == D_RULE ? "rule" : "objective", d->name);
            print_params(out, d->params, d->nparams);
            fputc('\n', out);
            for (int j = 0; j < d->nstmts; j++)
                print_stmt(out, d->stmts[j]);
            break;
        case D_EXPERIMENT:
            fprintf(out, "experiment %s\n", d->name);
            for (int j = 0; j < d->nentries; j++)
                print_entry(out, &d->entries[j]);
            break;
        case D_EXPORT:
            fprintf(out, "export %s = ", d->name);
            print_expr(out, d->value);
            fputc('\n', out);
            break;
        }
    }
}
