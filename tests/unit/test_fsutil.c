/* test_fsutil.c: atomic writes (exact content, no temp files left, never a
 * partial target even when the writer is killed), mkdir -p, bounded reads,
 * SHA-256 against the FIPS vectors, and crash-safe JSON lines (torn last
 * line, concurrent appenders). */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fsutil.h"
#include "harness.h"
#include "json.h"

static char dir[512];

/* Number of temporary files (".*.tmp.*") in d. */
static int count_temps(const char *d) {
    DIR *dp = opendir(d);
    if (!dp)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dp)))
        if (e->d_name[0] == '.' && strstr(e->d_name, ".tmp."))
            n++;
    closedir(dp);
    return n;
}

static char *slurp(const char *path, size_t *n) {
    uint8_t *b;
    char err[LETHE_ERR_LEN];
    if (fs_read_file(path, 1 << 30, &b, n, err))
        return NULL;
    return (char *)b;
}

static void test_atomic_write(void) {
    char path[600], err[LETHE_ERR_LEN];
    snprintf(path, sizeof path, "%s/atomic.txt", dir);
    int rc1 = fs_write_atomic(path, "first version\n", 14, err);
    int rc2 = fs_write_atomic(path, "v2", 2, err);
    size_t n;
    char *s = slurp(path, &n);
    int ok = rc1 == 0 && rc2 == 0 && s && n == 2 && !memcmp(s, "v2", 2) && count_temps(dir) == 0;
    free(s);
    th_check(ok, "fsutil_atomic_write", "rc %d %d, temps %d", rc1, rc2, count_temps(dir));

    /* streaming, then abort: the old file stays, no temp file remains */
    fs_atomic a;
    int rcb = fs_atomic_begin(&a, path, err);
    fs_atomic_write(&a, "partial", 7);
    int temps_during = count_temps(dir);
    fs_atomic_abort(&a);
    s = slurp(path, &n);
    ok = rcb == 0 && temps_during == 1 && s && n == 2 && !memcmp(s, "v2", 2) && count_temps(dir) == 0;
    free(s);
    th_check(ok, "fsutil_atomic_abort", "temps during %d after %d", temps_during, count_temps(dir));

    /* a write error (simulated: the sticky errno) fails the commit, removes
     * the temp file and leaves the target alone */
    rcb = fs_atomic_begin(&a, path, err);
    fs_atomic_write(&a, "xxxx", 4);
    a.failed_errno = ENOSPC;
    int rcc = fs_atomic_commit(&a, err);
    s = slurp(path, &n);
    ok = rcb == 0 && rcc == LETHE_EIO && strstr(err, path) && strstr(err, "No space") && s && n == 2 &&
         count_temps(dir) == 0;
    free(s);
    th_check(ok, "fsutil_atomic_write_error", "rc %d err %s", rcc, err);

    /* a directory that does not exist */
    char bad[700];
    snprintf(bad, sizeof bad, "%s/no/such/dir/f.txt", dir);
    int rcd = fs_write_atomic(bad, "x", 1, err);
    th_check(rcd == LETHE_EIO && strstr(err, bad) && !fs_exists(bad), "fsutil_atomic_missing_dir", "rc %d err %s",
             rcd, err);
}

/* A writer killed at a random point of a large write leaves either the old
 * file or the new one, never a mix. */
