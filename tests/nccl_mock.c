/* nccl_mock.c: an NCCL (the six functions runtime/nccl.c calls) over the
 * mock CUDA device of tests/cuda_mock.c, so that `mpirun -np 2 lethe train
 * --device=cuda` runs the real data-parallel CUDA path without a GPU:
 *
 *     LETHE_NCCL=build/tests/libncclmock.so  LETHE_LIBCUDA=build/tests/libcudamock.so ...
 *
 * The ranks exchange through files, not MPI, so that the MPI side of
 * lethe (the unique id broadcast from rank 0) is tested rather than
 * borrowed: the unique id names a fresh folder (under LETHE_MOCK_DIR, else
 * /tmp), and a rank that got another id waits in another folder and times
 * out. ncclAllReduce writes the rank's buffer as s<step>.r<rank> (a
 * temporary renamed into place), waits for every rank's file of that step,
 * and sums them in rank order, so every rank gets the same bits; ncclAvg
 * then multiplies by 1/nranks, as lethe's CPU path does.
 *
 * It checks what a real NCCL would take on trust or fail on obscurely:
 * the buffers are device allocations of the mock driver, the stream is the
 * device's, the op is ncclAvg or ncclSum on float32/float64, and each rank
 * retained the GPU of its local rank (OMPI_COMM_WORLD_LOCAL_RANK). With
 * LETHE_MOCK_NCCL_LOG=FILE each rank appends one line per call to
 * FILE.<rank> (the test compares the ranks' sequences).
 * LETHE_MOCK_NCCL_VERSION overrides the version it reports.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef int ncclResult_t;
enum { OK = 0, SYSTEM_ERROR = 2, INVALID_ARGUMENT = 4, INVALID_USAGE = 5 };
typedef struct {
    char internal[128];
} ncclUniqueId;

#define ID_PREFIX "LETHEMOCKNCCL:"

struct ncclComm {
    char dir[128];
    int nranks, rank;
    long step;
    FILE *log;
};

typedef struct ncclComm *ncclComm_t;

const char *ncclGetErrorString(ncclResult_t rc) {
    return rc == OK ? "no error" : rc == SYSTEM_ERROR ? "system error (mock: a rank never came)" : "invalid use (mock)";
}

ncclResult_t ncclGetVersion(int *v) {
    const char *e = getenv("LETHE_MOCK_NCCL_VERSION");
    *v = e && *e ? atoi(e) : 22304;
    return OK;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    static int counter;
    const char *base = getenv("LETHE_MOCK_DIR") ? getenv("LETHE_MOCK_DIR") : "/tmp";
    memset(id, 0, sizeof *id);
    int n = snprintf(id->internal, sizeof id->internal, ID_PREFIX "%s/nccl.%ld.%d", base, (long)getpid(), counter++);
    if (n >= (int)sizeof id->internal - 1 || mkdir(id->internal + strlen(ID_PREFIX), 0700))
        return SYSTEM_ERROR;
    return OK;
}

/* the mock driver's checks, found in the copy of it that lethe loaded */
static int (*mock_device)(void), (*mock_inside)(unsigned long long, size_t), (*mock_is_stream)(void *);

static int find_mock_driver(void) {
    const char *lib = getenv("LETHE_LIBCUDA");
    void *h = lib ? dlopen(lib, RTLD_NOW | RTLD_NOLOAD) : NULL;
    if (h) {
        mock_device = (int (*)(void))dlsym(h, "lethe_mock_device");
        mock_inside = (int (*)(unsigned long long, size_t))dlsym(h, "lethe_mock_inside");
        mock_is_stream = (int (*)(void *))dlsym(h, "lethe_mock_is_stream");
    }
    if (!mock_device || !mock_inside || !mock_is_stream) {
        fprintf(stderr, "nccl_mock: LETHE_LIBCUDA is not the loaded mock driver (tests/cuda_mock.c)\n");
        return 0;
    }
    return 1;
}

static void path_of(char *out, size_t n, const struct ncclComm *c, const char *what, long step, int rank) {
    snprintf(out, n, "%s/%s%ld.r%d", c->dir, what, step, rank);
}

/* waits until every rank's file `what`<step> exists (60 s at most) */
static int wait_all(const struct ncclComm *c, const char *what, long step) {
    char p[300];
    for (int waited_ms = 0; waited_ms < 60000;) {
        int r = 0;
        for (; r < c->nranks; r++) {
            path_of(p, sizeof p, c, what, step, r);
            if (access(p, F_OK))
                break;
        }
        if (r == c->nranks)
            return 1;
        nanosleep(&(struct timespec){0, 1000000}, NULL);
        waited_ms++;
    }
    fprintf(stderr, "nccl_mock: rank %d: the other ranks never reached %s%ld in %s\n", c->rank, what, step, c->dir);
    return 0;
}

