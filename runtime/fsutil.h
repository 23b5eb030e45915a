/* fsutil.h: files that survive crashes.
 *
 * Results and checkpoints are the product of hours of compute; a crash, a
 * full disk or a kill -9 must never leave a half-written file where a good
 * one is expected. Hence:
 *
 *  - Whole files are written ATOMICALLY: the bytes go to a temporary file in
 *    the same directory (".<name>.tmp.<pid>@<host>.<n>", so rename(2) never crosses
 *    a file system), which is fsync'd, then renamed over the target, then the
 *    directory is fsync'd. Readers see the old file or the new one, never a
 *    mix. On any failure the temporary file is removed and the target is
 *    untouched.
 *
 *  - Result records are JSON LINES appended with ONE write(2) of a complete
 *    line (ending in '\n') followed by fsync, under an exclusive flock(2) so
 *    that concurrent sweep workers on one machine never interleave. If an
 *    earlier crash left a torn last line (no trailing '\n'), the next append
 *    first truncates it away; readers ignore it (and count it).
 *
 *  - The content hash is SHA-256 (FIPS 180-4), printed as 64 lowercase hex
 *    digits. It names data sets, checkpoints and sources in result records,
 *    where a collision would silently merge different experiments, so a
 *    cryptographic hash is worth its small cost. FNV-1a 64 is offered for
 *    in-memory hash tables only.
 *
 * Error convention: check.h (status < 0 and a message in err[LETHE_ERR_LEN]).
 */
#ifndef LETHE_FSUTIL_H
#define LETHE_FSUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "check.h"

/* ---- atomic whole-file writes ------------------------------------------- */

int fs_write_atomic(const char *path, const void *data, size_t n, char *err);

/* Streaming form, for files too big to assemble in memory (checkpoints):
 *     fs_atomic a;
 *     if (fs_atomic_begin(&a, path, err)) return ...;
 *     fs_atomic_write(&a, p1, n1); fs_atomic_write(&a, p2, n2);
 *     return fs_atomic_commit(&a, err);     // or fs_atomic_abort(&a)
 * Write errors are sticky and reported by commit, which then removes the
 * temporary file. Exactly one of commit/abort must be called after a
 * successful begin. */
typedef struct fs_atomic {
    int fd;
    int failed_errno;       /* first write error, 0 if none */
    char *path;             /* target */
    char *tmp;              /* temporary file in the same directory */
} fs_atomic;

int fs_atomic_begin(fs_atomic *a, const char *path, char *err);
void fs_atomic_write(fs_atomic *a, const void *data, size_t n);
int fs_atomic_commit(fs_atomic *a, char *err);
void fs_atomic_abort(fs_atomic *a);
/* 1 if `name` (a file name, no folder) is a temporary file of fs_atomic_begin
 * whose writer is dead: written on this host by a process that no longer
 * exists. Temporaries of live writers and of other hosts (a shared folder of
 * a cluster) are not orphans, so concurrent stages never delete each
 * other's files. */
int fs_temp_is_orphan(const char *name);

/* A data-parallel run (mpi.c) writes each artifact once. With a gate set,
 * commit keeps the file only where writes() is true (elsewhere it drops the
 * temporary file and succeeds), and every process calls sync() (a barrier)
 * before the file appears and again once it is in place: no process finds
 * the file while another is still deciding whether to make it (resuming
 * skips finished work), and none reads it before it exists. NULL: every
 * process writes (the default). */
typedef struct fs_commit_gate {
    int (*writes)(void);
    void (*sync)(void);
} fs_commit_gate;
void fs_set_commit_gate(const fs_commit_gate *gate);

/* ---- directories and whole-file reads ----------------------------------- */

/* mkdir -p with mode (e.g. 0777, umask applies); an existing directory is fine,
 * an existing non-directory is an error. */
int fs_mkdir_p(const char *path, mode_t mode, char *err);

/* Reads all of `path` into a malloc'd buffer with a NUL byte after the last
 * byte (not counted in *n), refusing files larger than max_bytes before
 * allocating. Caller frees *out. */
int fs_read_file(const char *path, size_t max_bytes, uint8_t **out, size_t *n, char *err);

/* 1 if path exists (any type), 0 otherwise. */
int fs_exists(const char *path);

/* ---- hashing -------------------------------------------------------------- */

typedef struct fs_sha256 {
    uint32_t h[8];
    uint64_t len;           /* bytes hashed so far */
    uint8_t buf[64];
    size_t nbuf;
} fs_sha256;

void fs_sha256_init(fs_sha256 *s);
void fs_sha256_update(fs_sha256 *s, const void *data, size_t n);
void fs_sha256_final(fs_sha256 *s, uint8_t digest[32]);
/* One call over a buffer; hex is 64 digits + NUL. */
void fs_sha256_hex(const void *data, size_t n, char hex[65]);
/* Hash of a file's contents, streamed (no size limit). */
int fs_hash_file(const char *path, char hex[65], char *err);

uint64_t fs_fnv1a64(const void *data, size_t n, uint64_t h); /* h = 0xcbf29ce484222325 to start */
#define FS_FNV1A64_INIT 0xcbf29ce484222325ull

/* ---- JSON lines ----------------------------------------------------------- */

/* Appends `line` (without '\n'; it must not contain '\n' or NUL) plus '\n'
 * to path (created 0644 if absent), crash-safely as described above. */
int fs_jsonl_append(const char *path, const char *line, size_t len, char *err);

/* Calls fn(line, len, lineno, user) for every complete line of the file
 * (len excludes '\n'; lineno counts from 1; the line is NUL-terminated in a
 * private buffer). Empty lines, a torn last line and lines with NUL bytes (the
 * zero-filled tail a crash can leave on some file systems) are skipped and
 * counted in *skipped (may be NULL). A missing file is an empty file. fn
 * returns 0 to go on, non-zero to stop (then the call returns that value).
 * Files larger than max_bytes are refused. */
typedef int (*fs_line_fn)(const char *line, size_t len, long lineno, void *user);
int fs_jsonl_read(const char *path, size_t max_bytes, fs_line_fn fn, void *user, long *skipped, char *err);

#endif