static void test_atomic_kill(void) {
    char path[600];
    snprintf(path, sizeof path, "%s/killed.bin", dir);
    size_t big = 4 << 20;
    char *old = malloc(big), *new = malloc(big);
    memset(old, 'o', big);
    memset(new, 'n', big);
    char err[LETHE_ERR_LEN];
    fs_write_atomic(path, old, big, err);
    int bad = 0, saw_new = 0;
    for (int trial = 0; trial < 6; trial++) {
        pid_t pid = fork();
        if (pid == 0) {
            for (;;)
                fs_write_atomic(path, (trial & 1) ? new : old, big, err);
        }
        usleep(20000 + 15000 * trial);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        size_t n;
        char *s = slurp(path, &n);
        if (!s || n != big || (s[0] != 'o' && s[0] != 'n') || memchr(s, s[0] == 'o' ? 'n' : 'o', n))
            bad++;
        saw_new += s && s[0] == 'n';
        free(s);
    }
    /* a killed writer may leave its temp file behind (nothing can remove it
     * at kill time), but the target is always whole */
    th_check(bad == 0, "fsutil_atomic_kill", "%d trials saw a partial or mixed file", bad);
    /* tidy up: the target and any temp files the killed writers left */
    unlink(path);
    DIR *dp = opendir(dir);
    struct dirent *e;
    while (dp && (e = readdir(dp)))
        if (!strncmp(e->d_name, ".killed.bin.tmp.", 16)) {
            char t[1024];
            snprintf(t, sizeof t, "%s/%s", dir, e->d_name);
            unlink(t);
        }
    if (dp)
        closedir(dp);
    printf("# %d of 6 kill trials found the new version in place\n", saw_new);
    free(old);
    free(new);
}

/* Which temporary files a later run may delete: only those of dead writers
 * on this host (sweep stages share a folder and run at once). */
static void test_temp_orphans(void) {
    char host[64] = "";
    gethostname(host, sizeof host);
    host[sizeof host - 1] = 0;
    host[strcspn(host, "./")] = 0;
    pid_t dead = fork();
    if (dead == 0)
        _exit(0);
    waitpid(dead, NULL, 0);
    char mine[256], gone[256], other[256];
    snprintf(mine, sizeof mine, ".model.safetensors.tmp.%ld@%s.3", (long)getpid(), host);
    snprintf(gone, sizeof gone, ".model.safetensors.tmp.%ld@%s.0", (long)dead, host);
    snprintf(other, sizeof other, ".model.safetensors.tmp.%ld@%s-not-this-one.0", (long)dead, host);
    th_check(!fs_temp_is_orphan(mine), "fsutil_temp_live_writer_kept", "%s called an orphan", mine);
    th_check(fs_temp_is_orphan(gone), "fsutil_temp_dead_writer_orphan", "%s not called an orphan", gone);
    th_check(!fs_temp_is_orphan(other), "fsutil_temp_other_host_kept", "%s called an orphan", other);
    th_check(fs_temp_is_orphan(".model.safetensors.tmp.12.0"), "fsutil_temp_old_name_orphan", "old-style name kept");
    th_check(!fs_temp_is_orphan("model.safetensors") && !fs_temp_is_orphan(".hidden"), "fsutil_temp_not_a_temp",
             "an ordinary file called an orphan");
    /* the names fs_atomic_begin really makes: a live one is not an orphan */
    char path[600], err[LETHE_ERR_LEN];
    snprintf(path, sizeof path, "%s/live.bin", dir);
    fs_atomic a;
    int ok = fs_atomic_begin(&a, path, err) == 0;
    const char *base = ok ? strrchr(a.tmp, '/') + 1 : "";
    th_check(ok && !fs_temp_is_orphan(base), "fsutil_temp_own_name_kept", "%s: %s", base, ok ? "called an orphan" : err);
    if (ok)
        fs_atomic_abort(&a);
}

