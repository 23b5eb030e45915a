/* diag.c: error messages with the source line and a caret (chibicc style).
 *
 *   f.lth:3:11: error: unknown name 'foo'
 *       3 |     let y = foo + 1
 *         |             ^~~
 *
 * Notes queued with diag_note() are printed after the next error. After the
 * error, control goes to *diag_recover (the driver and the fuzzer set it) or
 * the process exits with status 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lethec.h"

jmp_buf *diag_recover;
int diag_error_count;

/* -d dumps (graph.h): which stages, and where they go */
unsigned dump_flags;
FILE *dump_file;

enum { MAX_NOTES = 8 };
static struct { Loc loc; char msg[512]; } notes[MAX_NOTES];
static int nnotes;

SrcFile *srcfile_from_string(const char *path, const char *text, size_t len) {
    SrcFile *f = xalloc(sizeof *f);
    f->path = xstrdup(path);
    f->text = xstrndup(text, len);
    f->len = len;
    return f;
}

SrcFile *srcfile_read(const char *path) {
    /* only regular files (an import of /dev/zero must not read forever), and
     * none bigger than any plausible program */
    enum { MAX_SOURCE = 64 << 20 };
    FILE *fp = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!fp)
        return NULL;
    struct stat st;
    if (fp != stdin && (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_SOURCE)) {
        fclose(fp);
        return NULL;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len, fp)) > 0) {
        len += n;
        if (len == cap)
            buf = realloc(buf, cap *= 2);
    }
    int bad = !buf || ferror(fp);
    if (fp != stdin)
        fclose(fp);
    SrcFile *f = bad ? NULL : srcfile_from_string(path, buf, len);
    free(buf);
    return f;
}

/* Print the source line of `loc` with a caret under loc.col .. col+len-1. */
static void show_line(Loc loc) {
    if (!loc.file || loc.line < 1)
        return;
    const char *p = loc.file->text, *end = p + loc.file->len;
    for (int line = 1; line < loc.line && p < end; p++)
        if (*p == '\n')
            line++;
    const char *eol = p;
    while (eol < end && *eol != '\n' && *eol != '\r')
        eol++;
    /* a very long line is cut around the column (generated or fuzzed input) */
    enum { MAX_SHOWN = 240 };
    int col = loc.col > 0 ? loc.col : 1;
    if (eol - p > MAX_SHOWN) {
        const char *from = p + (col > MAX_SHOWN / 2 ? col - MAX_SHOWN / 2 : 0);
        if (from > eol)
            from = eol;
        col -= (int)(from - p);
        p = from;
        if (eol - p > MAX_SHOWN)
            eol = p + MAX_SHOWN;
    }
    char shown[MAX_SHOWN + 1];
    int width = (int)(eol - p);
    /* tabs and control characters become spaces so the caret lines up */
    for (int i = 0; i < width; i++)
        shown[i] = (unsigned char)p[i] < ' ' ? ' ' : p[i];
    shown[width] = 0;
    fprintf(stderr, "%5d | %s\n", loc.line, shown);
    fprintf(stderr, "      | ");
    for (int i = 1; i < col && i <= width; i++)
        fputc(' ', stderr);
    fputc('^', stderr);
    for (int i = 1; i < loc.len && col + i <= width; i++)
        fputc('~', stderr);
    fputc('\n', stderr);
}

static void print_at(Loc loc, const char *kind, const char *fmt, va_list ap) {
    if (loc.file)
        fprintf(stderr, "%s:%d:%d: %s: ", loc.file->path, loc.line, loc.col, kind);
    else
        fprintf(stderr, "lethec: %s: ", kind);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    show_line(loc);
}

void diag_note(Loc loc, const char *fmt, ...) {
    if (nnotes == MAX_NOTES)
        return;
    va_list ap;
    va_start(ap, fmt);
    notes[nnotes].loc = loc;
    vsnprintf(notes[nnotes].msg, sizeof notes[nnotes].msg, fmt, ap);
    va_end(ap);
    nnotes++;
}

static noreturn void finish_error(void) {
    for (int i = 0; i < nnotes; i++) {
        Loc l = notes[i].loc;
        if (l.file)
            fprintf(stderr, "%s:%d:%d: note: %s\n", l.file->path, l.line, l.col, notes[i].msg);
        else
            fprintf(stderr, "lethec: note: %s\n", notes[i].msg);
        show_line(l);
    }
    nnotes = 0;
    diag_error_count++;
    fflush(stderr);
    if (diag_recover)
        longjmp(*diag_recover, 1);
    exit(1);
}

noreturn void error_at(Loc loc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    print_at(loc, "error", fmt, ap);
    va_end(ap);
    finish_error();
}

noreturn void error_noloc(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    Loc none = {0};
    print_at(none, "error", fmt, ap);
    va_end(ap);
    finish_error();
}

noreturn void internal_error(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "lethec: internal error at %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n---> HINT: this is a compiler bug; please report it with the input file\n");
    fflush(stderr);
    abort();
}
