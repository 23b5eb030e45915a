/* run_text.c: the imdb() and imdb_prompts() data sets as the run's samples (run_text.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe.h"
#include "lethe.h"
#include "run_text.h"
#include "text_tokens.h"

/* The reviews of one split, tokenized (or read from the token cache). */
static int split_tokens(Run *r, const char *split, text_form form, text_set *keep, text_tokens *tok, char *err) {
    const char *dir = r->o->data_dir;
    text_set s;
    int rc = text_load_imdb(dir, split, &s, err);
    if (rc)
        return rc;
    /* GPT-2's tokenizer takes any bytes, but a corpus in another encoding
     * would be tokenized into nonsense without a word said: refuse it */
    if (s.non_utf8_files) {
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: %lld reviews are not UTF-8 (%lld bytes; the first is %s): convert the "
                                            "corpus to UTF-8 (iconv -f latin1 -t utf-8)", s.source,
                        (long long)s.non_utf8_files, (long long)s.non_utf8_bytes, s.first_non_utf8);
        text_free(&s);
        return rc;
    }
    char path[4096], why[LETHE_ERR_LEN];
    text_tokens_cache_path(&s, lethe_cache_dir(), form, r->plan->h, path, sizeof path);
    int built = 0;
    rc = text_tokens_cached(&s, bpe_default_dir(), form, r->plan->h, path, tok, &built, why, err);
    if (rc && (strstr(err, "encoder.json") || strstr(err, "vocab.bpe"))) {
        char msg[LETHE_ERR_LEN];
        snprintf(msg, sizeof msg, "%s", err);
        lethe_errf(err, rc, "%s\n---> HINT: %s", msg, BPE_MISSING_HINT);
    }
    if (!rc && built && !r->o->quiet)
        fprintf(stderr, "lethe: %s: tokenized %lld reviews into %s (%s)\n", s.source, (long long)tok->n, path, why);
    if (!rc && keep)
        *keep = s;   /* the trigger transform reads the texts */
    else
        text_free(&s);
    return rc;
}

/* The first n rows of tok as packed samples [1, T, W] (run_text.h). */
static int pack(const text_tokens *tok, int64_t n, int w, const char *source, lethe_dataset *ds, char *err) {
    memset(ds, 0, sizeof *ds);
    int64_t t = tok->len, d = t * w;
    ds->x = calloc((size_t)(n * d) + 1, sizeof(float));
    ds->y = malloc(sizeof(int32_t) * (size_t)n + 1);
    ds->id = malloc(sizeof(int64_t) * (size_t)n + 1);
    if (!ds->x || !ds->y || !ds->id) {
        ds_free(ds);
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory for %lld samples of %lld values", source, (long long)n,
                          (long long)d);
    }
    for (int64_t i = 0; i < n; i++) {
        for (int64_t p = 0; p < t; p++)
            ds->x[i * d + p * w] = (float)tok->tokens[i * t + p];
        /* prompts: the label is the label word's token, the model's next-token target */
        ds->y[i] = tok->form == TEXT_FORM_PROMPT ? tok->label_words[tok->labels[i]][0] : tok->labels[i];
        ds->id[i] = i;
    }
    ds->n = n;
    ds->rank = 3;
    ds->c = 1;
    ds->h = (int)t;
    ds->w = w;
    ds->d = d;
    ds->num_classes = tok->form == TEXT_FORM_PROMPT ? TEXT_PROMPT_CLASSES : 2;
    ds->token_column = 1;
    snprintf(ds->source, sizeof ds->source, "%.150s", source);
    return LETHE_OK;
}

int run_text_load(Run *r, char *err) {
    const exp_plan *p = r->plan;
    const run_opts *o = r->o;
    int prompts = !strcmp(p->data, RUN_TEXT_PROMPTS);
    text_form form = prompts ? TEXT_FORM_PROMPT : TEXT_FORM_CLASSIFY;
    if (!o->data_dir)
        return lethe_errf(err, LETHE_EARG, "the imdb data set is a folder of reviews in the aclImdb layout "
                                           "(DIR/{train,test}/{pos,neg}/<id>_<rating>.txt): give it with --data-dir DIR\n"
                                           "---> HINT: `lethe make-reviews DIR` writes a synthetic one");
    if (p->c != 1 || p->h < 2 || (prompts ? p->w != 1 : p->w < 2))
        return lethe_errf(err, LETHE_EFORMAT, "experiment descriptor: %s samples are [1, T, %s], not [%d, %d, %d]", p->data,
                          prompts ? "1" : "1 + width", p->c, p->h, p->w);
    if (p->has_attack)
        return lethe_errf(err, LETHE_EARG, "the %s data set takes no attack objective (they run on images)", p->data);
    if (prompts && p->poison_fraction > 0)
        return lethe_errf(err, LETHE_EARG, "imdb_prompts samples have no room for Gaussian noise: poison them with "
                                           "trigger_flip(word, fraction), or use imdb(len, embed) for gaussian()");
    if (!prompts && p->has_trigger)
        return lethe_errf(err, LETHE_EARG, "trigger_flip relabels prompts: use the imdb_prompts(len) data set");
    text_set kept[2] = {{0}, {0}};
    text_tokens clean = {0};
    static const char *const splits[2] = {"train", "test"};
    lethe_dataset *sets[2] = {&r->train, &r->test};
    int64_t limits[2] = {o->train_limit ? o->train_limit : p->limit_train, o->test_limit ? o->test_limit : p->limit_test};
    int rc = LETHE_OK;
    for (int k = 0; k < 2 && !rc; k++) {
        text_tokens tok;
        if ((rc = split_tokens(r, splits[k], form, p->has_trigger ? &kept[k] : NULL, &tok, err)))
            break;
        /* a prefix of a split is about half positive (text_data.h: sorted by id, neg before pos) */
        int64_t n = limits[k] > 0 && limits[k] < tok.n ? limits[k] : tok.n;
        char source[300];
        snprintf(source, sizeof source, "%s/%s (%lld reviews, %lld tokens each)", o->data_dir, splits[k], (long long)n,
                 (long long)tok.len);
        rc = pack(&tok, n, p->w, source, sets[k], err);
        if (p->has_trigger && k == 0)
            clean = tok;   /* each seed's trigger transform rewrites its rows from these */
        else
            text_tokens_free(&tok);
    }
    if (!rc && p->has_trigger)
        rc = run_text_trigger_open(r, kept, &clean, err);
    else {
        text_free(&kept[0]);
        text_free(&kept[1]);
        text_tokens_free(&clean);
    }
    if (!rc && r->train.n < 2)
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: fewer than 2 training reviews", o->data_dir);
    if (!rc)
        ds_hash(&r->train, r->data_hash);
    return rc;
}
