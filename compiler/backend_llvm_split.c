/* backend_llvm_split.c: a program compiled as several LLVM modules at once,
 * and the objects linked into one output.
 *
 * Why: LLVM's optimisation and code generation are nearly all of lethec's
 * time (a ResNet-18 experiment: 24 of 25 s, bench/RESULTS.md "Compile
 * time"), and they run on one module on one thread. An LLVMContext may be
 * used by one thread at a time, so the kernels are built into nparts
 * partition modules, each with its own context and target machine, and the
 * modules are optimised and code-generated on a pool of threads. The entry
 * functions go to the partitions too (their glue, hundreds of closures and
 * calls in one function, costs LLVM more than one might think); the main
 * module keeps the descriptor and the kernel profile's table.
 *
 * The generated code is the same: kernel functions are hidden, noinline
 * globals in every mode (gen_kernel), a partition holds a kernel with
 * everything it calls, and a kernel goes to the partition that already has
 * its GEMM shapes, so each GEMM function keeps the callers it has in one
 * module. tests/compile_split.sh compares the machine code of every kernel,
 * task and GEMM with the one-module build's, function by function, and
 * test_compile_split.c the results, bit for bit; only the entry functions
 * (glue: closures and calls) differ.
 *
 * Determinism: which partition builds a kernel depends only on the program
 * (sizes are counted in LLVM instructions as built), and the objects are
 * linked in a fixed order, so the output is the same with any number of
 * threads.
 *
 * Threads: the workers call only LLVM (passes, code generation) and malloc;
 * nothing in them touches the compiler's arena, and errors are collected
 * per module and reported on the calling thread after the join.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend_llvm.h"
#include "stage_time.h"

extern char **environ;

typedef struct Part {
    LL ll;
    char *diag_errs;         /* the context's codegen errors (malloc'd) */
    long size;               /* LLVM instructions built so far */
    LLVMValueRef last_fn;    /* the module's last function when size was counted */
} Part;

typedef struct LLSplit {
    Part *parts;
    int n;
} LLSplit;

bool llsplit_begin(LL *ll, int nparts, char **err) {
    LLSplit *sp = xalloc(sizeof *sp);
    sp->parts = xalloc(sizeof(Part) * (size_t)nparts);
    sp->n = nparts;
    for (int i = 0; i < nparts; i++) {
        Part *pt = &sp->parts[i];
        if (!ll_init(&pt->ll, ll->opt, xfmt("lethe.part%d", i), &pt->diag_errs, err)) {
            for (int j = 0; j <= i; j++)
                ll_dispose(&sp->parts[j].ll);
            return false;
        }
    }
    ll->split = sp;
    return true;
}

/* does part define a generated GEMM that a statement of body calls? */
static bool shares_gemm(LL *part, const LProgram *p, LStmt *const *body, int n) {
    for (int i = 0; i < n; i++) {
        const LStmt *s = body[i];
        if (s->kind == LS_FOR && shares_gemm(part, p, s->body.data, s->body.len))
            return true;
        if (s->kind == LS_GEMM) {
            DType dt = p->bufs.data[s->gemm.c_buf].dtype;
            if (llg_supported(&s->gemm, dt) && llg_defined(part, &s->gemm, dt))
                return true;
        }
    }
    return false;
}

LL *llsplit_pick(LL *ll, const LProgram *p, const LKernel *k) {
    LLSplit *sp = ll->split;
    int best = 0;
    for (int i = 0; i < sp->n; i++) {
        if (k && shares_gemm(&sp->parts[i].ll, p, k->body.data, k->body.len))
            return &sp->parts[i].ll;
        if (sp->parts[i].size < sp->parts[best].size)
            best = i;
    }
    return &sp->parts[best].ll;
}

static long count_instructions(LLVMValueRef fn) {
    long n = 0;
    for (LLVMBasicBlockRef bb = LLVMGetFirstBasicBlock(fn); bb; bb = LLVMGetNextBasicBlock(bb))
        for (LLVMValueRef in = LLVMGetFirstInstruction(bb); in; in = LLVMGetNextInstruction(in))
            n++;
    return n;
}

LLVMValueRef llsplit_export(LL *ll, LL *part_ll, LLVMValueRef fn, LLVMTypeRef fnty_in_ll) {
    LLSplit *sp = ll->split;
    Part *pt = (Part *)((char *)part_ll - offsetof(Part, ll));
    /* the functions this kernel or entry added (LLVMAddFunction appends) */
    LLVMValueRef f = pt->last_fn ? LLVMGetNextFunction(pt->last_fn) : LLVMGetFirstFunction(part_ll->mod);
    for (; f; f = LLVMGetNextFunction(f)) {
        pt->size += count_instructions(f);
        pt->last_fn = f;
    }
    /* names are unique per program unless sanitize() made two entry names
     * equal; one module renamed them silently, two would clash */
    size_t len;
    const char *name = LLVMGetValueName2(fn, &len);
    if (LLVMGetNamedFunction(ll->mod, name)) {
        const char *fresh = xfmt("%s.p%d", name, (int)(pt - sp->parts));
        for (int i = 2; LLVMGetNamedFunction(ll->mod, fresh); i++)
            fresh = xfmt("%s.p%d.%d", name, (int)(pt - sp->parts), i);
        LLVMSetValueName2(fn, fresh, strlen(fresh));
    }
    LLVMSetLinkage(fn, LLVMExternalLinkage);
    LLVMSetVisibility(fn, LLVMHiddenVisibility);
    return ll_function_in(ll, fn, fnty_in_ll);
}

