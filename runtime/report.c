/* report.c: `lethe report DIR`, the results of a run folder as a table
 * (mean +- std over seeds, per method and budget) and two plots drawn with
 * gnuplot: the ROC curves of the Gaussian test on a log false-positive axis,
 * and test accuracy against TPR at FPR 0.01 per method (the paper's Figure 2).
 * The table goes to stdout and to DIR/table.md and DIR/table.csv.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "json.h"
#include "metrics.h"
#include "run.h"

enum { MAX_GROUPS = 128, MAX_SEEDS = 64, ROC_POINTS = 41 };

typedef struct Group {
    char method[64];
    double budget;                 /* -1: no budget (original, retrain) */
    int n;
    double acc[MAX_SEEDS], gus[MAX_SEEDS], tpr[MAX_SEEDS], tpr2[MAX_SEEDS], mia[MAX_SEEDS], used[MAX_SEEDS],
        shift[MAX_SEEDS], secs[MAX_SEEDS];
    double roc_fpr[ROC_POINTS], roc_tpr[ROC_POINTS];
    int roc_n, roc_count;
} Group;

typedef struct Report {
    Group g[MAX_GROUPS];
    int ng;
    char experiment[128];
    long bad;
} Report;

static double num(const json_value *o, const char *k) {
    const json_value *v = o ? json_obj_get(o, k) : NULL;
    return v && v->type == JSON_NUMBER ? v->num : NAN;
}

static double tpr_of(const json_value *rec, const char *group, const char *key) {
    const json_value *g = group ? json_obj_get(rec, group) : rec;
    const json_value *t = g ? json_obj_get(g, key) : NULL;
    return num(t, "tpr");
}

static int on_record(const char *line, size_t len, long lineno, void *user) {
    Report *r = user;
    json_doc *doc = NULL;
    char err[LETHE_ERR_LEN];
    if (json_parse(line, len, NULL, &doc, err)) {
        r->bad++;
        return 0;
    }
    const json_value *rec = json_doc_root(doc);
    const json_value *m = json_obj_get(rec, "method"), *e = json_obj_get(rec, "experiment");
    double budget = num(rec, "budget");
    if (!m || m->type != JSON_STRING) {
        r->bad++;
        json_doc_free(doc);
        return 0;
    }
    if (e && e->type == JSON_STRING)
        snprintf(r->experiment, sizeof r->experiment, "%s", e->str);
    if (!strcmp(m->str, "original") || isnan(budget))
        budget = -1;
    Group *g = NULL;
    for (int i = 0; i < r->ng && !g; i++)
        if (!strcmp(r->g[i].method, m->str) && r->g[i].budget == budget)
            g = &r->g[i];
    if (!g && r->ng < MAX_GROUPS) {
        g = &r->g[r->ng++];
        memset(g, 0, sizeof *g);
        snprintf(g->method, sizeof g->method, "%s", m->str);
        g->budget = budget;
    }
    if (g && g->n < MAX_SEEDS) {
        int k = g->n++;
        g->acc[k] = num(rec, "accuracy");
        g->gus[k] = num(rec, "gus");
        g->tpr[k] = tpr_of(rec, "tpr_at_fpr", "negative_empirical");
        g->tpr2[k] = tpr_of(rec, "tpr_at_fpr", "two_sided_empirical");
        g->mia[k] = tpr_of(rec, NULL, "loss_mia");
        g->used[k] = num(rec, "budget_used");
        g->shift[k] = num(rec, "param_shift");
        g->secs[k] = num(rec, "seconds");
        const json_value *roc = json_obj_get(rec, "roc");
        if (roc && roc->type == JSON_ARRAY && roc->len <= ROC_POINTS) {
            g->roc_n = (int)roc->len;
            for (size_t i = 0; i < roc->len; i++) {
                const json_value *p = &roc->items[i];
                if (p->type != JSON_ARRAY || p->len != 2)
                    continue;
                g->roc_fpr[i] = p->items[0].num;
                g->roc_tpr[i] += p->items[1].num;   /* averaged over seeds below */
            }
            g->roc_count++;
        }
    }
    json_doc_free(doc);
    (void)lineno;
    return 0;
}

