/* device_cuda.c: runs programs compiled with `lethec --target=cuda` (their
 * kernels and launch lists, runtime/lethe_abi.h) on one GPU through the
 * CUDA driver API, loaded with dlopen (device_cuda.h, docs/cuda.md).
 *
 * Memory.
 *   arena    one allocation holding the largest device workspace the memory
 *            plans of the entries run so far need, then the staging space of
 *            one call's inputs and outputs; it grows (between calls) when a
 *            later entry needs more.
 *   mirrors  PARAM, BUFFER and STATE tensors get a device copy the first
 *            time an entry names them (uploaded if the entry reads them) and
 *            keep it across calls; sync() copies the written ones back and
 *            forgets them all. So a training loop copies only its batch in
 *            and its loss out per step. Mirrors are keyed by host address
 *            and size; the host must not change or free a mirrored tensor
 *            before sync() (runtime/run.c syncs at the end of every stage).
 *   others   INPUT and SCALAR arguments are uploaded, OUTPUT ones downloaded,
 *            on every call, through the staging space.
 *
 * Kernels. A program's modules are loaded on its first call: the embedded
 * CUBIN when it was built for this GPU's architecture and the driver takes
 * it, else a CUBIN from the kernel cache ($LETHE_CACHE/cuda, keyed by module
 * source, NVRTC options, NVRTC version and architecture; written
 * atomically, checked by a SHA-256 header on reading), else one compiled
 * now by NVRTC (the modules on all cores). GEMMs go to
 * cuBLAS when it loads (row-major products as the transposed column-major
 * ones), else to the generated tiled kernel, which also runs products that
 * accumulate into one C.
 *
 * Every driver and cuBLAS call is checked: a failure prints the call, its
 * file:line, the CUDA error and a hint, and the entry returns non-zero.
 * Launches are asynchronous, so a kernel's own fault surfaces at the next
 * synchronization; LETHE_CUDA_SYNC=1 synchronizes after each launch and
 * names the kernel.
 *
 * Two opt-in switches for measuring: LETHE_CUDA_TF32=1 lets cuBLAS's FP32
 * GEMMs use TF32 tensor cores (products with a 10-bit mantissa: results
 * leave the f32 tolerances of the CPU comparison, so it is off by default);
 * LETHE_CUDA_PROFILE=1 waits after every launch and copy, times each on the
 * host clock and prints the totals by kernel (GEMMs by route and shape) to
 * stderr when the device closes. Launch overhead (microseconds) is in every
 * row, so the table ranks kernels rather than timing them exactly.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cuda_min.h"
#include "device_cuda.h"
#include "fsutil.h"
#include "lethe.h"

#define X(name, sym, ret, params) typedef ret(*name##_fn) params;
CUDA_DRIVER_FUNCTIONS(X)
CUBLAS_FUNCTIONS(X)
#undef X

typedef struct Driver {
#define X(name, sym, ret, params) name##_fn name;
    CUDA_DRIVER_FUNCTIONS(X)
#undef X
} Driver;

typedef struct Blas {
#define X(name, sym, ret, params) name##_fn name;
    CUBLAS_FUNCTIONS(X)
#undef X
} Blas;

typedef struct Mirror {
    const void *host;      /* NULL: empty slot */
    size_t bytes;
    CUdeviceptr dev;
    int dirty;
} Mirror;

typedef struct Loaded {
    const lethe_cuda_program *prog;
    CUmodule *mods;
    CUfunction *fns;
} Loaded;

/* one row of LETHE_CUDA_PROFILE's table */
typedef struct ProfRow {
    char name[112];
    double seconds;
    long calls;
} ProfRow;

typedef struct Dev {
    lethe_device pub;
    void *lib;
    Driver cu;
    CUdevice dev;
    CUcontext ctx;
    CUstream stream;
    int visible;           /* GPUs the driver shows this process */
    lethe_cuda_allreduce_fn allreduce;   /* ALLREDUCE launches; NULL: one process */
    void *allreduce_state;
    char arch[16], name[300];
    int sync_each;
    int profile;           /* LETHE_CUDA_PROFILE */
    ProfRow *prof;
    int nprof, prof_cap;
    /* cuBLAS: 0 not tried yet, 1 ready, -1 unavailable */
    int blas_state;
    void *blas_lib;
    Blas blas;
    cublasHandle_t blas_h;
    lethe_nvrtc *nv;
    int nv_tried;
    CUdeviceptr arena;
    size_t arena_bytes;
    CUdeviceptr scratch;   /* partial sums of split GEMMs (run_gemm) */
    size_t scratch_bytes;
    Mirror *mirror;        /* open addressing by host address */
    int mirror_cap, mirror_len;
    Loaded *loaded;
    int nloaded;
    /* per call */
    CUdeviceptr *argp;
    int argp_cap;
    uint64_t *pvals;
    void **pptrs;
    int pcap;
} Dev;

/* ---------------------------------------------------------------------------
 * errors */

