/* fsutil.c: see fsutil.h */
#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- atomic writes ------------------------------------------------------ */

static atomic_uint tmp_counter;

/* Directory part of path ("." when there is none), malloc'd. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* fsync the directory so the rename itself is durable; some file systems
 * refuse fsync on directories (EINVAL), which is harmless to ignore. */
static int fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0 && e != EINVAL && e != EROFS) {
        errno = e;
        return -1;
    }
    return 0;
}

/* The host name as temp names carry it: no '/' and no '.', so that the
 * name still parses (shortened at the first dot, as `hostname -s`). */
static void this_host(char *host, size_t n) {
    if (gethostname(host, n) != 0)
        host[0] = 0;
    host[n - 1] = 0;
    host[strcspn(host, "./")] = 0;
    if (!host[0])
        snprintf(host, n, "localhost");
}

int fs_temp_is_orphan(const char *name) {
    const char *t = strstr(name, ".tmp.");
    if (name[0] != '.' || !t)
        return 0;
    char *end;
    long pid = strtol(t + 5, &end, 10);
    if (*end != '@')        /* a temp from before host names: its writer is long gone */
        return 1;
    char host[64];
    this_host(host, sizeof host);
    size_t hl = strlen(host);
    if (strncmp(end + 1, host, hl) || end[1 + hl] != '.')
        return 0;           /* another machine's writer: it may be alive */
    return pid > 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

int fs_atomic_begin(fs_atomic *a, const char *path, char *err) {
    memset(a, 0, sizeof *a);
    a->fd = -1;
    if (!path || !*path)
        return lethe_errf(err, LETHE_EARG, "atomic write: empty path");
    size_t plen = strlen(path);
    if (path[plen - 1] == '/')
        return lethe_errf(err, LETHE_EARG, "%s: is a directory name, not a file name", path);
    char *dir = dir_of(path);
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    a->path = strdup(path);
    size_t tlen = strlen(dir) + strlen(base) + 128;
    a->tmp = malloc(tlen);
    if (!dir || !a->path || !a->tmp) {
        free(dir);
        free(a->tmp);
        a->tmp = NULL; /* never created: nothing to unlink */
        fs_atomic_abort(a);
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", path);
    }
    /* O_EXCL makes a clash with another writer's temp file impossible; the
     * pid + counter make one unlikely, so a few tries always suffice. The
     * host and pid tell a later run whether the writer is still alive
     * (fs_temp_is_orphan). */
    char host[64];
    this_host(host, sizeof host);
    for (int attempt = 0; attempt < 100 && a->fd < 0; attempt++) {
        snprintf(a->tmp, tlen, "%s/.%s.tmp.%ld@%s.%u", dir, base, (long)getpid(), host,
                 atomic_fetch_add(&tmp_counter, 1));
        a->fd = open(a->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (a->fd < 0 && errno != EEXIST)
            break;
    }
    if (a->fd < 0) {
        int e = errno;
        lethe_errf(err, LETHE_EIO, "%s: cannot create a temporary file in %s: %s", path, dir, strerror(e));
        free(dir);
        free(a->tmp);
        a->tmp = NULL;
        fs_atomic_abort(a);
        return LETHE_EIO;
    }
    free(dir);
    return LETHE_OK;
}

void fs_atomic_write(fs_atomic *a, const void *data, size_t n) {
    const uint8_t *p = data;
    while (n > 0 && !a->failed_errno && a->fd >= 0) {
        ssize_t w = write(a->fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            a->failed_errno = errno;
            break;
        }
        if (w == 0) {
            a->failed_errno = ENOSPC;
            break;
        }
        p += w;
        n -= (size_t)w;
    }
}

void fs_atomic_abort(fs_atomic *a) {
    if (a->fd >= 0)
        close(a->fd);
    if (a->tmp)
        unlink(a->tmp);
    free(a->tmp);
    free(a->path);
    memset(a, 0, sizeof *a);
    a->fd = -1;
}

static const fs_commit_gate *commit_gate;

void fs_set_commit_gate(const fs_commit_gate *gate) { commit_gate = gate; }

static int commit(fs_atomic *a, char *err);

int fs_atomic_commit(fs_atomic *a, char *err) {
    if (!commit_gate)
        return commit(a, err);
    commit_gate->sync();
    int rc = LETHE_OK;
    if (commit_gate->writes())
        rc = commit(a, err);
    else
        fs_atomic_abort(a);
    if (!rc)
        commit_gate->sync();
    return rc;
}

static int commit(fs_atomic *a, char *err) {
    if (a->fd < 0 || !a->path)
        return lethe_errf(err, LETHE_EARG, "atomic write: commit without a successful begin");
    if (a->failed_errno) {
        lethe_errf(err, LETHE_EIO, "%s: write failed: %s", a->path, strerror(a->failed_errno));
        fs_atomic_abort(a);
        return LETHE_EIO;
    }
    if (fsync(a->fd) != 0) {
        lethe_errf(err, LETHE_EIO, "%s: fsync failed: %s", a->path, strerror(errno));
        fs_atomic_abort(a);
        return LETHE_EIO;
    }
    int rc = close(a->fd);
    a->fd = -1;
    if (rc != 0) {
        lethe_errf(err, LETHE_EIO, "%s: close failed: %s", a->path, strerror(errno));
        fs_atomic_abort(a);
        return LETHE_EIO;
    }
    if (rename(a->tmp, a->path) != 0) {
        lethe_errf(err, LETHE_EIO, "%s: rename from %s failed: %s", a->path, a->tmp, strerror(errno));
        fs_atomic_abort(a);
        return LETHE_EIO;
    }
    char *dir = dir_of(a->path);
    int drc = dir ? fsync_dir(dir) : 0;
    int e = errno;
    free(dir);
    free(a->tmp);
    a->tmp = NULL; /* renamed: nothing left to remove */
    if (drc != 0) {
        lethe_errf(err, LETHE_EIO, "%s: fsync of its directory failed: %s", a->path, strerror(e));
        fs_atomic_abort(a);
        return LETHE_EIO;
    }
    free(a->path);
    a->path = NULL;
    return LETHE_OK;
}

int fs_write_atomic(const char *path, const void *data, size_t n, char *err) {
    fs_atomic a;
    int rc = fs_atomic_begin(&a, path, err);
    if (rc)
        return rc;
    fs_atomic_write(&a, data, n);
    return fs_atomic_commit(&a, err);
}

/* ---- directories and reads ------------------------------------------------ */

int fs_mkdir_p(const char *path, mode_t mode, char *err) {
    if (!path || !*path)
        return lethe_errf(err, LETHE_EARG, "mkdir: empty path");
    char *p = strdup(path);
    if (!p)
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", path);
    size_t len = strlen(p);
    for (size_t i = 1; i <= len; i++) {
        if (p[i] != '/' && p[i] != 0)
            continue;
        char save = p[i];
        p[i] = 0;
        if (mkdir(p, mode) != 0 && errno != EEXIST) {
            int e = errno;
            lethe_errf(err, LETHE_EIO, "%s: cannot create directory %s: %s", path, p, strerror(e));
            free(p);
            return LETHE_EIO;
        }
        p[i] = save;
    }
    struct stat st;
    int rc = LETHE_OK;
    if (stat(path, &st) != 0)
        rc = lethe_errf(err, LETHE_EIO, "%s: %s", path, strerror(errno));
    else if (!S_ISDIR(st.st_mode))
        rc = lethe_errf(err, LETHE_EIO, "%s: exists and is not a directory", path);
    free(p);
    return rc;
}

int fs_exists(const char *path) {
    struct stat st;
    return path && stat(path, &st) == 0;
}

/* Reads everything from fd, at most max bytes (one more is read to detect
 * an overlong stream whose size stat could not tell in advance). */
static int read_fd_all(int fd, const char *path, size_t size_hint, size_t max, uint8_t **out, size_t *n,
                       char *err) {
    size_t cap = size_hint < max ? size_hint + 1 : max + 1;
    if (cap < 4096)
        cap = 4096 < max + 1 ? 4096 : max + 1;
    uint8_t *buf = malloc(cap + 1);
    if (!buf)
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory reading %zu bytes", path, cap);
    size_t len = 0;
    for (;;) {
        if (len == cap) {
            if (cap > max) {
                free(buf);
                return lethe_errf(err, LETHE_ELIMIT, "%s: larger than the limit of %zu bytes", path, max);
            }
            size_t ncap = cap * 2 > max + 1 ? max + 1 : cap * 2;
            uint8_t *nb = realloc(buf, ncap + 1);
            if (!nb) {
                free(buf);
                return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory reading %zu bytes", path, ncap);
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(buf);
            return lethe_errf(err, LETHE_EIO, "%s: read failed: %s", path, strerror(e));
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    if (len > max) {
        free(buf);
        return lethe_errf(err, LETHE_ELIMIT, "%s: larger than the limit of %zu bytes", path, max);
    }
    buf[len] = 0;
    *out = buf;
    *n = len;
    return LETHE_OK;
}

int fs_read_file(const char *path, size_t max_bytes, uint8_t **out, size_t *n, char *err) {
    *out = NULL;
    *n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lethe_errf(err, errno == ENOENT ? LETHE_ENOTFOUND : LETHE_EIO, "%s: cannot open: %s", path,
                          strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return lethe_errf(err, LETHE_EIO, "%s: stat failed: %s", path, strerror(e));
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return lethe_errf(err, LETHE_EIO, "%s: is a directory", path);
    }
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > max_bytes) {
        close(fd);
        return lethe_errf(err, LETHE_ELIMIT, "%s: %lld bytes is larger than the limit of %zu bytes", path,
                          (long long)st.st_size, max_bytes);
    }
    int rc = read_fd_all(fd, path, S_ISREG(st.st_mode) ? (size_t)st.st_size : 0, max_bytes, out, n, err);
    close(fd);
    return rc;
}

/* ---- SHA-256 (FIPS 180-4) ------------------------------------------------- */

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline uint32_t ror32(uint32_t x, int r) { return (x >> r) | (x << (32 - r)); }

static void sha256_block(uint32_t h[8], const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror32(w[i - 15], 7) ^ ror32(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror32(w[i - 2], 17) ^ ror32(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = hh + (ror32(e, 6) ^ ror32(e, 11) ^ ror32(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] + w[i];
        uint32_t t2 = (ror32(a, 2) ^ ror32(a, 13) ^ ror32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

void fs_sha256_init(fs_sha256 *s) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->len = 0;
    s->nbuf = 0;
}

void fs_sha256_update(fs_sha256 *s, const void *data, size_t n) {
    const uint8_t *p = data;
    s->len += n;
    if (s->nbuf) {
        size_t take = 64 - s->nbuf < n ? 64 - s->nbuf : n;
        memcpy(s->buf + s->nbuf, p, take);
        s->nbuf += take;
        p += take;
        n -= take;
        if (s->nbuf < 64)
            return;
        sha256_block(s->h, s->buf);
        s->nbuf = 0;
    }
    for (; n >= 64; p += 64, n -= 64)
        sha256_block(s->h, p);
    memcpy(s->buf, p, n);
    s->nbuf = n;
}

void fs_sha256_final(fs_sha256 *s, uint8_t digest[32]) {
    uint64_t bits = s->len * 8;
    uint8_t pad[72] = {0x80};
    size_t padlen = (s->nbuf < 56 ? 56 : 120) - s->nbuf;
    for (int i = 0; i < 8; i++)
        pad[padlen + i] = (uint8_t)(bits >> (56 - 8 * i));
    uint64_t keep = s->len;
    fs_sha256_update(s, pad, padlen + 8);
    s->len = keep;
    for (int i = 0; i < 8; i++) {
        digest[4 * i] = (uint8_t)(s->h[i] >> 24);
        digest[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
        digest[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
        digest[4 * i + 3] = (uint8_t)s->h[i];
    }
}

static void to_hex(const uint8_t d[32], char hex[65]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[d[i] >> 4];
        hex[2 * i + 1] = digits[d[i] & 15];
    }
    hex[64] = 0;
}

void fs_sha256_hex(const void *data, size_t n, char hex[65]) {
    fs_sha256 s;
    uint8_t d[32];
    fs_sha256_init(&s);
    fs_sha256_update(&s, data, n);
    fs_sha256_final(&s, d);
    to_hex(d, hex);
}

int fs_hash_file(const char *path, char hex[65], char *err) {
    hex[0] = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lethe_errf(err, errno == ENOENT ? LETHE_ENOTFOUND : LETHE_EIO, "%s: cannot open: %s", path,
                          strerror(errno));
    fs_sha256 s;
    fs_sha256_init(&s);
    uint8_t *buf = malloc(1 << 16);
    if (!buf) {
        close(fd);
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", path);
    }
    for (;;) {
        ssize_t r = read(fd, buf, 1 << 16);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return lethe_errf(err, LETHE_EIO, "%s: read failed: %s", path, strerror(e));
        }
        if (r == 0)
            break;
        fs_sha256_update(&s, buf, (size_t)r);
    }
    free(buf);
    close(fd);
    uint8_t d[32];
    fs_sha256_final(&s, d);
    to_hex(d, hex);
    return LETHE_OK;
}

uint64_t fs_fnv1a64(const void *data, size_t n, uint64_t h) {
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* ---- JSON lines ------------------------------------------------------------- */

/* Offset just past the last '\n' in the first `size` bytes of fd (0 if none). */
static int last_line_end(int fd, off_t size, off_t *end) {
    uint8_t buf[4096];
    off_t pos = size;
    while (pos > 0) {
        size_t chunk = pos < (off_t)sizeof buf ? (size_t)pos : sizeof buf;
        pos -= (off_t)chunk;
        ssize_t r = pread(fd, buf, chunk, pos);
        if (r != (ssize_t)chunk)
            return -1;
        for (size_t i = chunk; i-- > 0;) {
            if (buf[i] == '\n') {
                *end = pos + (off_t)i + 1;
                return 0;
            }
        }
    }
    *end = 0;
    return 0;
}

int fs_jsonl_append(const char *path, const char *line, size_t len, char *err) {
    if (memchr(line, '\n', len) || memchr(line, 0, len))
        return lethe_errf(err, LETHE_EARG, "%s: a JSON-lines record must not contain newlines or NUL bytes", path);
    char *rec = malloc(len + 1);
    if (!rec)
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", path);
    memcpy(rec, line, len);
    rec[len] = '\n';
    int fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
    if (fd < 0) {
        free(rec);
        return lethe_errf(err, LETHE_EIO, "%s: cannot open for appending: %s", path, strerror(errno));
    }
    int rc = LETHE_OK;
    /* The lock serialises appenders (sweep workers sharing a results file) so
     * the torn-line repair below can never cut into another writer's line. */
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            rc = lethe_errf(err, LETHE_EIO, "%s: cannot lock: %s", path, strerror(errno));
            goto out;
        }
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = lethe_errf(err, LETHE_EIO, "%s: stat failed: %s", path, strerror(errno));
        goto out;
    }
    off_t size = st.st_size;
    if (size > 0) {
        uint8_t last = 0;
        if (pread(fd, &last, 1, size - 1) != 1) {
            rc = lethe_errf(err, LETHE_EIO, "%s: read failed: %s", path, strerror(errno));
            goto out;
        }
        if (last != '\n') {
            /* A torn line from an earlier crash: drop it so this record
             * starts on a line of its own. */
            off_t end;
            if (last_line_end(fd, size, &end) != 0 || ftruncate(fd, end) != 0) {
                rc = lethe_errf(err, LETHE_EIO, "%s: cannot remove a torn last line: %s", path, strerror(errno));
                goto out;
            }
            size = end;
        }
    }
    ssize_t w;
    do
        w = write(fd, rec, len + 1);
    while (w < 0 && errno == EINTR);
    if (w != (ssize_t)(len + 1)) {
        int e = w < 0 ? errno : ENOSPC;
        /* Undo a short write: a record is all or nothing. */
        if (ftruncate(fd, size) != 0) { /* the reader still skips the torn tail */ }
        rc = lethe_errf(err, LETHE_EIO, "%s: append failed: %s", path, strerror(e));
        goto out;
    }
    if (fsync(fd) != 0)
        rc = lethe_errf(err, LETHE_EIO, "%s: fsync failed: %s", path, strerror(errno));
out:
    close(fd); /* releases the lock */
    free(rec);
    return rc;
}

int fs_jsonl_read(const char *path, size_t max_bytes, fs_line_fn fn, void *user, long *skipped, char *err) {
    if (skipped)
        *skipped = 0;
    uint8_t *buf;
    size_t n;
    int rc = fs_read_file(path, max_bytes, &buf, &n, err);
    if (rc == LETHE_ENOTFOUND) {
        if (err)
            err[0] = 0;
        return LETHE_OK;
    }
    if (rc)
        return rc;
    long lineno = 0, bad = 0;
    size_t pos = 0;
    while (pos < n) {
        uint8_t *nl = memchr(buf + pos, '\n', n - pos);
        lineno++;
        if (!nl) { /* torn last line */
            bad++;
            break;
        }
        size_t len = (size_t)(nl - (buf + pos));
        char *line = (char *)buf + pos;
        pos += len + 1;
        if (len == 0 || memchr(line, 0, len)) {
            bad += len != 0;
            continue;
        }
        line[len] = 0;
        int r = fn(line, len, lineno, user);
        if (r) {
            rc = r;
            break;
        }
    }
    free(buf);
    if (skipped)
        *skipped = bad;
    return rc;
}
