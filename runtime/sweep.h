/* sweep.h: `lethe sweep`, an experiment's plan run as independent stage
 * commands by GNU parallel or a Slurm job array (sweep.c). */
#ifndef LETHE_SWEEP_H
#define LETHE_SWEEP_H

/* argv holds the arguments after "sweep". Returns the exit status. */
int sweep_command(int argc, char **argv);

#endif