static const char *hint_for(CUresult rc) {
    switch (rc) {
    case CUDA_ERROR_OUT_OF_MEMORY:
        return "the GPU is out of memory: use a smaller batch, or free the GPU (nvidia-smi lists its processes)";
    case CUDA_ERROR_STUB_LIBRARY:
        return "this libcuda is the toolkit's stub: point LETHE_LIBCUDA at the driver's libcuda.so.1";
    case CUDA_ERROR_INSUFFICIENT_DRIVER: return "the NVIDIA driver is older than this CUDA: update the driver";
    case CUDA_ERROR_NO_DEVICE: return "no GPU is visible: check nvidia-smi and CUDA_VISIBLE_DEVICES";
    case CUDA_ERROR_INVALID_IMAGE:
    case CUDA_ERROR_NO_BINARY_FOR_GPU:
    case CUDA_ERROR_INVALID_PTX:
    case CUDA_ERROR_UNSUPPORTED_PTX_VERSION:
        return "the kernels were built for another GPU or a newer driver: recompile with lethec --arch=sm_XX for this "
               "GPU, or install NVRTC here so that Lethe compiles them itself";
    case CUDA_ERROR_ILLEGAL_ADDRESS:
    case CUDA_ERROR_LAUNCH_FAILED:
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES:
        return "a generated kernel failed: run again with LETHE_CUDA_SYNC=1 to name it, and report it with the "
               "program (lethec --target=cuda --emit=cu writes its source)";
    default: return NULL;
    }
}

static int cu_check(Dev *d, CUresult rc, const char *call, const char *file, int line, const char *hint) {
    if (rc == CUDA_SUCCESS)
        return 0;
    const char *name = NULL, *text = NULL;
    if (d->cu.cuGetErrorName)
        d->cu.cuGetErrorName(rc, &name);
    if (d->cu.cuGetErrorString)
        d->cu.cuGetErrorString(rc, &text);
    fprintf(stderr, "lethe: CUDA error %d (%s: %s) at %s:%d in %s\n", rc, name ? name : "?", text ? text : "?", file, line,
            call);
    const char *h = hint ? hint : hint_for(rc);
    if (h)
        fprintf(stderr, "---> HINT: %s\n", h);
    return -1;
}

/* evaluates to 0, or to -1 after printing the failure */
#define CU(d, call, hint) cu_check((d), (call), #call, __FILE__, __LINE__, (hint))

static int fail(const char *file, int line, const char *hint, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(const char *file, int line, const char *hint, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "lethe: CUDA error at %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    if (hint)
        fprintf(stderr, "---> HINT: %s\n", hint);
    return -1;
}
#define FAIL(hint, ...) fail(__FILE__, __LINE__, (hint), __VA_ARGS__)

/* ---------------------------------------------------------------------------
 * memory */

static int ensure_arena(Dev *d, size_t bytes) {
    if (bytes <= d->arena_bytes)
        return 0;
    if (d->arena) {
        if (CU(d, d->cu.cuStreamSynchronize(d->stream), NULL) || CU(d, d->cu.cuMemFree(d->arena), NULL))
            return -1;
        d->arena = 0;
        d->arena_bytes = 0;
    }
    /* room for a slightly larger plan next time, if the GPU has it */
    size_t want = bytes + bytes / 4;
    if (d->cu.cuMemAlloc(&d->arena, want) != CUDA_SUCCESS) {
        want = bytes;
        char hint[200];
        snprintf(hint, sizeof hint, "the entry needs %zu MiB of device workspace and staging: use a smaller batch, or "
                 "free the GPU (nvidia-smi lists its processes)", bytes >> 20);
        if (CU(d, d->cu.cuMemAlloc(&d->arena, want), hint))
            return -1;
    }
    d->arena_bytes = want;
    return 0;
}

static unsigned mirror_hash(const void *p, int cap) { return (unsigned)(((uintptr_t)p >> 4) * 2654435761u) & (unsigned)(cap - 1); }

static Mirror *mirror_find(Dev *d, const void *host, size_t bytes) {
    if (!d->mirror_cap)
        return NULL;
    for (unsigned h = mirror_hash(host, d->mirror_cap); d->mirror[h].host; h = (h + 1) & (unsigned)(d->mirror_cap - 1))
        if (d->mirror[h].host == host && d->mirror[h].bytes == bytes)
            return &d->mirror[h];
    return NULL;
}

static Mirror *mirror_add(Dev *d, const void *host, size_t bytes) {
    if (2 * (d->mirror_len + 1) > d->mirror_cap) {
        Mirror *old = d->mirror;
        int oc = d->mirror_cap, nc = oc ? 2 * oc : 256;
        Mirror *m = calloc((size_t)nc, sizeof *m);
        if (!m)
            return NULL;
        d->mirror = m;
        d->mirror_cap = nc;
        for (int i = 0; i < oc; i++)
            if (old[i].host) {
                unsigned h = mirror_hash(old[i].host, nc);
                while (m[h].host)
                    h = (h + 1) & (unsigned)(nc - 1);
                m[h] = old[i];
            }
        free(old);
    }
    unsigned h = mirror_hash(host, d->mirror_cap);
    while (d->mirror[h].host)
        h = (h + 1) & (unsigned)(d->mirror_cap - 1);
    Mirror *m = &d->mirror[h];
    if (CU(d, d->cu.cuMemAlloc(&m->dev, bytes ? bytes : 1), NULL))
        return NULL;
    m->host = host;
    m->bytes = bytes;
    m->dirty = 0;
    d->mirror_len++;
    return m;
}

static int dev_sync(lethe_device *pub) {
    Dev *d = pub->impl;
    int rc = CU(d, d->cu.cuCtxSetCurrent(d->ctx), NULL);
    for (int i = 0; !rc && i < d->mirror_cap; i++) {
        Mirror *m = &d->mirror[i];
        if (m->host && m->dirty)
            rc = CU(d, d->cu.cuMemcpyDtoHAsync((void *)m->host, m->dev, m->bytes, d->stream), NULL);
    }
    if (!rc)
        rc = CU(d, d->cu.cuStreamSynchronize(d->stream), NULL);
    for (int i = 0; i < d->mirror_cap; i++)
        if (d->mirror[i].host)
            rc |= CU(d, d->cu.cuMemFree(d->mirror[i].dev), NULL);
    free(d->mirror);
    d->mirror = NULL;
    d->mirror_cap = d->mirror_len = 0;
    return rc ? -1 : 0;
}

/* ---------------------------------------------------------------------------
 * modules */

static lethe_nvrtc *nvrtc(Dev *d) {
    if (!d->nv_tried) {
        char err[LETHE_ERR_LEN];
        d->nv_tried = 1;
        d->nv = lethe_nvrtc_open(err);
    }
    return d->nv;
}

/* the program's NVRTC options, for this GPU's architecture (buf and arch_opt
 * hold the strings; thread-safe) */
static int options_for(Dev *d, const lethe_cuda_program *p, char *buf, size_t n, char *arch_opt, size_t an,
                       const char **opts, int max) {
    snprintf(buf, n, "%s", p->options ? p->options : "");
    snprintf(arch_opt, an, "--gpu-architecture=%s", d->arch);
    int k = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, "\n", &save); t && k < max; t = strtok_r(NULL, "\n", &save))
        opts[k++] = strncmp(t, "--gpu-architecture=", 19) ? t : arch_opt;
    return k;
}

