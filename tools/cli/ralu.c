/* tools/cli/ralu.c - the `ralu` command-line tool: subcommand dispatch. */
#include <stdio.h>
#include <string.h>

#include "tools/cli/cli.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: ralu <command> [options]\n"
               "commands:\n"
               "  check-vectors DIR   run the golden test-vector cases under DIR\n"
               "                      (ralu check-vectors --help for options)\n"
               "  generate            text to image: --model DIR --prompt TEXT -o OUT.png\n"
               "                      (ralu generate --help for options)\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "check-vectors") == 0)
        return cli_check_vectors(argc - 1, argv + 1);
    if (strcmp(argv[1], "generate") == 0)
        return cli_generate(argc - 1, argv + 1);
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "ralu: unknown command \"%s\"\n", argv[1]);
    usage(stderr);
    return 2;
}
