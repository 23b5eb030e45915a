/* loopinterp.h: an interpreter of the loop IR (compiler/loopir.h), the
 * oracle the lowering tests run kernels on.
 *
 * Serial and slow on purpose: every value is a double (integers and bools an
 * int64) and is rounded to the buffer's dtype only when stored; LS_GEMM is a
 * naive triple loop; LE_RAND calls runtime/philox.h exactly as generated
 * code must. It checks what a backend would silently get wrong:
 *  - every load and store (and every GEMM element) is inside its buffer, and
 *    workspace buffers inside the workspace;
 *  - no two distinct buffers used by one kernel overlap in memory;
 *  - iterations of a parallel loop are independent: an element written by
 *    one iteration is neither written nor read by another.
 */
#ifndef LETHE_LOOPINTERP_H
#define LETHE_LOOPINTERP_H

#include <stddef.h>
#include <stdint.h>

#include "loopir.h"

/* Run every kernel of p. args[i] is Entry.args[i]'s buffer (row-major, the
 * argument's dtype); workspace has p->workspace_bytes bytes. Returns 0, or
 * -1 with a message in err[0..errlen) for the first violation found. */
int loopinterp_run(const LProgram *p, void *const *args, void *workspace, uint64_t seed, uint64_t counter, char *err,
                   size_t errlen);

#endif