/* A CUBIN for module m from the cache, or compiled by NVRTC (d->nv, loaded)
 * into the cache; *out is malloc'd. */
static int cubin_for(Dev *d, const lethe_cuda_program *p, int m, uint8_t **out, size_t *n) {
    lethe_nvrtc *nv = d->nv;
    char buf[4096], arch_opt[64], err[LETHE_ERR_LEN];
    const char *opts[64];
    int nopts = options_for(d, p, buf, sizeof buf, arch_opt, sizeof arch_opt, opts, 64);
    int major, minor;
    lethe_nvrtc_version(nv, &major, &minor);
    fs_sha256 h;
    fs_sha256_init(&h);
    const char *hash = p->modules[m].source_hash ? p->modules[m].source_hash : "";
    fs_sha256_update(&h, hash, strlen(hash) + 1);
    for (int i = 0; i < nopts; i++)
        fs_sha256_update(&h, opts[i], strlen(opts[i]) + 1);
    char ver[64];
    snprintf(ver, sizeof ver, "nvrtc %d.%d %s", major, minor, d->arch);
    fs_sha256_update(&h, ver, strlen(ver) + 1);
    uint8_t key[32];
    fs_sha256_final(&h, key);
    char hex[65], path[4200];
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", key[i]);
    snprintf(path, sizeof path, "%s/cuda/%s.cubin", lethe_cache_dir(), hex);
    /* a cache file is "LETHECUB", the SHA-256 of the CUBIN, the CUBIN */
    uint8_t *file = NULL;
    size_t fn = 0;
    if (fs_read_file(path, (size_t)1 << 30, &file, &fn, err) == LETHE_OK && fn > 40 && !memcmp(file, "LETHECUB", 8)) {
        char want[65], got[65];
        for (int i = 0; i < 32; i++)
            snprintf(want + 2 * i, 3, "%02x", file[8 + i]);
        fs_sha256_hex(file + 40, fn - 40, got);
        if (!strcmp(want, got)) {
            *n = fn - 40;
            *out = malloc(*n);
            if (*out)
                memcpy(*out, file + 40, *n);
            free(file);
            return *out ? 0 : FAIL(NULL, "out of memory");
        }
    }
    free(file);
    char *log = NULL;
    char name[64];
    snprintf(name, sizeof name, "lethe_module_%d.cu", m);
    if (lethe_nvrtc_compile(nv, p->modules[m].source, name, opts, nopts, out, n, &log, err)) {
        FAIL("a generated kernel that does not compile is a bug in lethec's CUDA renderer: please report it", "%s\n%s", err,
             log ? log : "");
        free(log);
        return -1;
    }
    free(log);
    uint8_t *rec = malloc(*n + 40);
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/cuda", lethe_cache_dir());
    if (rec && fs_mkdir_p(dir, 0755, err) == LETHE_OK) {
        memcpy(rec, "LETHECUB", 8);
        fs_sha256 hc;
        fs_sha256_init(&hc);
        fs_sha256_update(&hc, *out, *n);
        fs_sha256_final(&hc, rec + 8);
        memcpy(rec + 40, *out, *n);
        if (fs_write_atomic(path, rec, *n + 40, err))
            fprintf(stderr, "lethe: note: the kernel cache is not writable (%s); kernels compile again next time\n", err);
    }
    free(rec);
    return 0;
}

/* Modules without a usable CUBIN, compiled (or taken from the cache) on
 * all cores: a large program has hundreds of kernels. */
typedef struct Compile {
    Dev *d;
    const lethe_cuda_program *p;
    const char *need;      /* per module: 1 to compile */
    uint8_t **cubin;
    size_t *size;
    int next, failed;
    pthread_mutex_t mu;
} Compile;

static void *compile_worker(void *arg) {
    Compile *c = arg;
    for (;;) {
        pthread_mutex_lock(&c->mu);
        while (c->next < (int)c->p->nmodules && !c->need[c->next])
            c->next++;
        int m = c->failed || c->next >= (int)c->p->nmodules ? -1 : c->next++;
        pthread_mutex_unlock(&c->mu);
        if (m < 0)
            return NULL;
        if (cubin_for(c->d, c->p, m, &c->cubin[m], &c->size[m])) {
            pthread_mutex_lock(&c->mu);
            c->failed = 1;
            pthread_mutex_unlock(&c->mu);
        }
    }
}

