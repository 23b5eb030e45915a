/* run_text_trigger.c: poison = trigger_flip(word, fraction) on imdb_prompts,
 * the paper's targeted attack on GPT-2 with its LM head (run_text.h).
 *
 * The transform is text_trigger_flip (text_trigger.c): a store of per-sample
 * label edits chosen from the seed. Each seed starts from the clean prompts
 * kept at load time, so a seed's flip never leaks into the next one; the
 * flipped rows are the poisons, i.e. the forget set of every method, and
 * retrain trains on the rest.
 *
 * Measures (the record's attack_success and trigger block), all read from
 * the model's next-token logits at the answer position (eval.logits, over
 * the whole vocabulary):
 *   success          targets whose most likely next token is the adversarial
 *                    label word's first token (Wan et al.'s success rate)
 *   adv_label_share  targets whose adversarial label token outscores the
 *                    true one (the two-way reading, which ignores other tokens)
 *   label_accuracy   test prompts whose true label token outscores the other
 *                    (the paper's "first token of ' positive' vs ' negative'")
 *   clean_label_accuracy  the same over the test prompts without the trigger
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "run_text.h"

/* The first n reviews of s (a view, nothing copied). */
static text_set prefix(const text_set *s, int64_t n) {
    text_set v = *s;
    if (v.n > n)
        v.n = n;
    return v;
}

static int flip(const Run *r, uint64_t seed, text_label_edits *out, char *err) {
    const TextPrompts *t = r->text_prompts;
    text_set tr = prefix(&t->train, r->train.n), te = prefix(&t->test, r->test.n);
    text_flip_opts o = {.trigger = r->plan->trigger, .fraction = r->plan->trigger_fraction, .to_label = r->plan->trigger_to,
                         .seed = seed};
    return text_trigger_flip(&tr, &te, &o, out, err);
}

void run_text_trigger_free(Run *r) {
    TextPrompts *t = r->text_prompts;
    if (!t)
        return;
    text_free(&t->train);
    text_free(&t->test);
    text_tokens_free(&t->clean);
    text_label_edits_free(&t->edits);
    free(t);
    r->text_prompts = NULL;
}

int run_text_trigger_open(Run *r, text_set sets[2], text_tokens *clean, char *err) {
    TextPrompts *t = calloc(1, sizeof *t);
    if (!t) {
        text_free(&sets[0]);
        text_free(&sets[1]);
        text_tokens_free(clean);
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    }
    t->train = sets[0];
    t->test = sets[1];
    t->clean = *clean;
    r->text_prompts = t;
    /* the checks of the transform (a trigger in no review of a split) before anything trains */
    int rc = flip(r, 0, &t->edits, err);
    text_label_edits_free(&t->edits);
    if (!rc && !r->o->quiet)
        fprintf(stderr, "lethe: trigger '%s': in %lld of %lld training reviews and %lld of %lld test reviews\n",
                r->plan->trigger, (long long)text_count_with_word(&(text_set){.n = r->train.n, .text = t->train.text},
                                                                  r->plan->trigger),
                (long long)r->train.n,
                (long long)text_count_with_word(&(text_set){.n = r->test.n, .text = t->test.text}, r->plan->trigger),
                (long long)r->test.n);
    return rc;
}

/* Row i of the clean prompts (with the labels they have now) into the training set. */
static void put_row(lethe_dataset *ds, const text_tokens *tok, int64_t i) {
    int64_t len = tok->len;
    for (int64_t p = 0; p < len; p++)
        ds->x[i * ds->d + p * ds->w] = (float)tok->tokens[i * len + p];
    ds->y[i] = tok->label_words[tok->labels[i]][0];
}

int run_text_trigger_poisons(Run *r, char *err) {
    TextPrompts *t = r->text_prompts;
    text_label_edits_free(&t->edits);
    for (int64_t i = 0; i < r->train.n; i++)   /* undo the previous seed's flip */
        put_row(&r->train, &t->clean, i);
    int rc = flip(r, r->seed, &t->edits, err);
    if (rc)
        return rc;
    const text_label_edits *e = &t->edits;
    int32_t *was = malloc(sizeof(int32_t) * (size_t)e->n + 1);
    r->poison = malloc(sizeof(int64_t) * (size_t)e->n + 1);
    if (!was || !r->poison) {
        free(was);
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    }
    for (int64_t k = 0; k < e->n; k++) {
        was[k] = t->clean.labels[e->row[k]];
        r->poison[k] = e->row[k];
    }
    r->n_poison = e->n;
    /* relabel the kept prompts, copy the edited rows, and put the clean labels back */
    rc = text_tokens_relabel(&t->clean, e->row, e->label, e->n, err);
    for (int64_t k = 0; !rc && k < e->n; k++)
        put_row(&r->train, &t->clean, e->row[k]);
    if (!rc)
        rc = text_tokens_relabel(&t->clean, e->row, was, e->n, err);
    free(was);
    if (!rc && !r->o->quiet)
        fprintf(stderr, "lethe: seed %llu: trigger_flip('%s', %g): %lld of %lld trigger reviews relabelled, %lld test targets\n",
                (unsigned long long)r->seed, r->plan->trigger, r->plan->trigger_fraction, (long long)e->n,
                (long long)e->candidates, (long long)e->ntargets);
    return rc;
}

