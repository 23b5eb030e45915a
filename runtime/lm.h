/* lm.h: `lethe lm-step`, language-model training steps on a GPT-2 checkpoint
 * in Hugging Face's layout (runtime/lm.c). */
#ifndef LETHE_LM_H
#define LETHE_LM_H

/* argv holds what follows the command name. Returns the exit status. */
int lm_step_command(int argc, char **argv);

#endif
