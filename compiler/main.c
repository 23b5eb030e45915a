/* main.c: the lethec command. The whole compiler is the flat list of passes
 * in compile() (QBE style), with the verifier between passes and a -d flag
 * for each stage's dump.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "graph.h"
#include "loopir.h"
#include "lethe_abi.h"
#include "stage_time.h"

static const char usage[] =
    "usage: lethec IN.lth [-o OUT] [options]\n"
    "\n"
    "Compiles a .lth file: every `export` becomes a C-callable entry point with a\n"
    "descriptor (runtime/lethe_abi.h), every experiment a JSON plan in the program.\n"
    "\n"
    "  -o OUT              output path (default: IN's name with the emitted suffix)\n"
    "  --emit=KINDS        comma list of obj, so, ll, asm, header, cu (default obj); with\n"
    "                      several kinds, OUT names the first and the others get its\n"
    "                      stem with .o .so .ll .s .h .cu (cu: the CUDA source, --target=cuda)\n"
    "  --target=cpu|cuda   cpu (default): native code through LLVM; cuda: kernels compiled\n"
    "                      by NVRTC, run by the runtime's device layer (docs/cuda.md)\n"
    "  --arch=sm_XX        the GPU architecture of --target=cuda (default sm_90)\n"
    "  --nvrtc-flags=\"..\" extra NVRTC options for --target=cuda\n"
    "  -O0 -O1 -O2 -O3     LLVM optimisation level (default -O3)\n"
    "  --cpu=NAME          target CPU (default: this machine's); e.g. x86-64-v3\n"
    "  --no-fast-math      no reassociation/contraction of float math\n"
    "  --f64               compute in f64 wherever the program says f32\n"
    "  -j N, --jobs=N      threads for LLVM (default: one per CPU); the output is the same\n"
    "  --split-modules=N   obj and so: the kernels as N LLVM modules compiled in parallel\n"
    "                      (default 8; 1: one module, as --emit=ll and asm always are)\n"
    "  --name=NAME         the program table is lethe_program_NAME (default: _main)\n"
    "  -I DIR              search DIR for imports (after the importing file's folder;\n"
    "                      then $LETHE_PATH, then the graphs/ folder of this install)\n"
    "  --check             parse and check only; write nothing\n"
    "  --deps              check, and print every source file read (for build caches)\n"
    "  --experiment=NAME   instantiate this experiment (when the file has several)\n"
    "  --world=N           data-parallel for N ranks (mpirun -np N lethe ...): the\n"
    "                      experiment's rules take batch / N samples and average their\n"
    "                      gradients over the ranks through lethe_ctx.allreduce (CPU)\n"
    "                      or NCCL (--target=cuda, one GPU per rank)\n"
    "  -d STAGES           dump stages to stderr: ast,shapes,grad,opt,fusion,memory,loops,ir\n"
    "  --dump-to=FILE      write dumps to FILE instead of stderr\n"
    "  --time-passes       print the wall and CPU time of every stage to stderr\n"
    "  --help, --version\n";

typedef struct Options {
    const char *in, *out;
    unsigned emit;          /* bit per EmitKind */
    EmitKind first_emit;
    bool check_only;
    bool cuda;              /* --target=cuda */
    SemaOptions sema;
    BackendOptions backend;
    VEC(const char *) includes;
} Options;

static noreturn void usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "lethec: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(try lethec --help)\n");
    exit(2);
}

static unsigned parse_flags(const char *list, const char *const *names, const unsigned *bits, int n, const char *what) {
    unsigned out = 0;
    char *copy = xstrdup(list);
    for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
        int k = -1;
        for (int i = 0; i < n; i++)
            if (!strcmp(tok, names[i]))
                k = i;
        if (k < 0)
            usage_error(xfmt("unknown %s '%%s'", what), tok);
        out |= bits[k];
    }
    return out;
}

/* a whole number from 1 to 1024 */
static int parse_count(const char *s, const char *flag) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < 1 || v > 1024)
        usage_error(xfmt("%s wants a number from 1 to 1024, not '%%s'", flag), s);
    return (int)v;
}

static const char *self_dir(void) {
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0)
        return NULL;
    buf[n] = 0;
    char *slash = strrchr(buf, '/');
    if (slash)
        *slash = 0;
    return xstrdup(buf);
}

/* A folder as users want to read it in messages: canonical, and relative to
 * the current directory when inside it (so messages do not depend on where
 * the checkout or the build folder is). */
