/* cuda_shim.h: compiles the CUDA source lethec generates as C for the host,
 *
 *     cc -std=gnu11 -shared -fPIC -include tests/cuda_shim.h -x c module.cu -lm
 *
 * so that the tests run the very kernels the GPU runs, without a GPU. The
 * generated code is written in the common subset of CUDA C++ and C; this
 * header supplies what only CUDA has:
 *
 *  - thread indices: blockIdx, threadIdx, blockDim, gridDim, set by
 *    lk_shim_exec as it runs a launch's threads, one at a time;
 *  - __shared__ is `static`: blocks run one after another, so the static
 *    arrays of a kernel are exactly one block's shared memory;
 *  - kernels that call __syncthreads (lethec marks them) run a block's
 *    threads as coroutines that switch at each barrier (and a divergent
 *    barrier stops the program); the others run their threads one after
 *    another;
 *  - every kernel gets `void NAME__host(grid, block, params)` with the
 *    driver's kernelParams convention (an array of pointers to the
 *    argument values), which the mock driver (tests/cuda_mock.c) calls from
 *    cuLaunchKernel.
 */
#ifndef LETHE_CUDA_SHIM_H
#define LETHE_CUDA_SHIM_H

#define LETHE_HOST_SHIM 1

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#define LK_KERNEL
#define LK_DEV static inline __attribute__((unused))
#define __shared__ static

typedef struct lk_dim3 {
    unsigned x, y, z;
} lk_dim3;

static lk_dim3 threadIdx, blockIdx, blockDim, gridDim;

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

/* Kernels with barriers: each thread of a block is a coroutine on this
 * thread; __syncthreads switches back to the scheduler, which resumes every
 * thread in turn until all have reached the barrier, then starts the next
 * round. A thread that returns while others wait at a barrier is a
 * divergent barrier (undefined on a GPU): the shim stops with a message.
 * On x86-64 a switch saves the callee-saved registers and swaps stack
 * pointers (swapcontext also saves the signal mask: a system call per
 * switch, and kernels with many barriers switch millions of times);
 * elsewhere it is ucontext. */
enum { LK_SHIM_STACK = 256 << 10 };

typedef struct lk_shim_state {
    void **sp;             /* per thread: its saved stack pointer */
    void *sched_sp;
    char *done;
    unsigned cur;
    lk_shim_thunk fn;
    void *const *params;
#if !defined(__x86_64__)
    ucontext_t sched, *ctx;
#endif
} lk_shim_state;
static lk_shim_state lk_shim;

#if defined(__x86_64__)
__attribute__((visibility("hidden"))) void lk_shim_switch(void **save, void *to);
__asm__(".text\n"
        ".globl lk_shim_switch\n"
        ".hidden lk_shim_switch\n"
        ".type lk_shim_switch, @function\n"
        "lk_shim_switch:\n"
        "    pushq %rbp\n    pushq %rbx\n    pushq %r12\n    pushq %r13\n    pushq %r14\n    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n    popq %r14\n    popq %r13\n    popq %r12\n    popq %rbx\n    popq %rbp\n"
        "    ret\n"
        ".size lk_shim_switch, .-lk_shim_switch\n");

static inline void __syncthreads(void) { lk_shim_switch(&lk_shim.sp[lk_shim.cur], lk_shim.sched_sp); }

static void lk_shim_start(void) {
    lk_shim.fn(lk_shim.params);
    lk_shim.done[lk_shim.cur] = 1;
    lk_shim_switch(&lk_shim.sp[lk_shim.cur], lk_shim.sched_sp);
    abort();   /* a finished thread is never resumed */
}

/* a stack whose first switch "returns" into lk_shim_start, aligned as a call */
static void lk_shim_init(unsigned t, char *stack) {
    void **sp = (void **)(((uintptr_t)(stack + LK_SHIM_STACK)) & ~(uintptr_t)15);
    *--sp = NULL;
    *--sp = (void *)(uintptr_t)lk_shim_start;
    for (int r = 0; r < 6; r++)
        *--sp = NULL;
    lk_shim.sp[t] = sp;
}

