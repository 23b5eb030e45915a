/* cuda_min.h: the few declarations of the CUDA driver API, NVRTC and cuBLAS
 * that Lethe calls, written out so that building never needs CUDA headers:
 * the libraries are loaded with dlopen (runtime/device_cuda.c,
 * runtime/cuda_nvrtc.c) and every function is looked up by name.
 *
 * Driver functions whose ABI changed are looked up by their versioned
 * names (cuda.h #defines cuMemAlloc to cuMemAlloc_v2 and so on; dlsym needs
 * the suffix): CUDA_V2 marks them. Values are from cuda.h / nvrtc.h /
 * cublas_api.h of CUDA 12 and 13, where they have not changed since CUDA 11.
 */
#ifndef LETHE_CUDA_MIN_H
#define LETHE_CUDA_MIN_H

#include <stddef.h>

/* ---- driver API ---------------------------------------------------------- */

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_STUB_LIBRARY = 34,
    CUDA_ERROR_INSUFFICIENT_DRIVER = 35,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_NO_BINARY_FOR_GPU = 209,
    CUDA_ERROR_INVALID_PTX = 218,
    CUDA_ERROR_UNSUPPORTED_PTX_VERSION = 222,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
};

enum {
    CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16,
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75,
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76,
};

enum { CU_STREAM_NON_BLOCKING = 1 };

/* One X per driver function: X(name, dlsym name, return, parameters). */
#define CUDA_DRIVER_FUNCTIONS(X)                                                                           \
    X(cuInit, "cuInit", CUresult, (unsigned flags))                                                        \
    X(cuDriverGetVersion, "cuDriverGetVersion", CUresult, (int *version))                                 \
    X(cuGetErrorName, "cuGetErrorName", CUresult, (CUresult rc, const char **name))                       \
    X(cuGetErrorString, "cuGetErrorString", CUresult, (CUresult rc, const char **text))                   \
    X(cuDeviceGetCount, "cuDeviceGetCount", CUresult, (int *count))                                       \
    X(cuDeviceGet, "cuDeviceGet", CUresult, (CUdevice * dev, int ordinal))                                \
    X(cuDeviceGetName, "cuDeviceGetName", CUresult, (char *name, int len, CUdevice dev))                   \
    X(cuDeviceGetAttribute, "cuDeviceGetAttribute", CUresult, (int *value, int attr, CUdevice dev))        \
    X(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", CUresult, (CUcontext * ctx, CUdevice dev))     \
    X(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2", CUresult, (CUdevice dev))                \
    X(cuCtxSetCurrent, "cuCtxSetCurrent", CUresult, (CUcontext ctx))                                       \
    X(cuStreamCreate, "cuStreamCreate", CUresult, (CUstream * stream, unsigned flags))                    \
    X(cuStreamDestroy, "cuStreamDestroy_v2", CUresult, (CUstream stream))                                  \
    X(cuStreamSynchronize, "cuStreamSynchronize", CUresult, (CUstream stream))                             \
    X(cuMemAlloc, "cuMemAlloc_v2", CUresult, (CUdeviceptr * p, size_t bytes))                              \
    X(cuMemFree, "cuMemFree_v2", CUresult, (CUdeviceptr p))                                                \
    X(cuMemGetInfo, "cuMemGetInfo_v2", CUresult, (size_t * free_bytes, size_t * total_bytes))              \
    X(cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2", CUresult,                                                \
      (CUdeviceptr dst, const void *src, size_t bytes, CUstream stream))                                   \
    X(cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2", CUresult,                                                \
      (void *dst, CUdeviceptr src, size_t bytes, CUstream stream))                                         \
    X(cuModuleLoadData, "cuModuleLoadData", CUresult, (CUmodule * mod, const void *image))                 \
    X(cuModuleUnload, "cuModuleUnload", CUresult, (CUmodule mod))                                          \
    X(cuModuleGetFunction, "cuModuleGetFunction", CUresult, (CUfunction * fn, CUmodule mod, const char *name)) \
    X(cuLaunchKernel, "cuLaunchKernel", CUresult,                                                         \
      (CUfunction fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,        \
       unsigned smem, CUstream stream, void **params, void **extra))

