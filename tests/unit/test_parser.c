/* test_parser.c: the front end (grammar/lexer.l, grammar/parser.y,
 * compiler/parse.c, compiler/ast.c) in process.
 *
 * Most checks parse a snippet and compare the `-d ast` dump, which writes
 * every expression fully parenthesized, so one string pins down precedence,
 * associativity and node kinds. Locations and fields the dump does not show
 * are checked on the tree itself. Error checks compare the first line of
 * stderr exactly (tests/errors/ holds the full golden outputs).
 *
 * Run from the repository root (tests/run.sh does): it reads docs/language.md
 * and tests/lth/language_examples.lth.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE     /* asprintf, memmem (llvm-config's flags may define it already) */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "lethec.h"

/* ---- parsing a snippet -------------------------------------------------- */

typedef struct Result {
    Program *prog;      /* NULL on error; valid until the next parse */
    char *dump;         /* ast_dump output, or "" */
    char *err;          /* everything written to stderr */
} Result;

static char *read_stream(FILE *f) {
    fflush(f);
    long n = ftell(f);
    char *s = calloc(1, (size_t)n + 1);
    rewind(f);
    if (n > 0 && fread(s, 1, (size_t)n, f) != (size_t)n)
        s[0] = 0;
    return s;
}

/* Parse bytes as file "t.lth", catching the error and stderr. Resets the
 * arena first, so a Result lives until the next call. */
static Result parse_bytes(const char *src, size_t len) {
    static Result r;
    free(r.dump);
    free(r.err);
    r = (Result){0};
    arena_reset();

    FILE *errf = tmpfile();
    fflush(stderr);
    int saved = dup(2);
    dup2(fileno(errf), 2);
    jmp_buf jb;
    diag_recover = &jb;
    if (!setjmp(jb)) {
        SrcFile *f = srcfile_from_string("t.lth", src, len);
        r.prog = parse_file(f);
    }
    diag_recover = NULL;
    fflush(stderr);
    dup2(saved, 2);
    close(saved);

    fseek(errf, 0, SEEK_END);
    r.err = read_stream(errf);
    fclose(errf);
    if (r.prog) {
        FILE *d = tmpfile();
        ast_dump(r.prog, d);
        fseek(d, 0, SEEK_END);
        r.dump = read_stream(d);
        fclose(d);
    } else {
        r.dump = strdup("");
    }
    return r;
}

static Result parse(const char *src) { return parse_bytes(src, strlen(src)); }

/* the first line of stderr, without its newline */
static char *first_line(const char *s) {
    static char buf[1024];
    size_t n = strcspn(s, "\n");
    if (n >= sizeof buf)
        n = sizeof buf - 1;
    memcpy(buf, s, n);
    buf[n] = 0;
    return buf;
}

static void expect_dump(const char *name, const char *src, const char *want) {
    Result r = parse(src);
    if (!r.prog)
        th_fail(name, "parse error: %s", first_line(r.err));
    else
        th_check(!strcmp(r.dump, want), name, "dump\n%s\nwant\n%s", r.dump, want);
}

/* `export e = SRC` must dump as `export e = WANT` */
static void expect_expr(const char *name, const char *src, const char *want) {
    char *in, *out;
    if (asprintf(&in, "export e = %s\n", src) < 0 || asprintf(&out, "export e = %s\n", want) < 0)
        abort();
    expect_dump(name, in, out);
    free(in);
    free(out);
}

static void expect_error(const char *name, const char *src, const char *want) {
    Result r = parse(src);
    if (r.prog)
        th_fail(name, "parsed, but expected error: %s", want);
    else
        th_check(!strcmp(first_line(r.err), want), name, "got   '%s'\nwant  '%s'", first_line(r.err), want);
}

static bool loc_is(Loc l, int line, int col, int len) {
    return l.file && l.line == line && l.col == col && l.len == len;
}

#define LOC_FMT "%d:%d+%d"
#define LOC_ARGS(l) (l).line, (l).col, (l).len

static Loc loc_of(const Expr *e) { return e ? e->loc : (Loc){0}; }

/* the value of `export e = ...` in the last parse */
static Expr *export_value(Result r) {
    return r.prog && r.prog->ndecls ? r.prog->decls[0]->value : NULL;
}

/* ---- the examples of docs/language.md ------------------------------------ */

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    char *s = read_stream(f);
    fclose(f);
    return s;
}

/* lines trimmed, blank lines dropped, each ending in \n */
static char *normalize(const char *s, size_t n) {
    char *out = malloc(n + 2), *o = out;
    const char *end = s + n;
    while (s < end) {
        const char *eol = memchr(s, '\n', (size_t)(end - s));
        if (!eol)
            eol = end;
        const char *a = s, *b = eol;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\r'))
            b--;
        if (b > a) {
            memcpy(o, a, (size_t)(b - a));
            o += b - a;
            *o++ = '\n';
        }
        s = eol + 1;
    }
    *o = 0;
    return out;
}

