/* stage_time.c: the clock of lethec --time-passes (stage_time.h). */
#include <time.h>

#include "lethec.h"
#include "stage_time.h"

bool time_passes;

static const char *const stage_names[ST_COUNT] = {
#define STAGE_NAME(id, name) name,
    STAGES(STAGE_NAME)
#undef STAGE_NAME
};

static double wall_s[ST_COUNT], cpu_s[ST_COUNT], thread_cpu_s[ST_COUNT];
static Stage stack[32];
static int depth;
static double last_wall, last_cpu, first_wall, first_cpu;

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* charge the time since the last switch to the stage on top */
static void charge(void) {
    double w = clock_s(CLOCK_MONOTONIC), c = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    if (!first_wall) {
        first_wall = w;
        first_cpu = c;
    } else {
        Stage top = depth ? stack[depth - 1] : ST_OTHER;
        wall_s[top] += w - last_wall;
        cpu_s[top] += c - last_cpu;
    }
    last_wall = w;
    last_cpu = c;
}

void stage_push(Stage s) {
    if (!time_passes)
        return;
    charge();
    if (depth == (int)(sizeof stack / sizeof *stack))
        internal_error(__FILE__, __LINE__, "stage_push: stages nested too deep");
    stack[depth++] = s;
}

void stage_pop(void) {
    if (!time_passes)
        return;
    charge();
    if (depth > 0)
        depth--;
}

void stage_detail(Stage s, double cpu) {
    if (time_passes)
        thread_cpu_s[s] += cpu;
}

void stage_report(FILE *f) {
    if (!time_passes)
        return;
    charge();
    double wall = last_wall - first_wall, cpu = last_cpu - first_cpu;
    fprintf(f, "lethec --time-passes (seconds, summed over entries; CPU: every thread)\n");
    fprintf(f, "  %-28s %9s %9s %7s\n", "stage", "wall", "cpu", "wall%");
    for (int s = 0; s < ST_COUNT; s++)
        if (wall_s[s] >= 0.0005 || cpu_s[s] >= 0.0005)
            fprintf(f, "  %-28s %9.3f %9.3f %6.1f%%\n", stage_names[s], wall_s[s], cpu_s[s],
                    wall > 0 ? 100 * wall_s[s] / wall : 0);
    fprintf(f, "  %-28s %9.3f %9.3f\n", "total", wall, cpu);
    for (int s = 0; s < ST_COUNT; s++)
        if (thread_cpu_s[s] > 0)
            fprintf(f, "  of which on threads: %-21s %9.3f cpu\n", stage_names[s], thread_cpu_s[s]);
}
