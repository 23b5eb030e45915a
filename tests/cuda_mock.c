/* cuda_mock.c: a CUDA driver, NVRTC and cuBLAS that run on the host, in one
 * shared object, so that the tests exercise the real device layer
 * (runtime/device_cuda.c: modules, kernel cache, arena, mirrors, copies,
 * launches, cuBLAS calls and the GEMM kernel) and the real generated
 * kernels without a GPU:
 *
 *     LETHE_LIBCUDA=build/tests/libcudamock.so LETHE_NVRTC=build/tests/libcudamock.so
 *     LETHE_CUBLAS=build/tests/libcudamock.so (or none: the generated GEMM kernel)
 *     LETHE_MOCK_SHIM=tests/cuda_shim.h  [LETHE_MOCK_CFLAGS=...]  [LETHE_MOCK_DIR=...]
 *
 * NVRTC "compiles" a module by running `cc -include cuda_shim.h -x c` on it
 * into a shared object; the "CUBIN" is LETHEMOCK:<arch>:<path>. The driver
 * loads such images with dlopen (a real CUBIN is refused, as a GPU of
 * another architecture would), and cuLaunchKernel calls the kernel's
 * NAME__host entry (tests/cuda_shim.h). Device memory is host memory with a
 * guard zone after each allocation: a copy that leaves its allocation, or a
 * kernel that wrote past one, is counted (lethe_mock_stats) and reported.
 * The mock GPU is an sm_90 ("LETHE_MOCK_ARCH=sm_80" changes it).
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda_min.h"

enum { GUARD = 256, GUARD_BYTE = 0xA5 };

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static long n_launches, n_compiles, n_faults;

typedef struct Alloc {
    uint8_t *p;
    size_t n;
} Alloc;
static Alloc *allocs;
static int nallocs, capallocs;

static void fault(const char *fmt, const char *what, size_t a, size_t b) {
    fprintf(stderr, "cuda_mock: ");
    fprintf(stderr, fmt, what, a, b);
    fprintf(stderr, "\n");
    pthread_mutex_lock(&mu);
    n_faults++;
    pthread_mutex_unlock(&mu);
}

/* Statistics for the tests: launches, NVRTC compiles, faults seen. */
void lethe_mock_stats(long *launches, long *compiles, long *faults);
void lethe_mock_stats(long *launches, long *compiles, long *faults) {
    pthread_mutex_lock(&mu);
    *launches = n_launches;
    *compiles = n_compiles;
    *faults = n_faults;
    pthread_mutex_unlock(&mu);
}

static void mock_arch(int *major, int *minor) {
    const char *a = getenv("LETHE_MOCK_ARCH");
    int v = a && !strncmp(a, "sm_", 3) ? atoi(a + 3) : 90;
    *major = v / 10;
    *minor = v % 10;
}

/* ---- NVRTC -------------------------------------------------------------------- */

struct _nvrtcProgram {
    char *src, *log, *image;
};

nvrtcResult nvrtcVersion(int *major, int *minor) {
    *major = 13;
    *minor = 0;
    return NVRTC_SUCCESS;
}

const char *nvrtcGetErrorString(nvrtcResult rc) { return rc == NVRTC_SUCCESS ? "NVRTC_SUCCESS" : "NVRTC_ERROR (mock)"; }

nvrtcResult nvrtcCreateProgram(nvrtcProgram *prog, const char *src, const char *name, int nheaders,
                               const char *const *headers, const char *const *include_names) {
    struct _nvrtcProgram *p = calloc(1, sizeof *p);
    if (!p || !(p->src = strdup(src)))
        return 1;
    *prog = p;
    return NVRTC_SUCCESS;
}

