/* hf.h: checkpoints in other frameworks' layouts (Hugging Face's GPT-2,
 * PyTorch state dicts of ResNet-18 in torchvision's or kuangliu's names),
 * through a small name map.
 *
 * A model store (lethe.h) already holds every tensor the compiled model has,
 * under its Lethe path, with the shape and dtype the program expects (fill it
 * with the entry's init_model first). hf_load overwrites those values from a
 * safetensors file written by another framework; hf_save writes the store in
 * that framework's names. A layout says how the names differ:
 *
 *   renames   ordered (lethe, file) substring pairs applied to a Lethe path
 *             to get the file's name (none for GPT-2: graphs/models/gpt2.lth
 *             uses HF's names and HF's Conv1D [in, out] weights as they are)
 *   prefixes  prefixes that name the same tensor with or without them: HF's
 *             head models put the base model under `transformer.`, so a
 *             GPT2Model file loads into GPT2Classifier (transformer.*) and a
 *             GPT2LMHeadModel file into GPT2
 *   buffers   name suffixes of file tensors that hold no parameter and are
 *             skipped when no model tensor takes them (GPT-2's causal-mask
 *             buffers h.N.attn.bias and h.N.attn.masked_bias)
 *   tied      (file, file) pairs: the first may be present only as a copy of
 *             the second (lm_head.weight of wte.weight); a copy is skipped,
 *             anything else is refused (an untied head is another model)
 *
 * Every model tensor must come from the file unless its path starts with one
 * of `optional` (e.g. "score." when a pretrained GPT2Model starts a
 * classifier: the head keeps its initial values). A missing, extra or
 * mis-shaped tensor fails the whole load before anything is written, with one
 * message naming the first such tensor, both shapes where there are two, and
 * how many more there are. Values are converted to the store's dtype
 * (F16/BF16/F64 files load into an F32 model).
 */
#ifndef LETHE_HF_H
#define LETHE_HF_H

#include <stddef.h>
#include <stdio.h>

#include "lethe.h"

typedef struct hf_layout {
    const char *name;                 /* for messages: "GPT-2" */
    const char *const *renames;       /* pairs, NULL-terminated */
    const char *const *prefixes;      /* NULL-terminated */
    const char *const *buffers;       /* NULL-terminated */
    const char *const *tied;          /* pairs, NULL-terminated */
} hf_layout;

extern const hf_layout hf_gpt2;
extern const hf_layout hf_torchvision_resnet18;   /* conv1, bn1, layer1.0.conv1, ..., downsample, fc */
extern const hf_layout hf_kuangliu_resnet18;      /* the same with shortcut.0/1 and linear */
extern const hf_layout hf_lethe;                  /* Lethe's own names */

#define HF_PREFIX_LEN 64

/* Loads `path` into s (see above). `optional` is NULL or NULL-terminated.
 * file_prefix (may be NULL) receives the prefix the file puts before the
 * model's names ("transformer." for a GPT2LMHeadModel file read into GPT2,
 * "" otherwise): pass it to hf_save to write the file's layout back. */
int hf_load(ts_store *s, const char *path, const hf_layout *L, const char *const *optional,
            char file_prefix[HF_PREFIX_LEN], char *err);

/* The check of hf_load without the load: one line per missing, mis-shaped,
 * mistyped or extra tensor to `out`. Returns how many there are (0: the file
 * loads), or an error status (unreadable file, untied copy; message in err). */
int hf_list_faults(const ts_store *s, const char *path, const hf_layout *L, const char *const *optional, FILE *out,
                   char *err);

/* Writes every tensor of s under prefix + its file name (prefix "" or NULL:
 * the model's own layout), atomically, with the metadata {"format": "pt"}
 * that transformers writes. Skipped buffers are not written: transformers
 * rebuilds them (it lists them as keys to ignore when missing). */
int hf_save(const ts_store *s, const char *path, const hf_layout *L, const char *prefix, char *err);

#endif
