/* test_data_parallel.c: lethec --world=N and lethe_ctx.allreduce without MPI
 * (docs/design.md, "Data-parallel training"; tests/mpi.sh runs the real
 * thing under mpirun where it is installed).
 *
 * tests/lth/data_parallel.lth (an MLP, momentum SGD with weight decay, batch
 * 8) is compiled for one process and with --world=2 (batch 4 per rank). Two
 * threads stand for the ranks: each calls the --world=2 step on its half of
 * the batch with a hook that averages the two threads' buffers (a barrier
 * between them). After three steps both replicas equal the one-process
 * program's parameters and momentum at batch 8 within float tolerance, and
 * each other exactly. The hook is called once per parameter tensor per step,
 * with the tensor's size. Without a hook the --world=2 program trains each
 * half on its own, and the parameters differ: the check can fail. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define STEPS 3
#define FULL 8
#define HALF 4
#define FEAT 12

static const char *const params[] = {"m.fc1.w", "m.fc1.b", "m.fc2.w", "m.fc2.b",
                                     "v.fc1.w", "v.fc1.b", "v.fc2.w", "v.fc2.b"};
enum { NPARAM = 4, NTENSOR = 8 };

/* two ranks in one process */
static pthread_barrier_t meet;
static lethe_ctx rank_ctx[2];
static float *slot[2];
static int64_t calls[2], elements[2];

static void thread_allreduce(lethe_ctx *ctx, void *data, int64_t n, int32_t dtype) {
    int rank = ctx == &rank_ctx[1];
    calls[rank]++;
    elements[rank] += dtype == LETHE_F32 ? n : -1;
    slot[rank] = data;
    pthread_barrier_wait(&meet);
    if (rank == 0)
        for (int64_t i = 0; i < n; i++)
            slot[0][i] = slot[1][i] = (slot[0][i] + slot[1][i]) * 0.5f;
    pthread_barrier_wait(&meet);
}

static float batch_x[STEPS][FULL * FEAT];
static int32_t batch_y[STEPS][FULL];

/* Deterministic weights and batches (the same for every program). */
static void init_frame(th_frame *f) {
    for (int t = 0; t < NPARAM; t++) {
        int a = th_arg(f->entry, params[t]);
        float *p = f->args[a];
        int64_t n = th_arg_numel(&f->entry->args[a]);
        for (int64_t i = 0; i < n; i++)
            p[i] = 0.3f * sinf(0.7f * (float)i + (float)t);
    }
}

/* `steps` calls on samples [first, first + rows) of each step's batch */
static int train(th_frame *f, lethe_ctx *ctx, int first, int rows) {
    float *x = th_f32(f, "batch.x");
    int32_t *y = f->args[th_arg(f->entry, "batch.y")];
    for (int s = 0; s < STEPS; s++) {
        memcpy(x, batch_x[s] + first * FEAT, sizeof(float) * (size_t)(rows * FEAT));
        memcpy(y, batch_y[s] + first, sizeof(int32_t) * (size_t)rows);
        if (ctx)
            ctx->counter = (uint64_t)s;
        int rc = th_call(f, ctx);
        if (rc)
            return rc;
    }
    return 0;
}

typedef struct Rank {
    th_frame *f;
    int rank, rc;
} Rank;

static void *rank_main(void *arg) {
    Rank *r = arg;
    r->rc = train(r->f, &rank_ctx[r->rank], r->rank * HALF, HALF);
    return NULL;
}

/* largest |a - b| over the parameters and momenta, relative to |a|'s largest */
static double distance(th_frame *a, th_frame *b) {
    double worst = 0;
    for (int t = 0; t < NTENSOR; t++) {
        int ia = th_arg(a->entry, params[t]), ib = th_arg(b->entry, params[t]);
        const float *p = a->args[ia], *q = b->args[ib];
        int64_t n = th_arg_numel(&a->entry->args[ia]);
        double scale = 1e-12, diff = 0;
        for (int64_t i = 0; i < n; i++) {
            scale = fmax(scale, fabs(p[i]));
            diff = fmax(diff, fabs((double)p[i] - q[i]));
        }
        worst = fmax(worst, diff / scale);
    }
    return worst;
}

