/* program.c: load compiled programs; compile .lth files through a cache.
 *
 * The cache key is the SHA-256 of lethec's version line, the flags, and the
 * path and bytes of every source file the compilation reads (lethec --deps
 * lists them), so editing any imported file recompiles and nothing else
 * does. The shared object is written by lethec to a temporary name and
 * renamed into place, so a killed compilation never leaves a half file.
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "lethe.h"

static char *run_capture(const char *cmd, size_t max, int *status) {
    FILE *p = popen(cmd, "r");
    if (!p) {
        *status = -1;
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += got;
        if (n + 1 == cap) {
            if (cap >= max)
                break;
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    int rc = pclose(p);
    *status = rc == -1 ? -1 : WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
    if (buf)
        buf[n] = 0;
    return buf;
}

const char *lethe_lethec_path(void) {
    static char path[PATH_MAX + 16];
    const char *env = getenv("LETHEC");
    if (env && *env)
        return env;
    if (!path[0]) {
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n > 0) {
            self[n] = 0;
            char *slash = strrchr(self, '/');
            if (slash) {
                *slash = 0;
                snprintf(path, sizeof path, "%s/lethec", self);
            }
        }
        if (!path[0] || access(path, X_OK) != 0)
            snprintf(path, sizeof path, "lethec");
    }
    return path;
}

const char *lethe_cache_dir(void) {
    static char dir[PATH_MAX];
    if (dir[0])
        return dir;
    const char *env = getenv("LETHE_CACHE"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (env && *env)
        snprintf(dir, sizeof dir, "%s", env);
    else if (xdg && *xdg)
        snprintf(dir, sizeof dir, "%s/lethe", xdg);
    else
        snprintf(dir, sizeof dir, "%s/.cache/lethe", home && *home ? home : "/tmp");
    return dir;
}

/* Quote a path for the shell. */
static const char *sh_quote(const char *s, char *buf, size_t n) {
    size_t k = 0;
    buf[k++] = '\'';
    for (; *s && k + 5 < n; s++) {
        if (*s == '\'') {
            memcpy(buf + k, "'\\''", 4);
            k += 4;
        } else
            buf[k++] = *s;
    }
    buf[k++] = '\'';
    buf[k] = 0;
    return buf;
}

static int cache_key(const char *lth, const char *flags, char hex[65], char *err) {
    char q[PATH_MAX * 2], cmd[PATH_MAX * 5];
    int st;
    snprintf(cmd, sizeof cmd, "%s --version 2>&1", lethe_lethec_path());
    char *version = run_capture(cmd, 1 << 16, &st);
    if (!version || st != 0) {
        free(version);
        return lethe_errf(err, LETHE_EIO, "cannot run %s: is lethec built? (set $LETHEC to its path)", lethe_lethec_path());
    }
    snprintf(cmd, sizeof cmd, "%s %s --deps %s 2>&1", lethe_lethec_path(), sh_quote(lth, q, sizeof q), flags ? flags : "");
    char *deps = run_capture(cmd, 1 << 20, &st);
    if (!deps || st != 0) {
        fprintf(stderr, "%s", deps ? deps : "");
        free(version);
        free(deps);
        return lethe_errf(err, LETHE_EFORMAT, "%s does not compile (lethec's message is above)", lth);
    }
    fs_sha256 h;
    fs_sha256_init(&h);
    fs_sha256_update(&h, version, strlen(version));
    fs_sha256_update(&h, flags ? flags : "", strlen(flags ? flags : "") + 1);
    int rc = LETHE_OK;
    for (char *line = strtok(deps, "\n"); line && rc == LETHE_OK; line = strtok(NULL, "\n")) {
        uint8_t *text = NULL;
        size_t n = 0;
        rc = fs_read_file(line, 64u << 20, &text, &n, err);
        fs_sha256_update(&h, line, strlen(line) + 1);
        fs_sha256_update(&h, text, n);
        free(text);
    }
    uint8_t d[32];
    fs_sha256_final(&h, d);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", d[i]);
    free(version);
    free(deps);
    return rc;
}