static void lk_shim_resume(unsigned t) { lk_shim_switch(&lk_shim.sched_sp, lk_shim.sp[t]); }
#else
static inline void __syncthreads(void) { swapcontext(&lk_shim.ctx[lk_shim.cur], &lk_shim.sched); }

static void lk_shim_coroutine(void) {
    lk_shim.fn(lk_shim.params);
    lk_shim.done[lk_shim.cur] = 1;
}

static void lk_shim_init(unsigned t, char *stack) {
    getcontext(&lk_shim.ctx[t]);
    lk_shim.ctx[t].uc_stack.ss_sp = stack;
    lk_shim.ctx[t].uc_stack.ss_size = LK_SHIM_STACK;
    lk_shim.ctx[t].uc_link = &lk_shim.sched;
    makecontext(&lk_shim.ctx[t], lk_shim_coroutine, 0);
}

static void lk_shim_resume(unsigned t) { swapcontext(&lk_shim.sched, &lk_shim.ctx[t]); }
#endif

static void lk_shim_block(unsigned block, char *stacks) {
    for (unsigned t = 0; t < block; t++) {
        lk_shim_init(t, stacks + (size_t)t * LK_SHIM_STACK);
        lk_shim.done[t] = 0;
    }
    for (unsigned finished = 0; finished < block;) {
        unsigned ended = 0;
        for (unsigned t = 0; t < block; t++) {
            if (lk_shim.done[t])
                continue;
            lk_shim.cur = t;
            threadIdx.x = t;
            lk_shim_resume(t);
            ended += lk_shim.done[t];
        }
        if (ended && finished + ended < block) {
            fprintf(stderr, "cuda_shim: divergent __syncthreads in block %u (%u of %u threads returned)\n", blockIdx.x,
                    finished + ended, block);
            abort();
        }
        finished += ended;
    }
}

static void lk_shim_exec(unsigned grid, unsigned block, int barriers, lk_shim_thunk fn, void *const *params) {
    gridDim.x = grid;
    blockDim.x = block;
    gridDim.y = gridDim.z = blockDim.y = blockDim.z = 1;
    threadIdx.y = threadIdx.z = blockIdx.y = blockIdx.z = 0;
    if (!barriers) {
        for (unsigned b = 0; b < grid; b++)
            for (unsigned t = 0; t < block; t++) {
                blockIdx.x = b;
                threadIdx.x = t;
                fn(params);
            }
        return;
    }
    lk_shim.fn = fn;
    lk_shim.params = params;
    lk_shim.sp = malloc(sizeof(void *) * block);
    lk_shim.done = malloc(block);
    char *stacks = malloc((size_t)block * LK_SHIM_STACK);
#if !defined(__x86_64__)
    lk_shim.ctx = malloc(sizeof(ucontext_t) * block);
    if (!lk_shim.ctx)
        stacks = NULL;
#endif
    if (!lk_shim.sp || !lk_shim.done || !stacks) {
        fprintf(stderr, "cuda_shim: out of memory for a block of %u threads\n", block);
        abort();
    }
    for (unsigned b = 0; b < grid; b++) {
        blockIdx.x = b;
        lk_shim_block(block, stacks);
    }
    free(stacks);
    free(lk_shim.done);
    free(lk_shim.sp);
#if !defined(__x86_64__)
    free(lk_shim.ctx);
#endif
}

#define LK_SHIM_ENTRY(name, barriers)                                                                      \
    void name##__host(unsigned grid, unsigned block, void *const *params);                                 \
    void name##__host(unsigned grid, unsigned block, void *const *params) {                                \
        lk_shim_exec(grid, block, barriers, name##__thunk, params);                                        \
    }

#endif
