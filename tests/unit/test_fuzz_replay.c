/* test_fuzz_replay.c: every file of the fuzz corpus (tests/fuzz/corpus/) and
 * every error golden input (the .lth files of tests/errors/) through the fuzz
 * harness, so that inputs which once crashed the front end keep being tried.
 * One PASS per file; a crash fails the binary. Run from the repository root.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "../fuzz/fuzz_frontend.c"

static int compare(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Replays the files of dir whose names end in suffix ("" for all), in name
 * order; returns how many. */
static int replay_dir(const char *dir, const char *suffix) {
    DIR *d = opendir(dir);
    if (!d) {
        th_fail(dir, "cannot open (run from the repository root)");
        return 0;
    }
    char *names[4096];
    int n = 0;
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL && n < 4096) {
        size_t len = strlen(ent->d_name), sl = strlen(suffix);
        if (ent->d_name[0] != '.' && len >= sl && !strcmp(ent->d_name + len - sl, suffix))
            names[n++] = strdup(ent->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], compare);
    for (int i = 0; i < n; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "rb");
        if (!f) {
            th_fail(path, "cannot read");
            continue;
        }
        fseek(f, 0, SEEK_END);
        long size = ftell(f);
        rewind(f);
        uint8_t *buf = malloc((size_t)size + 1);
        size_t got = fread(buf, 1, (size_t)size, f);
        fclose(f);
        LLVMFuzzerTestOneInput(buf, got);
        free(buf);
        th_pass(path);
        free(names[i]);
    }
    return n;
}

int main(void) {
    int n = replay_dir("tests/fuzz/corpus", "");
    th_check(n >= 20, "fuzz_replay/corpus_size", "only %d corpus files", n);
    replay_dir("tests/errors", ".lth");
    return th_exit();
}
