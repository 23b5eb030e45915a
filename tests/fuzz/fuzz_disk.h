/* fuzz_disk.h: the fuzz targets of tests/fuzz/fuzz_loaders.c whose readers
 * take a path, not a buffer: the input is written to a private temporary
 * folder first, then read back by the real reader.
 *
 *   fuzz_imdb     an aclImdb split (text_load_imdb): records of
 *                 [flags][name length][name][content length, 2 bytes LE][content],
 *                 flags bit 0: pos (1) or neg (0) folder, bit 1: also make
 *                 the other class's folder (without it one is missing)
 *   fuzz_hf       a checkpoint in Hugging Face's GPT-2 layout (hf_load with
 *                 its name map) into a small GPT-2-shaped store: the fault
 *                 list and the load agree, a load keeps every shape, and
 *                 what loads saves and loads back bit for bit
 *   fuzz_poison   a crafted poison set (attack_load): its key and ids are
 *                 checked against a job of 2 poisons of 3 values
 *
 * Included by fuzz_loaders.c (after FUZZ_EXPECT and check_error); the
 * functions are static so the replay test gets its own copy. */
#ifndef LETHE_FUZZ_DISK_H
#define LETHE_FUZZ_DISK_H

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "hf.h"
#include "lethe.h"
#include "poison.h"
#include "text_data.h"

/* One folder per process (named by its pid), emptied after every input and
 * removed at exit. */
static char fuzz_dir_path[64];

static void fuzz_dir_remove(void) {
    rmdir(fuzz_dir_path);
}

static const char *fuzz_dir(void) {
    if (!fuzz_dir_path[0]) {
        snprintf(fuzz_dir_path, sizeof fuzz_dir_path, "/tmp/lethe-fuzz-%ld", (long)getpid());
        FUZZ_EXPECT(mkdir(fuzz_dir_path, 0700) == 0 || errno == EEXIST);
        atexit(fuzz_dir_remove);
    }
    return fuzz_dir_path;
}

static void fuzz_rm_tree(const char *path) {
    DIR *d = opendir(path);
    if (!d) {
        unlink(path);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char sub[1024];
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        fuzz_rm_tree(sub);
    }
    closedir(d);
    rmdir(path);
}

static void fuzz_write(const char *path, const uint8_t *data, size_t n) {
    FILE *f = fopen(path, "wb");
    FUZZ_EXPECT(f != NULL);
    FUZZ_EXPECT(fwrite(data, 1, n, f) == n || n == 0);
    FUZZ_EXPECT(fclose(f) == 0);
}

static void fuzz_imdb(const uint8_t *data, size_t size) {
    char root[128], cls[2][160];
    snprintf(root, sizeof root, "%s/imdb", fuzz_dir());
    snprintf(cls[0], sizeof cls[0], "%s/train/neg", root);
    snprintf(cls[1], sizeof cls[1], "%s/train/pos", root);
    char err[LETHE_ERR_LEN];
    FUZZ_EXPECT(fs_mkdir_p(root, 0700, err) == 0);
    int written = 0;
    while (size >= 2 && written < 8) {
        int flags = data[0], name_len = data[1] % 24;
        data += 2;
        size -= 2;
        if (name_len > (int)size)
            name_len = (int)size;
        char name[32];
        for (int i = 0; i < name_len; i++)   /* a name, not a path */
            name[i] = data[i] == '/' || data[i] == 0 ? '_' : (char)data[i];
        name[name_len] = 0;
        data += name_len;
        size -= (size_t)name_len;
        if (!name_len || !strcmp(name, ".") || !strcmp(name, ".."))
            snprintf(name, sizeof name, "%d_7.txt", written);
        size_t len = size >= 2 ? (size_t)(data[0] | data[1] << 8) : 0;
        data += size >= 2 ? 2 : size;
        size -= size >= 2 ? 2 : size;
        if (len > size)
            len = size;
        const char *dir = cls[flags & 1];
        FUZZ_EXPECT(fs_mkdir_p(dir, 0700, err) == 0);
        if (flags & 2)
            FUZZ_EXPECT(fs_mkdir_p(cls[!(flags & 1)], 0700, err) == 0);
        char path[256];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        fuzz_write(path, data, len);
        data += len;
        size -= len;
        written++;
    }
    text_set s;
    int rc = text_load_imdb(root, "train", &s, err);
    if (rc == 0) {
        FUZZ_EXPECT(s.n >= 0 && s.n <= written && s.npos <= s.n);
        int64_t pos = 0;
        for (int64_t i = 0; i < s.n; i++) {
            FUZZ_EXPECT(s.text[i] != NULL && (s.label[i] == 0 || s.label[i] == 1));
            FUZZ_EXPECT(strlen(s.text[i]) <= TEXT_MAX_REVIEW_BYTES);
            pos += s.label[i];
        }
        FUZZ_EXPECT(pos == s.npos && s.non_utf8_files <= s.n);
        FUZZ_EXPECT(text_count_with_word(&s, "the") <= s.n);
        text_free(&s);
    } else
        check_error(rc, err);
    fuzz_rm_tree(root);
}

