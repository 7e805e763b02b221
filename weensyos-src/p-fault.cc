#include "u-lib.hh"

// Touch kernel memory: the kernel maps it without PTE_U, so this is a
// page fault and the kernel must kill us. Nothing may print after it.

#define KERNEL_ADDR 0x40000UL       // kernel text, mapped kernel-only

void process_main() {
    printf("fault: about to touch kernel memory\n");
    volatile int x = *reinterpret_cast<volatile int*>(KERNEL_ADDR);
    (void) x;
    // Reaching this line means isolation is broken: leave a trace in the
    // kernel log (exit status 1) without printing anything.
    sys_exit(1);
}
