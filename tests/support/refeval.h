/* refeval.h: the reference evaluator of the graph IR, the tests' oracle.
 *
 * Evaluates every node of a graph with plain C loops in double precision,
 * one case per op, no cleverness: it is what the LLVM and CUDA backends, the
 * passes and the gradient rules are checked against.
 *
 *     double *in[] = {x_values, w_values};          // by Entry.args index
 *     double **v = refeval(e, in, seed, counter);
 *     double *y = v[node->id];                       // shape_numel(node->shape) values
 *     double *out = refeval_out(e, v, 2);            // what args[2] receives
 *     refeval_free(v);
 *
 * Values:
 *  - Every tensor is an array of doubles, row-major, whatever its dtype;
 *    bools are 0/1 and integers are whole numbers.
 *  - Float ops are computed in double; an f32 result is not rounded to float
 *    (compare f32 backends against it with a tolerance). CONST values are
 *    used as stored (g_const already rounded them to their dtype).
 *  - Integer DIV truncates toward zero and MOD is fmod (the C operators);
 *    an integer division or remainder by zero gives 0. CAST to an integer
 *    truncates toward zero (NaN -> 0), to bool is != 0.
 *  - RAND_UNIFORM / RAND_NORMAL element i is philox_uniform_at(seed, stream,
 *    counter, i, dtype == f32) / philox_normal_at(seed, stream, counter, i)
 *    from runtime/philox.h: exactly the stream generated code draws.
 *  - GATHER / SCATTER_ADD clamp indices into [0, dim).
 *
 * Memory is malloc'd (not the compiler arena) so results outlive
 * arena_reset(); refeval_free releases it.
 */
#ifndef LETHE_REFEVAL_H
#define LETHE_REFEVAL_H

#include <stdint.h>

#include "graph.h"

/* Evaluate e->g. inputs[i] holds the values of Entry.args[i] (NULL for an
 * argument no INPUT node reads). Returns an array indexed by node id: entry
 * [n->id] holds node n's values, NULL for ids not in the graph. Nodes added
 * to the graph later have no entry: evaluate again. */
double **refeval(const Entry *e, double *const *inputs, uint64_t seed, uint64_t counter);

/* The same on a bare graph: inputs are indexed by INPUT attr.arg. */
double **refeval_graph(const Graph *g, double *const *inputs, uint64_t seed, uint64_t counter);

/* The values args[arg] receives (those of args[arg].out), NULL if not written. */
double *refeval_out(const Entry *e, double **vals, int arg);

void refeval_free(double **vals);

/* One elementwise op on scalars with the semantics above (dt: the op's
 * operand dtype, which decides integer vs float division). */
double refeval_scalar(Op op, DType dt, double a, double b, double c);

#endif