static void cell(char *buf, size_t n, const double *v, int k, double scale, int decimals) {
    double m, s;
    double tmp[MAX_SEEDS];
    int j = 0;
    for (int i = 0; i < k; i++)
        if (!isnan(v[i]))
            tmp[j++] = v[i] * scale;
    if (!j) {
        snprintf(buf, n, "-");
        return;
    }
    mt_mean_std(tmp, j, &m, &s);
    mt_format_pm(buf, n, m, s, decimals);
}

static double mean_of(const double *v, int k) {
    double s = 0;
    int j = 0;
    for (int i = 0; i < k; i++)
        if (!isnan(v[i]))
            s += v[i], j++;
    return j ? s / j : NAN;
}

static double std_of(const double *v, int k) {
    double m = mean_of(v, k), s = 0;
    int j = 0;
    for (int i = 0; i < k; i++)
        if (!isnan(v[i]))
            s += (v[i] - m) * (v[i] - m), j++;
    return j > 1 ? sqrt(s / (j - 1)) : 0;
}

static const char *budget_text(double b, char *buf, size_t n) {
    if (b < 0)
        snprintf(buf, n, "-");
    else
        snprintf(buf, n, "%g%%", 100 * b);
    return buf;
}

/* Order: original, retrain, then the methods as they first appear; budgets ascending. */
static int rank_of(const Group *g) {
    if (!strcmp(g->method, "original"))
        return 0;
    if (!strcmp(g->method, "retrain"))
        return 1;
    return 2;
}

static int cmp_group(const void *a, const void *b) {
    const Group *x = a, *y = b;
    int rx = rank_of(x), ry = rank_of(y);
    if (rx != ry)
        return rx - ry;
    int c = strcmp(x->method, y->method);
    if (c)
        return c;
    return (x->budget > y->budget) - (x->budget < y->budget);
}

static int write_tables(const Report *r, const char *dir, char *err) {
    static const char *const head[] = {"method", "budget", "seeds", "test acc %", "GUS", "TPR@1% (-I)", "TPR@1% (abs I)",
                                       "loss MIA TPR@1%", "budget used %", "param shift", "seconds"};
    char *md = NULL, *csv = NULL;
    size_t mdn = 0, csvn = 0;
    FILE *fm = open_memstream(&md, &mdn), *fc = open_memstream(&csv, &csvn);
    if (!fm || !fc)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    fprintf(fm, "| %s |", head[0]);
    for (size_t i = 1; i < sizeof head / sizeof head[0]; i++)
        fprintf(fm, " %s |", head[i]);
    fprintf(fm, "\n|");
    for (size_t i = 0; i < sizeof head / sizeof head[0]; i++)
        fprintf(fm, "---|");
    fprintf(fm, "\n");
    fprintf(fc, "method,budget,seeds,acc_mean,acc_std,gus_mean,gus_std,tpr_neg_mean,tpr_neg_std,tpr_two_sided_mean,"
                "tpr_two_sided_std,mia_tpr_mean,mia_tpr_std,budget_used_mean,param_shift_mean,seconds_mean\n");
    for (int i = 0; i < r->ng; i++) {
        const Group *g = &r->g[i];
        char c[8][64], b[32];
        cell(c[0], 64, g->acc, g->n, 100, 2);
        cell(c[1], 64, g->gus, g->n, 1, 3);
        cell(c[2], 64, g->tpr, g->n, 1, 3);
        cell(c[3], 64, g->tpr2, g->n, 1, 3);
        cell(c[4], 64, g->mia, g->n, 1, 3);
        cell(c[5], 64, g->used, g->n, 100, 2);
        cell(c[6], 64, g->shift, g->n, 1, 3);
        cell(c[7], 64, g->secs, g->n, 1, 1);
        fprintf(fm, "| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", g->method, budget_text(g->budget, b, sizeof b),
                g->n, c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]);
        fprintf(fc, "%s,%g,%d,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g\n", g->method,
                g->budget < 0 ? NAN : g->budget, g->n, mean_of(g->acc, g->n), std_of(g->acc, g->n), mean_of(g->gus, g->n),
                std_of(g->gus, g->n), mean_of(g->tpr, g->n), std_of(g->tpr, g->n), mean_of(g->tpr2, g->n),
                std_of(g->tpr2, g->n), mean_of(g->mia, g->n), std_of(g->mia, g->n), mean_of(g->used, g->n),
                mean_of(g->shift, g->n), mean_of(g->secs, g->n));
    }
    fclose(fm);
    fclose(fc);
    printf("\n%s: mean +- std over seeds. TPR at FPR 1%% of the Gaussian test against fresh-noise nulls: one-sided on -I "
           "(memorisation makes I negative) and two-sided on |I|\n\n%s\n",
           r->experiment[0] ? r->experiment : dir, md);
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/table.md", dir);
    int rc = fs_write_atomic(path, md, mdn, err);
    snprintf(path, sizeof path, "%s/table.csv", dir);
    if (!rc)
        rc = fs_write_atomic(path, csv, csvn, err);
    free(md);
    free(csv);
    return rc;
}

