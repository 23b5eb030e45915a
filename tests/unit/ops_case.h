/* ops_case.h: the case machinery of test_ops.c, shared with ops_state.c
 * (the two files make one test binary, test_ops). A case: begin(entry)
 * makes a frame with random inputs, call() runs the entry, get() reads an
 * argument back as doubles, expect(ref, tol, shape) compares "out" with a
 * reference computed here in double precision and ends the case. Scratch
 * from D() lives until the case ends. */
#ifndef OPS_CASE_H
#define OPS_CASE_H

#include <stdbool.h>
#include <stdint.h>

#include "harness.h"

#define OPS_LTH "tests/lth/ops.lth"

typedef struct Sh {
    int r;
    int64_t d[8];
} Sh;

typedef struct Mode {
    const lethe_program *p;
    const char *tag;
    bool f64;
    double tol, tol_tr;
} Mode;

typedef struct Conv {
    int64_t N, C, H, W, O, KH, KW, OH, OW, s, p;
} Conv;

enum { R_SUM, R_MEAN, R_MAX, R_MIN, R_LSE, R_VAR, R_NORM };

extern Mode *M;              /* the program being checked (f32 or f64) */
extern th_frame *F;          /* the call frame of the current case */
extern const char *VARIANT;  /* appended to check names */
extern double FLOOR_FRAC;    /* errors relative to max(|ref|, FLOOR_FRAC max|ref|) */

double *D(int64_t n);        /* zeroed scratch, freed when the case ends */
Sh sh(int r, ...);
Sh arg_shape(const char *name);
bool begin(const char *entry);
bool call(void);
bool call_ctx(lethe_ctx *ctx);
void end_case(void);
const lethe_arg *argd(const char *name);
int64_t numel(const char *name);
void fill(const char *name, double lo, double hi);
double *get(const char *name);
void put(const char *name, const double *v);
const char *cname(void);
bool check_arg(const char *arg, const double *ref, double tol, Sh want);
void expect(const double *ref, double tol, Sh want);

double r_sigmoid(double x);
double r_gelu(double x);
double *ref_reduce(const double *x, Sh s, unsigned mask, int kind, int64_t *nout);
double *ref_matmul(const double *a, Sh sa, const double *b, Sh sb, Sh *so);
double *ref_softmax(const double *x, Sh s, int axis, bool lg);
Conv conv_dims(Sh xs, Sh ws, int s, int p);
double *ref_conv(const double *x, const double *w, Conv k);   /* stride s, pad p */

/* ops_state.c */
void read_streams(const char *flags);
void test_random(void);
void test_edge(void);
void test_inplace(void);
void test_big(void);

#endif
