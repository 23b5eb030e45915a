/* check.c: see check.h */
#include "check.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

const char *lethe_status_name(int status) {
    switch (status) {
    case LETHE_OK: return "ok";
    case LETHE_EIO: return "I/O error";
    case LETHE_EFORMAT: return "format error";
    case LETHE_ELIMIT: return "limit exceeded";
    case LETHE_ENOMEM: return "out of memory";
    case LETHE_EARG: return "invalid argument";
    case LETHE_ENOTFOUND: return "not found";
    }
    return "unknown error";
}

int lethe_verrf(char *err, int status, const char *fmt, va_list ap) {
    if (err)
        vsnprintf(err, LETHE_ERR_LEN, fmt, ap);
    return status;
}

int lethe_cli_fail(const char *what, const char *msg, const char *hint) {
    fprintf(stderr, "lethe: error: %s%s%s\n", what ? what : "", what ? ": " : "", msg);
    if (hint)
        fprintf(stderr, "---> HINT: %s\n", hint);
    return 1;
}

int lethe_errf(char *err, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    lethe_verrf(err, status, fmt, ap);
    va_end(ap);
    return status;
}

/* Only the base name: build paths are noise in a user-facing message, the
 * file:line pair is what a developer greps for. */
static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

noreturn void lethe_fatal(const char *file, int line, const char *hint, const char *fmt, ...) {
    fflush(stdout);
    fprintf(stderr, "lethe: error at %s:%d: ", base_name(file), line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    while (hint && *hint) {
        const char *nl = strchr(hint, '\n');
        int len = nl ? (int)(nl - hint) : (int)strlen(hint);
        fprintf(stderr, "---> HINT: %.*s\n", len, hint);
        hint = nl ? nl + 1 : NULL;
    }
    exit(EXIT_FAILURE);
}

FILE *lethe_fopen_check(const char *path, const char *mode, const char *file, int line) {
    FILE *f = fopen(path, mode);
    if (!f) {
        int e = errno;
        lethe_fatal(file, line,
                    e == ENOENT ? "check the path; data and checkpoints are never downloaded implicitly"
                                : "check the file's permissions and that its directory exists",
                    "cannot open %s (mode %s): %s", path, mode, strerror(e));
    }
    return f;
}

void lethe_fread_check(void *ptr, size_t size, size_t n, FILE *f, const char *file, int line) {
    size_t got = fread(ptr, size, n, f);
    if (got != n) {
        if (feof(f))
            lethe_fatal(file, line, "the file is truncated or not of the expected kind",
                        "unexpected end of file: read %zu of %zu items of %zu bytes", got, n, size);
        lethe_fatal(file, line, NULL, "read error after %zu of %zu items: %s", got, n, strerror(errno));
    }
}

void lethe_fwrite_check(const void *ptr, size_t size, size_t n, FILE *f, const char *file, int line) {
    if (fwrite(ptr, size, n, f) != n)
        lethe_fatal(file, line, "is the disk full?", "write error: %s", strerror(errno));
}

void lethe_fclose_check(FILE *f, const char *file, int line) {
    if (fclose(f) != 0)
        lethe_fatal(file, line, "is the disk full?", "close failed: %s", strerror(errno));
}

void *lethe_malloc_check(size_t n, const char *file, int line) {
    void *p = malloc(n ? n : 1);
    if (!p)
        lethe_fatal(file, line, "reduce the batch size or the data set, or use a machine with more memory",
                    "out of memory allocating %zu bytes", n);
    return p;
}

void *lethe_calloc_check(size_t n, size_t size, const char *file, int line) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        lethe_fatal(file, line, "reduce the batch size or the data set, or use a machine with more memory",
                    "out of memory allocating %zu x %zu bytes", n, size);
    return p;
}
