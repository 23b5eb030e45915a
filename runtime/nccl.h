/* nccl.h: data-parallel CUDA runs, `mpirun -np N lethe run|train ...
 * --device=cuda`: one GPU per rank, the gradients averaged with NCCL.
 *
 * NCCL is loaded at run time (dlopen of libnccl.so.2, or $LETHE_NCCL), like
 * the CUDA driver and Open MPI, so `lethe` builds and runs without it. MPI
 * (runtime/mpi.c) starts the ranks and carries NCCL's unique id from rank 0
 * to the others; NCCL then reduces the device buffers of the generated
 * step's LETHE_CUDA_ALLREDUCE launches (lethe_abi.h) on the device's stream.
 * docs/cuda.md, "Several GPUs", says what is tested (a mock NCCL) and what
 * is not (a real multi-GPU machine).
 */
#ifndef LETHE_NCCL_H
#define LETHE_NCCL_H

#include "lethe_abi.h"

/* The GPU this process takes: its local rank on the node under mpirun
 * (OMPI_COMM_WORLD_LOCAL_RANK), 0 otherwise. */
int lethe_nccl_ordinal(void);
/* After lethe_mpi_start, on every rank of a run with several: checks that
 * the node has a GPU per local rank, loads NCCL, joins the communicator of
 * all ranks and installs the device's all-reduce. LETHE_OK with one
 * process (nothing is loaded). */
int lethe_nccl_start(lethe_device *dev, char *err);
/* Leaves the communicator (before the device closes); harmless when not
 * started. */
void lethe_nccl_finish(lethe_device *dev);

#endif
