/* report.c: `lethe report DIR`, the results of a run folder as a table
 * (mean +- std over seeds, per method and budget) and plots drawn with
 * gnuplot into DIR/plots: the ROC curves of every membership test the
 * records carry on a log false-positive axis, as Carlini et al. (2022) draw
 * them (roc: the Gaussian test; roc_lira: offline LiRA; roc_text_<score>:
 * the text scores of run_text_mia.c), test accuracy against TPR at FPR 0.01 and
 * against the Gaussian Unlearning Score per method (acc_vs_tpr, acc_vs_gus:
 * the paper's Figure 2), and, when the records carry an attack's success
 * measure, one bar per method (attack_success). The table goes to stdout and
 * to DIR/table.md and DIR/table.csv.
 *
 * Record fields read (results.jsonl, one JSON object a line): method, budget,
 * experiment, accuracy, gus, tpr_at_fpr, loss_mia, budget_used, param_shift,
 * seconds, roc, lira {shadows, fpr_0.01, fpr_0.001, roc}, text_mia {loss,
 * zlib, min_k, min_kpp, reference: {tpr_at_fpr_0.01, roc}}, and, from
 * attack experiments, attack_success (a number: the attack's success
 * measure for that model, e.g. 1 if the target was flipped, or the share of
 * trigger prompts that give the adversarial label) with
 * attack_measure (a string: what that number is, the bar chart's axis).
 * A plot whose fields no record has is not drawn. A folder of `lethe
 * hypotheses` (hypotheses.jsonl and no results.jsonl) gets the table and
 * plots of report_hypotheses.c instead.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fsutil.h"
#include "hypotheses.h"
#include "json.h"
#include "metrics.h"
#include "run.h"

enum { MAX_GROUPS = 128, MAX_SEEDS = 64, ROC_POINTS = 41 };

/* The text membership scores of a record's text_mia block (run_text_mia.c). */
static const char *const text_scores[] = {"loss", "zlib", "min_k", "min_kpp", "reference"};
enum { NTEXT = sizeof text_scores / sizeof text_scores[0] };

/* A membership test's ROC: where a record holds it ([[fpr, tpr], ...] at the
 * 41 log-spaced rates of run_roc_sample), its plot and the plot's title. */
typedef struct CurveKind {
    const char *plot;      /* the plot's file name (and its data file's, plus .dat) */
    const char *keys[3];   /* the path to the array in a record */
    const char *title;
} CurveKind;

static const CurveKind curve_kinds[] = {
    {"roc", {"roc"}, "Gaussian poisoning test: ROC of -I"},
    {"roc_lira", {"lira", "roc"}, "Offline LiRA, forget set against test set"},
    {"roc_text_loss", {"text_mia", "loss", "roc"}, "Text membership, LOSS (mean token log-probability)"},
    {"roc_text_zlib", {"text_mia", "zlib", "roc"}, "Text membership, zlib-normalised loss"},
    {"roc_text_min_k", {"text_mia", "min_k", "roc"}, "Text membership, Min-K%"},
    {"roc_text_min_kpp", {"text_mia", "min_kpp", "roc"}, "Text membership, Min-K%++"},
    {"roc_text_reference", {"text_mia", "reference", "roc"}, "Text membership, reference-model loss difference"},
};
enum { NCURVES = sizeof curve_kinds / sizeof curve_kinds[0] };

typedef struct Curve {
    double fpr[ROC_POINTS], tpr[ROC_POINTS];   /* tpr summed over the records, averaged when drawn */
    int n, count;
} Curve;

typedef struct Group {
    char method[64];
    double budget;                 /* -1: no budget (original, retrain) */
    int n;
    double acc[MAX_SEEDS], gus[MAX_SEEDS], tpr[MAX_SEEDS], tpr2[MAX_SEEDS], mia[MAX_SEEDS], used[MAX_SEEDS],
        shift[MAX_SEEDS], secs[MAX_SEEDS], attack[MAX_SEEDS];
    double lira01[MAX_SEEDS], lira001[MAX_SEEDS];   /* LiRA's TPR at FPR 0.01 and 0.001 */
    double text[NTEXT][MAX_SEEDS];                  /* each text score's TPR at FPR 0.01 */
    Curve curve[NCURVES];
} Group;