static int compile_modules(Dev *d, const lethe_cuda_program *p, const char *need, uint8_t **cubin, size_t *size) {
    Compile c = {.d = d, .p = p, .need = need, .cubin = cubin, .size = size};
    int n = 0;
    for (uint32_t m = 0; m < p->nmodules; m++)
        n += need[m];
    if (!n)
        return 0;
    if (!nvrtc(d))
        return FAIL("install NVRTC (libnvrtc) on this machine, or compile the program with lethec --arch=sm_XX for this GPU",
                    "%d modules of the program have no CUBIN this GPU (%s) and driver take, and there is no NVRTC to "
                    "compile them", n, d->arch);
    lethe_cache_dir();   /* shared state the workers read, set up before they start */
    pthread_mutex_init(&c.mu, NULL);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = cores < 1 ? 1 : cores > 32 ? 32 : (int)cores;
    nt = nt < n ? nt : n;
    pthread_t th[32];
    int started = 0;
    for (int i = 0; i < nt; i++)
        started += pthread_create(&th[started], NULL, compile_worker, &c) == 0;
    if (!started)
        compile_worker(&c);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&c.mu);
    return c.failed ? -1 : 0;
}

static Loaded *load_program(Dev *d, const lethe_cuda_program *p) {
    for (int i = 0; i < d->nloaded; i++)
        if (d->loaded[i].prog == p)
            return &d->loaded[i];
    Loaded *nl = realloc(d->loaded, sizeof(Loaded) * (size_t)(d->nloaded + 1));
    if (!nl)
        return NULL;
    d->loaded = nl;
    Loaded *L = &d->loaded[d->nloaded];
    memset(L, 0, sizeof *L);
    L->prog = p;
    L->mods = calloc(p->nmodules + 1, sizeof(CUmodule));
    L->fns = calloc(p->nkernels + 1, sizeof(CUfunction));
    char *need = calloc(p->nmodules + 1, 1);
    uint8_t **cubin = calloc(p->nmodules + 1, sizeof(uint8_t *));
    size_t *size = calloc(p->nmodules + 1, sizeof(size_t));
    int rc = !L->mods || !L->fns || !need || !cubin || !size ? FAIL(NULL, "out of memory") : 0;
    /* the program's own CUBINs where they fit this GPU and this driver */
    int refused = 0;
    const char *why = NULL;
    for (uint32_t m = 0; !rc && m < p->nmodules; m++) {
        const lethe_cuda_module *md = &p->modules[m];
        need[m] = 1;
        if (!md->cubin || strcmp(p->arch, d->arch))
            continue;
        CUresult r = d->cu.cuModuleLoadData(&L->mods[m], md->cubin);
        if (r == CUDA_SUCCESS) {
            need[m] = 0;
            continue;
        }
        refused++;
        d->cu.cuGetErrorName(r, &why);
    }
    if (refused)
        fprintf(stderr, "lethe: note: the driver refuses %d of the program's CUBINs for %s (%s); compiling their source "
                "here\n", refused, p->arch, why ? why : "?");
    if (!rc)
        rc = compile_modules(d, p, need, cubin, size);
    for (uint32_t m = 0; !rc && m < p->nmodules; m++)
        if (need[m])
            rc = CU(d, d->cu.cuModuleLoadData(&L->mods[m], cubin[m]), NULL);
    for (uint32_t m = 0; cubin && m < p->nmodules; m++)
        free(cubin[m]);
    free(cubin);
    free(size);
    free(need);
    for (uint32_t k = 0; !rc && k < p->nkernels; k++)
        rc = CU(d, d->cu.cuModuleGetFunction(&L->fns[k], L->mods[p->kernel_module[k]], p->kernel_names[k]),
                "the program's kernel table and its modules disagree: recompile it");
    if (rc) {
        for (uint32_t m = 0; L->mods && m < p->nmodules; m++)
            if (L->mods[m])
                d->cu.cuModuleUnload(L->mods[m]);
        free(L->mods);
        free(L->fns);
        return NULL;
    }
    d->nloaded++;
    return L;
}

/* ---------------------------------------------------------------------------
 * profile (LETHE_CUDA_PROFILE) */

static double host_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Waits for the GPU and adds the time since t0 to the row `name`. */
static int prof_add(Dev *d, const char *name, double t0) {
    if (CU(d, d->cu.cuStreamSynchronize(d->stream), NULL))
        return -1;
    double dt = host_now() - t0;
    int i = 0;
    while (i < d->nprof && strcmp(d->prof[i].name, name))
        i++;
    if (i == d->nprof) {
        if (d->nprof == d->prof_cap) {
            int cap = d->prof_cap ? 2 * d->prof_cap : 64;
            ProfRow *p = realloc(d->prof, sizeof(ProfRow) * (size_t)cap);
            if (!p)
                return 0;   /* the profile is lost, not the run */
            d->prof = p;
            d->prof_cap = cap;
        }
        snprintf(d->prof[i].name, sizeof d->prof[i].name, "%s", name);
        d->prof[i].seconds = 0;
        d->prof[i].calls = 0;
        d->nprof++;
    }
    d->prof[i].seconds += dt;
    d->prof[i].calls++;
    return 0;
}

static int prof_cmp(const void *a, const void *b) {
    double x = ((const ProfRow *)a)->seconds, y = ((const ProfRow *)b)->seconds;
    return x < y ? 1 : x > y ? -1 : 0;
}