LLVMValueRef ll_function_in(LL *ll, LLVMValueRef fn, LLVMTypeRef fnty) {
    if (LLVMGetGlobalParent(fn) == ll->mod)
        return fn;
    const char *name = LLVMGetValueName(fn);
    LLVMValueRef decl = LLVMGetNamedFunction(ll->mod, name);
    if (!decl) {
        decl = LLVMAddFunction(ll->mod, name, fnty);
        LLVMSetVisibility(decl, LLVMHiddenVisibility);
        ll_fn_attr(ll, decl, "nounwind");
    }
    return decl;
}

/* ---------------------------------------------------------------------------
 * the pool */

typedef struct Job {
    LL *ll;
    LLVMMemoryBufferRef obj;
    char *err;               /* malloc'd */
    double opt_s, codegen_s; /* this thread's CPU time in each */
} Job;

typedef struct Pool {
    Job *jobs;
    int njobs;
    int next;                /* the next job to take (atomic) */
} Pool;

static double thread_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void compile_job(Job *j) {
    double t0 = thread_cpu_s();
    j->err = ll_run_passes(j->ll);
    double t1 = thread_cpu_s();
    j->opt_s = t1 - t0;
    if (j->err)
        return;
    char *msg = NULL;
    LLVMBool failed = LLVMTargetMachineEmitToMemoryBuffer(j->ll->tm, j->ll->mod, LLVMObjectFile, &msg, &j->obj);
    j->codegen_s = thread_cpu_s() - t1;
    if (failed) {
        if (asprintf(&j->err, "cannot generate code: %s", msg ? msg : "(no message)") < 0)
            j->err = strdup("cannot generate code");
        j->obj = NULL;
    }
    if (msg)
        LLVMDisposeMessage(msg);
}

static void *pool_worker(void *arg) {
    Pool *pool = arg;
    for (;;) {
        int i = __atomic_fetch_add(&pool->next, 1, __ATOMIC_RELAXED);
        if (i >= pool->njobs)
            return NULL;
        compile_job(&pool->jobs[i]);
    }
}

static int default_jobs(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

char *llsplit_finish(LL *ll, int jobs, EmitKind kind, const char *out_path, char **hint) {
    LLSplit *sp = ll->split;
    /* order[i]: the module of job i (0: the main one, 1 + j: partition j);
     * the biggest partitions first, so that the last jobs to start are
     * small ones, and the main module (descriptor, profile table) last.
     * Partitions that received nothing (small programs) are left out. */
    int *order = xalloc(sizeof(int) * (size_t)(sp->n + 1));
    int nj = 0;
    for (int i = 0; i < sp->n; i++) {
        if (!sp->parts[i].size)
            continue;
        int j = nj++;
        for (; j > 0 && sp->parts[order[j - 1] - 1].size < sp->parts[i].size; j--)
            order[j] = order[j - 1];
        order[j] = 1 + i;
    }
    order[nj++] = 0;
    Job *jobs_by_size = xalloc(sizeof(Job) * (size_t)nj);
    for (int i = 0; i < nj; i++)
        jobs_by_size[i].ll = order[i] ? &sp->parts[order[i] - 1].ll : ll;
    for (int i = 0; i < sp->n; i++)
        ll_verify(&sp->parts[i].ll);

    stage_push(ST_LLVM_PARALLEL);
    Pool pool = {.jobs = jobs_by_size, .njobs = nj};
    int nthreads = jobs > 0 ? jobs : default_jobs();
    if (nthreads > nj)
        nthreads = nj;
    pthread_t *tid = xalloc(sizeof(pthread_t) * (size_t)nthreads);
    int started = 0;
    for (int t = 1; t < nthreads; t++)
        if (pthread_create(&tid[t], NULL, pool_worker, &pool) == 0)
            started = t;
        else
            break;
    pool_worker(&pool);   /* this thread is a worker too */
    for (int t = 1; t <= started; t++)
        pthread_join(tid[t], NULL);
    stage_pop();

    /* objects in module order: main, then the partitions */
    LLVMMemoryBufferRef *by_module = xalloc(sizeof(LLVMMemoryBufferRef) * (size_t)(sp->n + 1));
    char *err = NULL;
    for (int i = 0; i < nj; i++) {
        Job *j = &jobs_by_size[i];
        stage_detail(ST_LLVM_OPT, j->opt_s);
        stage_detail(ST_CODEGEN, j->codegen_s);
        if (time_passes)
            fprintf(stderr, "lethec: module %-12s optimisation %6.2f s, code generation %6.2f s (CPU)%s\n",
                    order[i] ? xfmt("part%d", order[i] - 1) : "main", j->opt_s, j->codegen_s,
                    order[i] ? xfmt(", %ld LLVM instructions built", sp->parts[order[i] - 1].size) : "");
        by_module[order[i]] = j->obj;
        if (j->err && !err)
            err = xfmt("%s", j->err);
        free(j->err);
    }
    for (int i = 0; i < sp->n && !err; i++)
        if (sp->parts[i].diag_errs)
            err = xfmt("LLVM: %s", sp->parts[i].diag_errs);
    LLVMMemoryBufferRef *objs = xalloc(sizeof(LLVMMemoryBufferRef) * (size_t)nj);
    int nobj = 0;
    for (int m = 0; m <= sp->n; m++)
        if (by_module[m])
            objs[nobj++] = by_module[m];
    if (!err)
        err = ll_link_objects(objs, nobj, kind, out_path, hint);
    for (int i = 0; i < nobj; i++)
        LLVMDisposeMemoryBuffer(objs[i]);
    for (int i = 0; i < sp->n; i++) {
        ll_dispose(&sp->parts[i].ll);
        free(sp->parts[i].diag_errs);
    }
    ll->split = NULL;
    return err;
}

/* ---------------------------------------------------------------------------
 * linking */

/* Runs argv, waits; returns a description of the failure or NULL. */
static char *run_command(char *const *argv) {
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], NULL, NULL, argv, environ);
    if (rc != 0)
        return xfmt("cannot run '%s': %s", argv[0], strerror(rc));
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return xfmt("waiting for '%s': %s", argv[0], strerror(errno));
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return NULL;
    if (WIFEXITED(status))
        return xfmt("'%s' exited with status %d", argv[0], WEXITSTATUS(status));
    return xfmt("'%s' was killed by signal %d", argv[0], WTERMSIG(status));
}

