/* The CGA text window (0xB8000-0xBFFFF) as device memory: every guest load and store there comes through these
 * two calls, which do the access on guest RAM itself (the window stays part of the one RAM buffer that the
 * console, snapshots and the debugger read) and charge the speed model's cost per byte (vclock_charge).
 *
 * Why device memory at all: QEMU's VGA serves its text memory through its device model, one byte per call, so
 * a console scroll (a few thousand cell loads and stores) costs there what tens of thousands of instructions
 * do. Mapped as RAM, the harness could not even count those accesses. harness/pc/textwindow.py maps the window
 * and has the same work in Python for machines without the native library. */
#include <stdint.h>
#include <string.h>

#include "vclock.h"

struct text_window {        /* mirrored by textwindow.py: TextWindowState */
    uint8_t *base;          /* guest RAM at the window's first byte */
    struct vclock *clock;
    uint64_t bytes_read;    /* counted for the speed model's fit */
    uint64_t bytes_written;
};

uint64_t text_window_read(void *uc, uint64_t offset, unsigned size, void *user_data)
{
    struct text_window *w = user_data;
    uint64_t value = 0;
    (void)uc;
    memcpy(&value, w->base + offset, size <= 8 ? size : 8); /* little-endian host, as the guest */
    w->bytes_read += size;
    vclock_charge(w->clock, (uint64_t)size * w->clock->ns_per_mmio_byte);
    return value;
}

void text_window_write(void *uc, uint64_t offset, unsigned size, uint64_t value, void *user_data)
{
    struct text_window *w = user_data;
    (void)uc;
    memcpy(w->base + offset, &value, size <= 8 ? size : 8);
    w->bytes_written += size;
    vclock_charge(w->clock, (uint64_t)size * w->clock->ns_per_mmio_byte);
}

size_t text_window_size(void)
{
    return sizeof(struct text_window);
}
