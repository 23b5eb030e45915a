/* threadpool.c: see threadpool.h.
 *
 * A loop is split into chunks, and every thread taking part (the caller and
 * the workers it woke) takes the next chunk from a shared counter until none
 * are left: dynamic scheduling, so that a thread another process has
 * preempted on a shared machine does not hold the loop up while the others
 * idle (static halves made a 2-thread ResNet step slower than 1 thread on a
 * busy 2-core machine, bench/RESULTS.md). Each worker owns a slot whose
 * sequence number the caller bumps to wake it; the loop's description is
 * written before the bump, so a worker that reads its new sequence number
 * sees it. Completion is a count of woken workers still running.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "threadpool.h"

/* OpenBLAS is linked into lethe binaries, but the pool does not require it. */
extern void openblas_set_num_threads(int n) __attribute__((weak));

enum { MAX_THREADS = 512 };
static const int64_t SPIN_NS = 30000;   /* ~ the gap between two kernels of a step */

typedef struct slot {
    _Atomic uint64_t seq;
    pthread_cond_t cv;
} slot;

struct lethe_pool {
    int nthreads;            /* including the calling thread */
    pthread_t *threads;      /* nthreads - 1 workers */
    slot *slots;             /* one per worker */
    pthread_mutex_t mu;      /* guards sleeping, stop and the condition variables */
    pthread_cond_t done;
    pthread_mutex_t busy;    /* held by the thread running a loop on the pool */
    _Atomic int pending;     /* woken workers not yet finished */
    bool stop;
    /* the loop being run: chunks [0, nchunks) of [0, n), next to take */
    lethe_task_fn fn;
    void *closure;
    int64_t n, nchunks;
    _Atomic int64_t next;
};

typedef struct worker_arg { lethe_pool *pool; int index; } worker_arg;

static _Thread_local bool in_worker;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spins until *v != old or SPIN_NS pass; returns the last value read. */
static uint64_t spin_while_equal(_Atomic uint64_t *v, uint64_t old) {
    int64_t t0 = now_ns();
    for (unsigned i = 1;; i++) {
        uint64_t x = atomic_load_explicit(v, memory_order_acquire);
        if (x != old)
            return x;
        cpu_relax();
        if (i % 64 == 0 && now_ns() - t0 > SPIN_NS)
            return x;
    }
}

/* chunk c of n split k ways: [c q + min(c, r), ...) with q = n / k, r = n % k,
 * so sizes differ by at most one */
static int64_t chunk_begin(int64_t n, int64_t k, int64_t c) {
    int64_t q = n / k, r = n % k;
    return c * q + (c < r ? c : r);
}

/* Take chunks until none are left. */
static void run_chunks(lethe_pool *p) {
    for (;;) {
        int64_t c = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (c >= p->nchunks)
            return;
        p->fn(p->closure, chunk_begin(p->n, p->nchunks, c), chunk_begin(p->n, p->nchunks, c + 1));
    }
}

static void *worker_main(void *arg) {
    worker_arg wa = *(worker_arg *)arg;
    free(arg);
    lethe_pool *p = wa.pool;
    slot *s = &p->slots[wa.index];
    in_worker = true;
    uint64_t seen = 0;
    for (;;) {
        uint64_t seq = spin_while_equal(&s->seq, seen);
        if (seq == seen) {
            pthread_mutex_lock(&p->mu);
            while ((seq = atomic_load_explicit(&s->seq, memory_order_acquire)) == seen && !p->stop)
                pthread_cond_wait(&s->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
            if (seq == seen)
                return NULL;   /* stop */
        }
        seen = seq;
        run_chunks(p);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

lethe_pool *lethe_pool_new(int nthreads) {
    if (nthreads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = n > 0 ? (int)n : 1;
    }
    if (nthreads > MAX_THREADS)
        nthreads = MAX_THREADS;
    lethe_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->nthreads = nthreads;
    p->threads = calloc((size_t)nthreads, sizeof *p->threads);
    p->slots = calloc((size_t)nthreads, sizeof *p->slots);
    if (!p->threads || !p->slots) {
        free(p->threads);
        free(p->slots);
        free(p);
        errno = ENOMEM;
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->busy, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 0; i < nthreads - 1; i++)
        pthread_cond_init(&p->slots[i].cv, NULL);
    for (int i = 0; i < nthreads - 1; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa)
            *wa = (worker_arg){p, i};
        int rc = wa ? pthread_create(&p->threads[i], NULL, worker_main, wa) : ENOMEM;
        if (rc != 0) {
            free(wa);
            p->nthreads = i + 1;   /* stop and join the ones started */
            lethe_pool_free(p);
            errno = rc;
            return NULL;
        }
    }
    if (openblas_set_num_threads && !getenv("OPENBLAS_NUM_THREADS"))
        openblas_set_num_threads(nthreads);
    return p;
}

void lethe_pool_free(lethe_pool *p) {
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    for (int i = 0; i < p->nthreads - 1; i++)
        pthread_cond_signal(&p->slots[i].cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads - 1; i++)
        pthread_join(p->threads[i], NULL);
    for (int i = 0; i < p->nthreads - 1; i++)
        pthread_cond_destroy(&p->slots[i].cv);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->busy);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p->slots);
    free(p);
}

int lethe_pool_nthreads(const lethe_pool *p) { return p ? p->nthreads : 1; }

void lethe_parallel_for(lethe_ctx *ctx, lethe_task_fn fn, void *closure, int64_t n, int64_t grain) {
    if (n <= 0)
        return;
    lethe_pool *p = ctx ? ctx->pool : NULL;
    if (grain < 1)
        grain = 1;
    /* up to 4 chunks per thread: with 2 threads a preempted one leaves at
     * most an eighth of the loop to wait for; each chunk has >= grain
     * iterations */
    int64_t nchunks = (n + grain - 1) / grain;
    if (p && nchunks > 4 * (int64_t)p->nthreads)
        nchunks = 4 * (int64_t)p->nthreads;
    if (!p || nchunks <= 1 || in_worker || pthread_mutex_trylock(&p->busy) != 0) {
        fn(closure, 0, n);
        return;
    }
    int nw = nchunks - 1 < p->nthreads - 1 ? (int)nchunks - 1 : p->nthreads - 1;
    p->fn = fn;
    p->closure = closure;
    p->n = n;
    p->nchunks = nchunks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->pending, nw, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    for (int w = 0; w < nw; w++) {
        atomic_fetch_add_explicit(&p->slots[w].seq, 1, memory_order_release);
        pthread_cond_signal(&p->slots[w].cv);
    }
    pthread_mutex_unlock(&p->mu);
    run_chunks(p);
    int64_t t0 = now_ns();
    for (unsigned i = 1; atomic_load_explicit(&p->pending, memory_order_acquire) != 0; i++) {
        cpu_relax();
        if (i % 64 == 0 && now_ns() - t0 > SPIN_NS) {
            pthread_mutex_lock(&p->mu);
            while (atomic_load_explicit(&p->pending, memory_order_acquire) != 0)
                pthread_cond_wait(&p->done, &p->mu);
            pthread_mutex_unlock(&p->mu);
            break;
        }
    }
    pthread_mutex_unlock(&p->busy);
}

void lethe_ctx_init(lethe_ctx *ctx, lethe_pool *pool, uint64_t seed) {
    memset(ctx, 0, sizeof *ctx);
    ctx->seed = seed;
    ctx->parallel_for = pool ? lethe_parallel_for : NULL;
    ctx->pool = pool;
    ctx->nthreads = lethe_pool_nthreads(pool);
}
