/* sweep.c: `lethe sweep EXP --engine parallel|slurm`, an experiment's plan
 * split into independent `lethe` stage commands on one shared output folder
 * and handed to GNU parallel (this machine, -j N) or to Slurm (job arrays).
 *
 * The tasks fall into waves; a wave starts when every task of the one before
 * has succeeded (parallel: one `parallel` run per wave; Slurm: one job array
 * per wave, submitted with --dependency=afterok on the previous array):
 *
 *   poison   per seed                       lethe poison EXP --seed K
 *   train    per seed                       lethe train EXP --seed K
 *   unlearn  per (method, budget, seed)     lethe unlearn EXP --method M --budget B --seed K
 *   finish   one task                       lethe run EXP
 *
 * poison and train are separate waves because an attack's train stage reads
 * the poisons its poison stage crafted. The unlearn stage evaluates its model
 * and writes its record. The finish task is `lethe run` over the finished
 * folder: it finds every model and record in place, so it only evaluates each
 * seed's original model (the "original" record, which no stage command
 * writes), rebuilds results.jsonl from the records (concurrent stages each
 * rewrote it with what they saw) and prints the table and draws the plots.
 * Had a task's artifact gone missing, it would redo that work too, so a
 * finished sweep's folder is always the folder `lethe run` writes.
 *
 * Tasks are idempotent: the sweep leaves out tasks whose artifact exists, and
 * each task line is guarded by its artifact (`test -e ARTIFACT || lethe ...`),
 * so a resubmitted array element or a rerun sweep redoes only what is missing.
 * OUT/sweep.json names the experiment (the SHA-256 of its descriptor) and the
 * options that change its results; a folder holding another experiment's
 * artifacts is refused. Task lists, scripts and job logs go to OUT/sweep/.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fsutil.h"
#include "json.h"
#include "run.h"
#include "safetensors.h"
#include "sweep.h"

/* the experiment of a lethe binary built with one linked in (main.c) */
extern const lethe_program lethe_program_main __attribute__((weak));

static const char sweep_usage[] =
    "usage: lethe sweep EXPERIMENT --engine parallel|slurm [options]\n"
    "\n"
    "Runs an experiment's plan as independent stage commands (poison and train per seed, unlearn per\n"
    "method, budget and seed, then `lethe run` to write the original records and the report) on one\n"
    "output folder, by GNU parallel on this machine or by Slurm job arrays with dependencies.\n"
    "\n"
    "  --engine parallel|slurm  who runs the tasks\n"
    "  -j N                     at most N tasks at once (parallel: -j; slurm: --array=...%N)\n"
    "  --out DIR                the output folder (default out/<experiment>)\n"
    "  --dry-run                print the tasks and the commands (or job scripts), run nothing\n"
    "  --wait                   (slurm) return when the last job array has ended, with its status\n"
    "  --seeds N, --methods a,b, --no-plots       which part of the plan, as for lethe run\n"
    "  --epochs, --train-limit, --test-limit, --data-dir, --synthetic-fallback, --threads,\n"
    "  --device, --lethec-flags, --quiet          passed to every task, as for lethe run\n"
    "\n"
    "Slurm jobs take sbatch's environment variables (SBATCH_PARTITION, SBATCH_TIMELIMIT, ...).\n";

static noreturn void fail(const char *hint, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);   /* what the sweep did so far comes first */
    fprintf(stderr, "lethe: error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    if (hint)
        fprintf(stderr, "---> HINT: %s\n", hint);
    exit(1);
}

/* ---------------------------------------------------------------------------
 * growing strings and shell quoting */

typedef struct strbuf {
    char *s;
    size_t n, cap;
} strbuf;

static void sb_add(strbuf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->cap - b->n;
        int k = vsnprintf(b->s ? b->s + b->n : NULL, room, fmt, ap);
        va_end(ap);
        if (k < 0)
            fail(NULL, "bad format in a task line");
        if ((size_t)k < room) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = b->cap ? 2 * b->cap : 256;
        while (cap < b->n + (size_t)k + 1)
            cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s)
            fail(NULL, "out of memory");
        b->s = s;
        b->cap = cap;
    }
}

/* s as one shell word: as is when it has no character the shell treats
 * specially, else in single quotes */
