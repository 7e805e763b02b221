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
    uint64_t ps_per_instruction; /* virtual time = instructions x ps_per_instruction / 1000 + skipped_ns */
    uint64_t skipped_ns;         /* time not counted in instructions: boot delay, event charges, halted time */
    uint64_t ns_per_syscall;     /* the charge for a system-call entry (ClockCosts.ns_per_syscall) */
    uint64_t ns_per_port_io;     /* the charge for an `in` or `out` (ClockCosts.ns_per_port_io) */
    uint64_t ns_per_mmio_byte;   /* the charge for each byte of device memory read or written */
};

#define VCLOCK_NEVER UINT64_MAX

/* An event the real machine pays for: advance the clock by `ns` and bring an armed deadline that much closer.
 * Exactly VirtualClock.charge (clock.py), so both paths give the same times. */
static inline void vclock_charge(struct vclock *c, uint64_t ns)
{
    if (!ns)
        return;
    c->skipped_ns += ns;
    uint64_t deadline = c->engine->deadline, closer = ns * 1000 / c->ps_per_instruction;
    if (deadline != VCLOCK_NEVER)
        c->engine->deadline = deadline > closer ? deadline - closer : 0;
}

#endif
