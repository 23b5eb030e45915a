/* main.c: the lethe command.
 *
 *   lethe run EXPERIMENT [options]               the whole plan over every seed, then the report
 *   lethe poison|train EXPERIMENT [--seed K]     one stage of one seed
 *   lethe unlearn EXPERIMENT --method M [--budget 10%] [--seed K]
 *   lethe eval EXPERIMENT [--model FILE.safetensors] [--seed K]
 *   lethe audit EXPERIMENT --model FILE --poisons OUT/seed<K>  a model trained anywhere (audit.c)
 *   lethe report DIR [--no-plots]
 *   lethe info PROGRAM                           entry points and the plan of a program
 *   lethe sweep EXPERIMENT --engine parallel|slurm  the plan as stage commands (sweep.c)
 *   lethe hypotheses FILE.lth                    the paper's hypotheses H1, H2 (hypotheses.c)
 *   lethe make-reviews OUTDIR [options]          a synthetic review corpus (make_reviews.c)
 *   lethe tokenize FILE... [--vocab DIR]          GPT-2 token ids of text files (runtime/tokenize.c)
 *   lethe text-cache DIR [--len T]               a review folder tokenized into the cache (text_cache.c)
 *   lethe lm-step --text FILE [--init CKPT] ...   AdamW steps of GPT-2's LM loss (runtime/lm.c)
 *
 * EXPERIMENT is a .lth file (compiled through the cache) or a compiled .so.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "hypotheses.h"
#include "bpe.h"
#include "device_cuda.h"
#include "json.h"
#include "lm.h"
#include "mpi.h"
#include "nccl.h"
#include "run.h"
#include "sweep.h"
#include "text_data.h"
#include "text_tokens.h"

static const char usage[] =
    "usage: lethe COMMAND ...\n"
    "\n"
    "  run EXPERIMENT        poison, train, unlearn with every method and budget, evaluate,\n"
    "                        over every seed; then print the table and draw the plots\n"
    "  poison EXPERIMENT     write the poison set of a seed (seed<K>/poison.json)\n"
    "  train EXPERIMENT      train the poisoned model of a seed (seed<K>/original.safetensors)\n"
    "  unlearn EXPERIMENT    --method M [--budget 10%]: unlearn the original model, record the result\n"
    "  eval EXPERIMENT       [--model FILE]: evaluate a model (default: the seed's original)\n"
    "  audit EXPERIMENT      --model FILE --poisons OUT/seed<K> [--name-map lethe|torchvision|kuangliu|hf-gpt2]:\n"
    "                        the poison tests and a verdict for a model trained anywhere; its record goes to\n"
    "                        OUT/audits/ (or --record FILE). lethe poison --export FILE writes the seed's\n"
    "                        training data, poisons applied, for training elsewhere (runtime/audit.h)\n"
    "  report DIR            the table (mean +- std over seeds) and the plots of a run folder\n"
    "  info PROGRAM          the entry points and the plan of a program\n"
    "  sweep EXPERIMENT      --engine parallel|slurm: the plan as stage commands run by GNU parallel\n"
    "                        or Slurm job arrays (lethe sweep --help)\n"
    "  hypotheses FILE.lth   the paper's hypotheses H1 and H2 on linear models (lethe hypotheses --help)\n"
    "  make-reviews OUTDIR   a synthetic corpus in the IMDb archive's layout (make-reviews --help)\n"
    "  tokenize FILE...      GPT-2 token ids of text files (lethe tokenize --help)\n"
    "  text-cache DIR        tokenize a review folder once into the cache (text-cache --help)\n"
    "  lm-step --text FILE   AdamW steps of GPT-2's language-model loss from a Hugging Face\n"
    "                        checkpoint, saved in its layout (lethe lm-step --help)\n"
    "\n"
    "EXPERIMENT is a .lth file (compiled by lethec into the cache, see LETHE_CACHE) or a .so;\n"
    "a lethe binary built with an experiment linked in (make demo) runs that one by default.\n"
    "\n"
    "options:\n"
    "  --out DIR             where artifacts go (default out/<experiment>)\n"
    "  --seeds N             run N seeds (default: the experiment's)\n"
    "  --seed K              the seed of a single stage (default 0)\n"
    "  --methods a,b         only these unlearning methods\n"
    "  --init FILE           trained models start from this checkpoint in Hugging Face's GPT-2 layout\n"
    "  --epochs N            override the training epochs\n"
    "  --train-limit N       use the first N training samples (a slice of the data)\n"
    "  --test-limit N        use the first N test samples\n"
    "  --data-dir DIR        where the data set files are\n"
    "  --synthetic-fallback  use a synthetic set of the same shape when the data set is missing\n"
    "  --threads N           worker threads (default: all cores)\n"
    "  --device cpu|cuda     where the program runs (cuda: compiled with --target=cuda, on GPU 0)\n"
    "  --lethec-flags \"...\"  extra flags when compiling the experiment (e.g. \"-O2\")\n"
    "  --quiet               no progress output\n"
    "  --no-plots            (report) tables only\n";

/* An experiment compiled into this executable at build time (see the
 * Makefile's lethe-demo): the object lethec writes defines this symbol. */
