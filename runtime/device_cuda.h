/* device_cuda.h: the CUDA device layer (device_cuda.c) and the NVRTC loader
 * it shares with lethec (cuda_nvrtc.c). Neither needs CUDA to build: the
 * driver, NVRTC and cuBLAS are loaded with dlopen when first used, and their
 * absence is an error message, never a crash.
 *
 *     lethe_device *dev;
 *     if (lethe_cuda_open(0, &dev, err)) ... print err ...;
 *     ctx.device = dev;                        // lethe_ctx of lethe_abi.h
 *     entry->fn(args, NULL, &ctx);             // a program compiled with --target=cuda
 *     dev->sync(dev);                          // state tensors back on the host
 *     lethe_cuda_close(dev);
 *
 * Environment:
 *   LETHE_LIBCUDA   the driver library to load (default libcuda.so.1)
 *   LETHE_NVRTC     the NVRTC library (default libnvrtc.so, .so.13, .so.12, then
 *                   $CUDA_PATH/lib64 and /usr/local/cuda/lib64)
 *   LETHE_CUBLAS    the cuBLAS library, or "none" to run every GEMM on the
 *                   generated kernel (default libcublas.so.13, .so.12)
 *   LETHE_CUDA_SYNC 1: wait after every launch, so an error names its kernel
 *   LETHE_CUDA_TF32 1: cuBLAS's FP32 GEMMs on TF32 tensor cores (not f32-exact)
 *   LETHE_CUDA_PROFILE 1: time every launch and copy; totals by kernel on
 *                   stderr when the device closes
 *   LETHE_CACHE     the kernel cache is $LETHE_CACHE/cuda (see lethe.h)
 */
#ifndef LETHE_DEVICE_CUDA_H
#define LETHE_DEVICE_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "check.h"
#include "lethe_abi.h"

/* Opens GPU `ordinal`: the primary context, one stream, the kernel cache.
 * Returns LETHE_OK, or an error with the reason in err (no driver, no GPU). */
int lethe_cuda_open(int ordinal, lethe_device **out, char *err);
/* Frees everything the device holds (the libraries stay loaded); call
 * dev->sync first to keep state. */
void lethe_cuda_close(lethe_device *dev);

/* ---- data-parallel runs (runtime/nccl.c) ---------------------------------- */

/* How many GPUs the driver shows this process. */
int lethe_cuda_visible(const lethe_device *dev);
/* What a LETHE_CUDA_ALLREDUCE launch calls: average the `count` elements of
 * `dtype` at device address buf over the ranks, enqueued on `stream` (the
 * device's one stream, a CUstream); 0 on success, else it printed why. */
typedef int (*lethe_cuda_allreduce_fn)(void *state, unsigned long long buf, int64_t count, int32_t dtype, void *stream);
/* Installs fn (NULL: ALLREDUCE launches do nothing, as in one process). */
void lethe_cuda_set_allreduce(lethe_device *dev, lethe_cuda_allreduce_fn fn, void *state);

/* ---- NVRTC (cuda_nvrtc.c) ------------------------------------------------ */

typedef struct lethe_nvrtc lethe_nvrtc;

/* NULL, with the reason in err, when no NVRTC library loads. */
lethe_nvrtc *lethe_nvrtc_open(char *err);
void lethe_nvrtc_close(lethe_nvrtc *nv);
void lethe_nvrtc_version(const lethe_nvrtc *nv, int *major, int *minor);
const char *lethe_nvrtc_path(const lethe_nvrtc *nv);

/* Compiles `src` with `opts`. ptx = 0: *out is the CUBIN (options must name
 * a real architecture, sm_XX); ptx = 1: the PTX text (NUL-terminated, not
 * counted in *n). *out is malloc'd. On a compile error returns LETHE_EFORMAT
 * and, when log is not NULL, NVRTC's log (malloc'd) in *log. Thread-safe. */
int lethe_nvrtc_compile(lethe_nvrtc *nv, const char *src, const char *name, const char *const *opts, int nopts,
                        uint8_t **out, size_t *n, char **log, char *err);
int lethe_nvrtc_compile_ptx(lethe_nvrtc *nv, const char *src, const char *name, const char *const *opts, int nopts,
                            char **ptx, char **log, char *err);

#endif
