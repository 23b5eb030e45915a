/* mpi.h: data-parallel runs under `mpirun -np N lethe run|train|...`.
 *
 * Open MPI is loaded at run time (dlopen of libmpi.so.40) when the launcher
 * says this process is one of several ranks (OMPI_COMM_WORLD_SIZE > 1), so
 * `lethe` has no link-time MPI dependency and runs where MPI is absent. With
 * one process every function here is a cheap no-op. docs/design.md,
 * "Data-parallel training", has the whole design.
 */
#ifndef LETHE_MPI_H
#define LETHE_MPI_H

#include <stdint.h>

#include "lethe_abi.h"

/* Joins the job when mpirun started several ranks: loads Open MPI, MPI_Init,
 * and makes artifact writes (fsutil.h) rank 0's alone, the other ranks
 * waiting at a barrier after each. LETHE_OK with one process. */
int lethe_mpi_start(char *err);
int lethe_mpi_rank(void);    /* 0 with one process */
int lethe_mpi_world(void);   /* 1 with one process */
void lethe_mpi_barrier(void);
/* MPI_Bcast of `bytes` bytes from rank `root` (NCCL's unique id, nccl.c). */
void lethe_mpi_bcast(void *data, int bytes, int root);
/* Stops every rank (MPI_Abort) after an error that leaves the ranks unable
 * to agree; exit(1) with one process. */
void lethe_mpi_abort(void) __attribute__((__noreturn__));
/* The mean of v over the ranks (a step's reported loss). */
double lethe_mpi_mean(double v);
/* The lethe_ctx.allreduce hook of this process: NULL with one process. */
void (*lethe_mpi_hook(void))(lethe_ctx *ctx, void *data, int64_t n, int32_t dtype);
/* MPI_Finalize when started; call once at a successful exit. */
void lethe_mpi_finish(void);

#endif