static void test_mkdir_read(void) {
    char p[700], err[LETHE_ERR_LEN];
    snprintf(p, sizeof p, "%s/a/b/c/", dir);
    int rc1 = fs_mkdir_p(p, 0777, err);
    int rc2 = fs_mkdir_p(p, 0777, err); /* existing is fine */
    struct stat st;
    int isdir = stat(p, &st) == 0 && S_ISDIR(st.st_mode);
    char f[700];
    snprintf(f, sizeof f, "%s/a/file", dir);
    fs_write_atomic(f, "0123456789", 10, err);
    char under[800];
    snprintf(under, sizeof under, "%s/sub", f);
    int rc3 = fs_mkdir_p(under, 0777, err);
    th_check(rc1 == 0 && rc2 == 0 && isdir && rc3 == LETHE_EIO && strstr(err, f), "fsutil_mkdir_p",
             "rc %d %d %d dir %d err %s", rc1, rc2, rc3, isdir, err);

    uint8_t *b;
    size_t n;
    int r1 = fs_read_file(f, 10, &b, &n, err);
    int ok = r1 == 0 && n == 10 && b[10] == 0 && !memcmp(b, "0123456789", 10);
    if (!r1)
        free(b);
    int r2 = fs_read_file(f, 9, &b, &n, err);
    ok = ok && r2 == LETHE_ELIMIT && strstr(err, f) && b == NULL;
    snprintf(under, sizeof under, "%s/missing", dir);
    int r3 = fs_read_file(under, 100, &b, &n, err);
    ok = ok && r3 == LETHE_ENOTFOUND && strstr(err, "missing");
    int r4 = fs_read_file(dir, 100, &b, &n, err);
    ok = ok && r4 == LETHE_EIO;
    th_check(ok, "fsutil_read_file_limits", "rc %d %d %d %d", r1, r2, r3, r4);
}

static void test_sha256(void) {
    static const struct {
        const char *msg;
        const char *hex;
    } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
    };
    int bad = 0;
    char hex[65];
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        fs_sha256_hex(v[i].msg, strlen(v[i].msg), hex);
        if (strcmp(hex, v[i].hex)) {
            printf("# sha256(%s) = %s\n", v[i].msg, hex);
            bad++;
        }
    }
    /* one million 'a', fed in uneven pieces */
    char *a = malloc(1000000);
    memset(a, 'a', 1000000);
    fs_sha256 s;
    fs_sha256_init(&s);
    size_t off = 0, step = 1;
    while (off < 1000000) {
        size_t take = step < 1000000 - off ? step : 1000000 - off;
        fs_sha256_update(&s, a + off, take);
        off += take;
        step = step * 3 % 1000 + 1;
    }
    uint8_t dg[32];
    fs_sha256_final(&s, dg);
    static const char *million = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", dg[i]);
    bad += strcmp(hex, million) != 0;
    /* the file hash agrees with the buffer hash */
    char path[600], err[LETHE_ERR_LEN], fhex[65];
    snprintf(path, sizeof path, "%s/million_a", dir);
    fs_write_atomic(path, a, 1000000, err);
    bad += fs_hash_file(path, fhex, err) != 0 || strcmp(fhex, million) != 0;
    free(a);
    th_check(bad == 0, "fsutil_sha256_vectors", "%d mismatches", bad);
}

typedef struct lines {
    int n;
    char text[64][128];
} lines;

static int collect(const char *line, size_t len, long lineno, void *user) {
    lines *l = user;
    if (l->n < 64)
        snprintf(l->text[l->n], sizeof l->text[0], "%s", line);
    l->n++;
    return 0;
}