static void sb_quote(strbuf *b, const char *s) {
    int plain = *s != 0;
    for (const char *p = s; *p && plain; p++)
        plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                strchr("_./,:=+%@-", *p);
    if (plain) {
        sb_add(b, "%s", s);
        return;
    }
    sb_add(b, "'");
    for (const char *p = s; *p; p++)
        sb_add(b, *p == '\'' ? "'\\''" : "%c", *p);
    sb_add(b, "'");
}

static char *sb_take(strbuf *b) {
    char *s = b->s ? b->s : strdup("");
    if (!s)
        fail(NULL, "out of memory");
    memset(b, 0, sizeof *b);
    return s;
}

/* ---------------------------------------------------------------------------
 * options */

typedef struct sweep_opts {
    const char *engine, *target, *out, *methods, *flags, *device;
    int jobs, seeds, dry_run, wait, plots;
    int64_t epochs, train_limit, test_limit;
    strbuf pass;              /* options every task gets, shell-quoted, each with a leading space */
} sweep_opts;

static int64_t count_of(const char *s, const char *opt) {
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || v < 0)
        fail("lethe sweep --help", "%s needs a non-negative integer, not '%s'", opt, s);
    return v;
}

static void parse_opts(int argc, char **argv, sweep_opts *o) {
    memset(o, 0, sizeof *o);
    o->flags = "";
    o->device = "cpu";
    o->plots = 1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        static const char *const passed[] = {"--epochs", "--train-limit", "--test-limit", "--data-dir",
                                             "--threads", "--device", "--lethec-flags"};
        int pass_value = 0;
        for (size_t k = 0; k < sizeof passed / sizeof *passed; k++)
            pass_value |= !strcmp(a, passed[k]);
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(sweep_usage, stdout);
            exit(0);
        }
        int takes_value = pass_value || !strcmp(a, "--engine") || !strcmp(a, "--out") || !strcmp(a, "-j") ||
                          !strcmp(a, "--jobs") || !strcmp(a, "--seeds") || !strcmp(a, "--methods");
        if (takes_value && !v)
            fail("lethe sweep --help", "%s needs a value", a);
        if (takes_value)
            i++;
        if (!strcmp(a, "--engine")) o->engine = v;
        else if (!strcmp(a, "--out")) o->out = v;
        else if (!strcmp(a, "-j") || !strcmp(a, "--jobs")) o->jobs = (int)count_of(v, a);
        else if (!strcmp(a, "--seeds")) o->seeds = (int)count_of(v, a);
        else if (!strcmp(a, "--methods")) o->methods = v;
        else if (!strcmp(a, "--dry-run")) o->dry_run = 1;
        else if (!strcmp(a, "--wait")) o->wait = 1;
        else if (!strcmp(a, "--no-plots")) o->plots = 0;
        else if (!strcmp(a, "--synthetic-fallback") || !strcmp(a, "--quiet")) sb_add(&o->pass, " %s", a);
        else if (pass_value) {
            if (!strcmp(a, "--epochs")) o->epochs = count_of(v, a);
            if (!strcmp(a, "--train-limit")) o->train_limit = count_of(v, a);
            if (!strcmp(a, "--test-limit")) o->test_limit = count_of(v, a);
            if (!strcmp(a, "--threads"))
                (void)count_of(v, a);   /* a bad value fails here, not in every task */
            if (!strcmp(a, "--device")) o->device = v;
            if (!strcmp(a, "--lethec-flags")) o->flags = v;
            sb_add(&o->pass, " %s ", a);
            sb_quote(&o->pass, v);
        } else if (a[0] == '-') fail("lethe sweep --help lists them", "unknown option '%s'", a);
        else if (!o->target) o->target = a;
        else fail("lethe sweep --help", "unexpected argument '%s'", a);
    }
    if (!o->engine || (strcmp(o->engine, "parallel") && strcmp(o->engine, "slurm")))
        fail("--engine parallel runs the tasks here with GNU parallel; --engine slurm submits Slurm job arrays",
             o->engine ? "unknown engine '%s'" : "sweep needs --engine", o->engine);
    if (strcmp(o->device, "cpu") && strcmp(o->device, "cuda"))
        fail("the devices are cpu and cuda", "unknown device '%s'", o->device);
    if (o->wait && strcmp(o->engine, "slurm"))
        fail("GNU parallel always waits; --wait is for --engine slurm", "--wait needs --engine slurm");
}

/* ---------------------------------------------------------------------------
 * the output folder's owner */

