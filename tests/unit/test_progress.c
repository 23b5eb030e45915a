/* test_progress.c: the progress display's two forms (TTY redraws at most
 * 10 times a second; plain lines every 10% for logs), quiet mode, and the
 * duration format. A fake clock makes the timing deterministic. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "progress.h"

static double fake_now;
static double fake_clock(void) { return fake_now; }

static char *capture(FILE *f, size_t *n) {
    fflush(f);
    long len = ftell(f);
    rewind(f);
    char *s = calloc((size_t)len + 1, 1);
    *n = fread(s, 1, (size_t)len, f);
    return s;
}

static int count(const char *s, const char *what) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, what)); p += strlen(what))
        n++;
    return n;
}

static lethe_progress make(FILE *f, int tty, int64_t total, int quiet) {
    lethe_progress p;
    progress_init(&p, "train", total, quiet);
    p.out = f;
    p.tty = tty;
    p.clock = fake_clock;
    fake_now = 0;
    p.t0 = 0;
    return p;
}

static void test_plain(void) {
    FILE *f = tmpfile();
    lethe_progress p = make(f, 0, 200, 0);
    for (int i = 1; i <= 200; i++) {
        fake_now = i * 0.01;
        progress_update(&p, i, 1.0 / i);
    }
    progress_finish(&p);
    size_t n;
    char *s = capture(f, &n);
    /* 10%, 20%, ..., 90% while running, then the final line */
    int lines = count(s, "\n");
    int ok = lines == 10 && count(s, "\r") == 0 && strstr(s, "train: 20/200 (10%)") &&
             strstr(s, "train: 200/200 (100%)  100 it/s  loss 0.005  in 2s");
    th_check(ok, "progress_plain_lines", "%d lines:\n%s", lines, s);
    free(s);
    fclose(f);
}

static void test_tty(void) {
    FILE *f = tmpfile();
    lethe_progress p = make(f, 1, 1000, 0);
    /* 1000 steps over 5 fake seconds: at most ~10 redraws per second */
    for (int i = 1; i <= 1000; i++) {
        fake_now = i * 0.005;
        progress_update(&p, i, NAN);
        if (i == 500)
            progress_note(&p, "checkpoint saved");
    }
    progress_finish(&p);
    size_t n;
    char *s = capture(f, &n);
    int redraws = count(s, "\r\033[K") - 1; /* the note clears the line once */
    int ok = redraws >= 45 && redraws <= 55 && count(s, "\n") == 2 && strstr(s, "checkpoint saved\n") &&
             strstr(s, "[========================]  1000/1000") && strstr(s, "ETA") && !strstr(s, "loss");
    th_check(ok, "progress_tty_redraw_rate", "%d redraws, %zu bytes", redraws, n);
    free(s);
    fclose(f);
}

static void test_quiet_unknown(void) {
    FILE *f = tmpfile();
    lethe_progress p = make(f, 0, 100, 1);
    for (int i = 1; i <= 100; i++)
        progress_update(&p, i, 0.5);
    progress_note(&p, "hidden");
    progress_finish(&p);
    size_t n;
    char *s = capture(f, &n);
    int quiet_ok = n == 0;
    free(s);
    fclose(f);
    /* unknown total, plain: one line per 10 s at most */
    f = tmpfile();
    p = make(f, 0, 0, 0);
    for (int i = 1; i <= 300; i++) {
        fake_now = i * 0.1;
        progress_update(&p, i, NAN);
    }
    s = capture(f, &n);
    int lines = count(s, "\n");
    th_check(quiet_ok && lines >= 3 && lines <= 4 && strstr(s, "train: "), "progress_quiet_and_unknown_total",
             "quiet wrote %s; unknown total printed %d lines", quiet_ok ? "nothing" : "something", lines);
    free(s);
    fclose(f);
}

static void test_duration(void) {
    char a[16], b[16], c[16], d[16];
    progress_format_duration(6.2, a, sizeof a);
    progress_format_duration(155, b, sizeof b);
    progress_format_duration(3720, c, sizeof c);
    progress_format_duration(NAN, d, sizeof d);
    th_check(!strcmp(a, "6s") && !strcmp(b, "2m35s") && !strcmp(c, "1h02m") && !strcmp(d, "?"),
             "progress_duration_format", "%s %s %s %s", a, b, c, d);
}

int main(void) {
    test_plain();
    test_tty();
    test_quiet_unknown();
    test_duration();
    return th_exit();
}
