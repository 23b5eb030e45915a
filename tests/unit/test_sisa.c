/* test_sisa.c: SISA exact unlearning (runtime/sisa.h) with a trainer that
 * records what it is given. Its "model" is a hash of every sample id it
 * trained on, in order, and its "state" counts its steps, so two models are
 * equal only if they saw the same samples in the same steps.
 *   - the layout: disjoint shards covering the training set, equal slices,
 *     the same for the same seed, a clear error when there are too few samples;
 *   - training writes one checkpoint per slice and a second call trains nothing;
 *   - unlearning keeps the unaffected shards bit for bit (and retrains none of
 *     them), restarts each affected shard from the checkpoint before its first
 *     removed sample, never shows a removed sample to the trainer after that,
 *     and ends exactly where training from scratch without the removed
 *     samples ends; its step count is that of the retrained slices; a run
 *     stopped part way and started again ends the same;
 *   - aggregation: the ensemble's log-probabilities are the log of the mean
 *     softmax, and the weighted member gradients are the gradient of the
 *     ensemble's loss (finite differences on linear softmax members). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "sisa.h"

enum { N = 203, SHARDS = 5, SLICES = 4, MAX_CALLS = 4096 };

typedef struct Call {
    int shard, step, init;
    int64_t n, steps;
    int64_t ids[N];
} Call;

static Call g_calls[MAX_CALLS];
static int g_ncalls;

static int fake_init(void *user, int shard, ts_store *model, ts_store *state, char *err) {
    int64_t one = 1;
    ts_clear(model);
    ts_clear(state);
    ts_tensor *h = ts_put(model, "h", LETHE_I32, 1, &one, err), *c = ts_put(state, "count", LETHE_I32, 1, &one, err);
    if (!h || !c)
        return LETHE_EFORMAT;
    *(uint32_t *)h->data = 2166136261u ^ (uint32_t)shard;
    Call *k = &g_calls[g_ncalls++ % MAX_CALLS];
    memset(k, 0, sizeof *k);
    k->shard = shard;
    k->init = 1;
    return LETHE_OK;
}

static int fake_train(void *user, int shard, int step, const int64_t *set, int64_t n, int64_t steps, ts_store *model,
                      ts_store *state, char *err) {
    uint32_t *h = ts_get(model, "h")->data, *count = ts_get(state, "count")->data;
    for (int64_t s = 0; s < steps; s++) {
        for (int64_t i = 0; i < n; i++)
            *h = (*h ^ (uint32_t)set[(s + i) % n]) * 16777619u;
        ++*count;
    }
    Call *k = &g_calls[g_ncalls++ % MAX_CALLS];
    k->shard = shard;
    k->step = step;
    k->init = 0;
    k->n = n;
    k->steps = steps;
    memcpy(k->ids, set, sizeof(int64_t) * (size_t)n);
    return LETHE_OK;
}

static sisa_trainer trainer(void) {
    sisa_trainer t = {.batch = 8, .epochs = 6, .init = fake_init, .train = fake_train};
    return t;
}

static void test_layout(void) {
    sisa_layout a, b;
    char err[LETHE_ERR_LEN];
    int rc = sisa_layout_make(N, SHARDS, SLICES, 7, &a, err) | sisa_layout_make(N, SHARDS, SLICES, 7, &b, err);
    if (!th_check(rc == 0, "sisa.layout.make", "%s", err))
        return;
    int seen[N] = {0}, ok = 1;
    for (int64_t i = 0; i < N; i++)
        seen[a.order[i]]++;
    for (int64_t i = 0; i < N; i++)
        ok &= seen[i] == 1;
    th_check(ok, "sisa.layout.partition", "a position is in no shard or in two");
    int64_t lo = N, hi = 0;
    for (int k = 0; k < SHARDS * SLICES; k++) {
        int64_t len = a.start[k + 1] - a.start[k];
        lo = len < lo ? len : lo;
        hi = len > hi ? len : hi;
    }
    th_check(lo >= 1 && hi - lo <= 1, "sisa.layout.equal_slices", "slices of %lld to %lld samples", (long long)lo, (long long)hi);
    th_check(!memcmp(a.order, b.order, sizeof(int64_t) * N), "sisa.layout.deterministic", "the same seed gave two layouts");
    sisa_layout c;
    sisa_layout_make(N, SHARDS, SLICES, 8, &c, err);
    th_check(memcmp(a.order, c.order, sizeof(int64_t) * N) != 0, "sisa.layout.seeded", "seeds 7 and 8 gave one layout");
    sisa_layout_free(&a);
    sisa_layout_free(&b);
    sisa_layout_free(&c);
    rc = sisa_layout_make(10, 5, 4, 1, &a, err);
    th_check(rc != 0 && strstr(err, "at least 20 training samples"), "sisa.layout.too_few", "rc %d: %s", rc, err);
    sisa_trainer t = trainer();
    th_check(sisa_step_count(&t, 4, 40) == 12 && sisa_step_count(&t, 4, 1) == 1 && sisa_step_count(&t, 4, 0) == 0,
             "sisa.step_count", "2E/(R+1) epochs of n/batch steps: %lld %lld %lld", (long long)sisa_step_count(&t, 4, 40),
             (long long)sisa_step_count(&t, 4, 1), (long long)sisa_step_count(&t, 4, 0));
}

static uint32_t member_hash(const ts_store *ens, int s) {
    ts_store m = {0};
    char err[LETHE_ERR_LEN];
    uint32_t h = 0;
    if (!sisa_ensemble_member(ens, s, &m, err))
        h = *(uint32_t *)ts_get(&m, "h")->data;
    ts_clear(&m);
    return h;
}

/* Shard s trained from scratch without the forgotten positions, by the
 * schedule sisa.h describes (the test's own reading of it). */