static int put(const struct ncclComm *c, const char *what, long step, const void *data, size_t bytes) {
    char p[300], tmp[310];
    path_of(p, sizeof p, c, what, step, c->rank);
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    FILE *f = fopen(tmp, "wb");
    int ok = f && fwrite(data, 1, bytes, f) == bytes;
    if (f && fclose(f))
        ok = 0;
    return ok && !rename(tmp, p);
}

ncclResult_t ncclCommInitRank(ncclComm_t *out, int nranks, ncclUniqueId id, int rank) {
    if (strncmp(id.internal, ID_PREFIX, strlen(ID_PREFIX)) || nranks < 1 || rank < 0 || rank >= nranks)
        return INVALID_ARGUMENT;
    if (!find_mock_driver())
        return INVALID_USAGE;
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    if (local && mock_device() != atoi(local)) {
        fprintf(stderr, "nccl_mock: local rank %s joined with GPU %d's context current\n", local, mock_device());
        return INVALID_USAGE;
    }
    struct ncclComm *c = calloc(1, sizeof *c);
    if (!c)
        return SYSTEM_ERROR;
    snprintf(c->dir, sizeof c->dir, "%s", id.internal + strlen(ID_PREFIX));
    c->nranks = nranks;
    c->rank = rank;
    const char *log = getenv("LETHE_MOCK_NCCL_LOG");
    if (log) {
        char p[300];
        snprintf(p, sizeof p, "%s.%d", log, rank);
        c->log = fopen(p, "w");
    }
    /* like NCCL, the communicator exists once every rank has joined */
    if (!put(c, "join", 0, "", 0) || !wait_all(c, "join", 0)) {
        free(c);
        return SYSTEM_ERROR;
    }
    *out = c;
    return OK;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, int dtype, int op, ncclComm_t c, void *stream) {
    size_t size = dtype == 7 ? 4 : dtype == 8 ? 8 : 0;
    if (!size || (op != 0 && op != 4)) {
        fprintf(stderr, "nccl_mock: ncclAllReduce of datatype %d, op %d: the mock has float32/64 sum and avg\n", dtype, op);
        return INVALID_ARGUMENT;
    }
    size_t bytes = count * size;
    if (!mock_is_stream(stream) || !mock_inside((uintptr_t)send, bytes) || !mock_inside((uintptr_t)recv, bytes)) {
        fprintf(stderr, "nccl_mock: ncclAllReduce of %zu elements: %s\n", count,
                !mock_is_stream(stream) ? "not on the device's stream" : "a buffer is not one device allocation");
        return INVALID_USAGE;
    }
    long step = c->step++;
    if (c->log)
        fprintf(c->log, "%ld %zu %s %s\n", step, count, size == 4 ? "f32" : "f64", op == 4 ? "avg" : "sum");
    if (!put(c, "s", step, send, bytes) || !wait_all(c, "s", step))
        return SYSTEM_ERROR;
    double *sum = calloc(count ? count : 1, sizeof(double));
    void *part = malloc(bytes ? bytes : 1);
    int ok = sum && part;
    for (int r = 0; ok && r < c->nranks; r++) {
        char p[300];
        path_of(p, sizeof p, c, "s", step, r);
        FILE *f = fopen(p, "rb");
        ok = f && fread(part, 1, bytes, f) == bytes;
        if (f)
            fclose(f);
        /* in the dtype, rank by rank: the same bits on every rank */
        for (size_t i = 0; ok && i < count; i++)
            sum[i] = size == 4 ? (double)(float)(sum[i] + ((float *)part)[i]) : sum[i] + ((double *)part)[i];
    }
    for (size_t i = 0; ok && i < count; i++) {
        if (size == 4)
            ((float *)recv)[i] = op == 4 ? (float)sum[i] * (1.0f / (float)c->nranks) : (float)sum[i];
        else
            ((double *)recv)[i] = op == 4 ? sum[i] * (1.0 / c->nranks) : sum[i];
    }
    free(sum);
    free(part);
    /* every rank has read step - 2 once this rank holds step - 1's sums */
    if (step >= 2) {
        char p[300];
        path_of(p, sizeof p, c, "s", step - 2, c->rank);
        unlink(p);
    }
    return ok ? OK : SYSTEM_ERROR;
}

ncclResult_t ncclCommDestroy(ncclComm_t c) {
    if (!c)
        return INVALID_ARGUMENT;
    int ok = put(c, "done", 0, "", 0) && wait_all(c, "done", 0);
    for (long s = c->step - 2; s < c->step; s++) {
        char p[300];
        path_of(p, sizeof p, c, "s", s, c->rank);
        if (s >= 0)
            unlink(p);
    }
    if (c->log)
        fclose(c->log);
    free(c);
    return ok ? OK : SYSTEM_ERROR;
}
