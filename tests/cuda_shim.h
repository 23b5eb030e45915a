/* cuda_shim.h: compiles the CUDA source lethec generates as C for the host,
 *
 *     cc -std=gnu11 -shared -fPIC -include tests/cuda_shim.h -x c module.cu -lm -lpthread
 *
 * so that the tests run the very kernels the GPU runs, without a GPU. The
 * generated code is written in the common subset of CUDA C++ and C; this
 * header supplies what only CUDA has:
 *
 *  - thread indices: blockIdx / threadIdx are thread-local, blockDim /
 *    gridDim shared, set by lk_shim_exec for each launch;
 *  - __shared__ is `static`: blocks run one after another, so the static
 *    arrays of a kernel are exactly one block's shared memory;
 *  - kernels that call __syncthreads (lethec marks them) run each block's
 *    threads as real threads meeting at a pthread barrier; the others run
 *    their threads one after another on the calling thread;
 *  - every kernel gets `void NAME__host(grid, block, params)` with the
 *    driver's kernelParams convention (an array of pointers to the
 *    argument values), which the mock driver (tests/cuda_mock.c) calls from
 *    cuLaunchKernel.
 */
#ifndef LETHE_CUDA_SHIM_H
#define LETHE_CUDA_SHIM_H

#define LETHE_HOST_SHIM 1

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LK_KERNEL
#define LK_DEV static inline __attribute__((unused))
#define __shared__ static

typedef struct lk_dim3 {
    unsigned x, y, z;
} lk_dim3;

static _Thread_local lk_dim3 threadIdx, blockIdx;
static lk_dim3 blockDim, gridDim;
static pthread_barrier_t lk_shim_barrier;

static inline void __syncthreads(void) { pthread_barrier_wait(&lk_shim_barrier); }

static inline float __int_as_float(int x) {
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

static inline double __longlong_as_double(long long x) {
    double d;
    memcpy(&d, &x, sizeof d);
    return d;
}

typedef void (*lk_shim_thunk)(void *const *);

typedef struct lk_shim_thread {
    lk_shim_thunk fn;
    void *const *params;
    unsigned block, thread;
} lk_shim_thread;

static void *lk_shim_run_thread(void *arg) {
    lk_shim_thread *t = arg;
    blockIdx.x = t->block;
    threadIdx.x = t->thread;
    blockIdx.y = blockIdx.z = threadIdx.y = threadIdx.z = 0;
    t->fn(t->params);
    return NULL;
}

static void lk_shim_exec(unsigned grid, unsigned block, int barriers, lk_shim_thunk fn, void *const *params) {
    gridDim.x = grid;
    blockDim.x = block;
    gridDim.y = gridDim.z = blockDim.y = blockDim.z = 1;
    if (!barriers) {
        for (unsigned b = 0; b < grid; b++)
            for (unsigned t = 0; t < block; t++) {
                blockIdx.x = b;
                threadIdx.x = t;
                fn(params);
            }
        return;
    }
    pthread_t *th = malloc(sizeof(pthread_t) * block);
    lk_shim_thread *arg = malloc(sizeof(lk_shim_thread) * block);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 20);
    for (unsigned b = 0; b < grid && th && arg; b++) {
        pthread_barrier_init(&lk_shim_barrier, NULL, block);
        for (unsigned t = 0; t < block; t++) {
            arg[t].fn = fn;
            arg[t].params = params;
            arg[t].block = b;
            arg[t].thread = t;
            if (pthread_create(&th[t], &attr, lk_shim_run_thread, &arg[t]) != 0) {
                fprintf(stderr, "cuda_shim: cannot start thread %u of block %u\n", t, b);
                abort();
            }
        }
        for (unsigned t = 0; t < block; t++)
            pthread_join(th[t], NULL);
        pthread_barrier_destroy(&lk_shim_barrier);
    }
    pthread_attr_destroy(&attr);
    free(th);
    free(arg);
}

#define LK_SHIM_ENTRY(name, barriers)                                                                      \
    void name##__host(unsigned grid, unsigned block, void *const *params);                                 \
    void name##__host(unsigned grid, unsigned block, void *const *params) {                                \
        lk_shim_exec(grid, block, barriers, name##__thunk, params);                                        \
    }

#endif