static void prof_print(Dev *d) {
    double total = 0;
    for (int i = 0; i < d->nprof; i++)
        total += d->prof[i].seconds;
    if (!d->nprof || total <= 0)
        return;
    qsort(d->prof, (size_t)d->nprof, sizeof(ProfRow), prof_cmp);
    fprintf(stderr, "lethe: CUDA profile (%s): %.3f s over %d kinds of launch and copy\n", d->name, total, d->nprof);
    fprintf(stderr, "%10s %6s %9s %8s  %s\n", "ms", "%", "calls", "us/call", "kernel");
    for (int i = 0; i < d->nprof && i < 60; i++)
        fprintf(stderr, "%10.3f %6.2f %9ld %8.1f  %s\n", 1e3 * d->prof[i].seconds, 100 * d->prof[i].seconds / total,
                d->prof[i].calls, 1e6 * d->prof[i].seconds / (double)d->prof[i].calls, d->prof[i].name);
}

/* ---------------------------------------------------------------------------
 * GEMM */

static int blas(Dev *d) {
    if (d->blas_state)
        return d->blas_state > 0;
    d->blas_state = -1;
    const char *env = getenv("LETHE_CUBLAS");
    if (env && !strcmp(env, "none"))
        return 0;
    const char *names[] = {env, "libcublas.so.13", "libcublas.so.12", "libcublas.so"};
    for (int i = env && *env ? 0 : 1; i < 4 && !d->blas_lib; i++)
        d->blas_lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!d->blas_lib)
        return 0;