static char *read_text(FILE *f) {
    size_t cap = 4096, n = 0, got;
    char *s = malloc(cap);
    while (s && (got = fread(s + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) {
            char *t = realloc(s, cap *= 2);
            if (!t)
                break;
            s = t;
        }
    }
    if (s)
        s[n] = 0;
    return s;
}

nvrtcResult nvrtcCompileProgram(nvrtcProgram prog, int nopts, const char *const *opts) {
    const char *arch = NULL;
    for (int i = 0; i < nopts; i++)
        if (!strncmp(opts[i], "--gpu-architecture=", 19))
            arch = opts[i] + 19;
    const char *shim = getenv("LETHE_MOCK_SHIM"), *flags = getenv("LETHE_MOCK_CFLAGS");
    const char *dir = getenv("LETHE_MOCK_DIR") ? getenv("LETHE_MOCK_DIR") : "/tmp";
    if (!arch || strncmp(arch, "sm_", 3) || !shim) {
        prog->log = strdup(!shim ? "cuda_mock: set LETHE_MOCK_SHIM to tests/cuda_shim.h" : "cuda_mock: no real architecture");
        return NVRTC_ERROR_COMPILATION;
    }
    static long counter;
    pthread_mutex_lock(&mu);
    long id = counter++;
    n_compiles++;
    pthread_mutex_unlock(&mu);
    char src[600], so[600], cmd[2400];
    snprintf(src, sizeof src, "%s/mock_%d_%ld.c", dir, (int)getpid(), id);
    snprintf(so, sizeof so, "%s/mock_%d_%ld.so", dir, (int)getpid(), id);
    FILE *f = fopen(src, "w");
    if (!f || fputs(prog->src, f) < 0 || fclose(f) != 0) {
        prog->log = strdup("cuda_mock: cannot write the source");
        return NVRTC_ERROR_COMPILATION;
    }
    snprintf(cmd, sizeof cmd, "cc -std=gnu11 -O0 -fPIC -shared -Wall -Werror -Wno-unused-function %s -include '%s' -x c '%s' -o "
             "'%s' -lm -lpthread 2>&1", flags ? flags : "", shim, src, so);
    FILE *p = popen(cmd, "r");
    char *log = p ? read_text(p) : NULL;
    int st = p ? pclose(p) : -1;
    unlink(src);
    if (st != 0) {
        prog->log = log ? log : strdup("cuda_mock: cc failed");
        return NVRTC_ERROR_COMPILATION;
    }
    free(log);
    size_t n = strlen(arch) + strlen(so) + 16;
    prog->image = malloc(n);
    if (!prog->image)
        return 1;
    snprintf(prog->image, n, "LETHEMOCK:%s:%s", arch, so);
    return NVRTC_SUCCESS;
}

nvrtcResult nvrtcGetProgramLogSize(nvrtcProgram prog, size_t *size) {
    *size = (prog->log ? strlen(prog->log) : 0) + 1;
    return NVRTC_SUCCESS;
}

nvrtcResult nvrtcGetProgramLog(nvrtcProgram prog, char *log) {
    strcpy(log, prog->log ? prog->log : "");
    return NVRTC_SUCCESS;
}

nvrtcResult nvrtcGetCUBINSize(nvrtcProgram prog, size_t *size) {
    *size = prog->image ? strlen(prog->image) + 1 : 0;
    return NVRTC_SUCCESS;
}

nvrtcResult nvrtcGetCUBIN(nvrtcProgram prog, char *cubin) {
    strcpy(cubin, prog->image ? prog->image : "");
    return NVRTC_SUCCESS;
}

/* no PTX from the mock */
nvrtcResult nvrtcGetPTXSize(nvrtcProgram prog, size_t *size) {
    *size = 0;
    return 1;
}

nvrtcResult nvrtcGetPTX(nvrtcProgram prog, char *ptx) { return 1; }

nvrtcResult nvrtcDestroyProgram(nvrtcProgram *prog) {
    free((*prog)->src);
    free((*prog)->log);
    free((*prog)->image);
    free(*prog);
    *prog = NULL;
    return NVRTC_SUCCESS;
}

/* ---- driver ---------------------------------------------------------------------- */

static int ctx_token, stream_token;

CUresult cuInit(unsigned flags) { return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int *v) {
    *v = 13000;
    return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult rc, const char **name) {
    *name = rc == CUDA_ERROR_INVALID_IMAGE ? "CUDA_ERROR_INVALID_IMAGE" : rc == CUDA_ERROR_OUT_OF_MEMORY ? "CUDA_ERROR_OUT_OF_MEMORY"
                                                                                                         : "CUDA_ERROR_MOCK";
    return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult rc, const char **text) {
    *text = "an error of the mock driver";
    return CUDA_SUCCESS;
}

/* LETHE_MOCK_GPUS=n: the mock shows n GPUs (1 by default), for the
 * data-parallel tests' one GPU per rank (tests/mpi_cuda.sh) */
static int mock_gpus(void) {
    const char *g = getenv("LETHE_MOCK_GPUS");
    return g && atoi(g) > 0 ? atoi(g) : 1;
}

CUresult cuDeviceGetCount(int *n) {
    *n = mock_gpus();
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    *d = ordinal;
    return ordinal >= 0 && ordinal < mock_gpus() ? CUDA_SUCCESS : 101;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    snprintf(name, (size_t)len, "Lethe mock GPU");
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int *v, int attr, CUdevice d) {
    int major, minor;
    mock_arch(&major, &minor);
    *v = attr == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR ? major : attr == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR ? minor : 4;
    return CUDA_SUCCESS;
}

static int current_device = -1;

CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice d) {
    *ctx = (CUcontext)&ctx_token;
    current_device = d;
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(CUcontext ctx) { return ctx == (CUcontext)&ctx_token ? CUDA_SUCCESS : 201; }
CUresult cuStreamCreate(CUstream *s, unsigned flags) {
    *s = (CUstream)&stream_token;
    return CUDA_SUCCESS;
}
CUresult cuStreamDestroy_v2(CUstream s) { return CUDA_SUCCESS; }
CUresult cuStreamSynchronize(CUstream s) { return s == (CUstream)&stream_token ? CUDA_SUCCESS : 400; }

CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
    uint8_t *m = malloc(n + GUARD);
    if (!m)
        return CUDA_ERROR_OUT_OF_MEMORY;
    memset(m, 0xFF, n);   /* uninitialized device memory reads as NaN */
    memset(m + n, GUARD_BYTE, GUARD);
    pthread_mutex_lock(&mu);
    if (nallocs == capallocs) {
        capallocs = capallocs ? 2 * capallocs : 64;
        allocs = realloc(allocs, sizeof(Alloc) * (size_t)capallocs);
    }
    allocs[nallocs].p = m;
    allocs[nallocs++].n = n;
    pthread_mutex_unlock(&mu);
    *p = (CUdeviceptr)(uintptr_t)m;
    return CUDA_SUCCESS;
}

