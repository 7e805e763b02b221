#ifndef WEENSYOS_COMMANDS_H
#define WEENSYOS_COMMANDS_H

// Command-line words that are not programs, in one place. The kernel
// expands them (kernel.cc) and gen-commands.py turns this file into
// build/commands.json, so the harness accepts the same words.
//
// COMMAND(name, "programs"): a pseudo-command standing for several
// programs, started in order. Expansions name programs only (no nesting).
// OPTION(name, "what it does"): a word that sets a kernel option.
//
// gen-commands.py parses the lines below: keep one entry per line, each
// a `COMMAND(` or `OPTION(` with a plain identifier and a string literal.

#define WEENSYOS_COMMANDS(COMMAND) \
    COMMAND(friends, "alice eve") \
    COMMAND(pipe, "pipewriter pipereader") \
    COMMAND(allocators, "allocator allocator allocator allocator") \
    COMMAND(fuzzfriends, "fuzz spectator")

#define WEENSYOS_OPTIONS(OPTION) \
    OPTION(memviewer, "show the memory viewer in rows 0-22 (program output in rows 23-24)") \
    OPTION(loop, "when the last process exits, log the free pages and start the command line again")

#endif