static uint32_t from_scratch(const sisa_layout *l, int s, const uint8_t *forget) {
    sisa_trainer t = trainer();
    ts_store model = {0}, state = {0};
    char err[LETHE_ERR_LEN];
    fake_init(NULL, s, &model, &state, err);
    int64_t set[N];
    for (int j = 0; j < l->slices; j++) {
        int64_t n = 0;
        for (int64_t p = l->start[s * l->slices]; p < l->start[s * l->slices + j + 1]; p++)
            if (!forget[l->order[p]])
                set[n++] = l->order[p];
        if (n)
            fake_train(NULL, s, j + 1, set, n, sisa_step_count(&t, l->slices, n), &model, &state, err);
    }
    uint32_t h = *(uint32_t *)ts_get(&model, "h")->data;
    ts_clear(&model);
    ts_clear(&state);
    return h;
}

static void test_unlearn(void) {
    char err[LETHE_ERR_LEN], dir[512], out[512], path[600];
    snprintf(dir, sizeof dir, "%s/sisa_ckpt", th_tmpdir());
    snprintf(out, sizeof out, "%s/sisa_ckpt/unlearned", th_tmpdir());
    sisa_layout l;
    sisa_trainer t = trainer();
    if (sisa_layout_make(N, SHARDS, SLICES, 11, &l, err)) {
        th_fail("sisa.unlearn", "%s", err);
        return;
    }
    g_ncalls = 0;
    int rc = sisa_train(&l, &t, dir, err);
    int ncheck = 0;
    for (int s = 0; s < SHARDS; s++)
        for (int j = 1; j <= SLICES; j++) {
            snprintf(path, sizeof path, "%s/shard%d_slice%d.safetensors", dir, s, j);
            ncheck += access(path, F_OK) == 0;
        }
    th_check(!rc && ncheck == SHARDS * SLICES && g_ncalls == SHARDS * (SLICES + 1), "sisa.train.checkpoints",
             "rc %d (%s), %d checkpoints, %d trainer calls", rc, rc ? err : "", ncheck, g_ncalls);
    g_ncalls = 0;
    rc = sisa_train(&l, &t, dir, err);
    th_check(!rc && g_ncalls == 0, "sisa.train.resume", "a finished training trained again: %d calls", g_ncalls);

    /* forget: two samples in shard 1's third slice, one in shard 3's first */
    uint8_t forget[N] = {0};
    int64_t removed[3] = {l.order[l.start[1 * SLICES + 2]], l.order[l.start[1 * SLICES + 2] + 1], l.order[l.start[3 * SLICES]]};
    for (int i = 0; i < 3; i++)
        forget[removed[i]] = 1;
    ts_store before = {0}, after = {0};
    sisa_unlearned u;
    g_ncalls = 0;
    rc = sisa_ensemble_load(&l, dir, NULL, NULL, &before, err);
    if (!rc)
        rc = sisa_unlearn(&l, forget, &t, dir, out, &u, err);
    int ncalls = g_ncalls;
    if (!rc)
        rc = sisa_ensemble_load(&l, dir, out, &u, &after, err);
    if (!th_check(rc == 0, "sisa.unlearn.runs", "%s", err))
        return;
    th_check(sisa_ensemble_size(&after) == SHARDS && sisa_ensemble_size(&before) == SHARDS, "sisa.ensemble.size",
             "%d and %d shards", sisa_ensemble_size(&before), sisa_ensemble_size(&after));
    th_check(u.restart[0] == -1 && u.restart[1] == 2 && u.restart[2] == -1 && u.restart[3] == 0 && u.restart[4] == -1 &&
                 u.retrained == 2, "sisa.unlearn.restart_points", "restart %d %d %d %d %d, %d retrained", u.restart[0],
             u.restart[1], u.restart[2], u.restart[3], u.restart[4], u.retrained);
    /* (a) unaffected shards: bit for bit, and never handed to the trainer */
    int same = 1, touched = 0;
    for (int s = 0; s < SHARDS; s++)
        if (u.restart[s] < 0)
            same &= member_hash(&before, s) == member_hash(&after, s) && member_hash(&after, s) != 0;
    for (int i = 0; i < ncalls; i++)
        touched |= u.restart[g_calls[i].shard] < 0;
    th_check(same && !touched, "sisa.unlearn.unaffected_identical", "an unaffected shard changed or was retrained");
    /* (b) the right checkpoint, and no removed sample after it */
    int first_step[SHARDS] = {0}, inits[SHARDS] = {0}, leaked = 0;
    int64_t steps = 0;
    for (int i = 0; i < ncalls; i++) {
        Call *k = &g_calls[i];
        inits[k->shard] += k->init;
        if (!k->init && !first_step[k->shard])
            first_step[k->shard] = k->step;
        steps += k->steps;
        for (int64_t q = 0; q < k->n; q++)
            leaked |= forget[k->ids[q]];
    }
    th_check(first_step[1] == 3 && inits[1] == 0 && first_step[3] == 1 && inits[3] == 1, "sisa.unlearn.from_checkpoint",
             "shard 1 resumed at step %d (%d inits; expected step 3 from checkpoint 2), shard 3 at step %d (%d inits; "
             "expected fresh weights)", first_step[1], inits[1], first_step[3], inits[3]);
    th_check(!leaked, "sisa.unlearn.never_sees_forgotten", "a removed sample reached the trainer after its checkpoint");
    th_check(member_hash(&after, 1) == from_scratch(&l, 1, forget) && member_hash(&after, 3) == from_scratch(&l, 3, forget) &&
                 member_hash(&after, 1) != member_hash(&before, 1),
             "sisa.unlearn.equals_scratch", "a retrained shard differs from training without the removed samples");
    th_check(u.steps == steps && steps > 0, "sisa.unlearn.steps", "counted %lld steps, the trainer took %lld",
             (long long)u.steps, (long long)steps);
    /* a retraining stopped after shard 1's third checkpoint: the next run does only the rest */
    snprintf(path, sizeof path, "%s/shard1_slice4.safetensors", out);
    unlink(path);
    snprintf(path, sizeof path, "%s/shard3_slice4.safetensors", out);
    unlink(path);
    sisa_unlearned u2;
    ts_store again = {0};
    g_ncalls = 0;
    rc = sisa_unlearn(&l, forget, &t, dir, out, &u2, err);
    if (!rc)
        rc = sisa_ensemble_load(&l, dir, out, &u2, &again, err);
    th_check(!rc && g_ncalls == 2 && g_calls[0].step == 4 && g_calls[1].step == 4 && u2.steps == u.steps &&
                 member_hash(&again, 1) == member_hash(&after, 1) && member_hash(&again, 3) == member_hash(&after, 3),
             "sisa.unlearn.resume", "rc %d, %d calls (expected the two last steps), steps %lld vs %lld", rc, g_ncalls,
             (long long)u2.steps, (long long)u.steps);
    ts_clear(&before);
    ts_clear(&after);
    ts_clear(&again);
    sisa_layout_free(&l);
}

