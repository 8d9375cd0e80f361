/* tools/cli/cli.h - subcommands of the `ralu` command-line tool. */
#ifndef RALUD_TOOLS_CLI_H
#define RALUD_TOOLS_CLI_H

/* `ralu check-vectors DIR [options]`; returns the process exit code. */
int cli_check_vectors(int argc, char **argv);
/* `ralu generate --model DIR --prompt TEXT -o OUT.png ...` */
int cli_generate(int argc, char **argv);

#endif
