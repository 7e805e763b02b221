/* The virtual clock's state, shared by blockclock.c, fastpath.c and harness/clock.py (BlockCounter). */
#ifndef HARNESS_BLOCKCLOCK_H
#define HARNESS_BLOCKCLOCK_H
#include <stdint.h>

struct block_clock {
    uint64_t blocks;        /* translation blocks executed since power-on */
    uint64_t deadline;      /* stop emulation when `blocks` reaches this */
    uint64_t stops;         /* how many times the deadline stopped emulation */
    int (*stop)(void *uc);
    uint64_t ns_per_block;  /* virtual time = blocks x ns_per_block + skipped_ns */
    uint64_t skipped_ns;    /* time jumped over while the CPU was halted */
};

#endif