/* The identity a folder's artifacts must share with this sweep: the
 * experiment's descriptor and the options that change its results. */
typedef struct identity {
    const exp_plan *plan;
    char sha[65];
    int64_t epochs, train_limit, test_limit;
} identity;

static const char *meta_of(const st_file *f, const char *key) {
    const char *v = st_meta_get(f, key);
    return v ? v : "(none)";
}

/* a record of lethe run or a stage: its experiment, descriptor and run options */
static void check_record(const char *path, const identity *id, const char *out) {
    char err[LETHE_ERR_LEN];
    uint8_t *text = NULL;
    size_t len = 0;
    json_doc *doc = NULL;
    if (fs_read_file(path, 64 << 20, &text, &len, err) || json_parse((char *)text, len, NULL, &doc, err))
        fail("remove the file, or sweep into another --out folder", "%s is not a record: %s", path, err);
    const json_value *root = json_doc_root(doc), *name = json_obj_get(root, "experiment"),
                     *run = json_obj_get(root, "run");
    const char *exp = name && name->type == JSON_STRING ? name->str : "(none)";
    if (strcmp(exp, id->plan->name) || !strstr((const char *)text, id->plan->json))
        fail("sweep into another --out folder, or remove it",
             "%s holds another experiment's artifacts: %s is a record of experiment '%s' (this is '%s'%s)", out, path,
             exp, id->plan->name, strcmp(exp, id->plan->name) ? "" : ", defined differently");
    static const char *const keys[] = {"epochs", "train_limit", "test_limit"};
    int64_t want[] = {id->epochs, id->train_limit, id->test_limit};
    for (int k = 0; k < 3; k++) {
        const json_value *v = json_obj_get(run, keys[k]);
        if (v && v->type == JSON_NUMBER && v->i64 != want[k])
            fail("give the same options as the run that wrote it, or sweep into another --out folder",
                 "%s holds artifacts of the same experiment run with %s = %lld (this sweep: %lld): %s", out, keys[k],
                 (long long)v->i64, (long long)want[k], path);
    }
    json_doc_free(doc);
    free(text);
}

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* A folder without sweep.json (from lethe run, or a killed first sweep):
 * every record and every seed's original model must be this experiment's. */
static void check_artifacts(const char *out, const identity *id) {
    char path[PATH_MAX + 16], err[LETHE_ERR_LEN];
    snprintf(path, sizeof path, "%s/records", out);
    DIR *d = opendir(path);
    for (struct dirent *de; d && (de = readdir(d));) {
        if (de->d_name[0] == '.' || !has_suffix(de->d_name, ".json"))
            continue;
        char file[PATH_MAX + 512];
        snprintf(file, sizeof file, "%s/records/%s", out, de->d_name);
        check_record(file, id, out);
    }
    if (d)
        closedir(d);
    d = opendir(out);
    for (struct dirent *de; d && (de = readdir(d));) {
        char model[PATH_MAX + 300];
        snprintf(model, sizeof model, "%s/%s/original.safetensors", out, de->d_name);
        if (strncmp(de->d_name, "seed", 4) || !fs_exists(model))
            continue;
        st_file *f = NULL;
        if (st_load(model, 0, &f, err))
            fail("remove the file, or sweep into another --out folder", "%s", err);
        if (strcmp(meta_of(f, "experiment"), id->plan->name))
            fail("sweep into another --out folder, or remove it",
                 "%s holds another experiment's artifacts: %s is a model of experiment '%s' (this is '%s')", out, model,
                 meta_of(f, "experiment"), id->plan->name);
        st_free(f);
    }
    if (d)
        closedir(d);
}

