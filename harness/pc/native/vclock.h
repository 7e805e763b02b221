/* The virtual clock as the native hot paths see it: harness/pc/clock.py (ClockState) fills it in.
 *
 * The instruction count, the deadline and the count of deadline stops live in our engine
 * (struct weensy_icount, engine/patches/engine-api.patch), which keeps them inside translated code. */
#ifndef HARNESS_VCLOCK_H
#define HARNESS_VCLOCK_H
#include <stdint.h>

struct engine_icount {           /* the engine's struct weensy_icount */
    uint64_t instructions;       /* guest instructions executed since power-on */
    uint64_t deadline;           /* the engine stops at the first block that starts with instructions >= this */
    uint64_t stops;              /* how many times the deadline stopped the engine */
};

struct vclock {
    struct engine_icount *engine;
    uint64_t ns_per_instruction; /* virtual time = instructions x ns_per_instruction + skipped_ns */
    uint64_t skipped_ns;         /* time jumped over while the CPU was halted */
};

#endif