CUresult cuMemFree_v2(CUdeviceptr p) {
    uint8_t *m = (uint8_t *)(uintptr_t)p;
    pthread_mutex_lock(&mu);
    int i = 0;
    while (i < nallocs && allocs[i].p != m)
        i++;
    Alloc a = i < nallocs ? allocs[i] : (Alloc){0};
    if (i < nallocs)
        allocs[i] = allocs[--nallocs];
    pthread_mutex_unlock(&mu);
    if (!a.p) {
        fault("%s of a pointer never allocated (%zu %zu)", "cuMemFree", 0, 0);
        return 1;
    }
    for (size_t k = 0; k < GUARD; k++)
        if (a.p[a.n + k] != GUARD_BYTE) {
            fault("a kernel wrote past the end of a %s allocation of %zu bytes (at +%zu)", "device", a.n, k);
            break;
        }
    free(a.p);
    return CUDA_SUCCESS;
}

CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total) {
    *free_bytes = (size_t)8 << 30;
    *total = (size_t)16 << 30;
    return CUDA_SUCCESS;
}

/* is [p, p + n) inside one allocation? */
static int inside(CUdeviceptr p, size_t n);

/* For the mock NCCL (tests/nccl_mock.c): the GPU whose context this process
 * retained, whether a buffer is device memory, whether s is the stream. */
int lethe_mock_device(void);
int lethe_mock_device(void) { return current_device; }
int lethe_mock_inside(CUdeviceptr p, size_t n);
int lethe_mock_inside(CUdeviceptr p, size_t n) { return inside(p, n); }
int lethe_mock_is_stream(CUstream s);
int lethe_mock_is_stream(CUstream s) { return s == (CUstream)&stream_token; }

static int inside(CUdeviceptr p, size_t n) {
    uint8_t *q = (uint8_t *)(uintptr_t)p;
    pthread_mutex_lock(&mu);
    int ok = 0;
    for (int i = 0; i < nallocs && !ok; i++)
        ok = q >= allocs[i].p && q + n <= allocs[i].p + allocs[i].n;
    pthread_mutex_unlock(&mu);
    return ok;
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, CUstream s) {
    if (!inside(dst, n)) {
        fault("%s of %zu bytes leaves its allocation (%zu)", "cuMemcpyHtoD", n, 0);
        return 1;
    }
    memcpy((void *)(uintptr_t)dst, src, n);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, CUstream s) {
    if (!inside(src, n)) {
        fault("%s of %zu bytes leaves its allocation (%zu)", "cuMemcpyDtoH", n, 0);
        return 1;
    }
    memcpy(dst, (void *)(uintptr_t)src, n);
    return CUDA_SUCCESS;
}

CUresult cuModuleLoadData(CUmodule *mod, const void *image) {
    const char *s = image;
    int major, minor;
    char want[16];
    mock_arch(&major, &minor);
    snprintf(want, sizeof want, "sm_%d%d:", major, minor);
    if (strncmp(s, "LETHEMOCK:", 10) || strncmp(s + 10, want, strlen(want)))
        return CUDA_ERROR_INVALID_IMAGE;   /* a real CUBIN, or another architecture's */
    void *h = dlopen(s + 10 + strlen(want), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "cuda_mock: %s\n", dlerror());
        return CUDA_ERROR_INVALID_IMAGE;
    }
    *mod = (CUmodule)h;
    return CUDA_SUCCESS;
}

CUresult cuModuleUnload(CUmodule mod) { return dlclose(mod) == 0 ? CUDA_SUCCESS : 1; }

typedef void (*host_fn)(unsigned grid, unsigned block, void *const *params);