static const char *display_path(const char *path) {
    char real[PATH_MAX], cwd[PATH_MAX];
    if (!realpath(path, real))
        return path;
    size_t n = getcwd(cwd, sizeof cwd) ? strlen(cwd) : 0;
    if (n && !strncmp(real, cwd, n) && real[n] == '/')
        return xstrdup(real + n + 1);
    return xstrdup(real);
}

static void parse_args(int argc, char **argv, Options *o) {
    static const char *const emit_names[] = {"obj", "so", "ll", "asm", "header", "cu"};
    static const unsigned emit_bits[] = {1 << EMIT_OBJ, 1 << EMIT_SO, 1 << EMIT_LL, 1 << EMIT_ASM, 1 << EMIT_HEADER,
                                         1 << EMIT_CU};
    static const char *const dump_names[] = {"ast", "shapes", "grad", "opt", "fusion", "memory", "loops", "ir"};
    static const unsigned dump_bits[] = {DUMP_AST, DUMP_SHAPES, DUMP_GRAD, DUMP_OPT, DUMP_FUSION, DUMP_MEMORY, DUMP_LOOPS, DUMP_IR};
    o->backend.opt_level = 3;
    o->backend.fast_math = true;
    o->backend.program_symbol = LETHE_PROGRAM_SYMBOL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            exit(0);
        } else if (!strcmp(a, "--version")) {
            printf("lethec %s (LLVM 19 and CUDA backends, ABI %d)\n", LETHEC_VERSION, LETHE_ABI_VERSION);
            exit(0);
        } else if (!strcmp(a, "-o")) {
            if (++i == argc)
                usage_error("%s needs a path", "-o");
            o->out = argv[i];
        } else if (!strncmp(a, "--emit=", 7)) {
            o->emit = parse_flags(a + 7, emit_names, emit_bits, 6, "--emit kind");
            for (int k = 0; k < 6; k++)
                if (!strncmp(a + 7, emit_names[k], strlen(emit_names[k]))) {
                    o->first_emit = (EmitKind)k;
                    break;
                }
        } else if (a[0] == '-' && a[1] == 'O' && a[2] >= '0' && a[2] <= '3' && !a[3]) {
            o->backend.opt_level = a[2] - '0';
        } else if (!strncmp(a, "--cpu=", 6)) {
            o->backend.cpu = a + 6;
        } else if (!strncmp(a, "--target=", 9)) {
            if (strcmp(a + 9, "cpu") && strcmp(a + 9, "cuda"))
                usage_error("unknown target '%s' (cpu or cuda)", a + 9);
            o->cuda = !strcmp(a + 9, "cuda");
        } else if (!strncmp(a, "--arch=", 7)) {
            o->backend.cuda_arch = a + 7;
        } else if (!strncmp(a, "--nvrtc-flags=", 14)) {
            o->backend.nvrtc_flags = a + 14;
        } else if (!strcmp(a, "--no-fast-math")) {
            o->backend.fast_math = false;
        } else if (!strcmp(a, "-j") || !strncmp(a, "--jobs=", 7)) {
            const char *n = a[1] == 'j' ? (++i < argc ? argv[i] : NULL) : a + 7;
            o->backend.jobs = n ? parse_count(n, "-j") : 0;
            if (!n)
                usage_error("%s needs a number of threads", "-j");
        } else if (!strncmp(a, "--split-modules=", 16)) {
            o->backend.split_modules = parse_count(a + 16, "--split-modules");
        } else if (!strcmp(a, "--f64")) {
            o->sema.promote_f64 = true;
        } else if (!strncmp(a, "--name=", 7)) {
            o->backend.program_symbol = xfmt("lethe_program_%s", a + 7);
        } else if (!strcmp(a, "-I") || (!strncmp(a, "-I", 2) && a[2])) {
            const char *dir = a[2] ? a + 2 : (++i < argc ? argv[i] : NULL);
            if (!dir)
                usage_error("%s needs a directory", "-I");
            vec_push(&o->includes, dir);
        } else if (!strcmp(a, "--check")) {
            o->check_only = true;
        } else if (!strcmp(a, "--deps")) {
            o->check_only = true;
            o->sema.print_deps = true;
        } else if (!strncmp(a, "--experiment=", 13)) {
            o->sema.experiment = a + 13;
        } else if (!strncmp(a, "--world=", 8)) {
            o->sema.world = parse_count(a + 8, "--world");
        } else if (!strcmp(a, "-d")) {
            if (++i == argc)
                usage_error("%s needs a list of stages", "-d");
            dump_flags |= parse_flags(argv[i], dump_names, dump_bits, 8, "-d stage");
        } else if (!strcmp(a, "--time-passes")) {
            time_passes = true;
        } else if (!strncmp(a, "--dump-to=", 10)) {
            dump_file = fopen(a + 10, "w");
            if (!dump_file)
                usage_error("cannot write %s", a + 10);
        } else if (a[0] == '-' && a[1]) {
            usage_error("unknown option '%s'", a);
        } else {
            if (o->in)
                usage_error("one input file at a time (got a second: %s)", a);
            o->in = a;
        }
    }
    if (!o->in)
        usage_error("%s", "no input file");
    if (!o->emit) {
        o->emit = 1 << EMIT_OBJ;
        o->first_emit = EMIT_OBJ;
    }
    if ((o->emit & (1u << EMIT_CU)) && !o->cuda)
        usage_error("%s writes CUDA source: add --target=cuda", "--emit=cu");
    const char *env = getenv("LETHE_PATH");
    if (env)
        for (char *p = strtok(xstrdup(env), ":"); p; p = strtok(NULL, ":"))
            vec_push(&o->includes, p);
    const char *dir = self_dir();
    if (dir)
        vec_push(&o->includes, display_path(xfmt("%s/../graphs", dir)));
    o->sema.include_dirs = o->includes.data;
    o->sema.ninclude = o->includes.len;
    if (!dump_file)
        dump_file = stderr;
}