extern const lethe_program lethe_program_main __attribute__((weak));

static noreturn void die(const char *fmt, const char *arg, const char *hint) {
    fprintf(stderr, "lethe: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    if (hint)
        fprintf(stderr, "---> HINT: %s\n", hint);
    exit(1);
}

static int64_t parse_count(const char *s, const char *opt) {
    char *end;
    long long v = strtoll(s, &end, 10);
    if (*end || v < 0)
        die("%s needs a non-negative integer", opt, NULL);
    return v;
}

static double parse_budget(const char *s) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || !(v > 0))
        die("bad budget '%s'", s, "write it as a share of the training compute: 10% or 0.1");
    if (*end == '%')
        v /= 100, end++;
    if (*end)
        die("bad budget '%s'", s, "write it as a share of the training compute: 10% or 0.1");
    return v;
}

static void info(const lethe_prog *prog) {
    const lethe_program *p = prog->p;
    printf("%s: ABI %u, %u entry points, target %s, sources %s\n", prog->so_path, p->abi_version, p->nentries,
           p->target ? p->target : "?", p->source_hash ? p->source_hash : "?");
    static const char *const kinds[] = {"param", "buffer", "state", "input", "scalar", "output"};
    static const char *const dtypes[] = {"bool", "i32", "f32", "f64"};
    for (uint32_t i = 0; i < p->nentries; i++) {
        const lethe_entry *e = &p->entries[i];
        printf("  %-24s %-9s %3d args, workspace %llu bytes%s\n", e->name, e->kind, e->nargs,
               (unsigned long long)e->workspace_bytes, e->uses_rng ? ", random" : "");
        for (int a = 0; a < e->nargs; a++) {
            const lethe_arg *g = &e->args[a];
            printf("      %-7s %-28s %s[", g->kind >= 0 && g->kind < 6 ? kinds[g->kind] : "?", g->name,
                   g->dtype >= 0 && g->dtype < 4 ? dtypes[g->dtype] : "?");
            for (int d = 0; d < g->rank; d++)
                printf("%s%lld", d ? ", " : "", (long long)g->shape[d]);
            printf("]");
            if (g->kind == LETHE_SCALAR)
                printf(" = %g", g->scalar_default);
            printf("\n");
        }
    }
    if (p->experiment)
        printf("experiment: %s\n", p->experiment);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "tokenize"))
        return bpe_tokenize_command(argc - 2, argv + 2);
    if (!strcmp(argv[1], "lm-step"))        /* GPT-2 fine-tuning steps, options of its own */
        return lm_step_command(argc - 2, argv + 2);
    if (!strcmp(argv[1], "text-cache"))
        return text_cache_command(argc - 2, argv + 2);
    if (!strcmp(argv[1], "make-reviews"))   /* a data tool with options of its own */
        return reviews_command(argc - 2, argv + 2);
    if (!strcmp(argv[1], "sweep"))          /* options of its own, tasks of the other commands */
        return sweep_command(argc - 2, argv + 2);
    if (!strcmp(argv[1], "hypotheses"))     /* the paper's H1 and H2, options of its own */
        return hypotheses_command(argc - 2, argv + 2);
    const char *cmd = argv[1], *target = NULL, *method = NULL, *model = NULL, *flags = "", *out = NULL, *device = "cpu";
    run_opts o = {0};
    double budget = 0.1;
    int seed = 0, seed_given = 0, plots = 1;
    audit_opts audit = {0};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define VALUE() (v ? (i++, v) : (die("%s needs a value", a, NULL), ""))
        if (!strcmp(a, "--out")) out = VALUE();
        else if (!strcmp(a, "--seeds")) o.seeds = (int)parse_count(VALUE(), a);
        else if (!strcmp(a, "--seed")) seed = (int)parse_count(VALUE(), a), seed_given = 1;
        else if (!strcmp(a, "--name-map")) audit.name_map = VALUE();
        else if (!strcmp(a, "--poisons")) audit.poisons = VALUE();
        else if (!strcmp(a, "--record")) audit.record = VALUE();
        else if (!strcmp(a, "--export")) o.export_data = VALUE();
        else if (!strcmp(a, "--methods")) o.methods = VALUE();
        else if (!strcmp(a, "--method")) method = VALUE();
        else if (!strcmp(a, "--budget")) budget = parse_budget(VALUE());
        else if (!strcmp(a, "--model")) model = VALUE();
        else if (!strcmp(a, "--epochs")) o.epochs = parse_count(VALUE(), a);
        else if (!strcmp(a, "--train-limit")) o.train_limit = parse_count(VALUE(), a);
        else if (!strcmp(a, "--test-limit")) o.test_limit = parse_count(VALUE(), a);
        else if (!strcmp(a, "--data-dir")) o.data_dir = VALUE();
        else if (!strcmp(a, "--init")) o.init = VALUE();
        else if (!strcmp(a, "--threads")) o.threads = (int)parse_count(VALUE(), a);
        else if (!strcmp(a, "--lethec-flags")) flags = VALUE();
        else if (!strcmp(a, "--device")) device = VALUE();
        else if (!strncmp(a, "--device=", 9)) device = a + 9;
        else if (!strcmp(a, "--synthetic-fallback")) o.synthetic_fallback = 1;
        else if (!strcmp(a, "--quiet")) o.quiet = 1;
        else if (!strcmp(a, "--no-plots")) plots = 0;
        else if (a[0] == '-') die("unknown option '%s'", a, "lethe --help lists them");
        else if (!target) target = a;
        else die("unexpected argument '%s'", a, "lethe --help");
