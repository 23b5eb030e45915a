/* test_text_samples.c: the packed text samples of the imdb() data set
 * (runtime/run_text.h): Gaussian poison noise on a set marked token_column
 * perturbs every value but each position's token id, and is the noise a
 * set without the mark gets on those values (so the Gaussian score, which
 * regenerates the noise over all values, sees the noise that was added). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "harness.h"

enum { N = 3, T = 5, W = 4, D = T * W };

static void make_set(lethe_dataset *ds, int token_column) {
    memset(ds, 0, sizeof *ds);
    ds->x = calloc(N * D, sizeof(float));
    ds->y = calloc(N, sizeof(int32_t));
    ds->id = calloc(N, sizeof(int64_t));
    for (int i = 0; i < N; i++) {
        ds->id[i] = 10 + i;
        ds->y[i] = i % 2;
        for (int p = 0; p < T; p++)
            ds->x[i * D + p * W] = (float)(50256 - p - 7 * i);   /* token ids */
    }
    ds->n = N;
    ds->rank = 3;
    ds->c = 1;
    ds->h = T;
    ds->w = W;
    ds->d = D;
    ds->num_classes = 2;
    ds->token_column = token_column;
    strcpy(ds->source, "test");
}

static void test_noise_skips_tokens(void) {
    lethe_dataset text, plain;
    make_set(&text, 1);
    make_set(&plain, 0);
    uint8_t mask[13] = {0};
    mask[11] = 1;   /* the sample of id 11 is poisoned */
    ds_poison p = {.eps = 0.5, .seed = 42, .mask = mask, .mask_n = 13};
    int64_t idx[N] = {0, 1, 2};
    float xt[N * D], xp[N * D];
    int32_t y[N];
    char err[LETHE_ERR_LEN];
    int rc = ds_batch(&text, idx, N, &p, NULL, xt, y, err) || ds_batch(&plain, idx, N, &p, NULL, xp, y, err);
    int tokens_kept = 1, noise_same = 1, clean_same = 1, noisy = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < D; j++) {
            float v = xt[i * D + j], orig = text.x[i * D + j];
            if (j % W == 0)
                tokens_kept &= v == orig;
            else if (i == 1) {
                noise_same &= v == xp[i * D + j];
                noisy += v != 0.0f;
            } else
                clean_same &= v == 0.0f;
        }
    if (!rc && tokens_kept && noise_same && clean_same && noisy == T * (W - 1))
        th_pass("text_samples.noise_skips_tokens");
    else
        th_fail("text_samples.noise_skips_tokens", "rc %d (%s), tokens kept %d, noise as unmarked %d, clean rows clean %d, "
                "%d noisy values", rc, rc ? err : "", tokens_kept, noise_same, clean_same, noisy);
    /* the mark survives subsetting (the run slices sets by prefix) */
    lethe_dataset sub;
    int64_t first[2] = {0, 1};
    rc = ds_subset(&text, first, 2, &sub, err);
    if (!rc && sub.token_column == 1)
        th_pass("text_samples.subset_keeps_mark");
    else
        th_fail("text_samples.subset_keeps_mark", "rc %d, token_column %d", rc, rc ? -1 : sub.token_column);
    if (!rc)
        ds_free(&sub);
    ds_free(&text);
    ds_free(&plain);
}

int main(void) {
    test_noise_skips_tokens();
    return th_exit();
}
