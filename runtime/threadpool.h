/* threadpool.h: the persistent thread pool behind lethe_ctx.parallel_for.
 *
 *     lethe_pool *pool = lethe_pool_new(0);          // one thread per CPU
 *     lethe_ctx ctx;
 *     lethe_ctx_init(&ctx, pool, seed);
 *     entry->fn(args, workspace, &ctx);              // parallel loops use the pool
 *     lethe_pool_free(pool);
 *
 * lethe_parallel_for splits [0, n) into at most 4 x nthreads contiguous
 * chunks of at least `grain` iterations, which the calling thread and the
 * workers take in turn (dynamic scheduling: a thread preempted by another
 * process delays the loop by one chunk at most); a pool of n threads starts
 * n - 1 workers. Generated loops write disjoint elements per iteration, so
 * results do not depend on the number of threads or on who ran a chunk. Idle workers spin for a few tens of microseconds
 * (back-to-back kernels restart them without a wake-up) and then sleep on a
 * condition variable, leaving the core to OpenBLAS's own threads.
 *
 * A pool runs one parallel loop at a time: a second thread calling
 * lethe_parallel_for on a busy pool, and a task that calls it from inside a
 * chunk, run their loop serially instead of waiting.
 *
 * lethe_pool_new also sets OpenBLAS to the pool's thread count (unless
 * OPENBLAS_NUM_THREADS is set): GEMMs run between parallel loops, when the
 * pool's workers are asleep, so both use the same cores in turn and a pool
 * of 1 thread really is single-threaded.
 */
#ifndef LETHE_THREADPOOL_H
#define LETHE_THREADPOOL_H

#include <stdint.h>

#include "lethe_abi.h"

typedef struct lethe_pool lethe_pool;

/* nthreads <= 0: the number of online CPUs. NULL (errno set) on failure. */
lethe_pool *lethe_pool_new(int nthreads);
void lethe_pool_free(lethe_pool *pool);
int lethe_pool_nthreads(const lethe_pool *pool);

/* The lethe_ctx.parallel_for of a context whose pool is a lethe_pool. */
void lethe_parallel_for(lethe_ctx *ctx, lethe_task_fn fn, void *closure, int64_t n, int64_t grain);

/* seed, counter 0, and parallel_for = lethe_parallel_for when pool is not
 * NULL (else NULL: generated code then runs every loop serially). */
void lethe_ctx_init(lethe_ctx *ctx, lethe_pool *pool, uint64_t seed);

#endif
