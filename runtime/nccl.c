/* nccl.c: the NCCL all-reduce of data-parallel CUDA runs (nccl.h).
 *
 * Why NCCL and not MPI for the gradients: they live on the GPU; NCCL
 * reduces device buffers over NVLink/PCIe/InfiniBand on the step's own
 * stream, where MPI would need a copy to the host and back on every step
 * (or a CUDA-aware MPI build, which Debian's is not). MPI stays the
 * launcher and carries the one thing NCCL cannot make alone: the unique id
 * that rank 0 creates and every rank passes to ncclCommInitRank.
 *
 * The few NCCL declarations are written out below (no NCCL headers at
 * build time, as cuda_min.h for the driver); their values are those of
 * nccl.h since NCCL 2.10, the first with ncclAvg, which the version check
 * requires.
 */
#include "nccl.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "device_cuda.h"
#include "mpi.h"

typedef int ncclResult_t;   /* ncclSuccess = 0 */
typedef struct ncclComm *ncclComm_t;
typedef struct {
    char internal[128];     /* NCCL_UNIQUE_ID_BYTES */
} ncclUniqueId;
enum { NCCL_FLOAT32 = 7, NCCL_FLOAT64 = 8 };   /* ncclDataType_t */
enum { NCCL_AVG = 4 };                         /* ncclRedOp_t: sum / nranks */
enum { NCCL_MIN_VERSION = 21000 };             /* 2.10.0, major*10000 + minor*100 + patch */

static struct {
    void *lib;
    ncclComm_t comm;
    int rank;
    ncclResult_t (*get_version)(int *);
    ncclResult_t (*get_unique_id)(ncclUniqueId *);
    ncclResult_t (*comm_init_rank)(ncclComm_t *, int, ncclUniqueId, int);
    ncclResult_t (*all_reduce)(const void *, void *, size_t, int, int, ncclComm_t, void *);
    ncclResult_t (*comm_destroy)(ncclComm_t);
    const char *(*error_string)(ncclResult_t);
} N;

static int env_int(const char *name, int otherwise) {
    const char *v = getenv(name);
    return v && *v ? atoi(v) : otherwise;
}

int lethe_nccl_ordinal(void) {
    return env_int("OMPI_COMM_WORLD_SIZE", 1) > 1 ? env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0) : 0;
}

/* The device's ALLREDUCE launches: in place, the mean over the ranks. Every
 * rank issues the same launches in the same order (one program, one
 * stream), which is what NCCL needs to match its collectives; a failure
 * stops the job, as the ranks could no longer agree (mpi.c's check_mpi). */
static int all_reduce(void *state, unsigned long long buf, int64_t count, int32_t dtype, void *stream) {
    (void)state;
    void *p = (void *)(uintptr_t)buf;
    ncclResult_t rc = N.all_reduce(p, p, (size_t)count, dtype == LETHE_F64 ? NCCL_FLOAT64 : NCCL_FLOAT32, NCCL_AVG,
                                   N.comm, stream);
    if (rc) {
        fprintf(stderr, "lethe: error: rank %d: ncclAllReduce of %lld elements failed: %s (NCCL error %d)\n", N.rank,
                (long long)count, N.error_string(rc), rc);
        lethe_mpi_abort();
    }
    return 0;
}

static int sym(const char *lib, const char *name, void **out, char *err) {
    *out = dlsym(N.lib, name);
    if (!*out)
        return lethe_errf(err, LETHE_EFORMAT, "%s has no %s: is it NCCL's?", lib, name);
    return LETHE_OK;
}

int lethe_nccl_start(lethe_device *dev, char *err) {
    int world = lethe_mpi_world();
    if (world <= 1)
        return LETHE_OK;
    int local = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", world), gpus = lethe_cuda_visible(dev);
    if (gpus < local)
        return lethe_errf(err, LETHE_EARG,
                          "mpirun started %d ranks on this node and it has %d GPU%s: data-parallel CUDA runs take one "
                          "GPU per rank (rank i of a node takes GPU i; run at most %d ranks per node)",
                          local, gpus, gpus == 1 ? "" : "s", gpus);
    const char *env = getenv("LETHE_NCCL");
    const char *lib = env && *env ? env : "libnccl.so.2";
    N.lib = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!N.lib)
        return lethe_errf(err, LETHE_ENOTFOUND,
                          "data-parallel CUDA runs need NCCL, and %s cannot be loaded: %s (install NCCL 2.10 or later, "
                          "e.g. Debian's libnccl2, or name the library in LETHE_NCCL)",
                          lib, dlerror());
    void **fns[] = {(void **)&N.get_version,  (void **)&N.get_unique_id, (void **)&N.comm_init_rank,
                    (void **)&N.all_reduce,   (void **)&N.comm_destroy,  (void **)&N.error_string};
    static const char *const names[] = {"ncclGetVersion", "ncclGetUniqueId", "ncclCommInitRank",
                                        "ncclAllReduce",  "ncclCommDestroy", "ncclGetErrorString"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (sym(lib, names[i], fns[i], err))
            return LETHE_EFORMAT;
    int version = 0;
    if (N.get_version(&version) || version < NCCL_MIN_VERSION)
        return lethe_errf(err, LETHE_EFORMAT, "%s is NCCL %d.%d.%d; data-parallel runs need 2.10 or later (ncclAvg)", lib,
                          version / 10000, version / 100 % 100, version % 100);
    /* rank 0 makes the id, every rank receives it: the id is the same on
     * all ranks or the collective below never completes */
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    N.rank = lethe_mpi_rank();
    ncclResult_t rc = N.rank == 0 ? N.get_unique_id(&id) : 0;
    lethe_mpi_bcast(&rc, sizeof rc, 0);
    if (rc)
        return lethe_errf(err, LETHE_EIO, "ncclGetUniqueId failed on rank 0: %s (NCCL error %d)", N.error_string(rc), rc);
    lethe_mpi_bcast(&id, sizeof id, 0);
    /* the device's context is current on this thread (lethe_cuda_open), so
     * NCCL takes its GPU */
    if ((rc = N.comm_init_rank(&N.comm, world, id, N.rank)))
        return lethe_errf(err, LETHE_EIO, "rank %d: ncclCommInitRank of %d ranks failed: %s (NCCL error %d)", N.rank, world,
                          N.error_string(rc), rc);
    lethe_cuda_set_allreduce(dev, all_reduce, NULL);
    return LETHE_OK;
}

void lethe_nccl_finish(lethe_device *dev) {
    if (!N.comm)
        return;
    if (dev)
        lethe_cuda_set_allreduce(dev, NULL, NULL);
    N.comm_destroy(N.comm);
    N.comm = NULL;
}
