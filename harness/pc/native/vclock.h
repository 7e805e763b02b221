/* The virtual clock as the native hot paths see it: harness/pc/clock.py (ClockState) fills it in.
 *
 * The instruction count, the deadline and the count of deadline stops live in our engine
 * (struct weensy_icount, engine/patches/engine-api.patch), which keeps them inside translated code: a 16-bit
 * budget in the engine's CPU that each block start takes its instruction count from, as QEMU's icount does. The
 * count is base + budget_set - *budget; the count and the deadline are set through the engine (set_clock), which
 * recomputes the budget. */
#ifndef HARNESS_VCLOCK_H
#define HARNESS_VCLOCK_H
#include <stdint.h>

struct engine_icount {           /* the engine's struct weensy_icount */
    uint64_t base;               /* guest instructions executed when the budget was set */
    uint64_t deadline;           /* the engine stops at the first block that starts with instructions >= this */
    uint64_t stops;              /* how many times the deadline stopped the engine */
    uint64_t budget_set;         /* the budget when it was set */
    volatile uint16_t *budget;   /* the live budget */
};

struct vclock {
    struct engine_icount *engine;
    void (*set_clock)(struct engine_icount *engine, uint64_t instructions, uint64_t deadline);
    uint64_t ps_per_instruction; /* virtual time = instructions x ps_per_instruction / 1000 + skipped_ns */
    uint64_t skipped_ns;         /* time not counted in instructions: boot delay, event charges, halted time */
    uint64_t ns_per_syscall;     /* the charge for a system-call entry (ClockCosts.ns_per_syscall) */
    uint64_t ns_per_port_io;     /* the charge for an `in` or `out` (ClockCosts.ns_per_port_io) */
    uint64_t ns_per_mmio_byte;   /* the charge for each byte of device memory read or written */
    uint64_t deadline_ns;        /* the virtual time the armed deadline stands for (VCLOCK_NEVER: none) */
};

#define VCLOCK_NEVER UINT64_MAX

/* Guest instructions executed since power-on (exact). */
static inline uint64_t vclock_instructions(const struct vclock *c)
{
    return c->engine->base + c->engine->budget_set - *c->engine->budget;
}

/* Move the engine's deadline (the engine recomputes its budget). */
static inline void vclock_set_deadline(struct vclock *c, uint64_t deadline)
{
    c->set_clock(c->engine, vclock_instructions(c), deadline);
}

/* The first instruction count at which virtual time reaches `when_ns` (VCLOCK_NEVER beyond the counter). */
static inline uint64_t vclock_due(const struct vclock *c, uint64_t when_ns)
{
    if (when_ns <= c->skipped_ns)
        return 0;
    uint64_t left = when_ns - c->skipped_ns;
    if (left < UINT64_MAX / 1000 - c->ps_per_instruction) /* the usual case: no 128-bit division */
        return (left * 1000 + c->ps_per_instruction - 1) / c->ps_per_instruction;
    unsigned __int128 due = ((unsigned __int128)left * 1000 + c->ps_per_instruction - 1) / c->ps_per_instruction;
    return due < VCLOCK_NEVER ? (uint64_t)due : VCLOCK_NEVER;
}

/* An event the real machine pays for: advance the clock by `ns` and bring an armed deadline closer. A deadline
 * armed for a virtual time is recomputed from that time (so charges in the middle of a slice never make a timer
 * late by their rounding); one armed in instructions only (the next block) never moves later. Exactly
 * VirtualClock.charge (clock.py), so both paths give the same times. */
static inline void vclock_charge(struct vclock *c, uint64_t ns)
{
    if (!ns)
        return;
    c->skipped_ns += ns;
    uint64_t deadline = c->engine->deadline;
    if (deadline == VCLOCK_NEVER)
        return;
    uint64_t moved;
    if (c->deadline_ns != VCLOCK_NEVER) {
        moved = vclock_due(c, c->deadline_ns);
    } else {
        uint64_t closer = ns * 1000 / c->ps_per_instruction;
        moved = deadline > closer ? deadline - closer : 0;
    }
    if (moved < deadline)
        vclock_set_deadline(c, moved);
}

#endif