#undef VALUE
    }
    if (o.export_data && strcmp(cmd, "poison"))
        die("--export is an option of lethe poison, not of %s", cmd, NULL);
    if ((audit.name_map || audit.poisons || audit.record) && strcmp(cmd, "audit"))
        die("--name-map, --poisons and --record are options of lethe audit, not of %s", cmd, NULL);
    if (!target && !&lethe_program_main)
        die("%s needs a target", cmd, "lethe --help");
    char err[LETHE_ERR_LEN];
    if (!strcmp(cmd, "report")) {
        if (report_run(target, plots, err))
            die("%s", err, NULL);
        return 0;
    }
    int known = !strcmp(cmd, "run") || !strcmp(cmd, "poison") || !strcmp(cmd, "train") || !strcmp(cmd, "unlearn") ||
                !strcmp(cmd, "eval") || !strcmp(cmd, "info") || !strcmp(cmd, "audit");
    if (!known)
        die("unknown command '%s'", cmd, "the commands are run, poison, train, unlearn, eval, audit, report, info, sweep, tokenize, lm-step and make-reviews");
    if (strcmp(device, "cpu") && strcmp(device, "cuda"))
        die("unknown device '%s'", device, "the devices are cpu and cuda");
    char cuda_flags[1024];
    if (!strcmp(device, "cuda")) {
        if (lethe_cuda_open(lethe_nccl_ordinal(), &o.device, err))   /* under mpirun: the rank's GPU on its node */
            die("%s", err,
                lethe_nccl_ordinal() ? "under mpirun, rank i of a node takes its GPU i: one GPU per rank (docs/cuda.md)"
                                     : "--device=cuda needs an NVIDIA GPU and its driver (libcuda.so.1); see docs/cuda.md");
        snprintf(cuda_flags, sizeof cuda_flags, "%s --target=cuda", flags);
        flags = cuda_flags;
        if (!o.quiet)
            fprintf(stderr, "lethe: running on %s\n", o.device->name);
    }
    /* mpirun -np N: the stages train data-parallel (runtime/mpi.h) */
    char world_flags[1100];
    if (strcmp(cmd, "info") && strcmp(cmd, "audit")) {
        if (lethe_mpi_start(err))
            die("%s", err, NULL);
        if (lethe_mpi_world() > 1) {
            if (o.device && lethe_nccl_start(o.device, err))   /* one GPU per rank, gradients through NCCL */
                die("%s", err, "see docs/cuda.md, Several GPUs");
            snprintf(world_flags, sizeof world_flags, "%s --world=%d", flags, lethe_mpi_world());
            flags = world_flags;
            if (lethe_mpi_rank() > 0) {   /* one progress display, one printout of each artifact */
                o.quiet = 1;
                if (!freopen("/dev/null", "w", stdout))
                    die("%s", "cannot silence the standard output of a rank other than 0", NULL);
            }
        }
    }
    lethe_prog prog;
    if (lethe_mpi_rank() > 0)
        lethe_mpi_barrier();   /* rank 0 compiles into the cache, the others find it there */
    if (!target || !strcmp(target, "builtin"))
        lethe_prog_linked(&lethe_program_main, "builtin", &prog);
    else if (lethe_prog_open(target, flags, &prog, err))
        die("%s", err, NULL);
    if (lethe_mpi_rank() == 0)
        lethe_mpi_barrier();
    if (!strcmp(cmd, "info")) {
        info(&prog);
        lethe_prog_close(&prog);
        return 0;
    }
    int cuda_program = prog.p->target && !strncmp(prog.p->target, "cuda:", 5);
    if (cuda_program != (o.device != NULL))
        die(cuda_program ? "%s was compiled for CUDA" : "%s was compiled for the CPU", target ? target : "builtin",
            cuda_program ? "run it with --device=cuda" : "compile it with lethec --target=cuda, or run it without --device=cuda");
    if (!prog.p->experiment)
        die("%s defines no experiment", target, "an experiment block names the data, model, training and methods");
    exp_plan plan;
    if (plan_parse(prog.p->experiment, &plan, err))
        die("%s", err, NULL);
    if (plan.world != lethe_mpi_world()) {
        char what[160];
        snprintf(what, sizeof what, "%s was compiled for %lld data-parallel ranks, and this run has %d", target ? target : "builtin",
                 (long long)plan.world, lethe_mpi_world());
        die("%s", what, "start it with mpirun -np <its ranks>, or run the .lth file, which lethe compiles for the ranks it has");
    }
    char outdir[1024];
    snprintf(outdir, sizeof outdir, "out/%s", plan.name);
    o.out = out ? out : outdir;
    int rc;
    if (!strcmp(cmd, "run")) {
        int rank = lethe_mpi_rank();
        rc = run_experiment(&prog, &plan, &o, err);
        lethe_mpi_finish();   /* the ranks' common work ends here: the report is rank 0's alone */
        if (!rc && rank == 0)
            rc = report_run(o.out, plots, err);
    } else if (!strcmp(cmd, "audit")) {
        audit.model = model;
        audit.seed = seed_given ? seed : -1;
        rc = audit_run(&prog, &plan, &o, &audit, err);
    } else {
        if (!strcmp(cmd, "unlearn") && !method)
            die("%s needs --method", cmd, "the experiment's methods are listed by `lethe info`");
        rc = run_stage(&prog, &plan, &o, cmd, method, budget, seed, model, err);
    }
    if (rc)
        die("%s", err, NULL);
    plan_free(&plan);
    /* the device first: its loaded modules point into the program's tables */
    lethe_nccl_finish(o.device);
    lethe_cuda_close(o.device);
    lethe_prog_close(&prog);
    lethe_mpi_finish();
    return 0;
}