/* Refuses a folder holding another experiment's artifacts (fail: exits). */
static void check_folder(const char *out, const identity *id) {
    char path[PATH_MAX + 16], err[LETHE_ERR_LEN];
    snprintf(path, sizeof path, "%s/sweep.json", out);
    if (!fs_exists(path)) {
        check_artifacts(out, id);
        return;
    }
    uint8_t *text = NULL;
    size_t len = 0;
    json_doc *doc = NULL;
    if (fs_read_file(path, 1 << 20, &text, &len, err) || json_parse((char *)text, len, NULL, &doc, err))
        fail("remove it if the folder holds nothing of value, or sweep into another --out folder",
             "%s is not a sweep's description: %s", path, err);
    const json_value *root = json_doc_root(doc), *name = json_obj_get(root, "experiment"),
                     *sha = json_obj_get(root, "descriptor_sha256");
    const char *exp = name && name->type == JSON_STRING ? name->str : "(none)";
    const char *theirs = sha && sha->type == JSON_STRING ? sha->str : "(none)";
    if (strcmp(theirs, id->sha))
        fail("sweep into another --out folder, or remove it",
             "%s holds another experiment's artifacts: experiment '%s' (descriptor %.12s), this is '%s' (descriptor %.12s)",
             out, exp, theirs, id->plan->name, id->sha);
    static const char *const keys[] = {"epochs", "train_limit", "test_limit"};
    int64_t want[] = {id->epochs, id->train_limit, id->test_limit};
    for (int k = 0; k < 3; k++) {
        const json_value *v = json_obj_get(root, keys[k]);
        if (!v || v->type != JSON_NUMBER || v->i64 != want[k])
            fail("give the options of the first sweep, or sweep into another --out folder",
                 "%s was swept with %s = %lld, this sweep has %lld", out, keys[k], v ? (long long)v->i64 : -1LL,
                 (long long)want[k]);
    }
    json_doc_free(doc);
    free(text);
}

static void write_identity(const char *out, const identity *id, const char *source_hash) {
    jw w;
    jw_init(&w);
    jw_obj_begin(&w);
    jw_kv_str(&w, "experiment", id->plan->name);
    jw_kv_str(&w, "descriptor_sha256", id->sha);
    jw_kv_str(&w, "source_hash", source_hash ? source_hash : "");
    jw_kv_int(&w, "epochs", id->epochs);
    jw_kv_int(&w, "train_limit", id->train_limit);
    jw_kv_int(&w, "test_limit", id->test_limit);
    jw_obj_end(&w);
    size_t len;
    const char *text = jw_finish(&w, &len);
    char path[PATH_MAX + 16], err[LETHE_ERR_LEN];
    snprintf(path, sizeof path, "%s/sweep.json", out);
    if (!text || fs_write_atomic(path, text, len, err))
        fail(NULL, "%s", text ? err : "sweep.json is not valid JSON");
    jw_free(&w);
}

/* ---------------------------------------------------------------------------
 * the tasks */

enum { WAVE_POISON, WAVE_TRAIN, WAVE_UNLEARN, WAVE_FINISH, NWAVES };
static const char *const wave_names[NWAVES] = {"poison", "train", "unlearn", "finish"};

typedef struct wave {
    char **line;
    int n, cap;
} wave;

static void wave_add(wave *w, char *line) {
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 16;
        if (!(w->line = realloc(w->line, sizeof(char *) * (size_t)w->cap)))
            fail(NULL, "out of memory");
    }
    w->line[w->n++] = line;
}

/* the record name's budget part, as run.c writes it */
static void budget_tag(double b, char *buf, size_t n) {
    if (b < 0)
        snprintf(buf, n, "full");
    else
        snprintf(buf, n, "b%g", 100 * b);
}

typedef struct sweep {
    sweep_opts o;
    const exp_plan *plan;
    char self[PATH_MAX], target[PATH_MAX], out[PATH_MAX];   /* absolute: tasks may run anywhere */
    int seeds;
    wave waves[NWAVES];
} sweep;

/* "test -e ARTIFACT || lethe STAGE EXP --out OUT", the rest appended by the caller */
static void task_head(const sweep *s, strbuf *b, const char *artifact, const char *stage) {
    if (artifact) {
        sb_add(b, "test -e ");
        sb_quote(b, artifact);
        sb_add(b, " || ");
    }
    sb_quote(b, s->self);
    sb_add(b, " %s ", stage);
    if (s->target[0]) {
        sb_quote(b, s->target);
        sb_add(b, " ");
    }
    sb_add(b, "--out ");
    sb_quote(b, s->out);
}

/* Adds a stage task unless its artifact exists; returns 1 if added. */
static int stage_task(sweep *s, int wave, const char *artifact, const char *stage, const char *args) {
    if (fs_exists(artifact))
        return 0;
    strbuf b = {0};
    task_head(s, &b, artifact, stage);
    sb_add(&b, "%s%s", args, s->o.pass.s ? s->o.pass.s : "");
    wave_add(&s->waves[wave], sb_take(&b));
    return 1;
}