/* A GPT-2 of 1 block, width 2, 5 tokens, 3 positions, with its score head
 * optional (a GPT2Model file starts a classifier). */
static void fuzz_gpt2_store(ts_store *s) {
    static const struct {
        const char *name;
        int rank;
        int64_t shape[2];
    } t[] = {
        {"transformer.wte.weight", 2, {5, 2}},           {"transformer.wpe.weight", 2, {3, 2}},
        {"transformer.h.0.ln_1.weight", 1, {2}},         {"transformer.h.0.attn.c_attn.weight", 2, {2, 6}},
        {"transformer.h.0.attn.c_attn.bias", 1, {6}},    {"transformer.ln_f.bias", 1, {2}},
        {"score.weight", 2, {2, 2}},
    };
    char err[LETHE_ERR_LEN];
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        FUZZ_EXPECT(ts_put(s, t[i].name, LETHE_F32, t[i].rank, t[i].shape, err) != NULL);
}

static void fuzz_hf(const uint8_t *data, size_t size) {
    char path[128], back[128], err[LETHE_ERR_LEN];
    snprintf(path, sizeof path, "%s/model.safetensors", fuzz_dir());
    snprintf(back, sizeof back, "%s/saved.safetensors", fuzz_dir());
    fuzz_write(path, data, size);
    static const char *const optional[] = {"score.", NULL};
    ts_store s = {0}, again = {0};
    fuzz_gpt2_store(&s);
    fuzz_gpt2_store(&again);
    FILE *sink = fopen("/dev/null", "w");
    FUZZ_EXPECT(sink != NULL);
    int faults = hf_list_faults(&s, path, &hf_gpt2, optional, sink, err);
    fclose(sink);
    char prefix[HF_PREFIX_LEN];
    int rc = hf_load(&s, path, &hf_gpt2, optional, prefix, err);
    FUZZ_EXPECT((faults == 0) == (rc == 0));   /* the check and the load agree */
    if (rc == 0) {
        FUZZ_EXPECT(s.n == again.n);
        for (int i = 0; i < s.n; i++)   /* a load never changes a shape */
            FUZZ_EXPECT(s.t[i].rank == again.t[i].rank && s.t[i].nbytes == again.t[i].nbytes);
        FUZZ_EXPECT(hf_save(&s, back, &hf_gpt2, prefix, err) == 0);
        FUZZ_EXPECT(hf_load(&again, back, &hf_gpt2, optional, NULL, err) == 0);
        for (int i = 0; i < s.n; i++)
            FUZZ_EXPECT(!memcmp(s.t[i].data, ts_get(&again, s.t[i].name)->data, s.t[i].nbytes));
    } else
        check_error(rc, err);
    ts_clear(&s);
    ts_clear(&again);
    unlink(path);
    unlink(back);
}

static void fuzz_poison(const uint8_t *data, size_t size) {
    char path[128], err[LETHE_ERR_LEN];
    snprintf(path, sizeof path, "%s/poison.safetensors", fuzz_dir());
    fuzz_write(path, data, size);
    int64_t ids[2] = {5, 7}, pos[2] = {0, 1};
    lethe_dataset train = {.n = 2, .rank = 1, .c = 3, .h = 1, .w = 1, .d = 3, .id = ids};
    attack_choice choice = {.pos = pos, .n = 2};
    attack_job job = {.train = &train, .choice = &choice,
                      .key = "5a1e0000000000000000000000000000000000000000000000000000000000f0"};
    float delta[6];
    double loss;
    int rc = attack_load(&job, delta, &loss, path, err);
    if (rc)
        check_error(rc, err);
    unlink(path);
}

#endif