#define X(name, sym, ret, params)                                                                        \
    if (!(d->blas.name = (name##_fn)dlsym(d->blas_lib, sym)))                                              \
        return 0;
    CUBLAS_FUNCTIONS(X)
#undef X
    if (d->blas.cublasCreate(&d->blas_h) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "lethe: note: cuBLAS does not start; GEMMs run on Lethe's own kernel\n");
        return 0;
    }
    if (d->blas.cublasSetStream(d->blas_h, d->stream) != CUBLAS_STATUS_SUCCESS) {
        d->blas.cublasDestroy(d->blas_h);
        return 0;
    }
    const char *tf32 = getenv("LETHE_CUDA_TF32");
    if (tf32 && *tf32 && strcmp(tf32, "0")) {
        /* looked up only here: the mock driver of make test has no math modes */
        cublasStatus_t (*set_math)(cublasHandle_t, int) =
            (cublasStatus_t(*)(cublasHandle_t, int))dlsym(d->blas_lib, "cublasSetMathMode");
        if (set_math && set_math(d->blas_h, CUBLAS_TF32_TENSOR_OP_MATH) == CUBLAS_STATUS_SUCCESS)
            fprintf(stderr, "lethe: note: cuBLAS's FP32 GEMMs use TF32 tensor cores (LETHE_CUDA_TF32)\n");
        else
            fprintf(stderr, "lethe: note: cuBLAS refused TF32 math; its FP32 GEMMs stay FP32\n");
    }
    d->blas_state = 1;
    return 1;
}

static int fits_int(const lethe_cuda_gemm *g) {
    return g->m <= 0x7fffffff && g->n <= 0x7fffffff && g->k <= 0x7fffffff && g->lda <= 0x7fffffff &&
           g->ldb <= 0x7fffffff && g->ldc <= 0x7fffffff && g->batch <= 0x7fffffff;
}

/* How many groups of products a GEMM that sums its batch into one C splits
 * into: enough blocks for about two waves of an H100's or H200's 132
 * multiprocessors, from the shapes alone so that the order of the sums does
 * not depend on the card; every group gets at least one product. */
enum { GEMM_SPLIT_BLOCKS = 264 };

static long long split_groups(const lethe_cuda_gemm *g, long long tiles) {
    long long want = (GEMM_SPLIT_BLOCKS + tiles - 1) / tiles;
    if (want > g->batch)
        want = g->batch;
    if (want <= 1)
        return 1;
    long long per = (g->batch + want - 1) / want;
    return (g->batch + per - 1) / per;
}

/* The split GEMMs' partial sums: one buffer, grown between launches. */
static int ensure_scratch(Dev *d, size_t bytes) {
    if (bytes <= d->scratch_bytes)
        return 0;
    if (d->scratch && (CU(d, d->cu.cuStreamSynchronize(d->stream), NULL) || CU(d, d->cu.cuMemFree(d->scratch), NULL)))
        return -1;
    d->scratch = 0;
    d->scratch_bytes = 0;
    if (CU(d, d->cu.cuMemAlloc(&d->scratch, bytes), "the GPU is out of memory for a GEMM's partial sums"))
        return -1;
    d->scratch_bytes = bytes;
    return 0;
}

/* cuBLAS takes a GEMM unless its B is a convolution's implicit columns, its
 * batch sums into one C, or it is too large for int sizes. */
static int on_cublas(Dev *d, const lethe_cuda_gemm *g) {
    int sum_batch = g->batch > 1 && g->stride_c == 0;
    return !sum_batch && !g->im2col && fits_int(g) && blas(d);
}

static int run_gemm(Dev *d, Loaded *L, const lethe_cuda_launch *l, CUdeviceptr a, CUdeviceptr b, CUdeviceptr c) {
    const lethe_cuda_gemm *g = l->gemm;
    int f64 = g->dtype == LETHE_F64;
    int sum_batch = g->batch > 1 && g->stride_c == 0;
    if (on_cublas(d, g)) {
        /* row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T */
        int ta = g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
        int m = (int)g->n, n = (int)g->m, k = (int)g->k;
        cublasStatus_t st;
        if (f64)
            st = g->batch == 1 ? d->blas.cublasDgemm(d->blas_h, ta, tb, m, n, k, &g->alpha, (const double *)b, (int)g->ldb,
                                                     (const double *)a, (int)g->lda, &g->beta, (double *)c, (int)g->ldc)
                               : d->blas.cublasDgemmStridedBatched(d->blas_h, ta, tb, m, n, k, &g->alpha, (const double *)b,
                                                                   (int)g->ldb, g->stride_b, (const double *)a, (int)g->lda,
                                                                   g->stride_a, &g->beta, (double *)c, (int)g->ldc,
                                                                   g->stride_c, (int)g->batch);
        else {
            float alpha = (float)g->alpha, beta = (float)g->beta;
            st = g->batch == 1 ? d->blas.cublasSgemm(d->blas_h, ta, tb, m, n, k, &alpha, (const float *)b, (int)g->ldb,
                                                     (const float *)a, (int)g->lda, &beta, (float *)c, (int)g->ldc)
                               : d->blas.cublasSgemmStridedBatched(d->blas_h, ta, tb, m, n, k, &alpha, (const float *)b,
                                                                   (int)g->ldb, g->stride_b, (const float *)a, (int)g->lda,
                                                                   g->stride_a, &beta, (float *)c, (int)g->ldc,
                                                                   g->stride_c, (int)g->batch);
        }
        if (st != CUBLAS_STATUS_SUCCESS)
            return FAIL("check the GEMM's shape in `lethec -d loops`; cuBLAS rejected it", "cuBLAS %s%s (%lld x %lld x %lld, "
                        "batch %lld) failed with status %d", f64 ? "Dgemm" : "Sgemm", g->batch > 1 ? "StridedBatched" : "",
                        (long long)g->m, (long long)g->n, (long long)g->k, (long long)g->batch, st);
        return 0;
    }
    /* the generated tiled kernel: 64 x 64 tiles, batch (or groups of a summed
     * batch) along the grid */
    long long tiles = ((g->m + 63) / 64) * ((g->n + 63) / 64), groups = sum_batch ? split_groups(g, tiles) : 1;
    long long grid = tiles * (sum_batch ? groups : g->batch), mn = g->m * g->n;
    if (grid > 0x7fffffff)
        return FAIL("split the batch", "a GEMM of %lld tiles is too large for one launch", grid);
    CUdeviceptr partial = 0;
    if (groups > 1) {
        if (ensure_scratch(d, (size_t)(groups * mn) * (f64 ? sizeof(double) : sizeof(float))))
            return -1;
        partial = d->scratch;
    }
    long long mm = g->m, nn = g->n, kk = g->k, lda = g->lda, ldb = g->ldb, ldc = g->ldc, bt = g->batch;
    long long sa = g->stride_a, sb = g->stride_b, sc = g->stride_c;
    int ta = g->trans_a, tb = g->trans_b, phase = 0;
    float af = (float)g->alpha, bf = (float)g->beta;
    void *alpha = f64 ? (void *)&g->alpha : (void *)&af, *beta = f64 ? (void *)&g->beta : (void *)&bf;
    void *params[31];
    int np = 0;
    void *head[] = {&a, &b, &c, &mm, &nn, &kk, &lda, &ldb, &ldc, &ta, &tb, alpha, beta, &bt, &sa, &sb, &sc};
    for (int i = 0; i < 17; i++)
        if (i != 7 || !g->im2col)   /* lethe_gemm_col_* has no ldb, then the geometry (backend_cuda_prelude.c) */
            params[np++] = head[i];
    if (g->im2col) {
        const lethe_cuda_im2col *ic = g->im2col;
        const int64_t *geo[] = {&ic->c, &ic->h, &ic->w, &ic->kh, &ic->kw, &ic->sh, &ic->sw, &ic->ph, &ic->pw, &ic->oh, &ic->ow, &ic->p0};
        for (int i = 0; i < 12; i++)
            params[np++] = (void *)geo[i];
    }
    params[np++] = &partial;
    params[np++] = &groups;
    params[np++] = &phase;
    if (CU(d, d->cu.cuLaunchKernel(L->fns[l->kernel], (unsigned)grid, 1, 1, 256, 1, 1, 0, d->stream, params, NULL), NULL))
        return -1;
    if (groups == 1)
        return 0;
    phase = 1;   /* the partial sums into C, in group order */
    return CU(d, d->cu.cuLaunchKernel(L->fns[l->kernel], (unsigned)((mn + 255) / 256), 1, 1, 256, 1, 1, 0, d->stream, params,
                                      NULL),
              NULL);
}

/* ---------------------------------------------------------------------------
 * running an entry */

static int persistent(int kind) { return kind == LETHE_PARAM || kind == LETHE_BUFFER || kind == LETHE_STATE; }

static CUdeviceptr address(Dev *d, lethe_cuda_ref r) { return (r.arg >= 0 ? d->argp[r.arg] : d->arena) + r.offset; }

static int dev_run(lethe_ctx *ctx, const lethe_cuda_entry *e, void *const *args) {
    Dev *d = ctx->device->impl;
    if (CU(d, d->cu.cuCtxSetCurrent(d->ctx), NULL))
        return -1;
    Loaded *L = load_program(d, e->program);
    if (!L)
        return -1;
    if ((int)e->nargs > d->argp_cap) {
        CUdeviceptr *np = realloc(d->argp, sizeof(CUdeviceptr) * e->nargs);
        if (!np)
            return FAIL(NULL, "out of memory");
        d->argp = np;
        d->argp_cap = (int)e->nargs;
    }
    /* staging offsets after the workspace, 256-byte aligned */
    size_t ws = (e->workspace_bytes + 255) / 256 * 256, io = ws;
    for (uint32_t i = 0; i < e->nargs; i++) {
        const lethe_cuda_arg *a = &e->args[i];
        Mirror *m = mirror_find(d, args[i], a->bytes);
        if (!m && persistent(a->kind)) {
            if (!(m = mirror_add(d, args[i], a->bytes)))
                return -1;
            if ((a->access & LETHE_READ) && a->bytes &&
                CU(d, d->cu.cuMemcpyHtoDAsync(m->dev, args[i], a->bytes, d->stream), NULL))
                return -1;
        }
        if (m) {
            d->argp[i] = m->dev;
            m->dirty |= (a->access & LETHE_WRITE) != 0;
        } else {
            d->argp[i] = io;   /* an offset until the arena is known */
            io += (a->bytes + 255) / 256 * 256;
        }
    }
    if (ensure_arena(d, io))
        return -1;
    double t0 = host_now();
    for (uint32_t i = 0; i < e->nargs; i++) {
        const lethe_cuda_arg *a = &e->args[i];
        if (mirror_find(d, args[i], a->bytes))
            continue;
        d->argp[i] += d->arena;
        if ((a->access & LETHE_READ) && a->bytes &&
            CU(d, d->cu.cuMemcpyHtoDAsync(d->argp[i], args[i], a->bytes, d->stream), NULL))
            return -1;
    }
    if (d->profile && prof_add(d, "copy in: inputs and newly mirrored tensors", t0))
        return -1;
    for (uint32_t li = 0; li < e->nlaunches; li++) {
        const lethe_cuda_launch *l = &e->launches[li];
        int rc;
        t0 = host_now();
        if (l->kind == LETHE_CUDA_GEMM) {
            const lethe_cuda_gemm *g = l->gemm;
            rc = run_gemm(d, L, l, address(d, g->a), address(d, g->b), address(d, g->c));
        } else if (l->kind == LETHE_CUDA_ALLREDUCE) {
            rc = d->allreduce ? d->allreduce(d->allreduce_state, address(d, l->params[0].ref), l->count, l->dtype, d->stream)
                              : 0;
        } else {
            if ((int)l->nparams > d->pcap) {
                int cap = (int)l->nparams * 2;
                uint64_t *v = realloc(d->pvals, sizeof(uint64_t) * (size_t)cap);
                void **p = v ? realloc(d->pptrs, sizeof(void *) * (size_t)cap) : NULL;
                if (v)
                    d->pvals = v;
                if (!v || !p)
                    return FAIL(NULL, "out of memory");
                d->pptrs = p;
                d->pcap = cap;
            }
            for (uint32_t i = 0; i < l->nparams; i++) {
                const lethe_cuda_param *pa = &l->params[i];
                d->pvals[i] = pa->kind == LETHE_CUDA_SEED ? ctx->seed
                              : pa->kind == LETHE_CUDA_STEP ? ctx->counter
                                                            : (uint64_t)address(d, pa->ref);
                d->pptrs[i] = &d->pvals[i];
            }
            rc = CU(d, d->cu.cuLaunchKernel(L->fns[l->kernel], l->grid, 1, 1, l->block, 1, 1, 0, d->stream, d->pptrs, NULL),
                    NULL);
        }
        if (!rc && d->profile) {
            char name[112];
            const lethe_cuda_gemm *g = l->gemm;
            if (l->kind == LETHE_CUDA_ALLREDUCE)
                snprintf(name, sizeof name, "all-reduce (NCCL)");
            else if (l->kind == LETHE_CUDA_GEMM)
                snprintf(name, sizeof name, "gemm %s%s %lldx%lldx%lld%s%s batch %lld",
                         on_cublas(d, g) ? "cublas" : g->im2col ? "tiled, implicit im2col" : "tiled",
                         g->stride_c == 0 && g->batch > 1 ? " summed" : "", (long long)g->m,
                         (long long)g->n, (long long)g->k, g->trans_a ? " At" : "", g->trans_b ? " Bt" : "",
                         (long long)g->batch);
            else
                snprintf(name, sizeof name, "%s", e->program->kernel_names[l->kernel]);
            rc = prof_add(d, name, t0);
        } else if (!rc && d->sync_each)
            rc = CU(d, d->cu.cuStreamSynchronize(d->stream), NULL);
        if (rc) {
            fprintf(stderr, "lethe: in entry %s, launch %u of %u (%s)\n", e->name, li, e->nlaunches,
                    l->kind == LETHE_CUDA_GEMM        ? "GEMM"
                    : l->kind == LETHE_CUDA_ALLREDUCE ? "all-reduce"
                                                      : e->program->kernel_names[l->kernel]);
            return -1;
        }
    }
    t0 = host_now();
    for (uint32_t i = 0; i < e->nargs; i++) {
        const lethe_cuda_arg *a = &e->args[i];
        int mirrored = mirror_find(d, args[i], a->bytes) != NULL;
        int out = a->kind == LETHE_OUTPUT || (!mirrored && (a->access & LETHE_WRITE));
        if (out && a->bytes && CU(d, d->cu.cuMemcpyDtoHAsync(args[i], d->argp[i], a->bytes, d->stream), NULL))
            return -1;
    }
    if (CU(d, d->cu.cuStreamSynchronize(d->stream), NULL)) {
        fprintf(stderr, "lethe: in entry %s (%u launches)\n", e->name, e->nlaunches);
        return -1;
    }
    return d->profile ? prof_add(d, "copy out: outputs", t0) : 0;
}

/* ---------------------------------------------------------------------------
 * opening and closing */

void lethe_cuda_close(lethe_device *pub) {
    if (!pub)
        return;
    Dev *d = pub->impl;
    prof_print(d);
    if (d->ctx) {
        d->cu.cuCtxSetCurrent(d->ctx);
        for (int i = 0; i < d->mirror_cap; i++)
            if (d->mirror[i].host)
                d->cu.cuMemFree(d->mirror[i].dev);
        if (d->arena)
            d->cu.cuMemFree(d->arena);
        if (d->scratch)
            d->cu.cuMemFree(d->scratch);
        for (int i = 0; i < d->nloaded; i++) {
            for (uint32_t m = 0; m < d->loaded[i].prog->nmodules; m++)
                if (d->loaded[i].mods[m])
                    d->cu.cuModuleUnload(d->loaded[i].mods[m]);
            free(d->loaded[i].mods);
            free(d->loaded[i].fns);
        }
        if (d->blas_state > 0)
            d->blas.cublasDestroy(d->blas_h);
        if (d->stream)
            d->cu.cuStreamDestroy(d->stream);
        d->cu.cuDevicePrimaryCtxRelease(d->dev);
    }
    /* the driver and cuBLAS stay loaded, like NVRTC (cuda_nvrtc.c): they
     * are not made to be unloaded, and a later open finds them in place */
    lethe_nvrtc_close(d->nv);
    free(d->mirror);
    free(d->loaded);
    free(d->argp);
    free(d->pvals);
    free(d->pptrs);
    free(d->prof);
    free(d);
}

/* closes d and fills err: `what`, and the driver's name of rc when not 0 */
static int open_fail(Dev *d, char *err, int status, const char *what, CUresult rc) {
    const char *name = NULL;
    if (rc && d->cu.cuGetErrorName)
        d->cu.cuGetErrorName(rc, &name);
    if (rc)
        lethe_errf(err, status, "%s: %s (%d)", what, name ? name : "CUDA error", rc);
    else
        lethe_errf(err, status, "%s", what);
    lethe_cuda_close(&d->pub);
    return status;
}

int lethe_cuda_open(int ordinal, lethe_device **out, char *err) {
    *out = NULL;
    Dev *d = calloc(1, sizeof *d);
    if (!d)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    d->pub.impl = d;
    d->pub.run = dev_run;
    d->pub.sync = dev_sync;
    d->pub.name = d->name;
    const char *env = getenv("LETHE_LIBCUDA");
    const char *lib = env && *env ? env : "libcuda.so.1";
    d->lib = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    char what[LETHE_ERR_LEN];
    if (!d->lib) {
        snprintf(what, sizeof what, "cannot load the CUDA driver (%s)", dlerror());
        return open_fail(d, err, LETHE_ENOTFOUND, what, 0);
    }
#define X(name, sym, ret, params)                                                                        \
    if (!(d->cu.name = (name##_fn)dlsym(d->lib, sym))) {                                                   \
        snprintf(what, sizeof what, "the CUDA driver %s has no %s: it is older than CUDA 11", lib, sym);    \
        return open_fail(d, err, LETHE_EFORMAT, what, 0);                                                  \
    }
    CUDA_DRIVER_FUNCTIONS(X)
#undef X
    CUresult rc;
    int count = 0, major = 0, minor = 0;
    if ((rc = d->cu.cuInit(0)))
        return open_fail(d, err, LETHE_EARG, "cuInit failed", rc);
    if ((rc = d->cu.cuDeviceGetCount(&count)))
        return open_fail(d, err, LETHE_EARG, "cuDeviceGetCount failed", rc);
    d->visible = count;
    if (count <= ordinal) {
        snprintf(what, sizeof what, "no CUDA device %d (%d visible)", ordinal, count);
        return open_fail(d, err, LETHE_ENOTFOUND, what, 0);
    }
    if ((rc = d->cu.cuDeviceGet(&d->dev, ordinal)) ||
        (rc = d->cu.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, d->dev)) ||
        (rc = d->cu.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, d->dev)))
        return open_fail(d, err, LETHE_EARG, "cannot query the CUDA device", rc);
    char gpu[256] = "?";
    d->cu.cuDeviceGetName(gpu, sizeof gpu, d->dev);
    snprintf(d->arch, sizeof d->arch, "sm_%d%d", major, minor);
    snprintf(d->name, sizeof d->name, "cuda:%d %s (%s)", ordinal, gpu, d->arch);
    if ((rc = d->cu.cuDevicePrimaryCtxRetain(&d->ctx, d->dev)))
        return open_fail(d, err, LETHE_EARG, "cannot retain the GPU's primary context", rc);
    if ((rc = d->cu.cuCtxSetCurrent(d->ctx)) || (rc = d->cu.cuStreamCreate(&d->stream, CU_STREAM_NON_BLOCKING)))
        return open_fail(d, err, LETHE_EARG, "cannot set up the CUDA context", rc);
    const char *se = getenv("LETHE_CUDA_SYNC");
    d->sync_each = se && *se && strcmp(se, "0");
    const char *pe = getenv("LETHE_CUDA_PROFILE");
    d->profile = pe && *pe && strcmp(pe, "0");
    *out = &d->pub;
    return LETHE_OK;
}

/* ---------------------------------------------------------------------------
 * data-parallel runs (runtime/nccl.c) */

int lethe_cuda_visible(const lethe_device *pub) { return ((const Dev *)pub->impl)->visible; }

void lethe_cuda_set_allreduce(lethe_device *pub, lethe_cuda_allreduce_fn fn, void *state) {
    Dev *d = pub->impl;
    d->allreduce = fn;
    d->allreduce_state = state;
}
