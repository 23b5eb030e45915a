/* report_hypotheses.c: the report of `lethe hypotheses` (hypotheses.h): the
 * records of DIR/hypotheses.jsonl as a table, DIR/hypotheses.md (mean +- std
 * over the seeds per setting and poison-set size), and two plots drawn with
 * gnuplot as report.c draws the others (a script and data in a scratch
 * folder, the pictures renamed into DIR/plots):
 *
 *   h1_shift   the norm of the model shift of unlearning the poisons and of
 *              unlearning as many random clean samples, against the number
 *              of samples (the paper's Figure 4)
 *   h2_cosine  the cosine between the gradient-descent update on the retain
 *              set and the shift to the retrained model, for the poisons and
 *              for the random samples whose shift matches the poisons' (the
 *              paper's Figure 5)
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsutil.h"
#include "hypotheses.h"
#include "json.h"

enum { MAX_ROWS = 64, MAX_SEEDS = 64 };

enum { SHIFT_POISON, SHIFT_RANDOM, COS_POISON, COS_RANDOM, EQUAL_K, SHIFT_EQUAL, COS_EQUAL, NFIELDS };
static const char *const fields[NFIELDS] = {"shift_poison", "shift_random", "cos_poison", "cos_random",
                                            "random_equal_k", "shift_random_equal", "cos_random_equal"};

typedef struct Row {
    char setting[64];
    int n_poison, n;
    double v[NFIELDS][MAX_SEEDS];
} Row;

typedef struct Table {
    Row rows[MAX_ROWS];
    int nrows;
    long bad;
} Table;

static int on_line(const char *line, size_t len, long lineno, void *user) {
    Table *t = user;
    json_doc *doc = NULL;
    char err[LETHE_ERR_LEN];
    if (json_parse(line, len, NULL, &doc, err)) {
        t->bad++;
        return 0;
    }
    const json_value *root = json_doc_root(doc), *setting = json_obj_get(root, "setting"),
                     *np = json_obj_get(root, "n_poison");
    if (!setting || setting->type != JSON_STRING || !np || np->type != JSON_NUMBER) {
        t->bad++;
        json_doc_free(doc);
        return 0;
    }
    Row *r = NULL;
    for (int i = 0; i < t->nrows && !r; i++)
        if (!strcmp(t->rows[i].setting, setting->str) && t->rows[i].n_poison == (int)np->num)
            r = &t->rows[i];
    if (!r && t->nrows < MAX_ROWS) {
        r = &t->rows[t->nrows++];
        snprintf(r->setting, sizeof r->setting, "%s", setting->str);
        r->n_poison = (int)np->num;
    }
    if (r && r->n < MAX_SEEDS) {
        for (int f = 0; f < NFIELDS; f++) {
            const json_value *v = json_obj_get(root, fields[f]);
            r->v[f][r->n] = v && v->type == JSON_NUMBER ? v->num : NAN;
        }
        r->n++;
    }
    json_doc_free(doc);
    return 0;
}

static double mean_of(const double *v, int n) {
    double s = 0;
    for (int i = 0; i < n; i++)
        s += v[i];
    return n ? s / n : NAN;
}

static double std_of(const double *v, int n) {
    double m = mean_of(v, n), s = 0;
    for (int i = 0; i < n; i++)
        s += (v[i] - m) * (v[i] - m);
    return n > 1 ? sqrt(s / (n - 1)) : 0;
}

static int cmp_row(const void *a, const void *b) {
    const Row *x = a, *y = b;
    int c = strcmp(x->setting, y->setting);
    return c ? c : (x->n_poison > y->n_poison) - (x->n_poison < y->n_poison);
}

static int write_table(const Table *t, const char *dir, char *err) {
    char *buf = NULL, path[PATH_MAX + 32];
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    if (!f)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    fprintf(f, "| setting | poisons | seeds | shift: poisons | shift: random | cos: poisons | cos: random | "
               "random (equal shift) | its shift | its cos |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < t->nrows; i++) {
        const Row *r = &t->rows[i];
        fprintf(f, "| %s | %d | %d |", r->setting, r->n_poison, r->n);
        for (int k = 0; k < NFIELDS; k++)
            fprintf(f, k == EQUAL_K ? " %.0f |" : " %.4g ± %.2g |", mean_of(r->v[k], r->n), std_of(r->v[k], r->n));
        fprintf(f, "\n");
    }
    if (fclose(f)) {
        free(buf);
        return lethe_errf(err, LETHE_EIO, "cannot assemble the table");
    }
    fputs(buf, stdout);
    snprintf(path, sizeof path, "%s/hypotheses.md", dir);
    int rc = fs_write_atomic(path, buf, size, err);
    free(buf);
    return rc;
}

/* One gnuplot data block per setting: size, then mean and std of each field. */
static void write_data(FILE *f, const Table *t, int *nsettings) {
    *nsettings = 0;
    for (int i = 0; i < t->nrows; i++) {
        const Row *r = &t->rows[i];
        if (i > 0 && strcmp(r->setting, t->rows[i - 1].setting))
            fprintf(f, "\n\n");
        if (i == 0 || strcmp(r->setting, t->rows[i - 1].setting))
            ++*nsettings;
        fprintf(f, "%d", r->n_poison);
        for (int k = 0; k < NFIELDS; k++)
            fprintf(f, " %g %g", mean_of(r->v[k], r->n), std_of(r->v[k], r->n));
        fprintf(f, "\n");
    }
}

/* Column of field k's mean in the data (1-based; its std follows). */
static int col(int k) { return 2 + 2 * k; }

