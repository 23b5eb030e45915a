/* progress.c: see progress.h */
#include "progress.h"

#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void progress_format_duration(double s, char *buf, size_t size) {
    if (!isfinite(s) || s < 0) {
        snprintf(buf, size, "?");
        return;
    }
    long t = (long)(s + 0.5);
    if (t < 60)
        snprintf(buf, size, "%lds", t);
    else if (t < 3600)
        snprintf(buf, size, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(buf, size, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
}

void progress_init(lethe_progress *p, const char *label, int64_t total, int quiet) {
    memset(p, 0, sizeof *p);
    p->out = stderr;
    p->tty = isatty(fileno(stderr));
    p->quiet = quiet;
    p->every_pct = 10;
    snprintf(p->label, sizeof p->label, "%s", label ? label : "");
    p->total = total > 0 ? total : 0;
    p->loss = NAN;
    p->clock = mono_now;
    p->t0 = p->clock();
    p->last_draw = -1e300;
    p->last_bucket = 0;
}

/* rate, loss and ETA, shared by both forms */
static void stats(const lethe_progress *p, double now, char *buf, size_t size) {
    double el = now - p->t0;
    double rate = el > 0 ? (double)p->step / el : 0;
    int k = 0;
    if (rate >= 100)
        k = snprintf(buf, size, "  %.0f it/s", rate);
    else
        k = snprintf(buf, size, "  %.3g it/s", rate);
    if (k < 0 || (size_t)k >= size)
        return;
    if (!isnan(p->loss)) {
        int m = snprintf(buf + k, size - (size_t)k, "  loss %.4g", p->loss);
        if (m < 0 || (size_t)(k + m) >= size)
            return;
        k += m;
    }
    if (p->total > 0 && rate > 0 && p->step < p->total) {
        char eta[32];
        progress_format_duration((double)(p->total - p->step) / rate, eta, sizeof eta);
        snprintf(buf + k, size - (size_t)k, "  ETA %s", eta);
    } else if (p->total > 0 && p->step >= p->total) {
        char tot[32];
        progress_format_duration(el, tot, sizeof tot);
        snprintf(buf + k, size - (size_t)k, "  in %s", tot);
    }
}

static void draw_tty(lethe_progress *p, double now) {
    char st[128];
    stats(p, now, st, sizeof st);
    if (p->total > 0) {
        enum { W = 24 };
        char bar[W + 1];
        int fill = (int)((double)W * (double)p->step / (double)p->total);
        if (fill > W)
            fill = W;
        for (int i = 0; i < W; i++)
            bar[i] = i < fill ? '=' : i == fill ? '>' : ' ';
        bar[W] = 0;
        fprintf(p->out, "\r\033[K%s  [%s]  %lld/%lld%s", p->label, bar, (long long)p->step, (long long)p->total, st);
    } else {
        fprintf(p->out, "\r\033[K%s  %lld%s", p->label, (long long)p->step, st);
    }
    fflush(p->out);
    p->on_line = 1;
}

static void draw_plain(lethe_progress *p, double now) {
    char st[128];
    stats(p, now, st, sizeof st);
    if (p->total > 0)
        fprintf(p->out, "%s: %lld/%lld (%d%%)%s\n", p->label, (long long)p->step, (long long)p->total,
                (int)(100.0 * (double)p->step / (double)p->total), st);
    else
        fprintf(p->out, "%s: %lld%s\n", p->label, (long long)p->step, st);
    fflush(p->out);
}

void progress_update(lethe_progress *p, int64_t step, double loss) {
    p->step = step;
    if (!isnan(loss))
        p->loss = loss;
    if (p->quiet)
        return;
    int last = p->total > 0 && step >= p->total;
    if (p->tty) {
        double now = p->clock();
        if (now - p->last_draw >= 0.1 || last) {
            p->last_draw = now;
            draw_tty(p, now);
        }
        return;
    }
    if (p->total > 0) {
        int every = p->every_pct > 0 ? p->every_pct : 10;
        int bucket = (int)(100.0 * (double)step / (double)p->total) / every;
        if (bucket > p->last_bucket && !last) {
            p->last_bucket = bucket;
            draw_plain(p, p->clock());
        }
        return;
    }
    double now = p->clock();
    if (now - p->last_draw >= 10) {
        p->last_draw = now;
        draw_plain(p, now);
    }
}

void progress_note(lethe_progress *p, const char *fmt, ...) {
    if (p->quiet)
        return;
    if (p->on_line) {
        fputs("\r\033[K", p->out);
        p->on_line = 0;
        p->last_draw = -1e300; /* redraw the bar at the next update */
    }
    va_list ap;
    va_start(ap, fmt);
    vfprintf(p->out, fmt, ap);
    va_end(ap);
    fputc('\n', p->out);
    fflush(p->out);
}

void progress_finish(lethe_progress *p) {
    if (p->quiet)
        return;
    double now = p->clock();
    if (p->tty) {
        draw_tty(p, now);
        fputc('\n', p->out);
        p->on_line = 0;
    } else {
        draw_plain(p, now);
    }
    fflush(p->out);
}