static void test_examples(void) {
    char *doc = read_file("docs/language.md");
    char *ex = read_file("tests/lth/language_examples.lth");
    if (!doc || !ex) {
        th_fail("examples/files", "run from the repository root (docs/language.md, tests/lth/language_examples.lth)");
        return;
    }
    char *norm_ex = normalize(ex, strlen(ex));
    int nblocks = 0, missing = 0;
    const char *p = doc;
    while ((p = strstr(p, "```")) != NULL) {
        const char *start = strchr(p, '\n');
        if (!start)
            break;
        start++;
        const char *end = strstr(start, "```");
        if (!end)
            break;
        /* the grammar is the one block that is not .lth */
        if (!memmem(start, (size_t)(end - start), "program    =", 12)) {
            nblocks++;
            char *blk = normalize(start, (size_t)(end - start));
            if (!strstr(norm_ex, blk)) {
                missing++;
                th_fail(xfmt("examples/doc_block_%d", nblocks), "not in tests/lth/language_examples.lth:\n%s", blk);
            }
            free(blk);
        }
        p = end + 3;
    }
    th_check(nblocks >= 8 && !missing, "examples/in_sync_with_doc", "%d blocks, %d missing", nblocks, missing);

    Result r = parse(ex);
    if (!th_check(r.prog != NULL, "examples/parse", "%s", r.err))
        return;
    th_check(r.prog->ndecls == 16, "examples/decl_count", "%d declarations", r.prog->ndecls);
    static const char *const lines[] = {
        "  param w: f32[fout, fin] = normal(std = sqrt((1.0 / fin)))\n",
        "  fn (x: f32[N, fin]) -> f32[N, fout] = ((x @ transpose(w)) + b)\n",
        "  let d = kl_div((eval teacher(forget.x)), student(forget.x), t)\n",
        "  let s = (a + b)\n",
        "  v <- (((momentum * v) + grad(loss, m.params)) + (wd * m.params))\n",
        "  m.params <- (m.params - (lr * v))\n",
        "  minimize (1 - cosine(gt, gp)) over delta within linf(eps)\n",
        "objective gradient_matching(m: frozen model, poison: data, delta: f32[P, C, H, W], target: data, adv: i32[1], eps: f32 = 0.0627)\n",
        "  train = sgd(lr = 0.1, momentum = 0.9, wd = 0.0005) for 10 epochs, batch 128\n",
        "  unlearn = [retrain, gd, ngd(sigma = 0.001), ga] within 10% of train\n",
        "  poison = gaussian(fraction = 2.5%, eps = 0.1)\n",
        "export mlp_step = sgd(MLP(784, 64, 10), data(x = f32[32, 784], y = i32[32]))\n",
        "  fn (x) = fc2(relu(fc1(x)))\n",
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        if (!strstr(r.dump, lines[i]))
            bad++, printf("# missing dump line: %s", lines[i]);
    th_check(!bad, "examples/dump", "%d dump lines missing; dump:\n%s", bad, r.dump);
    const char *kinds = "";
    for (int i = 0; i < r.prog->ndecls; i++)
        kinds = xfmt("%s%d", kinds, r.prog->decls[i]->kind);
    th_check(!strcmp(kinds, "0222122344512662"), "examples/source_order", "decl kinds %s", kinds);
    free(norm_ex);
    free(doc);
    free(ex);
}

/* ---- expressions ---------------------------------------------------------- */

static void test_precedence(void) {
    expect_expr("expr/neg_pow", "-x**2", "(-(x ** 2))");
    expect_expr("expr/pow_right_assoc", "a ** b ** c", "(a ** (b ** c))");
    expect_expr("expr/pow_neg_exponent", "2 ** -1", "(2 ** (-1))");
    expect_expr("expr/matmul_plus", "a @ b + c", "((a @ b) + c)");
    expect_expr("expr/plus_matmul", "c + a @ b", "(c + (a @ b))");
    expect_expr("expr/mul_over_add", "a + b * c", "(a + (b * c))");
    expect_expr("expr/sub_left_assoc", "a - b - c", "((a - b) - c)");
    expect_expr("expr/div_left_assoc", "a / b / c", "((a / b) / c)");
    expect_expr("expr/mod_and_percent", "a % b + 10%", "((a % b) + 10%)");
    expect_expr("expr/not_and_or", "!a && b || c", "(((!a) && b) || c)");
    expect_expr("expr/and_over_or", "a || b && c", "(a || (b && c))");
    expect_expr("expr/cmp_over_and", "a < b && c >= d", "((a < b) && (c >= d))");
    expect_expr("expr/cmp_all", "[a == b, a != b, a <= b, a > b]", "[(a == b), (a != b), (a <= b), (a > b)]");
    expect_expr("expr/sum_in_cmp", "a == b + 1", "(a == (b + 1))");
    expect_expr("expr/parens", "(a + b) * c", "((a + b) * c)");
    expect_expr("expr/double_neg", "- -a", "(-(-a))");
    expect_expr("expr/neg_call", "-f(x).y[0]", "(-f(x).y[0])");
    expect_expr("expr/pow_of_call", "f(x) ** 2", "(f(x) ** 2)");
    expect_expr("expr/if", "if a then b else c", "(if a then b else c)");
    expect_expr("expr/if_else_if", "if a then b else if c then d else e",
                "(if a then b else (if c then d else e))");
    expect_expr("expr/if_lowest", "if a < b then x + 1 else y * 2", "(if (a < b) then (x + 1) else (y * 2))");
    expect_expr("expr/if_in_parens", "1 + (if a then b else c)", "(1 + (if a then b else c))");
    expect_error("expr/if_not_operand", "export e = 1 + if a then b else c\n",
                 "t.lth:1:16: error: expected an expression but found 'if'");
    expect_error("expr/cmp_not_chained", "export e = a < b < c\n", "t.lth:1:18: error: unexpected '<'");

    Result r = parse("export e = a +  b ** c\n");
    Expr *e = export_value(r);
    th_check(e && e->kind == EX_BINARY && e->op == BO_ADD && loc_is(e->loc, 1, 14, 1),
             "loc/binary_is_operator", "got " LOC_FMT, LOC_ARGS(loc_of(e)));
    th_check(e && e->b->op == BO_POW && loc_is(e->b->loc, 1, 19, 2), "loc/pow_operator", "got " LOC_FMT,
             LOC_ARGS(loc_of(e ? e->b : NULL)));
    th_check(e && e->a->kind == EX_NAME && loc_is(e->a->loc, 1, 12, 1), "loc/name", "got " LOC_FMT,
             LOC_ARGS(loc_of(e ? e->a : NULL)));
}

static void test_literals(void) {
    expect_expr("lit/numbers", "[42, 0.1, 1e-5, 5e-4, .5, 1.0, 2.5e3]", "[42, 0.1, 1e-05, 0.0005, 0.5, 1.0, 2.5e+03]");
    expect_expr("lit/percent", "[10%, 2.5%, 100%, 1e1%]", "[10%, 2.5%, 100%, 10%]");
    expect_expr("lit/bools", "[true, false]", "[true, false]");
    expect_expr("lit/string", "\"a\\\"b\\\\c\\nd\"", "\"a\\\"b\\\\c\\nd\"");
    expect_expr("lit/utf8_string", "\"caf\xc3\xa9\"", "\"caf\xc3\xa9\"");
    expect_expr("lit/int_max", "9223372036854775807", "9223372036854775807");

    Result r = parse("export e = [42, 10%, 2.5%, .5, \"a\\\"b\", true]\n");
    Expr *e = export_value(r);
    bool ok = e && e->kind == EX_LIST && e->nitems == 6 &&
              e->items[0]->kind == EX_INT && e->items[0]->ival == 42 &&
              e->items[1]->kind == EX_PERCENT && e->items[1]->fval == 0.1 &&
              e->items[2]->kind == EX_PERCENT && e->items[2]->fval == 0.025 &&
              e->items[3]->kind == EX_FLOAT && e->items[3]->fval == 0.5 &&
              e->items[4]->kind == EX_STRING && !strcmp(e->items[4]->sval, "a\"b") &&
              e->items[5]->kind == EX_BOOL && e->items[5]->ival == 1;
    th_check(ok, "lit/values", "dump %s", r.dump);
    th_check(e && loc_is(e->items[1]->loc, 1, 17, 3) && loc_is(e->items[4]->loc, 1, 32, 6), "loc/literals",
             "percent " LOC_FMT ", string " LOC_FMT, LOC_ARGS(loc_of(e ? e->items[1] : NULL)),
             LOC_ARGS(loc_of(e ? e->items[4] : NULL)));

    expect_error("lit/int_too_large", "export e = 9223372036854775808\n", "t.lth:1:12: error: number too large");
    expect_error("lit/float_too_large", "export e = 1e400\n", "t.lth:1:12: error: number too large");
    expect_error("lit/percent_too_large", "export e = 1e400%\n", "t.lth:1:12: error: number too large");
    expect_error("lit/bad_exponent", "export e = 1e\n", "t.lth:1:12: error: invalid number '1e'");
    expect_error("lit/bad_exponent_sign", "export e = 2.5e-\n", "t.lth:1:12: error: invalid number '2.5e-'");
    expect_error("lit/letters_after_number", "export e = 3x\n", "t.lth:1:12: error: invalid number '3x'");
    expect_error("lit/unterminated_string", "import \"abc\n", "t.lth:1:8: error: unterminated string");
    expect_error("lit/unterminated_string_eof", "import \"abc\\", "t.lth:1:8: error: unterminated string");
    expect_error("lit/bad_escape", "import \"a\\tb\"\n", "t.lth:1:10: error: unknown escape sequence '\\t' in string");
    expect_error("lit/bad_utf8_in_string", "import \"a\xff\"\n", "t.lth:1:10: error: invalid UTF-8 in string (byte 0xff)");
    expect_error("lit/overlong_utf8_in_string", "import \"\xc0\xaf\"\n",
                 "t.lth:1:9: error: invalid UTF-8 in string (byte 0xc0)");
}

/* inputs with NUL bytes cannot go through strlen */
static void test_bad_bytes(void) {
    static const char nul[] = "export e = a\0b\n";
    Result r = parse_bytes(nul, sizeof nul - 1);
    th_check(!r.prog && !strcmp(first_line(r.err), "t.lth:1:13: error: unexpected character (byte 0x00)"),
             "lex/nul_byte", "%s", r.err);
    static const char nul_str[] = "import \"a\0b\"\n";
    r = parse_bytes(nul_str, sizeof nul_str - 1);
    th_check(!r.prog && !strcmp(first_line(r.err), "t.lth:1:10: error: unexpected character (byte 0x00) in string"),
             "lex/nul_in_string", "%s", r.err);
    expect_error("lex/invalid_utf8", "export e = a\xff\n", "t.lth:1:13: error: unexpected character (byte 0xff)");
    expect_error("lex/truncated_utf8", "export e = \xe2\x80\n", "t.lth:1:12: error: unexpected character (byte 0xe2)");
    expect_error("lex/surrogate_utf8", "export e = \xed\xa0\x80\n", "t.lth:1:12: error: unexpected character (byte 0xed)");
    expect_error("lex/unicode_char", "export e = a \xe2\x80\x9c b\n",
                 "t.lth:1:14: error: unexpected character '\xe2\x80\x9c' (U+201C)");
    expect_error("lex/dollar", "export e = a $ b\n", "t.lth:1:14: error: unexpected character '$'");
    expect_error("lex/single_ampersand", "export e = a & b\n", "t.lth:1:14: error: unexpected character '&'");
    expect_error("lex/control_char", "export e = a\x01\n", "t.lth:1:13: error: unexpected character (byte 0x01)");
    expect_dump("lex/bytes_in_comment", "# \xff\x01 \xe2\x80\x9c\nexport e = 1 # \xc0\n", "export e = 1\n");
    static const char nul_comment[] = "# a\0b\nexport e = 1\n";
    r = parse_bytes(nul_comment, sizeof nul_comment - 1);
    th_check(r.prog && !strcmp(r.dump, "export e = 1\n"), "lex/nul_in_comment", "%s", r.err);
}

static void test_postfix(void) {
    expect_expr("postfix/call_field_index", "m.features(x)[0].y", "m.features(x)[0].y");
    expect_expr("postfix/call_chain", "f(x)(y)", "f(x)(y)");
    expect_expr("postfix/kwargs", "conv2d(x, w, stride = 2, pad = 1)", "conv2d(x, w, stride = 2, pad = 1)");
    expect_expr("postfix/trailing_commas", "f(a, b = [1, 2,],)", "f(a, b = [1, 2])");
    expect_expr("postfix/empty_call_list", "f([], g())", "f([], g())");
    expect_expr("postfix/slices", "x[:, 0:4, ::2, i, ...]", "x[:, 0:4, ::2, i, ...]");
    expect_expr("postfix/slice_forms", "x[1:, :-1, 1:2:3, ::]", "x[1:, :(-1), 1:2:3, :]");
    expect_expr("postfix/eval", "eval m(x)", "(eval m(x))");
    expect_expr("postfix/eval_method", "eval m.features(x)", "(eval m.features(x))");
    expect_expr("postfix/eval_in_sum", "eval m(x) + 1", "((eval m(x)) + 1)");
    expect_expr("postfix/neg_eval", "-eval m(x)", "(-(eval m(x)))");
    expect_expr("postfix/cast_call", "f32(x) + i32(y) + bool(z) + f64(w)", "(((f32(x) + i32(y)) + bool(z)) + f64(w))");
    expect_expr("postfix/cast_then_index", "f32(x)[0]", "f32(x)[0]");
    expect_expr("postfix/type_values", "[f32[32, 784], i32[32], f64[], bool]", "[f32[32, 784], i32[32], f64, bool]");
    expect_expr("postfix/data_record", "data(x = f32[32, 784], y = i32[32])", "data(x = f32[32, 784], y = i32[32])");
    expect_expr("postfix/block", "{ let a = 1\n let b = a * 2; a + b }", "{ let a = 1; let b = (a * 2); (a + b) }");
    expect_expr("postfix/block_only_value", "{ x }", "{ x }");
    expect_expr("postfix/block_newlines", "{\n let a = 1\n\n a\n}", "{ let a = 1; a }");
    expect_expr("postfix/block_in_call", "f({ let a = 1\n a }, 2)", "f({ let a = 1; a }, 2)");

    Result r = parse("export e = x[:, 0:4, ::2, i, ...]\n");
    Expr *e = export_value(r);
    bool ok = e && e->kind == EX_INDEX && e->nitems == 5 &&
              e->items[0]->kind == EX_SLICE && !e->items[0]->a && !e->items[0]->b && !e->items[0]->c &&
              e->items[1]->kind == EX_SLICE && e->items[1]->a->ival == 0 && e->items[1]->b->ival == 4 && !e->items[1]->c &&
              e->items[2]->kind == EX_SLICE && !e->items[2]->a && !e->items[2]->b && e->items[2]->c->ival == 2 &&
              e->items[3]->kind == EX_NAME && e->items[4]->kind == EX_ELLIPSIS;
    th_check(ok, "postfix/slice_fields", "%s", r.dump);
    th_check(e && loc_is(e->loc, 1, 12, 22) && loc_is(e->items[0]->loc, 1, 14, 1) &&
             loc_is(e->items[1]->loc, 1, 17, 3) && loc_is(e->items[2]->loc, 1, 22, 3) &&
             loc_is(e->items[4]->loc, 1, 30, 3),
             "loc/slices", "index " LOC_FMT, LOC_ARGS(loc_of(e)));

    r = parse("export e = f(a, k = b)\n");
    e = export_value(r);
    ok = e && e->kind == EX_CALL && e->nargs == 2 && !e->args[0].name && !strcmp(e->args[1].name, "k") &&
         loc_is(e->loc, 1, 12, 11) && loc_is(e->args[0].loc, 1, 14, 1) && loc_is(e->args[1].loc, 1, 17, 1);
    th_check(ok, "loc/call_and_args", "%s", r.dump);

    r = parse("export e = eval m.f(x)\n");
    e = export_value(r);
    ok = e && e->kind == EX_EVAL && e->a->kind == EX_CALL && e->a->a->kind == EX_FIELD &&
         !strcmp(e->a->a->sval, "f") && loc_is(e->loc, 1, 12, 11) && loc_is(e->a->a->loc, 1, 17, 3);
    th_check(ok, "postfix/eval_structure", "%s", r.dump);

    r = parse("export e = f32(x)\n");
    e = export_value(r);
    ok = e && e->kind == EX_CALL && e->a->kind == EX_TYPE && e->a->type->kind == TY_TENSOR &&
         e->a->type->dtype == DT_F32 && e->a->type->rank == 0 && e->nargs == 1;
    th_check(ok, "postfix/cast_structure", "%s", r.dump);

    r = parse("export e = f64[N, 2*w]\n");
    e = export_value(r);
    ok = e && e->kind == EX_TYPE && e->type->dtype == DT_F64 && e->type->rank == 2 &&
         e->type->dims[0]->kind == EX_NAME && e->type->dims[1]->kind == EX_BINARY && loc_is(e->loc, 1, 12, 11);
    th_check(ok, "postfix/type_value_structure", "%s", r.dump);

    r = parse("export e = {\n  let a = 1\n  a }\n");
    e = export_value(r);
    ok = e && e->kind == EX_BLOCK && e->nlets == 1 && e->lets[0]->kind == ST_LET &&
         !strcmp(e->lets[0]->name, "a") && loc_is(e->lets[0]->loc, 2, 3, 3) && loc_is(e->lets[0]->name_loc, 2, 7, 1) &&
         e->a->kind == EX_NAME && loc_is(e->loc, 1, 12, 1);
    th_check(ok, "postfix/block_structure", "%s", r.dump);

    expect_error("postfix/empty_index", "export e = x[]\n", "t.lth:1:14: error: expected an expression, '...' or ':' but found ']'");
    expect_error("postfix/block_needs_value", "fn f(x) {\n    let a = 1\n}\n",
                 "t.lth:3:1: error: expected an expression or 'let' but found '}'");
    expect_error("postfix/field_needs_name", "export e = m.3\n", "t.lth:1:13: error: expected end of statement but found '.3'");
    expect_error("postfix/ellipsis_outside_index", "export e = f(...)\n",
                 "t.lth:1:14: error: expected ')' to close '(' but found '...'");
    expect_error("postfix/type_not_indexable", "export e = f32[3][0]\n", "t.lth:1:18: error: unexpected '['");
}

/* ---- statements, separators, declarations --------------------------------- */

static void test_separators(void) {
    expect_dump("sep/continue_after_operator", "export s = a +\n        b\n", "export s = (a + b)\n");
    expect_dump("sep/continue_in_parens", "export d = kl_div(eval t(f.x),\n               s(f.x), t)\n",
                "export d = kl_div((eval t(f.x)), s(f.x), t)\n");
    expect_dump("sep/continue_in_brackets", "export l = [1,\n 2\n]\n", "export l = [1, 2]\n");
    expect_dump("sep/continue_in_index", "export l = x[0,\n 1\n]\n", "export l = x[0, 1]\n");
    expect_dump("sep/then_else_new_lines", "export x = if a\n    then b\n    else c\n", "export x = (if a then b else c)\n");
    expect_dump("sep/then_else_blank_lines", "export x = if a\n\n then b\n\n else c\n", "export x = (if a then b else c)\n");
    expect_dump("sep/semicolons", "export a = 1; export b = 2;;\n;\n", "export a = 1\nexport b = 2\n");
    expect_dump("sep/no_final_newline", "export a = 1", "export a = 1\n");
    expect_dump("sep/crlf", "export a = 1\r\nexport b = 2\r\n", "export a = 1\nexport b = 2\n");
    expect_dump("sep/comments", "# head\nexport a = b # tail\n# more\nexport c = d#x\n", "export a = b\nexport c = d\n");
    expect_dump("sep/empty_statements",
                "rule r(m: model) {\n;;\n    let a = 1;; let b = 2\n\n\n    report c = a;\n}\n",
                "rule r(m: model)\n  let a = 1\n  let b = 2\n  report c = a\n");
    expect_dump("sep/one_line_bodies", "rule r() { let a = 1; report b = a }\nmodule M { sub s = I }\n",
                "rule r()\n  let a = 1\n  report b = a\nmodule M()\n  sub s = I\n");
    expect_dump("sep/empty_bodies", "module M {}\nrule r() {\n}\nexperiment e {}\n",
                "module M()\nrule r()\nexperiment e\n");
    expect_dump("sep/newline_after_close", "export a = f(x)\nexport b = [y]\nexport c = {z}\n",
                "export a = f(x)\nexport b = [y]\nexport c = { z }\n");
    Result r = parse("");
    th_check(r.prog && r.prog->ndecls == 0 && !r.err[0], "sep/empty_file", "%s", r.err);
    r = parse("\n\n# nothing\n\n;\n");
    th_check(r.prog && r.prog->ndecls == 0, "sep/only_blanks", "%s", r.err);

    expect_error("sep/line_starting_with_operator", "export s = a\n    + b\n",
                 "t.lth:2:5: error: expected a declaration but found '+'");
    expect_error("sep/line_starting_with_paren", "export s = f\n(1)\n",
                 "t.lth:2:1: error: expected a declaration but found '('");
    expect_error("sep/two_decls_one_line", "module A {} module B {}\n",
                 "t.lth:1:13: error: expected end of statement but found 'module'");
    expect_error("sep/two_stmts_one_line", "rule r() {\n    let a = 1 let b = 2\n}\n",
                 "t.lth:2:15: error: expected end of statement or '}' but found 'let'");
    expect_error("sep/then_after_semicolon", "export x = if a; then b else c\n",
                 "t.lth:1:16: error: expected 'then' but found ';'");
}

static void test_decls(void) {
    Result r = parse("import \"models/resnet18.lth\"\nexport x = 1\nimport \"a\\\\b.lth\"\n");
    Decl **d = r.prog ? r.prog->decls : NULL;
    bool ok = r.prog && r.prog->ndecls == 3 && d[0]->kind == D_IMPORT && !strcmp(d[0]->name, "models/resnet18.lth") &&
              loc_is(d[0]->loc, 1, 8, 21) && d[1]->kind == D_EXPORT && d[2]->kind == D_IMPORT &&
              !strcmp(d[2]->name, "a\\b.lth") && d[0]->file == r.prog->file;
    th_check(ok, "decl/import", "%s%s", r.dump, r.err);

    expect_dump("decl/module_signature_optional", "module A {}\nmodule B() {}\nmodule C(n: int,) {}\n",
                "module A()\nmodule B()\nmodule C(n: int)\n");
    r = parse("module Block(cin: int, cout: int, stride: int = 1) {\n"
              "    param w: f32[cout, cin, 3, 3] = kaiming_normal(fan_in = cin * 9)\n"
              "    buffer mean: f32[cout] = zeros\n"
              "    sub down = if stride != 1 then ConvBN(cin, cout, k = 1, stride = stride) else Identity\n"
              "    let k = 3\n"
              "    fn features(x: f32[N, cin, H, W]) = conv2d(x, w)\n"
              "    fn (x) {\n        let y = features(x)\n        y + down(x)\n    }\n"
              "}\n");
    d = r.prog ? r.prog->decls : NULL;
    ok = r.prog && r.prog->ndecls == 1 && d[0]->kind == D_MODULE && d[0]->nparams == 3 && d[0]->nitems == 6;
    if (th_check(ok, "decl/module", "%s%s", r.dump, r.err)) {
        ModItem *it = d[0]->items;
        ok = it[0].kind == MI_PARAM && !strcmp(it[0].name, "w") && it[0].type->rank == 4 && loc_is(it[0].loc, 2, 11, 1) &&
             it[1].kind == MI_BUFFER && it[1].type->dtype == DT_F32 &&
             it[2].kind == MI_SUB && it[2].value->kind == EX_IF &&
             it[3].kind == MI_LET && it[3].value->ival == 3 &&
             it[4].kind == MI_FN && !strcmp(it[4].fn->name, "features") && loc_is(it[4].loc, 6, 8, 8) &&
             it[5].kind == MI_FN && !it[5].name && !it[5].fn->name && loc_is(it[5].fn->loc, 7, 5, 2) &&
             it[5].fn->body->kind == EX_BLOCK && it[5].fn->ret == NULL &&
             d[0]->params[2].deflt->ival == 1 && d[0]->params[0].type->kind == TY_INT &&
             loc_is(d[0]->loc, 1, 8, 5) && loc_is(d[0]->params[1].loc, 1, 24, 4);
        th_check(ok, "decl/module_items", "%s", r.dump);
        th_check(strstr(r.dump, "  fn (x) {\n    let y = features(x)\n    (y + down(x))\n  }\n") != NULL,
                 "decl/module_default_fn_dump", "%s", r.dump);
    }

    r = parse("fn f(a, b: int, c: float = 0.5, d: model, e: frozen model, g: data, h: f32, i: f64[N, 2*w], j: i32[],) -> f32 = a\n");
    d = r.prog ? r.prog->decls : NULL;
    ok = r.prog && d[0]->kind == D_FN && d[0]->fn->nparams == 9 && !strcmp(d[0]->name, "f") && loc_is(d[0]->loc, 1, 4, 1);
    if (th_check(ok, "decl/fn_params", "%s%s", r.dump, r.err)) {
        Param *p = d[0]->fn->params;
        ok = p[0].type->kind == TY_NONE && loc_is(p[0].type->loc, 1, 6, 1) && !p[0].deflt &&
             p[1].type->kind == TY_INT && p[2].type->kind == TY_FLOAT && p[2].deflt->fval == 0.5 &&
             p[3].type->kind == TY_MODEL && !p[3].type->frozen &&
             p[4].type->kind == TY_MODEL && p[4].type->frozen && loc_is(p[4].type->loc, 1, 46, 12) &&
             p[5].type->kind == TY_DATA &&
             p[6].type->kind == TY_TENSOR && p[6].type->dtype == DT_F32 && p[6].type->rank == 0 &&
             p[7].type->dtype == DT_F64 && p[7].type->rank == 2 && p[7].type->dims[1]->op == BO_MUL &&
             loc_is(p[7].type->loc, 1, 80, 11) &&
             p[8].type->dtype == DT_I32 && p[8].type->rank == 0 &&
             d[0]->fn->ret->kind == TY_TENSOR && d[0]->fn->ret->rank == 0;
        th_check(ok, "decl/param_types", "%s", r.dump);
    }
    expect_dump("decl/fn_block_body", "fn g(x) -> f32[N] {\n    let a = x\n    a\n}\n",
                "fn g(x) -> f32[N] {\n  let a = x\n  a\n}\n");
    expect_dump("decl/fn_expr_block_body", "fn g(x) = { x }\n", "fn g(x) {\n  x\n}\n");

    r = parse("rule sgd(m: model, batch: data, lr: f32 = 0.1) {\n"
              "    state v = zeros_like(m.params)\n"
              "    let g = grad(loss(m, batch), m.params)\n"
              "    v <- v + g\n"
              "    last(m, 1).params <- m.params - lr * v\n"
              "    report loss = 1\n"
              "    minimize a over d\n"
              "    maximize b over d within box(0, 1)\n"
              "}\n");
    d = r.prog ? r.prog->decls : NULL;
    ok = r.prog && d[0]->kind == D_RULE && d[0]->nparams == 3 && d[0]->nstmts == 7;
    if (th_check(ok, "decl/rule", "%s%s", r.dump, r.err)) {
        Stmt **s = d[0]->stmts;
        ok = s[0]->kind == ST_STATE && !strcmp(s[0]->name, "v") && loc_is(s[0]->loc, 2, 5, 5) && loc_is(s[0]->name_loc, 2, 11, 1) &&
             s[1]->kind == ST_LET &&
             s[2]->kind == ST_ASSIGN && s[2]->target->kind == EX_NAME && s[2]->value->op == BO_ADD && loc_is(s[2]->loc, 4, 7, 2) &&
             s[3]->kind == ST_ASSIGN && s[3]->target->kind == EX_FIELD && s[3]->target->a->kind == EX_CALL &&
             s[4]->kind == ST_REPORT && !strcmp(s[4]->name, "loss") &&
             s[5]->kind == ST_MINIMIZE && !strcmp(s[5]->name, "d") && !s[5]->within && loc_is(s[5]->name_loc, 7, 21, 1) &&
             s[6]->kind == ST_MAXIMIZE && s[6]->within && s[6]->within->kind == EX_CALL;
        th_check(ok, "decl/rule_stmts", "%s", r.dump);
    }
    r = parse("objective o(m: frozen model, d: f32[P]) {\n    minimize 1 - f(d) over d within linf(0.1)\n}\n");
    d = r.prog ? r.prog->decls : NULL;
    th_check(r.prog && d[0]->kind == D_OBJECTIVE && d[0]->nstmts == 1 && d[0]->stmts[0]->kind == ST_MINIMIZE &&
             d[0]->stmts[0]->value->op == BO_SUB, "decl/objective", "%s%s", r.dump, r.err);

    r = parse("experiment e {\n"
              "    train = sgd(lr = 0.1) for 10 epochs, batch 128\n"
              "    unlearn = [gd, ga] within 10% of train\n"
              "    data = fashion_mnist()\n"
              "    model = M(), width 2, depth 3\n"
              "}\n");
    d = r.prog ? r.prog->decls : NULL;
    ok = r.prog && d[0]->kind == D_EXPERIMENT && d[0]->nentries == 4;
    if (th_check(ok, "decl/experiment", "%s%s", r.dump, r.err)) {
        ExpEntry *en = d[0]->entries;
        Clause *c = en[0].clauses, *w = en[1].clauses;
        ok = !strcmp(en[0].key, "train") && loc_is(en[0].loc, 2, 5, 5) && en[0].nclauses == 2 &&
             !strcmp(c[0].word, "for") && c[0].value->ival == 10 && !strcmp(c[0].unit, "epochs") && loc_is(c[0].loc, 2, 27, 3) &&
             !strcmp(c[1].word, "batch") && c[1].value->ival == 128 && !c[1].unit && loc_is(c[1].loc, 2, 42, 5) &&
             en[1].nclauses == 1 && !strcmp(w[0].word, "within") && w[0].value->kind == EX_PERCENT &&
             w[0].value->fval == 0.1 && !strcmp(w[0].unit, "train") &&
             !strcmp(en[2].key, "data") && en[2].nclauses == 0 &&
             !strcmp(en[3].key, "model") && en[3].nclauses == 2;
        th_check(ok, "decl/experiment_clauses", "%s", r.dump);
    }
    r = parse("export step = sgd(MLP(784, 64, 10), data(x = f32[32, 784], y = i32[32]))\n");
    d = r.prog ? r.prog->decls : NULL;
    th_check(r.prog && d[0]->kind == D_EXPORT && !strcmp(d[0]->name, "step") && loc_is(d[0]->loc, 1, 8, 4) &&
             d[0]->value->kind == EX_CALL && d[0]->value->args[1].value->args[0].value->kind == EX_TYPE,
             "decl/export", "%s%s", r.dump, r.err);
    expect_dump("decl/contextual_names", "module data(model: int) {\n    let of = model\n}\nfn int(float) = float\n",
                "module data(model: int)\n  let of = model\nfn int(float) = float\n");
}

/* ---- error messages -------------------------------------------------------- */

static void test_errors(void) {
    expect_error("err/missing_rparen", "export e = f(a, b\nexport g = 1\n",
                 "t.lth:2:1: error: expected ')' to close '(' but found 'export'");
    Result r = parse("export e = f(a, b\nexport g = 1\n");
    th_check(strstr(r.err, "t.lth:1:13: note: to match this '('\n") != NULL, "err/missing_rparen_note", "%s", r.err);
    expect_error("err/missing_rbracket", "export e = x[0, 1 2]\n", "t.lth:1:19: error: expected ']' to close '[' but found '2'");
    expect_error("err/mismatched_bracket", "export e = f(a]\n", "t.lth:1:15: error: expected ')' to close '(' but found ']'");
    expect_error("err/unclosed_brace_eof", "module M {\n    param w: f32 = zeros\n",
                 "t.lth:2:25: error: expected '}' to close '{' but found end of file");
    expect_error("err/unclosed_paren_eof", "export e = f(a,", "t.lth:1:16: error: expected ')' to close '(' but found end of file");
    expect_error("err/stray_close", "}\n", "t.lth:1:1: error: expected a declaration but found '}'");
    expect_error("err/missing_param_equals", "module M {\n    param w: f32[3] zeros\n}\n",
                 "t.lth:2:21: error: expected '=' but found 'zeros'");
    expect_error("err/missing_param_type", "module M {\n    param w = zeros\n}\n", "t.lth:2:13: error: expected ':' but found '='");
    expect_error("err/missing_type", "fn f(x: ) = x\n", "t.lth:1:9: error: expected a type but found ')'");
    expect_error("err/unknown_type", "fn f(x: tensor) = x\n", "t.lth:1:9: error: unknown type 'tensor'");
    expect_error("err/frozen_not_model", "fn f(m: frozen data) = m\n", "t.lth:1:16: error: expected 'model' after 'frozen' but found 'data'");
    expect_error("err/keyword_as_name", "rule r(m: model) {\n    let if = 3\n}\n",
                 "t.lth:2:9: error: 'if' is a keyword and cannot be used as a name");
    expect_error("err/dtype_as_name", "fn f32(x) = x\n", "t.lth:1:4: error: 'f32' is a keyword and cannot be used as a name");
    expect_error("err/keyword_as_key", "experiment e {\n    for = 1\n}\n",
                 "t.lth:2:5: error: 'for' is a keyword and cannot be used as a name");
    expect_error("err/keyword_in_expr", "export e = then\n", "t.lth:1:12: error: expected an expression but found 'then'");
    expect_error("err/assign_outside_rule", "fn f(x) {\n    x <- 1\n}\n", "t.lth:2:7: error: '<-' is only allowed in a rule or objective");
    expect_error("err/assign_in_experiment", "experiment e {\n    a <- 1\n}\n",
                 "t.lth:2:7: error: '<-' is only allowed in a rule or objective");
    expect_error("err/state_in_module", "module M {\n    state s = 1\n}\n",
                 "t.lth:2:5: error: 'state' is only allowed in a rule or objective");
    expect_error("err/report_in_fn", "fn f(x) {\n    report s = 1\n}\n",
                 "t.lth:2:5: error: 'report' is only allowed in a rule or objective");
    expect_error("err/param_outside_module", "rule r(m: model) {\n    param w: f32 = zeros\n}\n",
                 "t.lth:2:5: error: 'param' is only allowed in a module");
    expect_error("err/param_at_top", "module M {}\nbuffer b: f32 = zeros\n", "t.lth:2:1: error: 'buffer' is only allowed in a module");
    expect_error("err/sub_in_experiment", "experiment e {\n    sub s = 1\n}\n", "t.lth:2:5: error: 'sub' is only allowed in a module");
    expect_error("err/expression_statement", "rule r(m: model) {\n    foo(m)\n}\n", "t.lth:2:11: error: expected '<-' but found newline");
    expect_error("err/let_without_equals", "rule r() {\n    let x <- 3\n}\n", "t.lth:2:11: error: expected '=' but found '<-'");
    expect_error("err/minimize_without_over", "objective o(d: f32[3]) {\n    minimize d\n}\n",
                 "t.lth:2:15: error: expected 'over' but found newline");
    expect_error("err/missing_else", "export x = if a then b", "t.lth:1:23: error: expected 'else' but found end of file");
    expect_error("err/missing_else_next_decl", "export x = if a then b\nexport y = 2\n",
                 "t.lth:2:1: error: expected 'else' but found 'export'");
    expect_error("err/missing_then", "export x = if a b\n", "t.lth:1:17: error: expected 'then' but found 'b'");
    expect_error("err/unexpected_then", "fn f(x) = x then 1\n", "t.lth:1:13: error: expected end of statement but found 'then'");
    expect_error("err/missing_expression", "export x =\nexport y = 1\n", "t.lth:2:1: error: expected an expression but found 'export'");
    expect_error("err/missing_expression_newline", "module M {\n    let a = f(x) b\n}\n",
                 "t.lth:2:18: error: expected end of statement or '}' but found 'b'");
    expect_error("err/missing_expression_eof", "export x = 1 +", "t.lth:1:15: error: expected an expression but found end of file");
    expect_error("err/top_level_garbage", "foo = 3\n", "t.lth:1:1: error: expected a declaration but found 'foo'");
    expect_error("err/nameless_fn_at_top", "fn (x) = x\n", "t.lth:1:1: error: a function outside a module needs a name");
    expect_error("err/fn_without_body", "fn f(x)\n", "t.lth:1:8: error: expected '->', '=' or '{' but found newline");
    expect_error("err/within_without_of", "experiment e {\n    u = gd within 10% in train\n}\n",
                 "t.lth:2:23: error: expected 'of' but found 'in'");
    expect_error("err/for_without_unit", "experiment e {\n    t = sgd() for 10\n}\n",
                 "t.lth:2:21: error: expected a name but found newline");
    expect_error("err/import_needs_string", "import foo\n", "t.lth:1:8: error: expected a string but found 'foo'");
    expect_error("err/rule_needs_params", "rule r {}\n", "t.lth:1:8: error: expected '(' but found '{'");
    expect_error("err/long_token", "export e = 1 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
                 "t.lth:1:14: error: expected end of statement but found 'aaaaaaaaaaaaaaaaaaaa...'");
    expect_error("err/unexpected_token_many_alternatives", "module M {\n    foo\n}\n", "t.lth:2:5: error: unexpected 'foo'");
}

static void test_nesting(void) {
    char *deep = malloc(30000);
    strcpy(deep, "export e = ");
    for (int i = 0; i < 5000; i++)
        strcat(deep, "(");
    strcat(deep, "a\n");
    expect_error("nest/parens", deep, "t.lth:1:2006: error: expression nested too deeply");

    strcpy(deep, "export e = ");
    for (int i = 0; i < 1100; i++)
        strcat(deep, "[");
    for (int i = 0; i < 1100; i++)
        strcat(deep, "]");
    expect_error("nest/lists", deep, "t.lth:1:1012: error: expression nested too deeply");

    strcpy(deep, "export e = a");
    for (int i = 0; i < 1100; i++)
        strcat(deep, "+a");
    strcat(deep, "\n");
    expect_error("nest/long_sum", deep, "t.lth:1:211: error: expression nested too deeply");

    strcpy(deep, "export e = ");
    for (int i = 0; i < 300; i++)
        strcat(deep, "[");
    for (int i = 0; i < 300; i++)
        strcat(deep, "]");
    Result r = parse(deep);
    th_check(r.prog != NULL, "nest/300_levels_ok", "%s", first_line(r.err));

    strcpy(deep, "export e = a");
    for (int i = 0; i < 900; i++)
        strcat(deep, " + a");
    r = parse(deep);
    th_check(r.prog != NULL, "nest/900_term_sum_ok", "%s", first_line(r.err));

    strcpy(deep, "export e = ");
    for (int i = 0; i < 2000; i++)
        strcat(deep, "if a then ");
    strcat(deep, "b");
    expect_error("nest/if_chain", deep, "t.lth:1:4997: error: expression nested too deeply");
    free(deep);
}

/* Mutated copies of the examples must parse or fail cleanly: a small,
 * deterministic fuzz run that every `make test` repeats. */
static void test_mutations(void) {
    char *ex = read_file("tests/lth/language_examples.lth");
    if (!ex) {
        th_fail("mutate/examples", "cannot read tests/lth/language_examples.lth");
        return;
    }
    size_t n = strlen(ex);
    char *buf = malloc(n + 1);
    static const char pool[] = "(){}[],;:=<->*%@!.\"\n#\\0e9x \xff\0";
    uint64_t s = 88172645463325252ull;
    int parsed = 0, failed = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(buf, ex, n);
        size_t len = n;
        for (int k = 0; k < 1 + iter % 4; k++) {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            size_t at = (size_t)(s >> 8) % len;
            switch (s % 3) {
            case 0: buf[at] = pool[(s >> 40) % (sizeof pool - 1)]; break;
            case 1: memmove(buf + at, buf + at + 1, len - at - 1); len--; break;
            case 2: len = at + 1; break;
            }
        }
        Result r = parse_bytes(buf, len);
        if (r.prog)
            parsed++;
        else if (!strstr(r.err, "t.lth:") || !strstr(r.err, ": error: "))
            failed++;
    }
    th_check(!failed && parsed > 0, "mutate/examples", "%d parsed, %d failed without a located error", parsed, failed);
    free(buf);
    free(ex);
}

int main(void) {
    test_examples();
    test_precedence();
    test_literals();
    test_bad_bytes();
    test_postfix();
    test_separators();
    test_decls();
    test_errors();
    test_nesting();
    test_mutations();
    arena_reset();
    return th_exit();
}