static const char *suffix_of(EmitKind k) {
    static const char *s[] = {".o", ".so", ".ll", ".s", ".h", ".cu"};
    return s[k];
}

static const char *output_path(const Options *o, EmitKind k) {
    const char *base = o->out ? o->out : o->in;
    if (o->out && k == o->first_emit)
        return o->out;
    const char *slash = strrchr(base, '/');
    const char *dot = strrchr(base, '.');
    size_t stem = dot && (!slash || dot > slash) ? (size_t)(dot - base) : strlen(base);
    if (!o->out && slash)   /* default outputs go to the current directory */
        return xfmt("%.*s%s", (int)(stem - (size_t)(slash + 1 - base)), slash + 1, suffix_of(k));
    return xfmt("%.*s%s", (int)stem, base, suffix_of(k));
}

static int compile(Options *o) {
    stage_push(ST_READ);
    SrcFile *file = srcfile_read(o->in);
    stage_pop();
    if (!file) {
        fprintf(stderr, "lethec: cannot read %s\n", o->in);
        return 1;
    }
    stage_push(ST_PARSE);
    Program *prog = parse_file(file);
    stage_pop();
    if (dump_flags & DUMP_AST)
        ast_dump(prog, dump_file);
    stage_push(ST_SEMA);
    CompUnit *cu = sema_program(prog, &o->sema);
    stage_pop();
    if (dump_flags & DUMP_SHAPES)
        for (int i = 0; i < cu->entries.len; i++)
            graph_dump(cu->entries.data[i], dump_file);
    if (o->check_only)
        return 0;
    /* on a GPU every loop that may run in parallel should */
    LowerOptions lopt = {.parallel_min_work = o->cuda ? 1 : 1 << 15, .top_gemms = o->cuda};
    LProgram **progs = xalloc(sizeof(LProgram *) * (size_t)(cu->entries.len + 1));
    for (int i = 0; i < cu->entries.len; i++) {
        Entry *e = cu->entries.data[i];
        optimize_entry(e);
        if (dump_flags & DUMP_OPT)
            graph_dump(e, dump_file);
        stage_push(ST_LOWER);
        progs[i] = lower_entry(e, &lopt);
        stage_pop();
        if (dump_flags & DUMP_LOOPS)
            loopir_dump(progs[i], dump_file);
    }
    for (int k = 0; k <= EMIT_CU; k++) {
        if (!(o->emit & (1u << k)))
            continue;
        if (o->cuda)
            cuda_emit(cu, progs, cu->entries.len, (EmitKind)k, output_path(o, (EmitKind)k), &o->backend);
        else if (k == EMIT_HEADER) {
            stage_push(ST_HEADER);
            emit_header(cu, progs, cu->entries.len, output_path(o, EMIT_HEADER), o->backend.program_symbol);
            stage_pop();
        } else
            llvm_emit(cu, progs, cu->entries.len, (EmitKind)k, output_path(o, (EmitKind)k), &o->backend);
    }
    return 0;
}

int main(int argc, char **argv) {
    Options o = {0};
    parse_args(argc, argv, &o);
    jmp_buf recover;
    diag_recover = &recover;
    if (setjmp(recover)) {
        arena_reset();
        return 1;
    }
    int rc = compile(&o);
    stage_report(stderr);
    if (dump_file && dump_file != stderr)
        fclose(dump_file);
    arena_reset();
    return rc;
}