/* ---- NVRTC ------------------------------------------------------------------ */

typedef int nvrtcResult;
typedef struct _nvrtcProgram *nvrtcProgram;
enum { NVRTC_SUCCESS = 0, NVRTC_ERROR_COMPILATION = 6 };

#define NVRTC_FUNCTIONS(X)                                                                                 \
    X(nvrtcVersion, "nvrtcVersion", nvrtcResult, (int *major, int *minor))                                 \
    X(nvrtcGetErrorString, "nvrtcGetErrorString", const char *, (nvrtcResult rc))                          \
    X(nvrtcCreateProgram, "nvrtcCreateProgram", nvrtcResult,                                               \
      (nvrtcProgram * prog, const char *src, const char *name, int nheaders, const char *const *headers,   \
       const char *const *include_names))                                                                  \
    X(nvrtcCompileProgram, "nvrtcCompileProgram", nvrtcResult,                                             \
      (nvrtcProgram prog, int nopts, const char *const *opts))                                             \
    X(nvrtcGetProgramLogSize, "nvrtcGetProgramLogSize", nvrtcResult, (nvrtcProgram prog, size_t *size))   \
    X(nvrtcGetProgramLog, "nvrtcGetProgramLog", nvrtcResult, (nvrtcProgram prog, char *log))               \
    X(nvrtcGetCUBINSize, "nvrtcGetCUBINSize", nvrtcResult, (nvrtcProgram prog, size_t *size))             \
    X(nvrtcGetCUBIN, "nvrtcGetCUBIN", nvrtcResult, (nvrtcProgram prog, char *cubin))                       \
    X(nvrtcGetPTXSize, "nvrtcGetPTXSize", nvrtcResult, (nvrtcProgram prog, size_t *size))                 \
    X(nvrtcGetPTX, "nvrtcGetPTX", nvrtcResult, (nvrtcProgram prog, char *ptx))                             \
    X(nvrtcDestroyProgram, "nvrtcDestroyProgram", nvrtcResult, (nvrtcProgram * prog))

/* ---- cuBLAS ------------------------------------------------------------------ */

typedef int cublasStatus_t;
typedef struct cublasContext *cublasHandle_t;
enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_TF32_TENSOR_OP_MATH = 3 };

#define CUBLAS_FUNCTIONS(X)                                                                                \
    X(cublasCreate, "cublasCreate_v2", cublasStatus_t, (cublasHandle_t * h))                              \
    X(cublasDestroy, "cublasDestroy_v2", cublasStatus_t, (cublasHandle_t h))                               \
    X(cublasSetStream, "cublasSetStream_v2", cublasStatus_t, (cublasHandle_t h, CUstream s))               \
    X(cublasSgemm, "cublasSgemm_v2", cublasStatus_t,                                                      \
      (cublasHandle_t h, int ta, int tb, int m, int n, int k, const float *alpha, const float *a, int lda,  \
       const float *b, int ldb, const float *beta, float *c, int ldc))                                     \
    X(cublasDgemm, "cublasDgemm_v2", cublasStatus_t,                                                      \
      (cublasHandle_t h, int ta, int tb, int m, int n, int k, const double *alpha, const double *a, int lda, \
       const double *b, int ldb, const double *beta, double *c, int ldc))                                  \
    X(cublasSgemmStridedBatched, "cublasSgemmStridedBatched", cublasStatus_t,                             \
      (cublasHandle_t h, int ta, int tb, int m, int n, int k, const float *alpha, const float *a, int lda,  \
       long long sa, const float *b, int ldb, long long sb, const float *beta, float *c, int ldc,           \
       long long sc, int batch))                                                                           \
    X(cublasDgemmStridedBatched, "cublasDgemmStridedBatched", cublasStatus_t,                             \
      (cublasHandle_t h, int ta, int tb, int m, int n, int k, const double *alpha, const double *a,        \
       int lda, long long sa, const double *b, int ldb, long long sb, const double *beta, double *c,       \
       int ldc, long long sc, int batch))

#endif
