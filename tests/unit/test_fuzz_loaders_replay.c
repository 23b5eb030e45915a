/* test_fuzz_loaders_replay.c: replays the loader fuzzer's corpus
 * (tests/fuzz/corpus_loaders, seeds plus every crash the fuzzer ever found)
 * through the real fuzz target, so regressions show up in `make test`
 * without clang or libFuzzer. A crash or a broken expectation aborts the
 * binary, which tests/run.sh counts as a failure. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#include "../fuzz/fuzz_loaders.c"

#include "fsutil.h"

int main(void) {
    const char *dir = getenv("LETHE_FUZZ_CORPUS") ? getenv("LETHE_FUZZ_CORPUS") : "tests/fuzz/corpus_loaders";
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort);
    if (n < 0) {
        th_fail("fuzz_loaders_replay", "cannot read the corpus directory %s (run from the repository root)", dir);
        return th_exit();
    }
    int files = 0;
    for (int i = 0; i < n; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name);
        if (names[i]->d_name[0] == '.') {
            free(names[i]);
            continue;
        }
        uint8_t *buf;
        size_t len;
        char err[LETHE_ERR_LEN];
        if (fs_read_file(path, 1 << 24, &buf, &len, err)) {
            th_fail("fuzz_loaders_replay", "%s", err);
        } else {
            fflush(stdout);
            LLVMFuzzerTestOneInput(buf, len); /* aborts on failure */
            free(buf);
            char name[300];
            snprintf(name, sizeof name, "fuzz_loaders_replay/%s", names[i]->d_name);
            th_pass(name);
            files++;
        }
        free(names[i]);
    }
    free(names);
    if (files == 0)
        th_fail("fuzz_loaders_replay", "the corpus %s is empty", dir);
    return th_exit();
}