static int compile_cached(const char *lth, const char *flags, char *so, size_t n, char *err) {
    char hex[65];
    int rc = cache_key(lth, flags, hex, err);
    if (rc)
        return rc;
    const char *dir = lethe_cache_dir();
    if ((rc = fs_mkdir_p(dir, 0755, err)))
        return rc;
    snprintf(so, n, "%s/%s.so", dir, hex);
    if (access(so, R_OK) == 0)
        return LETHE_OK;
    char tmp[PATH_MAX], q1[PATH_MAX * 2], q2[PATH_MAX * 2], cmd[PATH_MAX * 5];
    snprintf(tmp, sizeof tmp, "%s/.%s.%d.so", dir, hex, (int)getpid());
    snprintf(cmd, sizeof cmd, "%s %s --emit=so -o %s %s", lethe_lethec_path(), sh_quote(lth, q1, sizeof q1),
             sh_quote(tmp, q2, sizeof q2), flags ? flags : "");
    fprintf(stderr, "lethe: compiling %s\n", lth);
    int st = system(cmd);
    if (st != 0) {
        unlink(tmp);
        return lethe_errf(err, LETHE_EFORMAT, "lethec failed on %s (its message is above)", lth);
    }
    if (rename(tmp, so) != 0) {
        unlink(tmp);
        return lethe_errf(err, LETHE_EIO, "cannot move the compiled program into %s: %s", so, strerror(errno));
    }
    return LETHE_OK;
}

int lethe_prog_open(const char *path, const char *flags, lethe_prog *out, char *err) {
    memset(out, 0, sizeof *out);
    size_t len = strlen(path);
    if (len > 3 && !strcmp(path + len - 3, ".so"))
        snprintf(out->so_path, sizeof out->so_path, "%s", path);
    else {
        int rc = compile_cached(path, flags, out->so_path, sizeof out->so_path, err);
        if (rc)
            return rc;
    }
    /* dlopen wants a path with a slash for files in the current directory */
    char abs[PATH_MAX];
    if (!realpath(out->so_path, abs))
        return lethe_errf(err, LETHE_EIO, "cannot open %s: %s", out->so_path, strerror(errno));
    out->handle = dlopen(abs, RTLD_NOW | RTLD_LOCAL);
    if (!out->handle)
        return lethe_errf(err, LETHE_EFORMAT, "cannot load %s: %s", out->so_path, dlerror());
    out->p = dlsym(out->handle, LETHE_PROGRAM_SYMBOL);
    if (!out->p) {
        lethe_prog_close(out);
        return lethe_errf(err, LETHE_EFORMAT, "%s is not a Lethe program (no %s symbol)", path, LETHE_PROGRAM_SYMBOL);
    }
    if (out->p->abi_version != LETHE_ABI_VERSION) {
        int v = (int)out->p->abi_version;
        lethe_prog_close(out);
        return lethe_errf(err, LETHE_EFORMAT, "%s was compiled for ABI %d, this runtime speaks %d: recompile it", path, v,
                          LETHE_ABI_VERSION);
    }
    return LETHE_OK;
}

void lethe_prog_linked(const lethe_program *p, const char *name, lethe_prog *out) {
    memset(out, 0, sizeof *out);
    out->p = p;
    snprintf(out->so_path, sizeof out->so_path, "%s", name);
}

void lethe_prog_close(lethe_prog *p) {
    if (p->handle)
        dlclose(p->handle);
    p->handle = NULL;
    p->p = NULL;
}

const lethe_entry *lethe_entry_find(const lethe_program *p, const char *name) {
    for (uint32_t i = 0; p && i < p->nentries; i++)
        if (!strcmp(p->entries[i].name, name))
            return &p->entries[i];
    return NULL;
}
