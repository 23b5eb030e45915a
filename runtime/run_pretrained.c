/* run_pretrained.c: `lethe run --init FILE`: every model the run trains
 * (the original, retrain, an attack's clean surrogate) starts from a
 * checkpoint in Hugging Face's GPT-2 layout (a downloaded gpt2 or
 * gpt2-medium model.safetensors; runtime/hf.c maps the names), as the
 * paper fine-tunes a pretrained GPT-2. The weights a method re-initialises
 * (EUk, CFk) still come from the model's initial distributions: re-learning
 * a layer from scratch is what those methods mean.
 *
 * A head the file lacks (GPT2ForSequenceClassification's score) keeps its
 * initial values; any other tensor must be in the file with the model's
 * shape, and a file of another configuration (gpt2-medium into a gpt2-sized
 * experiment) is refused before anything trains, naming the first tensor
 * whose shape differs and both shapes.
 */
#include <stdio.h>
#include <string.h>

#include "hf.h"
#include "run_internal.h"

int run_pretrained(Run *r, ts_store *model, char *err) {
    if (!r->o->init)
        return LETHE_OK;
    static const char *const optional[] = {"score.", NULL};
    char why[LETHE_ERR_LEN];
    int rc = hf_load(model, r->o->init, &hf_gpt2, optional, NULL, why);
    if (rc)   /* hf_load's message names the file, the tensor and both shapes */
        lethe_errf(err, rc, "--init: %s", why);
    return rc;
}