static void plot(FILE *gp, const Table *t, int nsettings, int svg, const char *name, const char *ylabel,
                 const char *title, const char *yrange, int field_poison, int field_random, const char *random_title) {
    fprintf(gp, svg ? "set terminal svg size 800,560 noenhanced\n" : "set terminal pngcairo size 800,560 noenhanced\n");
    fprintf(gp, "set output '%s.%s'\nset title '%s'\nset xlabel 'samples unlearned'\nset ylabel '%s'\n", name,
            svg ? "svg" : "png", title, ylabel);
    fprintf(gp, "set key below\nset grid\nset offsets graph 0.05, graph 0.05, graph 0.05, graph 0.05\n"
                "set yrange %s\nplot ", yrange);
    for (int s = 0, i = 0; s < nsettings; s++) {
        const char *setting = t->rows[i].setting;
        fprintf(gp, "%s'hyp.dat' index %d using 1:%d:%d with yerrorlines lw 2 pt 7 lc rgb '#d62728' dt %d "
                    "title '%s: poisons', ", s ? ", " : "", s, col(field_poison), col(field_poison) + 1, s + 1, setting);
        fprintf(gp, "'hyp.dat' index %d using 1:%d:%d with yerrorlines lw 2 pt 5 lc rgb '#1f77b4' dt %d "
                    "title '%s: %s'", s, col(field_random), col(field_random) + 1, s + 1, setting, random_title);
        while (i < t->nrows && !strcmp(t->rows[i].setting, setting))
            i++;
    }
    fprintf(gp, "\nunset output\n");
}

static int draw(const Table *t, const char *dir, char *err) {
    static const char *const names[] = {"h1_shift", "h2_cosine"};
    char tmp[PATH_MAX + 64], pdir[PATH_MAX + 16], path[PATH_MAX + 128], to[PATH_MAX + 128];
    snprintf(pdir, sizeof pdir, "%s/plots", dir);
    snprintf(tmp, sizeof tmp, "%s/.hyp_plots.tmp.%ld", dir, (long)getpid());
    int rc = fs_mkdir_p(pdir, 0755, err);
    if (!rc)
        rc = fs_mkdir_p(tmp, 0755, err);
    if (rc)
        return rc;
    snprintf(path, sizeof path, "%s/hyp.dat", tmp);
    FILE *data = fopen(path, "w");
    snprintf(path, sizeof path, "%s/plots.gp", tmp);
    FILE *gp = fopen(path, "w");
    int nsettings = 0;
    if (data && gp) {
        write_data(data, t, &nsettings);
        for (int svg = 0; svg < 2; svg++) {
            plot(gp, t, nsettings, svg, names[0], "||theta_full - theta_unlearned||",
                 "H1: the model shift of unlearning poisons vs random clean samples", "[0:*]", SHIFT_POISON, SHIFT_RANDOM,
                 "random (as many)");
            plot(gp, t, nsettings, svg, names[1], "cosine(GD update on the retain set, shift to retrained)",
                 "H2: angle between the retain-set update and the wanted shift", "[*:1]", COS_POISON, COS_EQUAL,
                 "random (shift matched; k in hypotheses.md)");
        }
    }
    int ok = data && gp;
    if (data)
        ok &= fclose(data) == 0;
    if (gp)
        ok &= fclose(gp) == 0;
    int status = ok ? report_gnuplot(tmp) : -1;
    if (!ok)
        rc = lethe_errf(err, LETHE_EIO, "cannot write the plot files in %s", tmp);
    else if (status == 127)
        fprintf(stderr, "lethe: note: gnuplot is not installed, so no plots (apt-get install gnuplot-nox)\n");
    else if (status != 0)
        fprintf(stderr, "lethe: note: gnuplot failed (see %s/gnuplot.log)\n", tmp);
    else {
        printf("plots:");
        for (int i = 0; i < 2 && !rc; i++)
            for (int svg = 0; svg < 2 && !rc; svg++) {
                snprintf(path, sizeof path, "%s/%s.%s", tmp, names[i], svg ? "svg" : "png");
                snprintf(to, sizeof to, "%s/%s.%s", pdir, names[i], svg ? "svg" : "png");
                if (rename(path, to))
                    rc = lethe_errf(err, LETHE_EIO, "cannot move %s to %s: %s", path, to, strerror(errno));
                else if (!svg)
                    printf(" %s", to);
            }
        printf(" (and .svg)\n");
    }
    if (status == 0 || !ok) {   /* a failed gnuplot's script and log stay for the note */
        static const char *const scratch[] = {"hyp.dat", "plots.gp", "gnuplot.log"};
        for (int i = 0; i < 3; i++) {
            snprintf(path, sizeof path, "%s/%s", tmp, scratch[i]);
            unlink(path);
        }
        rmdir(tmp);
    }
    return rc;
}

int report_hypotheses(const char *dir, int plots, char *err) {
    Table *t = calloc(1, sizeof *t);
    if (!t)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/hypotheses.jsonl", dir);
    long skipped = 0;
    int rc = fs_jsonl_read(path, (size_t)1 << 28, on_line, t, &skipped, err);
    if (!rc && t->nrows == 0)
        rc = lethe_errf(err, LETHE_ENOTFOUND, "%s holds no records of `lethe hypotheses`", path);
    if (!rc) {
        if (skipped || t->bad)
            fprintf(stderr, "lethe: note: %ld unreadable lines in %s were skipped\n", skipped + t->bad, path);
        qsort(t->rows, (size_t)t->nrows, sizeof(Row), cmp_row);
        rc = write_table(t, dir, err);
    }
    if (!rc && plots)
        rc = draw(t, dir, err);
    free(t);
    return rc;
}
