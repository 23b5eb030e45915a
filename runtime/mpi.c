/* mpi.c: data-parallel runs through Open MPI, loaded with dlopen (mpi.h).
 *
 * Why dlopen rather than linking with mpicc: the single-process `lethe` is
 * the common case (tests, the demo, Slurm sweeps of independent stages) and
 * must build and run where MPI is not installed; only a process that mpirun
 * started among several ranks needs the library. The price is that we speak
 * Open MPI's ABI (libmpi.so.40, Open MPI 3 to 5): its handles are the
 * addresses of exported globals (MPI_COMM_WORLD is &ompi_mpi_comm_world),
 * MPI_IN_PLACE is (void *)1. MPICH and its derivatives use integer handles
 * and another soname; they are not supported and are reported as such.
 */
#include "mpi.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "fsutil.h"

typedef void *mpi_handle;

static struct {
    void *lib;
    int rank, world;   /* world 0: not started (one process) */
    int (*init)(int *, char ***);
    int (*finalize)(void);
    int (*comm_rank)(mpi_handle, int *);
    int (*comm_size)(mpi_handle, int *);
    int (*allreduce)(const void *, void *, int, mpi_handle, mpi_handle, mpi_handle);
    int (*barrier)(mpi_handle);
    int (*bcast)(void *, int, mpi_handle, int, mpi_handle);
    int (*abort)(mpi_handle, int);
    mpi_handle comm_world, t_float, t_double, t_byte, op_sum;
} M;

#define MPI_IN_PLACE_OMPI ((void *)1)

int lethe_mpi_rank(void) { return M.world > 1 ? M.rank : 0; }
int lethe_mpi_world(void) { return M.world > 1 ? M.world : 1; }

/* An MPI call failed: the ranks can no longer agree, so the job stops (a
 * rank that returned an error would leave the others waiting forever). */
static void check_mpi(int rc, const char *what) {
    if (rc == 0)
        return;
    fprintf(stderr, "lethe: error: rank %d: %s failed (MPI error %d)\n", M.rank, what, rc);
    M.abort(M.comm_world, 1);
    exit(1);
}

void lethe_mpi_barrier(void) {
    if (M.world > 1)
        check_mpi(M.barrier(M.comm_world), "MPI_Barrier");
}

void lethe_mpi_bcast(void *data, int bytes, int root) {
    if (M.world > 1)
        check_mpi(M.bcast(data, bytes, M.t_byte, root, M.comm_world), "MPI_Bcast");
}

void lethe_mpi_abort(void) {
    if (M.world > 1)
        M.abort(M.comm_world, 1);
    exit(1);
}

double lethe_mpi_mean(double v) {
    if (M.world <= 1)
        return v;
    check_mpi(M.allreduce(MPI_IN_PLACE_OMPI, &v, 1, M.t_double, M.op_sum, M.comm_world), "MPI_Allreduce");
    return v / M.world;
}

static void allreduce_mean(lethe_ctx *ctx, void *data, int64_t n, int32_t dtype) {
    (void)ctx;
    int f64 = dtype == LETHE_F64;
    size_t size = f64 ? sizeof(double) : sizeof(float);
    /* MPI counts are ints: a tensor of more than INT_MAX elements goes in pieces */
    for (int64_t at = 0; at < n; at += INT_MAX) {
        int count = (int)(n - at < INT_MAX ? n - at : INT_MAX);
        check_mpi(M.allreduce(MPI_IN_PLACE_OMPI, (char *)data + (size_t)at * size, count, f64 ? M.t_double : M.t_float,
                              M.op_sum, M.comm_world),
                  "MPI_Allreduce");
    }
    /* the replicas stay equal because every rank gets the same sums: on 2
     * ranks a + b = b + a exactly; beyond, Open MPI reduces each element
     * once and distributes it (docs/design.md) */
    if (f64) {
        double *d = data, s = 1.0 / M.world;
        for (int64_t i = 0; i < n; i++)
            d[i] *= s;
    } else {
        float *d = data, s = 1.0f / (float)M.world;
        for (int64_t i = 0; i < n; i++)
            d[i] *= s;
    }
}

void (*lethe_mpi_hook(void))(lethe_ctx *, void *, int64_t, int32_t) { return M.world > 1 ? allreduce_mean : NULL; }

/* fsutil's commit gate: rank 0 writes, the ranks meet before and after. */
static int rank0_writes(void) { return M.rank == 0; }
static const fs_commit_gate rank0_gate = {rank0_writes, lethe_mpi_barrier};

static int sym(const char *name, void **out, char *err) {
    *out = dlsym(M.lib, name);
    if (!*out)
        return lethe_errf(err, LETHE_EFORMAT, "libmpi.so.40 has no %s: is it Open MPI's?", name);
    return LETHE_OK;
}

int lethe_mpi_start(char *err) {
    const char *ompi = getenv("OMPI_COMM_WORLD_SIZE");
    int size = ompi ? atoi(ompi) : 1;
    if (size <= 1) {
        const char *pmi = getenv("PMI_SIZE");
        if (pmi && atoi(pmi) > 1)
            return lethe_errf(err, LETHE_EARG,
                              "started as one of %s ranks by a launcher other than Open MPI's mpirun (PMI_SIZE is set): "
                              "data-parallel runs speak Open MPI only (libmpi.so.40)",
                              pmi);
        return LETHE_OK;
    }
    /* RTLD_GLOBAL: Open MPI's own plugins resolve their symbols in libmpi */
    M.lib = dlopen("libmpi.so.40", RTLD_NOW | RTLD_GLOBAL);
    if (!M.lib)
        return lethe_errf(err, LETHE_EIO, "mpirun started %d ranks, but Open MPI's library cannot be loaded: %s", size,
                          dlerror());
    int rc = LETHE_OK;
    void **fns[] = {(void **)&M.init,      (void **)&M.finalize, (void **)&M.comm_rank, (void **)&M.comm_size,
                    (void **)&M.allreduce, (void **)&M.barrier,  (void **)&M.bcast,     (void **)&M.abort,
                    &M.comm_world,         &M.t_float,           &M.t_double,           &M.t_byte,
                    &M.op_sum};
    static const char *const names[] = {"MPI_Init",          "MPI_Finalize",   "MPI_Comm_rank",   "MPI_Comm_size",
                                        "MPI_Allreduce",     "MPI_Barrier",    "MPI_Bcast",       "MPI_Abort",
                                        "ompi_mpi_comm_world", "ompi_mpi_float", "ompi_mpi_double", "ompi_mpi_byte",
                                        "ompi_mpi_op_sum"};
    for (size_t i = 0; !rc && i < sizeof names / sizeof names[0]; i++)
        rc = sym(names[i], fns[i], err);
    if (rc)
        return rc;
    if (M.init(NULL, NULL) || M.comm_rank(M.comm_world, &M.rank) || M.comm_size(M.comm_world, &M.world))
        return lethe_errf(err, LETHE_EIO, "MPI_Init failed (%d ranks announced by mpirun)", size);
    fs_set_commit_gate(M.world > 1 ? &rank0_gate : NULL);
    return LETHE_OK;
}

void lethe_mpi_finish(void) {
    if (M.world < 1)
        return;
    fs_set_commit_gate(NULL);
    M.finalize();
    M.world = 0;
}