static void plan_tasks(sweep *s) {
    char path[PATH_MAX + 256], args[512], tag[32], num[40];
    int pending = 0;
    for (int k = 0; k < s->seeds; k++) {
        snprintf(args, sizeof args, " --seed %d", k);
        snprintf(path, sizeof path, "%s/seed%d/poison.json", s->out, k);
        pending |= stage_task(s, WAVE_POISON, path, "poison", args);
        snprintf(path, sizeof path, "%s/seed%d/original.safetensors", s->out, k);
        pending |= stage_task(s, WAVE_TRAIN, path, "train", args);
        snprintf(path, sizeof path, "%s/records/original_b0_seed%d.json", s->out, k);
        pending |= !fs_exists(path);
    }
    for (int m = 0; m < s->plan->nmethods; m++) {
        const plan_method *pm = &s->plan->methods[m];
        if (!run_method_listed(s->o.methods, pm->name))
            continue;
        for (int b = 0; b < (pm->retrain ? 1 : s->plan->nbudgets); b++) {
            double budget = pm->retrain ? -1 : s->plan->budgets[b];
            budget_tag(budget, tag, sizeof tag);
            /* the shortest form that reads back as the same double: the stage
             * then runs with exactly the plan's budget */
            json_format_double(num, sizeof num, budget);
            for (int k = 0; k < s->seeds; k++) {
                if (pm->retrain)
                    snprintf(args, sizeof args, " --method %s --seed %d", pm->name, k);
                else
                    snprintf(args, sizeof args, " --method %s --budget %s --seed %d", pm->name, num, k);
                snprintf(path, sizeof path, "%s/records/%s_%s_seed%d.json", s->out, pm->name, tag, k);
                pending |= stage_task(s, WAVE_UNLEARN, path, "unlearn", args);
            }
        }
    }
    snprintf(path, sizeof path, "%s/table.md", s->out);
    if (!pending && fs_exists(path))
        return;
    strbuf b = {0};
    task_head(s, &b, NULL, "run");
    sb_add(&b, " --seeds %d", s->seeds);
    if (s->o.methods) {
        sb_add(&b, " --methods ");
        sb_quote(&b, s->o.methods);
    }
    sb_add(&b, "%s%s", s->o.plots ? "" : " --no-plots", s->o.pass.s ? s->o.pass.s : "");
    wave_add(&s->waves[WAVE_FINISH], sb_take(&b));
}

static void clear_waves(sweep *s) {
    for (int w = 0; w < NWAVES; w++) {
        for (int i = 0; i < s->waves[w].n; i++)
            free(s->waves[w].line[i]);
        free(s->waves[w].line);
        memset(&s->waves[w], 0, sizeof s->waves[w]);
    }
}

/* the tasks still to run, planned afresh from the folder; returns their number */
static int planned(sweep *s) {
    clear_waves(s);
    plan_tasks(s);
    int total = 0;
    for (int w = 0; w < NWAVES; w++)
        total += s->waves[w].n;
    return total;
}

/* the wave of the first task still to run */
static const char *first_undone(const sweep *s) {
    for (int w = 0; w < NWAVES; w++)
        if (s->waves[w].n)
            return wave_names[w];
    return "none";
}

/* ---------------------------------------------------------------------------
 * running the engines */

/* Runs argv (no shell); with `capture`, its standard output goes there (NUL-
 * terminated, cut to size). Returns the exit status, 128 + N when signal N
 * ended it, -1 when it could not start. */
