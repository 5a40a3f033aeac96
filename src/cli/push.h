/* push.h - `signet push` (push.c). */
#ifndef SG_CLI_PUSH_H
#define SG_CLI_PUSH_H

/* argv[0] is "push". Returns the exit status: 0 with the firmware id on
 * stdout; 1 when the service refused (its problem's detail on stderr); 2 for
 * a usage, file or connection error. */
int cmd_push(int argc, char **argv);

#endif
