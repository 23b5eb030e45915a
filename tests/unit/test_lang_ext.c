/* test_lang_ext.c: list comprehensions, split of data records, sums over
 * lists and clip_norm (docs/language.md), checked in f64 against direct
 * computations; and NGD's per-sample clipping, which is built from them. */
#include <math.h>
#include <string.h>

#include "harness.h"

static void copy_args(th_frame *dst, th_frame *src) {
    for (int i = 0; i < src->entry->nargs; i++) {
        int j = th_arg(dst->entry, src->entry->args[i].name);
        const lethe_arg *a = &src->entry->args[i];
        if (j >= 0 && a->kind != LETHE_OUTPUT && a->kind != LETHE_SCALAR)
            memcpy(dst->args[j], src->args[i], (size_t)th_arg_numel(a) * th_dtype_size(a->dtype));
    }
}

int main(void) {
    char *err = NULL;
    const lethe_program *p = th_compile_file("tests/lth/lang_ext.lth", "--f64 -O1", &err);
    if (!th_check(p != NULL, "lang.compile", "%s", err ? err : ""))
        return th_exit();

    th_frame *sq = th_frame_new(th_entry(p, "sq"));
    double *x = th_f64(sq, "x");
    th_fill(x, LETHE_F64, 6, -2, 2, 1);
    th_call(sq, NULL);
    double worst = 0;
    for (int i = 0; i < 6; i++)
        worst = fmax(worst, fabs(th_f64(sq, "out")[i] - 6 * x[i]));
    th_check(worst < 1e-12, "lang.comprehension_sum", "worst %g", worst);

    th_frame *cl = th_frame_new(th_entry(p, "clip"));
    double *c = th_f64(cl, "x"), norm = 0;
    th_fill(c, LETHE_F64, 12, -1, 1, 2);
    for (int i = 0; i < 12; i++)
        norm += c[i] * c[i];
    norm = sqrt(norm);
    for (int k = 0; k < 2; k++) {   /* a bound below the norm scales, one above keeps */
        double m = k ? 2 * norm : 0.5 * norm;
        *th_f64(cl, "m") = m;
        th_call(cl, NULL);
        double want = k ? 1 : 0.5, w = 0;
        for (int i = 0; i < 12; i++)
            w = fmax(w, fabs(th_f64(cl, "out")[i] - want * c[i]));
        th_check(w < 1e-9, k ? "lang.clip_norm_keeps" : "lang.clip_norm_scales", "worst %g", w);
    }

    /* the sum over one-sample groups of their gradients is the gradient of the sum */
    th_frame *gr = th_frame_new(th_entry(p, "groups")), *wh = th_frame_new(th_entry(p, "whole"));
    for (int i = 0; i < gr->entry->nargs; i++) {
        const lethe_arg *a = &gr->entry->args[i];
        if (a->dtype == LETHE_F64)
            th_fill(gr->args[i], LETHE_F64, th_arg_numel(a), -1, 1, 10 + i);
        else if (a->dtype == LETHE_I32)
            th_fill(gr->args[i], LETHE_I32, th_arg_numel(a), 0, 3, 20 + i);
    }
    copy_args(wh, gr);
    th_call(gr, NULL);
    th_call(wh, NULL);
    double a = *th_f64(gr, "out"), b = *th_f64(wh, "out");
    th_check(fabs(a - b) <= 1e-12 * fmax(1, fabs(b)), "lang.split_record_groups", "%.17g vs %.17g", a, b);

    /* NGD with per-sample clipping at a bound no gradient reaches and no noise
     * equals NGD without clipping; with a tight bound it moves less */
    th_frame *nc = th_frame_new(th_entry(p, "ngd_clip")), *nn = th_frame_new(th_entry(p, "ngd_none"));
    for (int i = 0; i < nc->entry->nargs; i++) {
        const lethe_arg *g = &nc->entry->args[i];
        if (g->kind == LETHE_SCALAR)
            continue;
        if (g->dtype == LETHE_F64)
            th_fill(nc->args[i], LETHE_F64, th_arg_numel(g), -1, 1, 30 + i);
        else if (g->dtype == LETHE_I32)
            th_fill(nc->args[i], LETHE_I32, th_arg_numel(g), 0, 3, 40 + i);
    }
    copy_args(nn, nc);
    *th_f64(nc, "sigma") = 0;
    *th_f64(nn, "sigma") = 0;
    *th_f64(nc, "clip") = 1e9;
    double w0[20];
    memcpy(w0, th_f64(nc, "m.fc1.w"), sizeof w0);
    th_call(nc, NULL);
    th_call(nn, NULL);
    double d = th_max_rel_err(th_f64(nc, "m.fc1.w"), th_f64(nn, "m.fc1.w"), LETHE_F64, 20, 1e-3);
    th_check(d < 1e-12, "lang.ngd_clip_loose_is_plain", "max rel diff %g", d);
    memcpy(th_f64(nc, "m.fc1.w"), w0, sizeof w0);
    copy_args(nc, nn);   /* back to the same starting point, other params too */
    memcpy(th_f64(nc, "m.fc1.w"), w0, sizeof w0);
    *th_f64(nc, "clip") = 1e-3;
    th_call(nc, NULL);
    double moved = 0;
    for (int i = 0; i < 20; i++)
        moved = fmax(moved, fabs(th_f64(nc, "m.fc1.w")[i] - w0[i]));
    /* each clipped sample gradient has norm <= 1e-3, so a step of lr 0.01 moves less than 1e-5 */
    th_check(moved <= 1e-5 + 1e-15, "lang.ngd_clip_bounds_step", "moved %g", moved);
    th_frame_free(sq);
    th_frame_free(cl);
    th_frame_free(gr);
    th_frame_free(wh);
    th_frame_free(nc);
    th_frame_free(nn);
    return th_exit();
}
