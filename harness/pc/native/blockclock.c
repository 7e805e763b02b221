/* The harness's deterministic clock: a Unicorn UC_HOOK_BLOCK callback in C.
 *
 * Guest time advances with executed translation blocks, never with host time. Counting blocks in C costs a few
 * nanoseconds per block, where a Python hook would cost about a microsecond, so the run loop needs no Python
 * work per instruction or per block. When the count reaches `deadline`, the hook asks Unicorn to stop; Python
 * then delivers the timer interrupt (or whatever else is due) and arms the next deadline.
 *
 * The harness compiles this file with the machine's C compiler on first use and loads it with ctypes; `stop`
 * is filled in with the address of uc_emu_stop, so no Unicorn headers or link step are needed.
 */
#include <stdint.h>

#include "blockclock.h"

void block_clock_hook(void *uc, uint64_t address, uint32_t size, void *opaque)
{
    struct block_clock *clock = opaque;
    (void) address;
    (void) size;
    if (++clock->blocks >= clock->deadline) {
        clock->deadline = UINT64_MAX;   /* stop once; Python arms the next deadline */
        clock->stops++;
        clock->stop(uc);
    }
}

/* UC_HOOK_CODE: count every executed instruction. Only for measurements (`--count-instructions`): a hook on
 * every instruction makes emulation several times slower, so the clock itself never depends on it. */
void instruction_count_hook(void *uc, uint64_t address, uint32_t size, void *opaque)
{
    (void) uc;
    (void) address;
    (void) size;
    ++*(uint64_t *) opaque;
}
