#include "u-lib.hh"

// intall: `int $n` from user mode for every vector n, each in a child of
// its own. Only int3 has a user-mode gate in our IDT, so every other `int
// $n` must raise #GP with error code n*8+2 (an IDT selector) and int3 a
// #BP; either way the kernel kills the child and everyone else goes on.
// (A machine that turns one of these into a double or triple fault stops
// every process instead: the parent would never print its last line.)
// The parent gives way when every process slot is taken.

// int_table + 8*n: `int $n`, then a return to the child's code (reached
// only if the interrupt was wrongly ignored).
asm(".pushsection .text\n"
    ".balign 8\n"
    "int_table:\n"
    ".set vector, 0\n"
    ".rept 256\n"
    ".balign 8\n"
    "int $vector\n"
    "ret\n"
    ".set vector, vector + 1\n"
    ".endr\n"
    ".popsection\n");

extern "C" void int_table();

void process_main() {
    pid_t pid = sys_getpid();
    int vector = 0;
    while (vector != 256) {
        pid_t r = sys_fork();
        if (r == 0) {
            auto stub = reinterpret_cast<void (*)()>(
                reinterpret_cast<uintptr_t>(&int_table) + 8 * vector);
            stub();
            panic("intall: int $%d returned", vector);
        } else if (r > 0) {
            ++vector;
        } else if (r == E_AGAIN || r == E_NOMEM) {
            sys_yield();                // let children die
        } else {
            panic("intall: fork returned %d", r);
        }
    }
    printf("intall %d: 256 vectors raised\n", pid);
    sys_exit(0);
}
