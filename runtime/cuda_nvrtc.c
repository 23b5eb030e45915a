/* cuda_nvrtc.c: NVRTC through dlopen, for lethec (CUBINs embedded in CUDA
 * programs) and the device layer (kernels for an architecture the program
 * was not compiled for). See device_cuda.h.
 *
 * NVRTC runs without a driver or a GPU, so a machine with the CUDA toolkit
 * and no GPU still compiles every kernel (the tests do). It needs
 * libnvrtc-builtins beside it, which the loader finds next to libnvrtc.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_min.h"
#include "device_cuda.h"

#define X(name, sym, ret, params) typedef ret(*name##_fn) params;
NVRTC_FUNCTIONS(X)
#undef X

struct lethe_nvrtc {
    void *lib;
    char path[512];
    int major, minor;
#define X(name, sym, ret, params) name##_fn name;
    NVRTC_FUNCTIONS(X)
#undef X
};

static void *open_first(const char *const *names, int n, char *path, size_t pathlen, char *why, size_t whylen) {
    why[0] = 0;
    for (int i = 0; i < n; i++) {
        if (!names[i] || !names[i][0])
            continue;
        void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (h) {
            snprintf(path, pathlen, "%s", names[i]);
            return h;
        }
        if (!why[0])
            snprintf(why, whylen, "%s", dlerror());
    }
    return NULL;
}

lethe_nvrtc *lethe_nvrtc_open(char *err) {
    char cuda_path[512] = "";
    const char *cp = getenv("CUDA_PATH");
    if (cp && *cp)
        snprintf(cuda_path, sizeof cuda_path, "%s/lib64/libnvrtc.so", cp);
    const char *env = getenv("LETHE_NVRTC");
    const char *names[] = {env, "libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", cuda_path,
                           "/usr/local/cuda/lib64/libnvrtc.so"};
    int n = env && *env ? 1 : (int)(sizeof names / sizeof *names);
    lethe_nvrtc *nv = calloc(1, sizeof *nv);
    if (!nv) {
        lethe_errf(err, LETHE_ENOMEM, "out of memory");
        return NULL;
    }
    char why[256];
    nv->lib = open_first(names, n, nv->path, sizeof nv->path, why, sizeof why);
    if (!nv->lib) {
        lethe_errf(err, LETHE_ENOTFOUND, "no NVRTC library (%s)", env && *env ? why : "libnvrtc.so not found");
        free(nv);
        return NULL;
    }
#define X(name, sym, ret, params)                                                                        \
    nv->name = (name##_fn)dlsym(nv->lib, sym);                                                             \
    if (!nv->name) {                                                                                       \
        lethe_errf(err, LETHE_EFORMAT, "%s has no %s: is it NVRTC 11.1 or newer?", nv->path, sym);          \
        lethe_nvrtc_close(nv);                                                                             \
        return NULL;                                                                                       \
    }
    NVRTC_FUNCTIONS(X)
#undef X
    if (nv->nvrtcVersion(&nv->major, &nv->minor) != NVRTC_SUCCESS) {
        lethe_errf(err, LETHE_EFORMAT, "%s: nvrtcVersion failed", nv->path);
        lethe_nvrtc_close(nv);
        return NULL;
    }
    return nv;
}

/* The library stays loaded: NVRTC is not made to be unloaded (its C++
 * runtime keeps allocations from its static constructors, which dlclose
 * would orphan), and the next open finds it in place. */
void lethe_nvrtc_close(lethe_nvrtc *nv) { free(nv); }

void lethe_nvrtc_version(const lethe_nvrtc *nv, int *major, int *minor) {
    *major = nv->major;
    *minor = nv->minor;
}

const char *lethe_nvrtc_path(const lethe_nvrtc *nv) { return nv->path; }

static int compile(lethe_nvrtc *nv, const char *src, const char *name, const char *const *opts, int nopts, int ptx,
                   uint8_t **out, size_t *n, char **log, char *err) {
    *out = NULL;
    *n = 0;
    if (log)
        *log = NULL;
    nvrtcProgram prog;
    nvrtcResult rc = nv->nvrtcCreateProgram(&prog, src, name, 0, NULL, NULL);
    if (rc != NVRTC_SUCCESS)
        return lethe_errf(err, LETHE_EARG, "nvrtcCreateProgram(%s): %s", name, nv->nvrtcGetErrorString(rc));
    rc = nv->nvrtcCompileProgram(prog, nopts, opts);
    size_t lsz = 0;
    if (rc != NVRTC_SUCCESS) {
        if (log && nv->nvrtcGetProgramLogSize(prog, &lsz) == NVRTC_SUCCESS && (*log = malloc(lsz + 1))) {
            if (nv->nvrtcGetProgramLog(prog, *log) != NVRTC_SUCCESS)
                (*log)[0] = 0;
            (*log)[lsz] = 0;
        }
        nv->nvrtcDestroyProgram(&prog);
        return lethe_errf(err, LETHE_EFORMAT, "%s: %s", name, nv->nvrtcGetErrorString(rc));
    }
    size_t size = 0;
    rc = ptx ? nv->nvrtcGetPTXSize(prog, &size) : nv->nvrtcGetCUBINSize(prog, &size);
    if (rc == NVRTC_SUCCESS && size == 0)
        rc = -1;
    if (rc == NVRTC_SUCCESS) {
        *out = malloc(size + 1);
        if (!*out) {
            nv->nvrtcDestroyProgram(&prog);
            return lethe_errf(err, LETHE_ENOMEM, "out of memory for a %zu-byte CUBIN", size);
        }
        rc = ptx ? nv->nvrtcGetPTX(prog, (char *)*out) : nv->nvrtcGetCUBIN(prog, (char *)*out);
        (*out)[size] = 0;
    }
    nv->nvrtcDestroyProgram(&prog);
    if (rc != NVRTC_SUCCESS) {
        free(*out);
        *out = NULL;
        /* a virtual architecture (compute_XX) compiles to PTX only */
        return lethe_errf(err, LETHE_EARG, "%s: NVRTC produced no %s (is the architecture a real one, sm_XX?)", name,
                          ptx ? "PTX" : "CUBIN");
    }
    *n = ptx ? size - (size && !(*out)[size - 1] ? 1 : 0) : size;
    return LETHE_OK;
}

int lethe_nvrtc_compile(lethe_nvrtc *nv, const char *src, const char *name, const char *const *opts, int nopts,
                        uint8_t **out, size_t *n, char **log, char *err) {
    return compile(nv, src, name, opts, nopts, 0, out, n, log, err);
}

int lethe_nvrtc_compile_ptx(lethe_nvrtc *nv, const char *src, const char *name, const char *const *opts, int nopts,
                            char **ptx, char **log, char *err) {
    size_t n;
    return compile(nv, src, name, opts, nopts, 1, (uint8_t **)ptx, &n, log, err);
}