typedef struct Report {
    Group g[MAX_GROUPS];
    int ng;
    char experiment[128];
    char attack_measure[96];       /* what attack_success measures (from the records), "" if unsaid */
    int has_attack;                /* some record has attack_success */
    int lira_shadows;              /* of the LiRA records, 0 if none */
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

/* The value at rec.keys[0].keys[1]... (NULL-terminated or 3 keys). */
static const json_value *at_path(const json_value *rec, const char *const keys[3]) {
    for (int i = 0; i < 3 && keys[i] && rec; i++)
        rec = json_obj_get(rec, keys[i]);
    return rec;
}

/* Adds a record's ROC array to the group's curve (ignored if malformed). */
static void add_curve(Curve *c, const json_value *roc) {
    if (!roc || roc->type != JSON_ARRAY || roc->len == 0 || roc->len > ROC_POINTS)
        return;
    if (c->count && c->n != (int)roc->len)
        return;   /* another sampling than the seeds before it: not averaged with them */
    for (size_t i = 0; i < roc->len; i++) {
        const json_value *p = &roc->items[i];
        if (p->type != JSON_ARRAY || p->len != 2 || p->items[0].type != JSON_NUMBER || p->items[1].type != JSON_NUMBER)
            return;
    }
    c->n = (int)roc->len;
    for (size_t i = 0; i < roc->len; i++) {
        c->fpr[i] = roc->items[i].items[0].num;
        c->tpr[i] += roc->items[i].items[1].num;
    }
    c->count++;
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
    const json_value *measure = json_obj_get(rec, "attack_measure");
    if (measure && measure->type == JSON_STRING)
        snprintf(r->attack_measure, sizeof r->attack_measure, "%s", measure->str);
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
        g->attack[k] = num(rec, "attack_success");
        r->has_attack |= !isnan(g->attack[k]);
        g->lira01[k] = tpr_of(rec, "lira", "fpr_0.01");
        g->lira001[k] = tpr_of(rec, "lira", "fpr_0.001");
        double shadows = num(json_obj_get(rec, "lira"), "shadows");
        if (!isnan(shadows))
            r->lira_shadows = (int)shadows;
        const json_value *text = json_obj_get(rec, "text_mia");
        for (int j = 0; j < NTEXT; j++)
            g->text[j][k] = tpr_of(text, text_scores[j], "tpr_at_fpr_0.01");
        for (int j = 0; j < NCURVES; j++)
            add_curve(&g->curve[j], at_path(rec, curve_kinds[j].keys));
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

/* A column of the markdown table: a per-seed field of every group. */
typedef struct Column {
    const char *head;
    size_t offset;     /* of the Group's double[MAX_SEEDS] */
    double scale;
    int decimals;
} Column;

static const double *column_values(const Group *g, const Column *c) {
    return (const double *)((const char *)g + c->offset);
}

/* A column no record fills (the Gaussian scores of an attack experiment, the
 * attack's success of a Gaussian one) is left out of the markdown table. */
static int column_filled(const Report *r, const Column *c) {
    for (int i = 0; i < r->ng; i++)
        for (int k = 0; k < r->g[i].n; k++)
            if (!isnan(column_values(&r->g[i], c)[k]))
                return 1;
    return 0;
}

static int write_tables(const Report *r, const char *dir, char *err) {
    static const Column cols[] = {
        {"test acc %", offsetof(Group, acc), 100, 2},           {"GUS", offsetof(Group, gus), 1, 3},
        {"TPR@1% (-I)", offsetof(Group, tpr), 1, 3},           {"TPR@1% (abs I)", offsetof(Group, tpr2), 1, 3},
        {"loss MIA TPR@1%", offsetof(Group, mia), 1, 3},       {"LiRA TPR@1%", offsetof(Group, lira01), 1, 3},
        {"LiRA TPR@0.1%", offsetof(Group, lira001), 1, 3},     {"text LOSS TPR@1%", offsetof(Group, text[0]), 1, 3},
        {"zlib TPR@1%", offsetof(Group, text[1]), 1, 3},       {"Min-K% TPR@1%", offsetof(Group, text[2]), 1, 3},
        {"Min-K%++ TPR@1%", offsetof(Group, text[3]), 1, 3},   {"reference TPR@1%", offsetof(Group, text[4]), 1, 3},
        {"budget used %", offsetof(Group, used), 100, 2},      {"param shift", offsetof(Group, shift), 1, 3},
        {"seconds", offsetof(Group, secs), 1, 1},              {"attack success", offsetof(Group, attack), 1, 3},
    };
    /* the membership columns beyond the loss test, in cols[] and in the CSV
     * (as <name>_mean,<name>_std where a record has them) */
    static const char *const csv_extra[] = {"lira_tpr01", "lira_tpr001", "text_loss_tpr01", "text_zlib_tpr01",
                                            "text_min_k_tpr01", "text_min_kpp_tpr01", "text_reference_tpr01"};
    enum { NCOLS = sizeof cols / sizeof cols[0], FIRST_EXTRA = 5,
           NEXTRA = sizeof csv_extra / sizeof csv_extra[0] };
    int shown[NCOLS];
    for (int j = 0; j < NCOLS; j++)
        shown[j] = column_filled(r, &cols[j]);
    char *md = NULL, *csv = NULL;
    size_t mdn = 0, csvn = 0;
    FILE *fm = open_memstream(&md, &mdn), *fc = open_memstream(&csv, &csvn);
    if (!fm || !fc)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    fprintf(fm, "| method | budget | seeds |");
    for (int j = 0; j < NCOLS; j++)
        if (shown[j])
            fprintf(fm, " %s |", cols[j].head);
    fprintf(fm, "\n|---|---|---|");
    for (int j = 0; j < NCOLS; j++)
        if (shown[j])
            fprintf(fm, "---|");
    fprintf(fm, "\n");
    fprintf(fc, "method,budget,seeds,acc_mean,acc_std,gus_mean,gus_std,tpr_neg_mean,tpr_neg_std,tpr_two_sided_mean,"
                "tpr_two_sided_std,mia_tpr_mean,mia_tpr_std,budget_used_mean,param_shift_mean,seconds_mean");
    for (int j = 0; j < NEXTRA; j++)
        if (shown[FIRST_EXTRA + j])
            fprintf(fc, ",%s_mean,%s_std", csv_extra[j], csv_extra[j]);
    fprintf(fc, "%s\n", r->has_attack ? ",attack_success_mean,attack_success_std" : "");
    for (int i = 0; i < r->ng; i++) {
        const Group *g = &r->g[i];
        char c[64], b[32];
        fprintf(fm, "| %s | %s | %d |", g->method, budget_text(g->budget, b, sizeof b), g->n);
        for (int j = 0; j < NCOLS; j++)
            if (shown[j]) {
                cell(c, sizeof c, column_values(g, &cols[j]), g->n, cols[j].scale, cols[j].decimals);
                fprintf(fm, " %s |", c);
            }
        fprintf(fm, "\n");
        fprintf(fc, "%s,%g,%d,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g", g->method,
                g->budget < 0 ? NAN : g->budget, g->n, mean_of(g->acc, g->n), std_of(g->acc, g->n), mean_of(g->gus, g->n),
                std_of(g->gus, g->n), mean_of(g->tpr, g->n), std_of(g->tpr, g->n), mean_of(g->tpr2, g->n),
                std_of(g->tpr2, g->n), mean_of(g->mia, g->n), std_of(g->mia, g->n), mean_of(g->used, g->n),
                mean_of(g->shift, g->n), mean_of(g->secs, g->n));
        for (int j = 0; j < NEXTRA; j++)
            if (shown[FIRST_EXTRA + j]) {
                const double *v = column_values(g, &cols[FIRST_EXTRA + j]);
                fprintf(fc, ",%.6g,%.6g", mean_of(v, g->n), std_of(v, g->n));
            }
        if (r->has_attack)
            fprintf(fc, ",%.6g,%.6g", mean_of(g->attack, g->n), std_of(g->attack, g->n));
        fprintf(fc, "\n");
    }
    fclose(fm);
    fclose(fc);
    printf("\n%s: mean +- std over seeds.", r->experiment[0] ? r->experiment : dir);
    if (shown[2] || shown[3])   /* the TPR columns */
        printf(" TPR at FPR 1%% of the Gaussian test against fresh-noise nulls: one-sided on -I (memorisation makes I "
               "negative) and two-sided on |I|.");
    if (shown[FIRST_EXTRA] || shown[FIRST_EXTRA + 1])
        printf(" LiRA: the offline test with %d shadow models, members the forget set, non-members the test set.",
               r->lira_shadows);
    for (int j = FIRST_EXTRA + 2, any = 0; j < FIRST_EXTRA + NEXTRA && !any; j++)
        if ((any = shown[j]))
            printf(" Text scores: members the forget set, non-members as many test reviews.");
    if (shown[NCOLS - 1])
        printf(" Attack success: %s.", r->attack_measure[0] ? r->attack_measure : "the attack's own measure");
    printf("\n\n%s\n", md);
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

/* ---- plots ------------------------------------------------------------------
 *
 * gnuplot draws; a missing gnuplot only skips the plots, with a note. Read as
 * a newcomer reads them, the plots must not mislead, hence:
 *  - every method keeps one style in every plot of every report: its own
 *    colour, point type and dash type (the paper's methods by a fixed table,
 *    others after them), so ten curves stay apart in colour and in grey;
 *  - the original model (poisoned, before unlearning: what every method
 *    starts from) is the black diamond or the thick black line, says so in
 *    the key, and its accuracy and score are drawn as dotted guides, so a
 *    method that sits on them has not moved;
 *  - names are printed literally (noenhanced: gnuplot's enhanced text would
 *    turn neggrad_plus into "neggrad" with a subscript "plus");
 *  - points are named by the key beside the plot, not by labels that pile on
 *    each other where methods agree.
 * gnuplot runs in a fresh folder beside plots/ and the files are renamed into
 * place afterwards, so plots/ never holds half a picture; plots.gp uses
 * relative names and redraws everything when run inside plots/. */

typedef struct Style {
    const char *color;
    int point;     /* gnuplot pointtype */
    int dash;      /* gnuplot dashtype */
    double width;  /* line width */
    double size;   /* point size */
} Style;

static const char *const paper_methods[] = {"gd", "ngd", "ga", "neggrad_plus", "cfk", "euk", "scrub", "ssd"};
static const char *const palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                                      "#e377c2", "#bcbd22", "#17becf", "#000080", "#800000", "#006400"};
/* filled and open circles, squares, triangles, a filled diamond, then plus,
 * cross and star; 12 (the open diamond) is the original's */
static const int point_types[] = {7, 5, 9, 11, 6, 4, 8, 10, 13, 1, 2, 3};
enum { NPAPER = sizeof paper_methods / sizeof paper_methods[0], NPALETTE = sizeof palette / sizeof palette[0],
       NPOINTS = sizeof point_types / sizeof point_types[0], NDASHES = 5 };

static int is_paper_method(const char *m) {
    for (int i = 0; i < NPAPER; i++)
        if (!strcmp(m, paper_methods[i]))
            return i;
    return -1;
}

static Style style_of(const Report *r, const char *method) {
    if (!strcmp(method, "original"))
        return (Style){"#000000", 12, 1, 3.5, 3};
    if (!strcmp(method, "retrain"))
        return (Style){"#7f7f7f", 7, 1, 2.5, 1.6};
    int j = is_paper_method(method);
    if (j < 0) { /* after the paper's methods, in report order */
        j = NPAPER;
        for (int i = 0; i < r->ng && strcmp(r->g[i].method, method); i++) {
            int first = 1;
            for (int k = 0; k < i && first; k++)
                first = strcmp(r->g[k].method, r->g[i].method) != 0;
            if (first && rank_of(&r->g[i]) == 2 && is_paper_method(r->g[i].method) < 0)
                j++;
        }
    }
    return (Style){palette[j % NPALETTE], point_types[j % NPOINTS], 1 + j % NDASHES, 2, 1.6};
}

/* A gnuplot single-quoted string: quotes doubled, control bytes as '?'. */
static void gp_str(FILE *gp, const char *s) {
    fputc('\'', gp);
    for (; *s; s++) {
        if (*s == '\'')
            fputc('\'', gp);
        fputc((unsigned char)*s < 0x20 ? '?' : *s, gp);
    }
    fputc('\'', gp);
}

static const char *key_title(const char *method) {
    if (!strcmp(method, "original"))
        return "original (poisoned)";
    if (!strcmp(method, "retrain"))
        return "retrain (no poisons)";
    return method;
}

/* The groups a plot shows: original, retrain and every method at the largest budget. */
typedef struct Shown {
    const Group *g[MAX_GROUPS];
    int n;
    double budget;
} Shown;

/* Columns of points.dat, one index block per shown group. */
enum { COL_TPR = 1, COL_ACC, COL_TPR_STD, COL_ACC_STD, COL_GUS, COL_GUS_STD, COL_ATTACK, COL_ATTACK_STD };

static double column_mean(const Group *g, int col) {
    return col == COL_TPR ? mean_of(g->tpr, g->n)
         : col == COL_GUS ? mean_of(g->gus, g->n)
         : col == COL_ATTACK ? mean_of(g->attack, g->n)
                             : 100 * mean_of(g->acc, g->n);
}

static void terminal(FILE *gp, int svg, const char *name) {
    fprintf(gp, "reset\nset terminal %s noenhanced\nset output '%s.%s'\nset grid\n",
            svg ? "svg size 810,540 dynamic" : "pngcairo size 1080,720", name, svg ? "svg" : "png");
}

static void key_outside(FILE *gp) { fprintf(gp, "set key outside right top vertical Left reverse samplen 2.5\n"); }

/* ROC curves of membership test `kind` for the shown groups (<plot>.dat, one
 * block per group with a curve), the false positive rate on a log axis. */
static int roc_plot(FILE *gp, const Report *r, const Shown *s, int svg, const char *budget, int kind) {
    const CurveKind *ck = &curve_kinds[kind];
    int curves = 0;
    for (int i = 0; i < s->n; i++)
        curves += s->g[i]->curve[kind].count > 0;
    if (!curves)
        return 0;
    terminal(gp, svg, ck->plot);
    char shadows[48] = "";
    if (!strcmp(ck->plot, "roc_lira") && r->lira_shadows > 0)
        snprintf(shadows, sizeof shadows, ", %d shadow models", r->lira_shadows);
    fprintf(gp, "set title ");
    char title[256];
    snprintf(title, sizeof title, "%s (budget %s%s)", ck->title, budget, shadows);
    gp_str(gp, title);
    fprintf(gp, "\nset logscale x\nset xrange [0.001:1]\n"
                "set yrange [0:1]\nset xlabel 'false positive rate'\nset ylabel 'true positive rate'\n");
    key_outside(gp);
    fprintf(gp, "plot x title 'chance' with lines dashtype 3 lc rgb '#b0b0b0'");
    int block = 0;
    for (int i = 0; i < s->n; i++) {
        if (!s->g[i]->curve[kind].count)
            continue;
        Style st = style_of(r, s->g[i]->method);
        fprintf(gp, ", \\\n  '%s.dat' index %d with lines lw %g dt %d lc rgb '%s' title ", ck->plot, block++, st.width,
                st.dash, st.color);
        gp_str(gp, key_title(s->g[i]->method));
    }
    fprintf(gp, "\n");
    return 1;
}

/* Test accuracy against column xcol of points.dat, one point with error bars per group. */
static int accuracy_plot(FILE *gp, const Report *r, const Shown *s, int svg, const char *name, const char *title,
                         const char *xlabel, int xcol, int xerr, const char *budget) {
    int points = 0;
    const Group *orig = NULL;
    for (int i = 0; i < s->n; i++)
        if (isfinite(column_mean(s->g[i], xcol)) && isfinite(column_mean(s->g[i], COL_ACC))) {
            points++;
            if (!strcmp(s->g[i]->method, "original"))
                orig = s->g[i];
        }
    if (!points)
        return 0;
    terminal(gp, svg, name);
    /* autoscaled with a margin: a point at TPR 0 (retrain) is not cut in half by the axis */
    fprintf(gp, "set title 'Test accuracy against %s (budget %s)'\nset offsets graph 0.04, graph 0.04, graph 0.06, graph 0.06\n"
                "set xlabel '%s'\nset ylabel 'test accuracy (%%)'\n",
            title, budget, xlabel);
    key_outside(gp);
    if (orig) {
        double x = column_mean(orig, xcol), y = column_mean(orig, COL_ACC);
        fprintf(gp, "set arrow from %.9g, graph 0 to %.9g, graph 1 nohead back dt 3 lw 1.5 lc rgb '#000000'\n", x, x);
        fprintf(gp, "set arrow from graph 0, first %.9g to graph 1, first %.9g nohead back dt 3 lw 1.5 lc rgb '#000000'\n",
                y, y);
    }
    /* the original is an open diamond drawn last, around the methods that did
     * not move from it; its key entry comes first all the same */
    Style os = style_of(r, "original");
    if (orig)
        fprintf(gp, "plot keyentry with points pt %d ps %g lw 2 lc rgb '%s' title '%s', \\\n  ", os.point, os.size,
                os.color, key_title("original"));
    else
        fprintf(gp, "plot ");
    int last = -1;
    for (int i = 0; i < s->n; i++)
        if (s->g[i] != orig && isfinite(column_mean(s->g[i], xcol)) && isfinite(column_mean(s->g[i], COL_ACC)))
            last = i;
    for (int i = 0; i < s->n; i++) {
        if (s->g[i] == orig || i > last)
            continue;
        if (!isfinite(column_mean(s->g[i], xcol)) || !isfinite(column_mean(s->g[i], COL_ACC)))
            continue;
        Style st = style_of(r, s->g[i]->method);
        fprintf(gp, "'points.dat' index %d using %d:%d:%d:%d with xyerrorbars pt %d ps %g lw 1.5 lc rgb '%s' title ", i,
                xcol, COL_ACC, xerr, COL_ACC_STD, st.point, st.size, st.color);
        gp_str(gp, key_title(s->g[i]->method));
        fprintf(gp, "%s", i < last || orig ? ", \\\n  " : "\n");
    }
    for (int i = 0; orig && i < s->n; i++)
        if (s->g[i] == orig)
            fprintf(gp, "'points.dat' index %d using %d:%d:%d:%d with xyerrorbars pt %d ps %g lw 2 lc rgb '%s' notitle\n",
                    i, xcol, COL_ACC, xerr, COL_ACC_STD, os.point, os.size, os.color);
    return 1;
}

/* The attack's success measure per method (the paper's Figure 2): one bar
 * per group, the mean over seeds with the standard deviation as error bar
 * (cut to [0, 1] for a share; drawn as a vector: yerrorbars would put a point on the bar's top) and the
 * value above it; the original's bar is hatched so that its error bar shows. */
/* Is every success value in [0, 1] (a rate, such as targets flipped)? */
static int attack_is_share(const Shown *s) {
    for (int i = 0; i < s->n; i++)
        for (int k = 0; k < s->g[i]->n; k++) {
            double v = s->g[i]->attack[k];
            if (!isnan(v) && (v < 0 || v > 1))
                return 0;
        }
    return 1;
}

/* The error bar of a group's success: mean -/+ std, cut to [0, 1] for a
 * share (2 of 3 targets flipped is 0.67 +/- 0.58, and no rate passes 1). */
static void attack_interval(const Group *g, int share, double *lo, double *hi) {
    double m = mean_of(g->attack, g->n), sd = std_of(g->attack, g->n);
    *lo = share ? fmax(0, m - sd) : m - sd;
    *hi = share ? fmin(1, m + sd) : m + sd;
}

static int attack_plot(FILE *gp, const Report *r, const Shown *s, int svg, const char *budget) {
    int bars = 0, share = attack_is_share(s);
    double top = 0, low = 0;
    for (int i = 0; i < s->n; i++) {
        const Group *g = s->g[i];
        double lo, hi;
        attack_interval(g, share, &lo, &hi);
        if (isfinite(column_mean(g, COL_ATTACK))) {
            bars++;
            top = fmax(top, hi);
            low = fmin(low, lo);
        }
    }
    if (!bars)
        return 0;
    /* a share keeps 1 on the axis; any other measure (an accuracy drop, which
     * can be negative) gets the room its bars need; both leave room for the values */
    double pad = 0.1 * (share ? fmax(1, top) : fmax(top - low, 1e-9));
    terminal(gp, svg, "attack_success");
    fprintf(gp, "set title 'Attack success per method (budget %s): mean and std over seeds%s'\nset key off\n"
                "set grid noxtics ytics\nset xzeroaxis lt -1\nset boxwidth 0.7\nset xrange [-0.6:%d.6]\n"
                "set yrange [%.9g:%.9g]\nset ylabel ",
            budget, share ? ", cut to [0, 1]" : "", bars - 1, share ? 0 : low - (low < 0 ? pad : 0), (share ? fmax(1, top) : top) + pad);
    gp_str(gp, r->attack_measure[0] ? r->attack_measure : "attack success");
    fprintf(gp, "\nset xtics rotate by 30 right nomirror (");
    for (int i = 0, k = 0; i < s->n; i++) {
        if (!isfinite(column_mean(s->g[i], COL_ATTACK)))
            continue;
        fprintf(gp, "%s", k ? ", " : "");
        gp_str(gp, s->g[i]->method);
        fprintf(gp, " %d", k++);
    }
    fprintf(gp, ")\nplot");
    for (int i = 0, k = 0; i < s->n; i++) {
        if (!isfinite(column_mean(s->g[i], COL_ATTACK)))
            continue;
        Style st = style_of(r, s->g[i]->method);
        int orig = !strcmp(s->g[i]->method, "original");
        fprintf(gp, "%s'attack.dat' index %d using 1:2 with boxes fs %s border lc rgb '#000000' lc rgb '%s' notitle",
                k ? ", \\\n  " : " ", k, orig ? "pattern 4" : "solid 0.85", st.color);
        k++;
    }
    fprintf(gp, ", \\\n  'attack.dat' using 1:3:(0):($4 - $3) with vectors heads size screen 0.008,90 lw 1.5 lc rgb "
                "'#303030' notitle"
                ", \\\n  'attack.dat' using 1:4:(sprintf('%%.2f', $2)) with labels offset 0,0.8 notitle\n");
    return 1;
}

/* Runs `gnuplot plots.gp` inside dir, its output into dir/gnuplot.log.
 * Returns the exit status, 127 when gnuplot is missing. (Also draws the
 * hypotheses' plots, report_hypotheses.c.) */
int report_gnuplot(const char *dir) {
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = -1;
        if (chdir(dir) == 0)
            fd = open("gnuplot.log", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0)
            _exit(126);
        dup2(fd, 1);
        dup2(fd, 2);
        execlp("gnuplot", "gnuplot", "plots.gp", (char *)NULL);
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The plots after the ROC curves (plot k >= NCURVES is other_plots[k - NCURVES]). */
static const char *const other_plots[] = {"acc_vs_tpr", "acc_vs_gus", "attack_success"};
enum { NPLOTS = NCURVES + sizeof other_plots / sizeof other_plots[0] };

static const char *plot_name(int k) { return k < NCURVES ? curve_kinds[k].plot : other_plots[k - NCURVES]; }

static void write_data(const Shown *s, FILE *points, FILE *const roc[NCURVES], FILE *attack) {
    for (int i = 0; i < s->n; i++) {
        const Group *g = s->g[i];
        /* every group gets a block in points.dat, so index i is shown group i */
        fprintf(points, "%g %g %g %g %g %g %g %g\n\n\n", mean_of(g->tpr, g->n), 100 * mean_of(g->acc, g->n),
                std_of(g->tpr, g->n), 100 * std_of(g->acc, g->n), mean_of(g->gus, g->n), std_of(g->gus, g->n),
                mean_of(g->attack, g->n), std_of(g->attack, g->n));
        for (int j = 0; j < NCURVES; j++) {
            const Curve *c = &g->curve[j];
            if (!c->count)
                continue;
            for (int k = 0; k < c->n; k++)
                fprintf(roc[j], "%g %g\n", c->fpr[k], c->tpr[k] / c->count);
            fprintf(roc[j], "\n\n");
        }
    }
    int share = attack_is_share(s);
    for (int i = 0, k = 0; i < s->n; i++) {   /* block k: the k-th group with a success measure: x, mean, bar */
        const Group *g = s->g[i];
        double m = mean_of(g->attack, g->n), lo, hi;
        attack_interval(g, share, &lo, &hi);
        if (isfinite(m))
            fprintf(attack, "%d %g %g %g\n\n\n", k++, m, lo, hi);
    }
}

/* Closes f; 1 if everything written to it reached the file. */
static int close_ok(FILE *f) {
    int bad = ferror(f);
    return (fclose(f) == 0) & !bad;
}

/* The files gnuplot reads: the script, points.dat, attack.dat, then one
 * <curve>.dat per membership test. */
enum { NFIXED = 3, NDATA = NFIXED + NCURVES };

static void data_name(int i, char *buf, size_t n) {
    static const char *const fixed[] = {"plots.gp", "points.dat", "attack.dat"};
    if (i < NFIXED)
        snprintf(buf, n, "%s", fixed[i]);
    else
        snprintf(buf, n, "%s.dat", curve_kinds[i - NFIXED].plot);
}

static void remove_scratch(const char *tmp) {
    char path[PATH_MAX + 128], name[64];
    for (int i = 0; i < NDATA; i++) {
        data_name(i, name, sizeof name);
        snprintf(path, sizeof path, "%s/%s", tmp, name);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/gnuplot.log", tmp);
    unlink(path);
    for (int i = 0; i < NPLOTS; i++)
        for (int svg = 0; svg < 2; svg++) {
            snprintf(path, sizeof path, "%s/%s.%s", tmp, plot_name(i), svg ? "svg" : "png");
            unlink(path);
        }
    rmdir(tmp);
}

/* Moves tmp/name to pdir/name (a rename within one file system: atomic). */
static int move_in(const char *tmp, const char *pdir, const char *name, char *err) {
    char from[PATH_MAX + 128], to[PATH_MAX + 128];
    snprintf(from, sizeof from, "%s/%s", tmp, name);
    snprintf(to, sizeof to, "%s/%s", pdir, name);
    if (rename(from, to))
        return lethe_errf(err, LETHE_EIO, "cannot move %s to %s: %s", from, to, strerror(errno));
    return LETHE_OK;
}

static int draw(const Report *r, const char *dir, char *err) {
    char pdir[PATH_MAX + 16], tmp[PATH_MAX + 64], path[PATH_MAX + 128], b[32];
    snprintf(pdir, sizeof pdir, "%s/plots", dir);
    snprintf(tmp, sizeof tmp, "%s/.plots.tmp.%ld", dir, (long)getpid());
    int rc = fs_mkdir_p(pdir, 0755, err);
    if (!rc)
        rc = fs_mkdir_p(tmp, 0755, err);
    if (rc)
        return rc;
    Shown s = {.budget = -1};
    for (int i = 0; i < r->ng; i++)
        s.budget = fmax(s.budget, r->g[i].budget);
    for (int i = 0; i < r->ng; i++)
        if (r->g[i].budget < 0 || r->g[i].budget == s.budget)
            s.g[s.n++] = &r->g[i];
    budget_text(s.budget, b, sizeof b);
    if (s.budget < 0)   /* only original and retrain: the titles say so, not "budget -" */
        snprintf(b, sizeof b, "none");
    FILE *f[NDATA];
    char name[64];
    int opened = 0;
    for (; opened < NDATA; opened++) {
        data_name(opened, name, sizeof name);
        snprintf(path, sizeof path, "%s/%s", tmp, name);
        if (!(f[opened] = fopen(path, "w")))
            break;
    }
    int drawn[NPLOTS] = {0}, ok = opened == NDATA;
    if (ok) {
        write_data(&s, f[1], f + NFIXED, f[2]);
        fprintf(f[0], "# lethe report: run `gnuplot plots.gp` in this folder to redraw\n");
        for (int svg = 0; svg < 2; svg++) {
            for (int k = 0; k < NCURVES; k++)
                drawn[k] = roc_plot(f[0], r, &s, svg, b, k);
            drawn[NCURVES] = accuracy_plot(f[0], r, &s, svg, "acc_vs_tpr", "TPR at FPR 0.01",
                                           "TPR at FPR 0.01 (Gaussian test on -I)", COL_TPR, COL_TPR_STD, b);
            drawn[NCURVES + 1] = accuracy_plot(f[0], r, &s, svg, "acc_vs_gus", "the Gaussian Unlearning Score",
                                               "GUS (mean of I over the poisons; 0: never seen)", COL_GUS, COL_GUS_STD, b);
            drawn[NCURVES + 2] = attack_plot(f[0], r, &s, svg, b);
        }
    }
    for (int i = 0; i < opened; i++)
        ok &= close_ok(f[i]);
    if (!ok) {
        remove_scratch(tmp);
        return lethe_errf(err, LETHE_EIO, "cannot write the plot files in %s", tmp);
    }
    int status = report_gnuplot(tmp);
    if (status == 127) {
        fprintf(stderr, "lethe: note: gnuplot is not installed, so no plots (apt-get install gnuplot-nox)\n");
    } else if (status != 0) {
        /* keep the script and gnuplot's words where the note points */
        move_in(tmp, pdir, "plots.gp", err);
        move_in(tmp, pdir, "gnuplot.log", err);
        fprintf(stderr, "lethe: note: gnuplot failed (see %s/gnuplot.log); the tables are written\n", pdir);
    } else {
        for (int i = 0; i < NDATA && !rc; i++) {
            data_name(i, name, sizeof name);
            if (i < NFIXED || drawn[i - NFIXED]) {
                rc = move_in(tmp, pdir, name, err);
            } else {   /* a membership test no record has: no data file (nor an earlier report's) */
                snprintf(path, sizeof path, "%s/%s", pdir, name);
                unlink(path);
            }
        }
        if (!rc)
            rc = move_in(tmp, pdir, "gnuplot.log", err);
        int any = 0;
        for (int i = 0; i < NPLOTS; i++)
            any |= drawn[i];
        printf(any ? "plots:" : "no plots: no record has a ROC curve, a TPR, a GUS or an attack success\n");
        for (int i = 0; i < NPLOTS && !rc; i++)
            for (int svg = 0; svg < 2 && !rc; svg++) {
                snprintf(path, sizeof path, "%s.%s", plot_name(i), svg ? "svg" : "png");
                if (drawn[i]) {
                    rc = move_in(tmp, pdir, path, err);
                    if (!svg)
                        printf(" %s/%s", pdir, path);
                } else {   /* a picture of an earlier report that this one has no data for */
                    snprintf(path, sizeof path, "%s/%s.%s", pdir, plot_name(i), svg ? "svg" : "png");
                    unlink(path);
                }
            }
        if (any)
            printf(" (and .svg)\n");
    }
    remove_scratch(tmp);
    return rc;
}

int report_run(const char *dir, int plots, char *err) {
    Report *r = calloc(1, sizeof *r);
    if (!r)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/results.jsonl", dir);
    char hyp[PATH_MAX + 32];   /* a folder of `lethe hypotheses` has its own records */
    snprintf(hyp, sizeof hyp, "%s/hypotheses.jsonl", dir);
    if (!fs_exists(path) && fs_exists(hyp)) {
        free(r);
        return report_hypotheses(dir, plots, err);
    }
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