/* Members with logits W_s x (k classes, d inputs). */
enum { S = 3, K = 4, D = 5 };

static void member_logits(const double W[S][K][D], const double *x, float logits[S][K]) {
    for (int s = 0; s < S; s++)
        for (int c = 0; c < K; c++) {
            double v = 0;
            for (int j = 0; j < D; j++)
                v += W[s][c][j] * x[j];
            logits[s][c] = (float)v;
        }
}

static double ensemble_loss(const double W[S][K][D], const double *x, int y) {
    float logits[S][K];
    member_logits(W, x, logits);
    double p = 0;
    for (int s = 0; s < S; s++) {
        double z = 0;
        for (int c = 0; c < K; c++)
            z += exp(logits[s][c]);
        p += exp(logits[s][y]) / z / S;
    }
    return -log(p);
}

static void test_aggregate(void) {
    double W[S][K][D], x[D];
    uint32_t st = 12345;
    for (int s = 0; s < S; s++)
        for (int c = 0; c < K; c++)
            for (int j = 0; j < D; j++) {
                st = st * 1664525u + 1013904223u;
                W[s][c][j] = ((double)(st >> 8) / (1 << 24) - 0.5) * 3;
            }
    for (int j = 0; j < D; j++)
        x[j] = 0.3 * j - 0.6;
    int32_t y = 2;
    float logits[S][K];
    member_logits(W, x, logits);
    double logp[K], w[S];
    sisa_aggregate(&logits[0][0], S, 1, K, &y, logp, w);
    double worst = 0, wsum = 0;
    for (int c = 0; c < K; c++) {
        double p = 0;
        for (int s = 0; s < S; s++) {
            double z = 0;
            for (int q = 0; q < K; q++)
                z += exp((double)logits[s][q]);
            p += exp((double)logits[s][c]) / z / S;
        }
        worst = fmax(worst, fabs(log(p) - logp[c]));
    }
    for (int s = 0; s < S; s++)
        wsum += w[s];
    th_check(worst < 1e-12 && fabs(wsum - 1) < 1e-12, "sisa.aggregate.log_mean_softmax", "off by %g, weights sum %g", worst, wsum);
    /* the gradient: sum_s w_s W_s^T (p_s - e_y) against central differences of the ensemble loss */
    double g[D] = {0}, err = 0;
    for (int s = 0; s < S; s++) {
        double z = 0, p[K];
        for (int c = 0; c < K; c++)
            z += exp((double)logits[s][c]);
        for (int c = 0; c < K; c++)
            p[c] = exp((double)logits[s][c]) / z - (c == y);
        for (int j = 0; j < D; j++)
            for (int c = 0; c < K; c++)
                g[j] += w[s] * W[s][c][j] * p[c];
    }
    for (int j = 0; j < D; j++) {
        double h = 1e-3, xp[D], xm[D];
        memcpy(xp, x, sizeof x);
        memcpy(xm, x, sizeof x);
        xp[j] += h;
        xm[j] -= h;
        double num = (ensemble_loss(W, xp, y) - ensemble_loss(W, xm, y)) / (2 * h);
        err = fmax(err, fabs(num - g[j]));
    }
    th_check(err < 1e-4, "sisa.aggregate.gradient", "weighted member gradients differ from the ensemble loss's by %g", err);
    /* one member: the ensemble is that model */
    double one[K], w1;
    sisa_aggregate(&logits[1][0], 1, 1, K, &y, one, &w1);
    int arg = 0, arg1 = 0;
    for (int c = 1; c < K; c++) {
        arg = logits[1][c] > logits[1][arg] ? c : arg;
        arg1 = one[c] > one[arg1] ? c : arg1;
    }
    th_check(arg == arg1 && w1 == 1, "sisa.aggregate.single", "one member: argmax %d vs %d, weight %g", arg, arg1, w1);
}

int main(void) {
    test_layout();
    test_unlearn();
    test_aggregate();
    return th_exit();
}