CUresult cuModuleGetFunction(CUfunction *fn, CUmodule mod, const char *name) {
    char sym[300];
    snprintf(sym, sizeof sym, "%s__host", name);
    void *f = dlsym(mod, sym);
    if (!f)
        return 500;   /* CUDA_ERROR_NOT_FOUND */
    *fn = (CUfunction)f;
    return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(CUfunction fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, CUstream stream, void **params, void **extra) {
    if (!gx || gy != 1 || gz != 1 || !bx || bx > 1024 || by != 1 || bz != 1 || extra || stream != (CUstream)&stream_token)
        return 1;   /* CUDA_ERROR_INVALID_VALUE */
    pthread_mutex_lock(&mu);
    n_launches++;
    pthread_mutex_unlock(&mu);
    ((host_fn)(void *)fn)(gx, bx, params);
    return CUDA_SUCCESS;
}

/* ---- cuBLAS ------------------------------------------------------------------------ */

/* Column-major GEMM on the host, as cuBLAS defines it, so that the device
 * layer's mapping of row-major products onto it is checked. */
#define MOCK_GEMM(T)                                                                                        \
    static void gemm_##T(int ta, int tb, int m, int n, int k, T alpha, const T *a, int lda, const T *b, int ldb, \
                         T beta, T *c, int ldc) {                                                           \
        for (int j = 0; j < n; j++)                                                                         \
            for (int i = 0; i < m; i++) {                                                                   \
                T acc = 0;                                                                                  \
                for (int l = 0; l < k; l++)                                                                 \
                    acc += (ta ? a[l + (size_t)i * lda] : a[i + (size_t)l * lda]) *                         \
                           (tb ? b[j + (size_t)l * ldb] : b[l + (size_t)j * ldb]);                          \
                T *p = &c[i + (size_t)j * ldc];                                                             \
                *p = beta == 0 ? alpha * acc : alpha * acc + beta * *p;                                     \
            }                                                                                               \
    }
MOCK_GEMM(float)
MOCK_GEMM(double)

static int blas_token;

cublasStatus_t cublasCreate_v2(cublasHandle_t *h) {
    *h = (cublasHandle_t)&blas_token;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, CUstream s) {
    return s == (CUstream)&stream_token ? CUBLAS_STATUS_SUCCESS : 7;
}

/* a bad dimension is CUBLAS_STATUS_INVALID_VALUE, as in cuBLAS */
static int bad_dims(int ta, int tb, int m, int n, int k, int lda, int ldb, int ldc) {
    return m < 0 || n < 0 || k < 0 || lda < (ta ? (k > 1 ? k : 1) : (m > 1 ? m : 1)) ||
           ldb < (tb ? (n > 1 ? n : 1) : (k > 1 ? k : 1)) || ldc < (m > 1 ? m : 1);
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t h, int ta, int tb, int m, int n, int k, const float *alpha, const float *a,
                              int lda, const float *b, int ldb, const float *beta, float *c, int ldc) {
    if (bad_dims(ta, tb, m, n, k, lda, ldb, ldc))
        return 7;
    gemm_float(ta, tb, m, n, k, *alpha, a, lda, b, ldb, *beta, c, ldc);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDgemm_v2(cublasHandle_t h, int ta, int tb, int m, int n, int k, const double *alpha, const double *a,
                              int lda, const double *b, int ldb, const double *beta, double *c, int ldc) {
    if (bad_dims(ta, tb, m, n, k, lda, ldb, ldc))
        return 7;
    gemm_double(ta, tb, m, n, k, *alpha, a, lda, b, ldb, *beta, c, ldc);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, int ta, int tb, int m, int n, int k, const float *alpha,
                                         const float *a, int lda, long long sa, const float *b, int ldb, long long sb,
                                         const float *beta, float *c, int ldc, long long sc, int batch) {
    if (bad_dims(ta, tb, m, n, k, lda, ldb, ldc) || batch < 0)
        return 7;
    for (int i = 0; i < batch; i++)
        gemm_float(ta, tb, m, n, k, *alpha, a + i * sa, lda, b + i * sb, ldb, *beta, c + i * sc, ldc);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDgemmStridedBatched(cublasHandle_t h, int ta, int tb, int m, int n, int k, const double *alpha,
                                         const double *a, int lda, long long sa, const double *b, int ldb, long long sb,
                                         const double *beta, double *c, int ldc, long long sc, int batch) {
    if (bad_dims(ta, tb, m, n, k, lda, ldb, ldc) || batch < 0)
        return 7;
    for (int i = 0; i < batch; i++)
        gemm_double(ta, tb, m, n, k, *alpha, a + i * sa, lda, b + i * sb, ldb, *beta, c + i * sc, ldc);
    return CUBLAS_STATUS_SUCCESS;
}
