/* philox.h: the one random number generator of Lethe (Philox-4x32-10,
 * Salmon et al., SC'11), as plain C. The runtime uses it for poisons,
 * shuffles and initial weights; lethec emits the same arithmetic inline into
 * generated CPU code (compiler/backend_llvm.c) and CUDA code, so a stream of
 * numbers depends only on (key, counter), never on the backend.
 *
 * Layout of the counter for tensor randomness in generated code, element i of
 * a tensor drawn at call site `stream` during call number `step`:
 *     ctr = { (uint32)(i / 4), (uint32)((i / 4) >> 32), (uint32)stream, (uint32)step }
 *     key = { (uint32)seed, (uint32)(seed >> 32) }
 * and the element takes lane i % 4 of the block.
 */
#ifndef LETHE_PHILOX_H
#define LETHE_PHILOX_H

#include <math.h>
#include <stdint.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

typedef struct { uint32_t v[4]; } philox_block;

static inline philox_block philox4x32_10(const uint32_t ctr[4], uint64_t seed) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += PHILOX_W0; k1 += PHILOX_W1;
    }
    philox_block b = {{c0, c1, c2, c3}};
    return b;
}

/* Uniform in the open interval (0, 1). */
static inline float philox_u01_f32(uint32_t x) { return ((float)(x >> 8) + 0.5f) * 0x1p-24f; }
static inline double philox_u01_f64(uint32_t x) { return ((double)x + 0.5) * 0x1p-32; }

/* Box-Muller on words (a, b), evaluated in double so that float results are
 * the correctly rounded double result on every backend. Lane 0 = cos branch,
 * lane 1 = sin branch. */
static inline double philox_normal_pair(uint32_t a, uint32_t b, int lane) {
    double u1 = philox_u01_f64(a), u2 = philox_u01_f64(b);
    double r = sqrt(-2.0 * log(u1));
    double t = 6.283185307179586476925286766559 * u2;
    return lane ? r * sin(t) : r * cos(t);
}

/* Element i of the tensor drawn at (seed, stream, step). */
static inline philox_block philox_tensor_block(uint64_t seed, uint64_t stream, uint64_t step, uint64_t i) {
    uint64_t g = i / 4;
    uint32_t ctr[4] = {(uint32_t)g, (uint32_t)(g >> 32), (uint32_t)stream, (uint32_t)step};
    return philox4x32_10(ctr, seed);
}

static inline double philox_normal_at(uint64_t seed, uint64_t stream, uint64_t step, uint64_t i) {
    philox_block b = philox_tensor_block(seed, stream, step, i);
    int lane = (int)(i % 4);
    return lane < 2 ? philox_normal_pair(b.v[0], b.v[1], lane) : philox_normal_pair(b.v[2], b.v[3], lane - 2);
}

static inline double philox_uniform_at(uint64_t seed, uint64_t stream, uint64_t step, uint64_t i, int is_f32) {
    philox_block b = philox_tensor_block(seed, stream, step, i);
    uint32_t x = b.v[i % 4];
    return is_f32 ? (double)philox_u01_f32(x) : philox_u01_f64(x);
}

#endif