static int write_text(const char *path, FILE **f) {
    *f = fopen(path, "w");
    return *f != NULL;
}

/* gnuplot draws; a missing gnuplot only skips the plots, with a note. */
/* A scatter plot of test accuracy (column 3, std in 5 of acc_tpr.dat)
 * against column xcol (std in xerr), labelled by method, into
 * <pdir>/<name>.<ext>. */
static void accuracy_plot(FILE *gp, const char *pdir, const char *ext, const char *name, const char *against,
                          const char *budget, const char *xrange, const char *xlabel, int xcol, int xerr) {
    fprintf(gp, "set output '%s/%s.%s'\nset title 'Test accuracy against %s (budget %s)'\nset xrange %s\nset autoscale y\n"
                "set xlabel '%s'\nset ylabel 'test accuracy (%%)'\nset key off\n",
            pdir, name, ext, against, budget, xrange, xlabel);
    fprintf(gp, "plot '%s/acc_tpr.dat' using %d:3:%d:5 with xyerrorbars pt 7 ps 1.5, '' using %d:3:1 with labels offset 1,1\n",
            pdir, xcol, xerr, xcol);
}

static int draw(const Report *r, const char *dir, char *err) {
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        fprintf(stderr, "lethe: note: gnuplot is not installed, so no plots (apt-get install gnuplot-nox)\n");
        return LETHE_OK;
    }
    char pdir[PATH_MAX + 16], path[PATH_MAX + 64];
    snprintf(pdir, sizeof pdir, "%s/plots", dir);
    int rc = fs_mkdir_p(pdir, 0755, err);
    if (rc)
        return rc;
    /* the largest budget per method: its ROC curve and its accuracy/TPR point */
    double top = -1;
    for (int i = 0; i < r->ng; i++)
        if (r->g[i].budget > top)
            top = r->g[i].budget;
    FILE *roc, *pts, *gp;
    snprintf(path, sizeof path, "%s/roc.dat", pdir);
    if (!write_text(path, &roc))
        return lethe_errf(err, LETHE_EIO, "cannot write %s", path);
    snprintf(path, sizeof path, "%s/acc_tpr.dat", pdir);
    if (!write_text(path, &pts)) {
        fclose(roc);
        return lethe_errf(err, LETHE_EIO, "cannot write %s", path);
    }
    int curves = 0;
    char titles[MAX_GROUPS][96];
    for (int i = 0; i < r->ng; i++) {
        const Group *g = &r->g[i];
        if (g->budget >= 0 && g->budget != top)
            continue;
        if (g->roc_count) {
            fprintf(roc, "# %s\n", g->method);
            for (int k = 0; k < g->roc_n; k++)
                fprintf(roc, "%g %g\n", g->roc_fpr[k], g->roc_tpr[k] / g->roc_count);
            fprintf(roc, "\n\n");
            snprintf(titles[curves++], sizeof titles[0], "%s", g->method);
        }
        fprintf(pts, "\"%s\" %g %g %g %g %g %g\n", g->method, mean_of(g->tpr, g->n), 100 * mean_of(g->acc, g->n),
                std_of(g->tpr, g->n), 100 * std_of(g->acc, g->n), mean_of(g->gus, g->n), std_of(g->gus, g->n));
    }
    fclose(roc);
    fclose(pts);
    snprintf(path, sizeof path, "%s/plots.gp", pdir);
    if (!write_text(path, &gp))
        return lethe_errf(err, LETHE_EIO, "cannot write %s", path);
    char b[32];
    for (int t = 0; t < 2; t++) {
        const char *term = t ? "svg size 720,540 dynamic" : "pngcairo size 960,720";
        const char *ext = t ? "svg" : "png";
        fprintf(gp, "set terminal %s\nset output '%s/roc.%s'\n", term, pdir, ext);
        fprintf(gp, "set title 'Gaussian poisoning test: ROC of -I (budget %s)'\nset logscale x\nset xrange [0.001:1]\n"
                    "set yrange [0:1]\nset xlabel 'false positive rate'\nset ylabel 'true positive rate'\nset key bottom right\n"
                    "set grid\n", budget_text(top, b, sizeof b));
        fprintf(gp, "plot x title 'chance' with lines dashtype 2 lc rgb 'gray'");
        for (int c = 0; c < curves; c++)
            fprintf(gp, ", '%s/roc.dat' index %d with lines lw 2 title '%s'", pdir, c, titles[c]);
        fprintf(gp, "\nunset logscale x\n");
        /* the TPR axis starts at 0 and ends where the points do: at small
         * eps every method sits below 0.2, where [0, 1] piles the labels */
        accuracy_plot(gp, pdir, ext, "acc_vs_tpr", "TPR at FPR 0.01", budget_text(top, b, sizeof b), "[0:*]",
                      "TPR at FPR 0.01 (Gaussian test on -I)", 2, 4);
        /* GUS: the mean score over the poisons, 0 for a model that never saw them */
        accuracy_plot(gp, pdir, ext, "acc_vs_gus", "the Gaussian Unlearning Score", budget_text(top, b, sizeof b), "[*:*]",
                      "GUS (mean of I over the poisons; 0: never seen)", 6, 7);
    }
    fclose(gp);
    char cmd[PATH_MAX * 3];
    snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>'%s/gnuplot.log'", path, pdir);
    if (system(cmd) != 0)
        fprintf(stderr, "lethe: note: gnuplot failed (see %s/gnuplot.log); the tables are written\n", pdir);
    else
        printf("plots: %s/roc.png, %s/acc_vs_tpr.png, %s/acc_vs_gus.png (and .svg)\n", pdir, pdir, pdir);
    return LETHE_OK;
}

int report_run(const char *dir, int plots, char *err) {
    Report *r = calloc(1, sizeof *r);
    if (!r)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/results.jsonl", dir);
    long skipped = 0;
    int rc = fs_jsonl_read(path, (size_t)1 << 30, on_record, r, &skipped, err);
    if (!rc && r->ng == 0)
        rc = lethe_errf(err, LETHE_ENOTFOUND, "%s holds no records: has `lethe run` finished a stage?", path);
    if (!rc) {
        if (skipped || r->bad)
            fprintf(stderr, "lethe: note: %ld unreadable lines in %s were skipped\n", skipped + r->bad, path);
        qsort(r->g, (size_t)r->ng, sizeof(Group), cmp_group);
        rc = write_tables(r, dir, err);
    }
    if (!rc && plots)
        rc = draw(r, dir, err);
    free(r);
    return rc;
}