static int spawn(char *const argv[], char *capture, size_t size) {
    int fd[2] = {-1, -1};
    if (capture && pipe(fd))
        return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (capture) {
            dup2(fd[1], 1);
            close(fd[0]);
            close(fd[1]);
        }
        execvp(argv[0], argv);
        fprintf(stderr, "lethe: error: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    if (capture) {
        close(fd[1]);
        size_t n = 0;
        ssize_t k;
        while ((k = read(fd[0], capture + n, size - 1 - n)) > 0 || (k < 0 && errno == EINTR))
            n += k > 0 ? (size_t)k : 0;
        capture[n] = 0;
        close(fd[0]);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void write_file(const char *path, const char *text) {
    char err[LETHE_ERR_LEN];
    if (fs_write_atomic(path, text, strlen(text), err))
        fail(NULL, "%s", err);
}

static void write_tasks(const sweep *s, int w, char *path, size_t size) {
    strbuf b = {0};
    for (int i = 0; i < s->waves[w].n; i++)
        sb_add(&b, "%s\n", s->waves[w].line[i]);
    snprintf(path, size, "%s/sweep/%s.tasks", s->out, wave_names[w]);
    write_file(path, b.s);
    free(b.s);
}

static void print_tasks(const sweep *s, int w) {
    printf("# wave %s: %d task%s\n", wave_names[w], s->waves[w].n, s->waves[w].n == 1 ? "" : "s");
    for (int i = 0; i < s->waves[w].n; i++)
        printf("%s\n", s->waves[w].line[i]);
}

/* The parallel command of a wave. --halt now,fail=1 stops the sweep at the
 * first failed task (after its retries); --retries 3 runs a failed task
 * again, which is safe (tasks are guarded by their artifacts) and covers
 * failures from outside the task, such as a node lost on a cluster. */
static void run_parallel(const sweep *s) {
    char jobs[32], joblog[PATH_MAX + 64], tasks[PATH_MAX + 64];
    snprintf(jobs, sizeof jobs, "%d", s->o.jobs);
    for (int w = 0; w < NWAVES; w++) {
        if (!s->waves[w].n)
            continue;
        snprintf(tasks, sizeof tasks, "%s/sweep/%s.tasks", s->out, wave_names[w]);
        snprintf(joblog, sizeof joblog, "%s/sweep/%s.joblog", s->out, wave_names[w]);
        char *argv[16];
        int n = 0;
        argv[n++] = "parallel";
        argv[n++] = "--will-cite";
        if (s->o.jobs) {
            argv[n++] = "-j";
            argv[n++] = jobs;
        }
        argv[n++] = "--joblog";
        argv[n++] = joblog;
        argv[n++] = "--halt";
        argv[n++] = "now,fail=1";
        argv[n++] = "--retries";
        argv[n++] = "3";
        argv[n++] = "-a";
        argv[n++] = tasks;
        argv[n] = NULL;
        if (s->o.dry_run) {
            print_tasks(s, w);
            printf("# run as:");
            for (int i = 0; i < n; i++)
                printf(" %s", argv[i]);
            printf("\n\n");
            continue;
        }
        write_tasks(s, w, tasks, sizeof tasks);
        fprintf(stderr, "lethe: sweep: wave %s, %d task%s\n", wave_names[w], s->waves[w].n, s->waves[w].n == 1 ? "" : "s");
        int rc = spawn(argv, NULL, 0);
        if (rc == -1 || rc == 127)
            fail("install GNU parallel (Debian: apt-get install parallel)", "cannot run GNU parallel");
        if (rc)
            fail("the failed task's output is above; run the same sweep again to continue (finished tasks are left out)",
                 "sweep wave %s failed (parallel exited with %d); its job log is %s", wave_names[w], rc, joblog);
    }
}

/* The job script of a wave: array element i runs line i + 1 of the wave's
 * task file. Slurm starts it in the submitting directory with its
 * environment (LETHE_CACHE included). A failed line is run again up to twice,
 * for the reason given at run_parallel. */
static char *job_script(const sweep *s, const char *tasks) {
    strbuf b = {0};
    sb_add(&b, "#!/bin/bash\n# lethe sweep of experiment %s: element i of the job array runs line i + 1 of\n# ",
           s->plan->name);
    sb_quote(&b, tasks);
    sb_add(&b, "\nset -u\ntasks=");
    sb_quote(&b, tasks);
    sb_add(&b, "\nline=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" \"$tasks\")\n"
               "[ -n \"$line\" ] || { echo \"lethe sweep: no task $SLURM_ARRAY_TASK_ID in $tasks\" >&2; exit 2; }\n"
               "for attempt in 1 2 3; do\n"
               "    bash -c \"$line\" && exit 0\n"
               "done\n"
               "exit 1\n");
    return sb_take(&b);
}

static void run_slurm(const sweep *s) {
    char prev[256] = "", tasks[PATH_MAX + 64], script_path[PATH_MAX + 64], name[200], output[PATH_MAX + 64],
         array[64], dependency[sizeof prev + 32], err[LETHE_ERR_LEN];
    if (!s->o.dry_run) {
        snprintf(output, sizeof output, "%s/sweep/logs", s->out);
        if (fs_mkdir_p(output, 0755, err))
            fail(NULL, "%s", err);
    } else {
        strbuf q = {0};
        sb_add(&q, "%s/sweep/logs", s->out);
        char *logs = sb_take(&q);
        sb_quote(&q, logs);
        printf("#!/bin/bash\n# lethe sweep of experiment %s on Slurm: per wave its tasks, its job script and its\n"
               "# submission\nset -e\nmkdir -p %s\n\n", s->plan->name, q.s);
        free(logs);
        free(q.s);
    }
    int last = -1, prev_wave = -1;
    for (int w = 0; w < NWAVES; w++)
        if (s->waves[w].n)
            last = w;
    for (int w = 0; w < NWAVES; w++) {
        if (!s->waves[w].n)
            continue;
        snprintf(tasks, sizeof tasks, "%s/sweep/%s.tasks", s->out, wave_names[w]);
        snprintf(script_path, sizeof script_path, "%s/sweep/%s.sbatch", s->out, wave_names[w]);
        snprintf(name, sizeof name, "--job-name=lethe-%s-%s", s->plan->name, wave_names[w]);
        snprintf(output, sizeof output, "--output=%s/sweep/logs/%s-%%a.out", s->out, wave_names[w]);
        if (s->o.jobs && s->o.jobs < s->waves[w].n)   /* %N: at most N elements at once */
            snprintf(array, sizeof array, "--array=0-%d%%%d", s->waves[w].n - 1, s->o.jobs);
        else
            snprintf(array, sizeof array, "--array=0-%d", s->waves[w].n - 1);
        char *script = job_script(s, tasks);
        char *argv[16];
        int n = 0;
        argv[n++] = "sbatch";
        argv[n++] = "--parsable";
        /* a failed wave cancels the waves after it (else they would wait
         * forever on a dependency that cannot be met, and so would --wait) */
        argv[n++] = "--kill-on-invalid-dep=yes";
        argv[n++] = name;
        argv[n++] = output;
        argv[n++] = array;
        if (prev_wave >= 0) {   /* a dry run prints the job id as the shell variable its script sets */
            if (s->o.dry_run)
                snprintf(dependency, sizeof dependency, "--dependency=afterok:$%s", wave_names[prev_wave]);
            else
                snprintf(dependency, sizeof dependency, "--dependency=afterok:%s", prev);
            argv[n++] = dependency;
        }
        if (s->o.wait && w == last)
            argv[n++] = "--wait";
        argv[n++] = script_path;
        argv[n] = NULL;
        if (s->o.dry_run) {   /* a script that does what the sweep would */
            strbuf q = {0};
            sb_quote(&q, tasks);
            printf("# wave %s: %d task%s\ncat > %s <<'TASKS'\n", wave_names[w], s->waves[w].n,
                   s->waves[w].n == 1 ? "" : "s", q.s);
            for (int i = 0; i < s->waves[w].n; i++)
                printf("%s\n", s->waves[w].line[i]);
            q.n = 0;
            sb_quote(&q, script_path);
            printf("TASKS\ncat > %s <<'SCRIPT'\n%sSCRIPT\n%s=$(", q.s, script, wave_names[w]);
            free(q.s);
            for (int i = 0; i < n; i++) {
                strbuf a = {0};
                sb_quote(&a, argv[i]);
                printf("%s%s", i ? " " : "", argv[i] == dependency ? argv[i] : a.s);
                free(a.s);
            }
            printf(")\n\n");
            free(script);
            prev_wave = w;
            continue;
        }
        write_tasks(s, w, tasks, sizeof tasks);
        write_file(script_path, script);
        free(script);
        char id[sizeof prev];
        int rc = spawn(argv, id, sizeof id);
        if (rc == -1 || rc == 127)
            fail("run the sweep on a Slurm login node (sbatch on PATH), or use --engine parallel", "cannot run sbatch");
        id[strcspn(id, ";\n")] = 0;   /* --parsable prints "jobid" or "jobid;cluster" */
        if (rc && !(s->o.wait && w == last && id[0]))
            fail("sbatch's message is above", "sbatch refused wave %s (exit status %d)", wave_names[w], rc);
        if (rc)
            fail("run the same sweep again to continue (finished tasks are left out)",
                 "Slurm job %s (wave %s) failed (sbatch --wait exited with %d); its logs are in %s/sweep/logs", id,
                 wave_names[w], rc, s->out);
        snprintf(prev, sizeof prev, "%s", id);
        prev_wave = w;
        printf("%s: Slurm job %s, %d task%s%s\n", wave_names[w], id, s->waves[w].n, s->waves[w].n == 1 ? "" : "s",
               s->o.wait && w == last ? ", ended" : "");
    }
}

/* an absolute form of path (which may not exist yet) */
static void absolute(const char *path, char *out, size_t size) {
    char cwd[PATH_MAX];
    int n = path[0] == '/' || !getcwd(cwd, sizeof cwd) ? snprintf(out, size, "%s", path)
                                                       : snprintf(out, size, "%s/%s", cwd, path);
    if (n >= (int)size)
        fail(NULL, "the path %s is too long", path);
}

int sweep_command(int argc, char **argv) {
    sweep s;
    memset(&s, 0, sizeof s);
    parse_opts(argc, argv, &s.o);
    char err[LETHE_ERR_LEN], flags[1024];
    /* the program the tasks will run: compiled into the cache now, once, so
     * that the tasks find it there instead of each compiling it */
    snprintf(flags, sizeof flags, "%s%s", s.o.flags, strcmp(s.o.device, "cuda") ? "" : " --target=cuda");
    lethe_prog prog;
    if (!s.o.target && !&lethe_program_main)
        fail("lethe sweep --help", "sweep needs an experiment");
    /* by its absolute path, as the tasks name it: the cache key holds the
     * paths of the sources */
    if (s.o.target && strcmp(s.o.target, "builtin") && !realpath(s.o.target, s.target))
        fail(NULL, "%s: %s", s.o.target, strerror(errno));
    if (!s.target[0])
        lethe_prog_linked(&lethe_program_main, "builtin", &prog);
    else if (lethe_prog_open(s.target, flags, &prog, err))
        fail(NULL, "%s", err);
    if (!prog.p->experiment)
        fail("an experiment block names the data, model, training and methods", "%s defines no experiment",
             s.o.target ? s.o.target : "builtin");
    exp_plan plan;
    if (plan_parse(prog.p->experiment, &plan, err))
        fail(NULL, "%s", err);
    s.plan = &plan;
    s.seeds = s.o.seeds ? s.o.seeds : plan.seeds;
    ssize_t len = readlink("/proc/self/exe", s.self, sizeof s.self - 1);
    if (len <= 0)
        fail(NULL, "cannot find the lethe executable (/proc/self/exe): %s", strerror(errno));
    s.self[len] = 0;
    char def[PATH_MAX];
    snprintf(def, sizeof def, "out/%s", plan.name);
    absolute(s.o.out ? s.o.out : def, s.out, sizeof s.out);

    identity id = {.plan = &plan,
                   .epochs = s.o.epochs ? s.o.epochs : plan.epochs,
                   .train_limit = s.o.train_limit,
                   .test_limit = s.o.test_limit};
    fs_sha256_hex(plan.json, strlen(plan.json), id.sha);
    check_folder(s.out, &id);
    int parallel = !strcmp(s.o.engine, "parallel");
    if (!planned(&s))
        printf("%s: every task of the sweep is done; nothing to run\n", s.out);
    else {
        if (!s.o.dry_run) {
            char dir[PATH_MAX + 16];
            snprintf(dir, sizeof dir, "%s/sweep", s.out);
            if (fs_mkdir_p(dir, 0755, err))
                fail(NULL, "%s", err);
            write_identity(s.out, &id, prog.p->source_hash);
        }
        if (parallel)
            run_parallel(&s);
        else
            run_slurm(&s);
        /* Judged by the artifacts, not by exit statuses: sbatch --wait
         * reports success for a job Slurm cancelled after a failed wave. */
        int left = !s.o.dry_run && (parallel || s.o.wait) ? planned(&s) : 0;
        char hint[PATH_MAX + 64];
        snprintf(hint, sizeof hint, "the job logs are in %s/sweep/%s", s.out, parallel ? "" : "logs/");
        if (left)
            fail(hint,
                 "the sweep ended with %d task%s undone (%s first); run it again to continue, finished tasks are left out",
                 left, left == 1 ? "" : "s", first_undone(&s));
    }
    clear_waves(&s);
    free(s.o.pass.s);
    plan_free(&plan);
    lethe_prog_close(&prog);
    return 0;
}