int main(void) {
    char *err = NULL;
    const lethe_program *one = th_compile_file("tests/lth/data_parallel.lth", "", &err);
    const lethe_program *two = one ? th_compile_file("tests/lth/data_parallel.lth", "--world=2", &err) : NULL;
    if (!one || !two) {
        th_fail("compile", "%s", err ? err : "?");
        return th_exit();
    }
    const lethe_entry *e1 = th_entry(one, "train"), *e2 = th_entry(two, "train");
    if (!th_check(e1 && e2, "entries", "no train entry") ||
        !th_check(e1->args[th_arg(e1, "batch.x")].shape[0] == FULL && e2->args[th_arg(e2, "batch.x")].shape[0] == HALF,
                  "world_2_halves_the_batch", "batch.x rows %lld and %lld", (long long)e1->args[th_arg(e1, "batch.x")].shape[0],
                  (long long)e2->args[th_arg(e2, "batch.x")].shape[0]))
        return th_exit();
    for (int s = 0; s < STEPS; s++)
        for (int i = 0; i < FULL; i++) {
            batch_y[s][i] = (i * 7 + s) % 3;
            for (int j = 0; j < FEAT; j++)
                batch_x[s][i * FEAT + j] = cosf(0.37f * (float)(i * FEAT + j) + (float)s) + 0.5f * (float)batch_y[s][i] * (j % 3 == batch_y[s][i]);
        }

    /* one process at batch 8 */
    th_frame *ref = th_frame_new(e1);
    init_frame(ref);
    int rc = train(ref, NULL, 0, FULL);
    th_check(rc == 0, "one_process_steps", "rc %d", rc);

    /* two "ranks" at batch 4 each, averaging through the hook */
    pthread_barrier_init(&meet, NULL, 2);
    Rank ranks[2];
    pthread_t th[2];
    for (int k = 0; k < 2; k++) {
        ranks[k] = (Rank){th_frame_new(e2), k, 0};
        init_frame(ranks[k].f);
        rank_ctx[k] = (lethe_ctx){.allreduce = thread_allreduce};
        pthread_create(&th[k], NULL, rank_main, &ranks[k]);
    }
    for (int k = 0; k < 2; k++)
        pthread_join(th[k], NULL);
    pthread_barrier_destroy(&meet);
    th_check(ranks[0].rc == 0 && ranks[1].rc == 0, "ranks_steps", "rc %d %d", ranks[0].rc, ranks[1].rc);
    int64_t nparams = 0;
    for (int t = 0; t < NPARAM; t++)
        nparams += th_arg_numel(&e2->args[th_arg(e2, params[t])]);
    th_check(calls[0] == STEPS * NPARAM && calls[1] == calls[0] && elements[0] == STEPS * nparams && elements[1] == elements[0],
             "hook_once_per_gradient", "calls %lld %lld (want %d), f32 elements %lld (want %lld)", (long long)calls[0],
             (long long)calls[1], STEPS * NPARAM, (long long)elements[0], (long long)(STEPS * nparams));
    double d01 = distance(ranks[0].f, ranks[1].f), d = distance(ref, ranks[0].f);
    th_check(d01 == 0, "replicas_equal", "rank 0 and rank 1 differ by %g", d01);
    th_check(d < 1e-5, "two_ranks_equal_one_process", "largest relative difference %g", d);

    /* without the hook each half trains alone: far from the batch-8 model */
    th_frame *alone = th_frame_new(e2);
    init_frame(alone);
    lethe_ctx none = {0};
    rc = train(alone, &none, 0, HALF);
    double da = distance(ref, alone);
    printf("# after %d steps: two ranks vs one process %.2g, one half alone %.2g (relative)\n", STEPS, d, da);
    th_check(rc == 0 && da > 100 * d && da > 1e-4, "without_hook_differs", "relative difference %g (with the hook %g)", da, d);

    th_frame_free(alone);
    th_frame_free(ranks[0].f);
    th_frame_free(ranks[1].f);
    th_frame_free(ref);
    return th_exit();
}
