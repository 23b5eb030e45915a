/* check.h: how the runtime reports errors.
 *
 * Two conventions, chosen by who is at fault and who can act on it:
 *
 * 1. FATAL CHECKS (llm.c style), for the driver, tools and tests, where the
 *    only sensible reaction to a failure is to stop with a precise message:
 *
 *        FILE *f = fopen_check(path, "rb");
 *        fread_check(buf, 1, n, f);
 *        float *w = malloc_check(n * sizeof *w);
 *        CHECK(n > 0, "empty batch (n = %d)", n);
 *        CHECK_HINT(ok, "the checkpoint was written by an older Lethe; retrain it",
 *                   "unknown tensor %s", name);
 *
 *    On failure they print, to stderr,
 *
 *        lethe: error at data.c:123: <message>
 *        ---> HINT: <hint>          (zero or more lines)
 *
 *    and exit(EXIT_FAILURE). The file:line is the CALL SITE (the macros pass
 *    __FILE__/__LINE__), so a report points at the code that made the request.
 *
 * 2. RECOVERABLE ERRORS, for every LIBRARY function that reads user files or
 *    untrusted bytes (loaders, checkpoint and JSON parsers, file utilities).
 *    Those never exit and never crash. They return an int status:
 *
 *        0            success (LETHE_OK)
 *        < 0          failure, one of lethe_status below
 *
 *    and, on failure, write a one-line message into the caller's buffer
 *    `char err[LETHE_ERR_LEN]` (always NUL-terminated, may be NULL to ignore).
 *    The message names the file (or "<memory>") and the fault, e.g.
 *
 *        /data/train-images.gz: declared 60000 x 28 x 28 images need 47040016
 *        bytes but the file has 1000
 *
 *    so the driver can print it (perhaps with a hint of its own) and tests
 *    can check both the status and the text. Outputs are left zeroed/empty on
 *    failure and nothing is leaked.
 *
 *    Programming errors inside the runtime (a broken invariant, not bad
 *    input) use LETHE_ASSERT, which is fatal: they are bugs, not user faults.
 */
#ifndef LETHE_CHECK_H
#define LETHE_CHECK_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdnoreturn.h>

#define LETHE_ERR_LEN 256

typedef enum lethe_status {
    LETHE_OK = 0,
    LETHE_EIO = -1,      /* open/read/write/rename failed (errno text in err)   */
    LETHE_EFORMAT = -2,  /* the bytes are not a valid file of the expected kind */
    LETHE_ELIMIT = -3,   /* valid-looking but beyond a sanity limit (size, depth) */
    LETHE_ENOMEM = -4,   /* allocation failed                                    */
    LETHE_EARG = -5,     /* the caller passed inconsistent arguments              */
    LETHE_ENOTFOUND = -6,/* a named item (tensor, key, file) does not exist      */
} lethe_status;

/* "format", "I/O", ... for a status; never NULL. */
const char *lethe_status_name(int status);

/* Fill err (if non-NULL) with a formatted message; returns `status` so that
 * library code can write `return lethe_errf(err, LETHE_EFORMAT, "...")`. */
int lethe_errf(char *err, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int lethe_verrf(char *err, int status, const char *fmt, va_list ap);

/* What a subcommand prints when it fails: "lethe: error: [what: ]msg" and,
 * if hint is non-NULL, "---> HINT: hint"; returns 1 (the exit status). */
int lethe_cli_fail(const char *what, const char *msg, const char *hint);

/* ---- fatal checks ------------------------------------------------------ */

/* Prints "lethe: error at file:line: msg" plus one "---> HINT: " line per
 * '\n'-separated line of hint (hint may be NULL), then exits. */
noreturn void lethe_fatal(const char *file, int line, const char *hint, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

FILE *lethe_fopen_check(const char *path, const char *mode, const char *file, int line);
void lethe_fread_check(void *ptr, size_t size, size_t n, FILE *f, const char *file, int line);
void lethe_fwrite_check(const void *ptr, size_t size, size_t n, FILE *f, const char *file, int line);
void lethe_fclose_check(FILE *f, const char *file, int line);
void *lethe_malloc_check(size_t n, const char *file, int line);
void *lethe_calloc_check(size_t n, size_t size, const char *file, int line);

#define fopen_check(path, mode) lethe_fopen_check((path), (mode), __FILE__, __LINE__)
#define fread_check(ptr, size, n, f) lethe_fread_check((ptr), (size), (n), (f), __FILE__, __LINE__)
#define fwrite_check(ptr, size, n, f) lethe_fwrite_check((ptr), (size), (n), (f), __FILE__, __LINE__)
#define fclose_check(f) lethe_fclose_check((f), __FILE__, __LINE__)
#define malloc_check(n) lethe_malloc_check((n), __FILE__, __LINE__)
#define calloc_check(n, size) lethe_calloc_check((n), (size), __FILE__, __LINE__)

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond))                                                           \
            lethe_fatal(__FILE__, __LINE__, NULL, __VA_ARGS__);                \
    } while (0)

#define CHECK_HINT(cond, hint, ...)                                            \
    do {                                                                       \
        if (!(cond))                                                           \
            lethe_fatal(__FILE__, __LINE__, (hint), __VA_ARGS__);              \
    } while (0)

/* Checks a library call that follows convention 2 and dies with its message:
 *     char err[LETHE_ERR_LEN];
 *     CHECK_OK(ds_load_idx(img, lbl, 10, &ds, err), err, "is dataset-fashion-mnist installed?");
 */
#define CHECK_OK(call, err, hint)                                              \
    do {                                                                       \
        if ((call) != 0)                                                       \
            lethe_fatal(__FILE__, __LINE__, (hint), "%s", (err));              \
    } while (0)

#define LETHE_ASSERT(cond)                                                     \
    do {                                                                       \
        if (!(cond))                                                           \
            lethe_fatal(__FILE__, __LINE__, "this is a bug in Lethe, please report it", \
                        "assertion failed: %s", #cond);                        \
    } while (0)

#endif