static char *write_all(int fd, const char *data, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, data, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return xstrdup(strerror(errno));
        data += w;
        n -= (size_t)w;
    }
    return NULL;
}

char *ll_link_objects(LLVMMemoryBufferRef *objs, int n, EmitKind kind, const char *out_path, char **hint) {
    const char *dir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char **tmp = xalloc(sizeof(char *) * (size_t)n);
    char *err = NULL;
    int made = 0;
    for (; made < n && !err; made++) {
        /* pid + a per-process sequence + O_EXCL: never another run's file */
        static unsigned seq;
        int fd = -1;
        for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
            tmp[made] = xfmt("%s/lethec-%ld-%u.o", dir, (long)getpid(), __atomic_fetch_add(&seq, 1, __ATOMIC_RELAXED));
            fd = open(tmp[made], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
            if (fd < 0 && errno != EEXIST)
                break;
        }
        if (fd < 0) {
            *hint = "set TMPDIR to a writable directory";
            err = xfmt("cannot create a temporary file in %s: %s", dir, strerror(errno));
            break;
        }
        char *werr = write_all(fd, LLVMGetBufferStart(objs[made]), LLVMGetBufferSize(objs[made]));
        if (close(fd) != 0 && !werr)
            werr = xstrdup(strerror(errno));
        if (werr)
            err = xfmt("cannot write %s: %s", tmp[made], werr);
    }
    /* the output under a temporary name beside it, renamed when complete */
    char *partial = xfmt("%s.%d.tmp", out_path, (int)getpid());
    if (!err) {
        char **argv = xalloc(sizeof(char *) * (size_t)(n + 10));
        int a = 0;
        argv[a++] = "cc";
        /* --as-needed: only objects that call BLAS or libm depend on them
         * (a CUDA program's host object calls neither) */
        if (kind == EMIT_SO)
            argv[a++] = "-shared";
        else {
            argv[a++] = "-r";
            argv[a++] = "-nostdlib";
        }
        argv[a++] = "-o";
        argv[a++] = partial;
        for (int i = 0; i < n; i++)
            argv[a++] = tmp[i];
        if (kind == EMIT_SO) {
            argv[a++] = "-Wl,--as-needed";
            argv[a++] = "-lopenblas";
            argv[a++] = "-lm";
        }
        argv[a] = NULL;
        stage_push(ST_LINK);
        err = run_command(argv);
        stage_pop();
        if (err) {
            *hint = kind == EMIT_SO ? "the shared object is linked by running `cc -shared ... -lopenblas -lm`: install a C "
                                      "compiler and libopenblas-dev, or use --emit=obj and link the object yourself"
                                    : "the partition objects are joined by `cc -r`: install a C compiler, or use "
                                      "--split-modules=1";
            err = xfmt("cannot link %s: %s", out_path, err);
        } else if (rename(partial, out_path) != 0) {
            err = xfmt("cannot write %s: %s", out_path, strerror(errno));
        }
        if (err)
            unlink(partial);
    }
    for (int i = 0; i < made; i++)
        unlink(tmp[i]);
    return err;
}