static void test_jsonl(void) {
    char path[600], err[LETHE_ERR_LEN];
    snprintf(path, sizeof path, "%s/results.jsonl", dir);
    lines l = {0};
    long skipped = -1;
    int r0 = fs_jsonl_read(path, 1 << 20, collect, &l, &skipped, err); /* missing = empty */
    int ok = r0 == 0 && l.n == 0 && skipped == 0;
    for (int i = 0; i < 3; i++) {
        char rec[64];
        int n = snprintf(rec, sizeof rec, "{\"seed\":%d}", i);
        ok = ok && fs_jsonl_append(path, rec, (size_t)n, err) == 0;
    }
    ok = ok && fs_jsonl_append(path, "{\"a\":\n1}", 8, err) == LETHE_EARG;
    th_check(ok, "fsutil_jsonl_append", "append failed: %s", err);

    /* a crash in the middle of a record: a torn last line */
    FILE *f = fopen(path, "ab");
    fputs("{\"seed\":3,\"gu", f);
    fclose(f);
    memset(&l, 0, sizeof l);
    int r1 = fs_jsonl_read(path, 1 << 20, collect, &l, &skipped, err);
    ok = r1 == 0 && l.n == 3 && skipped == 1 && !strcmp(l.text[2], "{\"seed\":2}");
    th_check(ok, "fsutil_jsonl_torn_line_ignored", "read %d lines, skipped %ld", l.n, skipped);

    /* the next append drops the torn fragment and starts a clean line */
    int r2 = fs_jsonl_append(path, "{\"seed\":4}", 10, err);
    size_t n;
    char *s = slurp(path, &n);
    const char *want = "{\"seed\":0}\n{\"seed\":1}\n{\"seed\":2}\n{\"seed\":4}\n";
    ok = r2 == 0 && s && n == strlen(want) && !memcmp(s, want, n);
    free(s);
    memset(&l, 0, sizeof l);
    fs_jsonl_read(path, 1 << 20, collect, &l, &skipped, err);
    ok = ok && l.n == 4 && skipped == 0;
    th_check(ok, "fsutil_jsonl_torn_line_repaired", "file is not the 4 clean records");

    /* zero-filled tail (what a crash can leave on some file systems) */
    f = fopen(path, "ab");
    fwrite("\0\0\0\0\n", 1, 5, f);
    fclose(f);
    memset(&l, 0, sizeof l);
    fs_jsonl_read(path, 1 << 20, collect, &l, &skipped, err);
    th_check(l.n == 4 && skipped == 1, "fsutil_jsonl_nul_line_skipped", "read %d skipped %ld", l.n, skipped);
}

static int count_valid(const char *line, size_t len, long lineno, void *user) {
    json_doc *d;
    char err[LETHE_ERR_LEN];
    if (json_parse(line, len, NULL, &d, err) == 0) {
        (*(int *)user)++;
        json_doc_free(d);
    }
    return 0;
}

/* Several processes appending at once: every record arrives whole. */
static void test_jsonl_concurrent(void) {
    char path[600], err[LETHE_ERR_LEN];
    snprintf(path, sizeof path, "%s/concurrent.jsonl", dir);
    enum { P = 4, R = 150 };
    pid_t pids[P];
    for (int p = 0; p < P; p++) {
        pids[p] = fork();
        if (pids[p] == 0) {
            char rec[600];
            char pad[400];
            memset(pad, 'x', sizeof pad - 1);
            pad[sizeof pad - 1] = 0;
            for (int r = 0; r < R; r++) {
                int n = snprintf(rec, sizeof rec, "{\"worker\":%d,\"rec\":%d,\"pad\":\"%s\"}", p, r, pad);
                if (fs_jsonl_append(path, rec, (size_t)n, err))
                    _exit(1);
            }
            _exit(0);
        }
    }
    int failed = 0;
    for (int p = 0; p < P; p++) {
        int st;
        waitpid(pids[p], &st, 0);
        failed += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    }
    int valid = 0;
    long skipped = 0;
    fs_jsonl_read(path, 1 << 26, count_valid, &valid, &skipped, err);
    th_check(failed == 0 && valid == P * R && skipped == 0, "fsutil_jsonl_concurrent",
             "%d workers failed, %d valid of %d, %ld skipped", failed, valid, P * R, skipped);
}

int main(void) {
    snprintf(dir, sizeof dir, "%s/fsutil", th_tmpdir());
    char err[LETHE_ERR_LEN];
    if (fs_mkdir_p(dir, 0777, err)) {
        th_fail("fsutil_setup", "%s", err);
        return th_exit();
    }
    test_atomic_write();
    test_atomic_kill();
    test_temp_orphans();
    test_mkdir_read();
    test_sha256();
    test_jsonl();
    test_jsonl_concurrent();
    return th_exit();
}