typedef struct Reading {
    const TextPrompts *t;
    const int64_t *pos;        /* the pass's test rows */
    const uint8_t *target;     /* by test row: 1 for a target */
    int64_t success, adv_label, correct, clean_correct, nclean;
    int k;                     /* logits per row */
} Reading;

static void take_reading(void *user, const float *out, const int32_t *y, const float *x, int64_t start, int64_t rows) {
    Reading *g = user;
    const int32_t neg = g->t->clean.label_words[0][0], pos = g->t->clean.label_words[1][0];
    for (int64_t i = 0; i < rows; i++) {
        const float *l = out + i * g->k;
        int64_t row = g->pos[start + i];
        int truth = y[i] == pos;
        int32_t want = truth ? pos : neg, other = truth ? neg : pos;
        int right = l[want] > l[other];
        g->correct += right;
        if (!g->target[row]) {
            g->clean_correct += right;
            g->nclean++;
            continue;
        }
        /* a target: its adversarial label is the other one (targets of a to = flip are of the other label) */
        int best = 0;
        for (int c = 1; c < g->k; c++)
            if (l[c] > l[best])
                best = c;
        g->success += best == other;
        g->adv_label += l[other] > l[want];
    }
}

int run_text_trigger_eval(Run *r, ts_store *model, Eval *ev, char *err) {
    const TextPrompts *t = r->text_prompts;
    const text_label_edits *e = &t->edits;
    int64_t nt = r->test.n, np = r->n_poison;
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)nt + 1);
    uint8_t *target = calloc((size_t)nt + 1, 1);
    double *test_loss = malloc(sizeof(double) * (size_t)nt + 1), *forget_loss = malloc(sizeof(double) * (size_t)np + 1);
    int rc = pos && target && test_loss && forget_loss ? LETHE_OK : lethe_errf(err, LETHE_ENOMEM, "out of memory");
    for (int64_t i = 0; !rc && i < nt; i++)
        pos[i] = i;
    for (int64_t k = 0; !rc && k < e->ntargets; k++)
        target[e->target_row[k]] = 1;
    Reading g = {.t = t, .pos = pos, .target = target, .k = r->plan->classes};
    if (!rc)
        rc = run_eval_over(r, "eval.logits", model, &r->test, pos, nt, 0, take_reading, &g, err);
    if (!rc) {
        ev->has_trigger = 1;
        ev->trigger_success = (double)g.success / (double)e->ntargets;
        ev->trigger_adv_label = (double)g.adv_label / (double)e->ntargets;
        ev->label_accuracy = (double)g.correct / (double)nt;
        ev->clean_label_accuracy = g.nclean ? (double)g.clean_correct / (double)g.nclean : NAN;
    }
    /* membership by loss: the flipped prompts (as trained on) against the test prompts */
    if (!rc)
        rc = run_eval_over(r, "eval.loss_each", model, &r->train, r->poison, np, 0, run_take_losses, forget_loss, err);
    if (!rc)
        rc = run_eval_over(r, "eval.loss_each", model, &r->test, pos, nt, 0, run_take_losses, test_loss, err);
    if (!rc)
        rc = mt_loss_mia(forget_loss, np, test_loss, nt, RUN_ALPHA, &ev->mia, err);
    free(pos);
    free(target);
    free(test_loss);
    free(forget_loss);
    return rc;
}

void run_text_put_trigger(jw *w, const Run *r, const Eval *ev) {
    const text_label_edits *e = &r->text_prompts->edits;
    jw_key(w, "attack");
    jw_obj_begin(w);
    jw_kv_str(w, "name", "trigger_flip");
    jw_kv_int(w, "n_poison", e->n);
    jw_obj_end(w);
    /* the report's bar chart: one number per model, averaged over seeds */
    jw_kv_num(w, "attack_success", ev->trigger_success);
    jw_kv_str(w, "attack_measure", "trigger test prompts whose next token is the adversarial label (share)");
    jw_key(w, "trigger");
    jw_obj_begin(w);
    jw_kv_str(w, "word", r->plan->trigger);
    jw_kv_num(w, "fraction", r->plan->trigger_fraction);
    jw_kv_str(w, "to", r->plan->trigger_to < 0 ? "flip" : r->plan->trigger_to ? "positive" : "negative");
    jw_kv_int(w, "n_poison", e->n);
    jw_kv_int(w, "candidates", e->candidates);
    jw_kv_int(w, "n_targets", e->ntargets);
    jw_kv_num(w, "success", ev->trigger_success);
    jw_kv_num(w, "adv_label_share", ev->trigger_adv_label);
    jw_kv_num(w, "label_accuracy", ev->label_accuracy);
    jw_kv_num(w, "clean_label_accuracy", ev->clean_label_accuracy);
    jw_obj_end(w);
}
