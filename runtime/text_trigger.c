/* text_trigger.c: the trigger-word label flip of the targeted attack, as a
 * store of per-sample label edits (see text_tokens.h).
 *
 * The paper (section 5 and appendix A.1.2, after Wan et al. 2023): the poisons
 * are the training reviews that contain the trigger ("Disney"), with their
 * labels flipped, all of them or a fraction (20-100 %); the targets are the
 * test reviews that contain it, and success is the share of targets for
 * which the model gives the adversarial label.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "philox.h"
#include "text_tokens.h"

void text_label_edits_free(text_label_edits *e) {
    if (!e)
        return;
    free(e->row);
    free(e->label);
    free(e->target_row);
    free(e->target_label);
    memset(e, 0, sizeof *e);
}

/* 1 if review i of s holds the word (text_count_with_word over that review alone). */
static int has_word(const text_set *s, int64_t i, const char *word) {
    text_set one = {.n = 1, .text = &s->text[i]};
    return text_count_with_word(&one, word) == 1;
}

/* A candidate is a trigger review the edit may relabel: any of them for a flip,
 * those of the other label for a set-to. */
static int is_candidate(const text_set *s, int64_t i, const text_flip_opts *o) {
    return has_word(s, i, o->trigger) && (o->to_label < 0 || s->label[i] != o->to_label);
}

typedef struct draw {
    uint64_t key;
    int64_t row;
} draw;

static int cmp_draw(const void *a, const void *b) {
    const draw *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return (x->row > y->row) - (x->row < y->row);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int text_trigger_flip(const text_set *train, const text_set *test, const text_flip_opts *o, text_label_edits *out,
                      char *err) {
    memset(out, 0, sizeof *out);
    if (!o->trigger || !o->trigger[0])
        return lethe_errf(err, LETHE_EARG, "the trigger word is empty");
    if (!(o->fraction > 0 && o->fraction <= 1))
        return lethe_errf(err, LETHE_EARG, "a poisoned fraction of %g of the trigger reviews: it must be in (0, 1]",
                          o->fraction);
    if (o->to_label < -1 || o->to_label > 1)
        return lethe_errf(err, LETHE_EARG, "adversarial label %d: it must be 0, 1 or -1 (flip)", o->to_label);
    const char *of_label = o->to_label == 1 ? " negative" : o->to_label == 0 ? " positive" : "";
    int64_t ncand = 0, ntarget = 0;
    for (int64_t i = 0; i < train->n; i++) {
        out->with_trigger += has_word(train, i, o->trigger);
        ncand += is_candidate(train, i, o);
    }
    for (int64_t i = 0; i < test->n; i++)
        ntarget += is_candidate(test, i, o);
    if (ncand == 0)
        return lethe_errf(err, LETHE_EARG,
                          "%s: no%s review holds the trigger '%s' (a whole word, case-sensitive): the attack would "
                          "have no poisons",
                          train->source, of_label, o->trigger);
    if (ntarget == 0)
        return lethe_errf(err, LETHE_EARG,
                          "%s: no%s review holds the trigger '%s' (a whole word, case-sensitive): the attack's success "
                          "rate would be 0/0",
                          test->source, of_label, o->trigger);
    int64_t k = llround(o->fraction * (double)ncand);
    if (k < 1)
        k = 1;
    draw *d = malloc((size_t)ncand * sizeof *d);
    out->row = malloc((size_t)k * sizeof *out->row);
    out->label = malloc((size_t)k * sizeof *out->label);
    out->target_row = malloc((size_t)ntarget * sizeof *out->target_row);
    out->target_label = malloc((size_t)ntarget * sizeof *out->target_label);
    if (!d || !out->row || !out->label || !out->target_row || !out->target_label) {
        free(d);
        text_label_edits_free(out);
        return lethe_errf(err, LETHE_ENOMEM, "out of memory for %lld trigger reviews", (long long)ncand);
    }
    int64_t m = 0;
    for (int64_t i = 0; i < train->n; i++)
        if (is_candidate(train, i, o)) {
            uint32_t ctr[4] = {(uint32_t)i, (uint32_t)((uint64_t)i >> 32), TEXT_STREAM_FLIP, 0};
            philox_block b = philox4x32_10(ctr, o->seed);
            d[m++] = (draw){((uint64_t)b.v[0] << 32) | b.v[1], i};
        }
    qsort(d, (size_t)ncand, sizeof *d, cmp_draw);
    for (int64_t j = 0; j < k; j++)
        out->row[j] = d[j].row;
    free(d);
    qsort(out->row, (size_t)k, sizeof *out->row, cmp_i64);
    for (int64_t j = 0; j < k; j++)
        out->label[j] = o->to_label < 0 ? !train->label[out->row[j]] : o->to_label;
    m = 0;
    for (int64_t i = 0; i < test->n; i++)
        if (is_candidate(test, i, o)) {
            out->target_row[m] = i;
            out->target_label[m++] = o->to_label < 0 ? !test->label[i] : o->to_label;
        }
    out->n = k;
    out->candidates = ncand;
    out->ntargets = ntarget;
    return LETHE_OK;
}
