/* progress.h: progress of long loops (training, unlearning, evaluation).
 *
 * On a terminal, one line redrawn in place at most 10 times a second:
 *
 *     train  [=========>          ]  4700/10000  812.3 it/s  loss 0.4321  ETA 6s
 *
 * When the stream is not a terminal (logs, CI, sweeps), redrawing would fill
 * the log with carriage returns, so a plain line is printed each time another
 * `every_pct` percent (default 10) is done, plus a final line:
 *
 *     train: 4700/10000 (47%)  812.3 it/s  loss 0.4321  ETA 6s
 *
 * With an unknown total (0) the plain form prints at most every 10 seconds.
 * quiet prints nothing at all. Output goes to stderr unless `out` is changed
 * after progress_init (tests point it at a file and set `tty`).
 */
#ifndef LETHE_PROGRESS_H
#define LETHE_PROGRESS_H

#include <stdint.h>
#include <stdio.h>

typedef struct lethe_progress {
    FILE *out;
    int tty;                /* redraw in place (isatty of out by default) */
    int quiet;
    int every_pct;          /* plain mode: a line every this many percent */
    char label[48];
    int64_t total;          /* 0: unknown */
    int64_t step;
    double loss;            /* last loss reported (NaN: none) */
    double t0, last_draw;
    int last_bucket;        /* plain mode: last percentage bucket printed */
    int on_line;            /* a TTY bar is drawn and not yet ended by a newline */
    double (*clock)(void);  /* seconds, monotonic; replaceable for tests */
} lethe_progress;

void progress_init(lethe_progress *p, const char *label, int64_t total, int quiet);
/* step = steps done so far (1..total); loss may be NaN. Cheap when nothing
 * is drawn: call it every step. */
void progress_update(lethe_progress *p, int64_t step, double loss);
/* A message that must not be garbled by the bar (the bar is redrawn later). */
void progress_note(lethe_progress *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Final state and a newline. */
void progress_finish(lethe_progress *p);

/* "6s", "2m35s", "1h02m": for ETAs and elapsed times in logs. */
void progress_format_duration(double seconds, char *buf, size_t size);

#endif
