/* stage_time.h: lethec --time-passes, wall and CPU time per compiler stage.
 *
 * The stages nest as a stack: stage_push(S) charges the time so far to the
 * stage on top and starts S; stage_pop() charges S and resumes the one
 * below. So every stage's time is exclusive (lowering without the fusion
 * and memory planning inside it) and the rows add up to the whole run. Times
 * sum over entries; CPU time is the process's (every thread), so a parallel
 * stage shows more CPU than wall time. Only the main thread pushes and pops;
 * with --time-passes off both cost one branch.
 */
#ifndef LETHE_STAGE_TIME_H
#define LETHE_STAGE_TIME_H

#include <stdbool.h>
#include <stdio.h>

#define STAGES(X) \
    X(ST_READ, "read sources") \
    X(ST_PARSE, "parse") \
    X(ST_SEMA, "sema and tracing") \
    X(ST_AUTODIFF, "autodiff") \
    X(ST_FOLD, "pass: fold") \
    X(ST_SIMPLIFY, "pass: simplify") \
    X(ST_CSE, "pass: cse") \
    X(ST_DCE, "pass: dce") \
    X(ST_VERIFY, "pass: verify") \
    X(ST_FUSION, "fusion") \
    X(ST_LOWER, "lowering to loop IR") \
    X(ST_MEMPLAN, "memory planning") \
    X(ST_IR_BUILD, "LLVM IR building") \
    X(ST_IR_VERIFY, "LLVM IR verifier") \
    X(ST_LLVM_OPT, "LLVM optimisation") \
    X(ST_CODEGEN, "LLVM code generation") \
    X(ST_LLVM_PARALLEL, "LLVM opt + codegen, threads") \
    X(ST_LINK, "linking") \
    X(ST_HEADER, "header") \
    X(ST_OTHER, "other")

typedef enum Stage {
#define STAGE_ENUM(id, name) id,
    STAGES(STAGE_ENUM)
#undef STAGE_ENUM
    ST_COUNT
} Stage;

extern bool time_passes;      /* --time-passes */

void stage_push(Stage s);
void stage_pop(void);
/* cpu seconds of stage s spent on a worker thread (the LLVM modules of
 * backend_llvm_split.c); reported apart, as the process's CPU time of the
 * stage that ran the threads includes them */
void stage_detail(Stage s, double cpu);
/* the table of every stage that took time, and the total, to f */
void stage_report(FILE *f);

#endif
