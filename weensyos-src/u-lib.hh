#ifndef WEENSYOS_U_LIB_HH
#define WEENSYOS_U_LIB_HH
#include "lib.hh"

// The user-level library: system-call stubs and printing.

// Every program defines this; u-crt0.S calls it and then sys_exit(0).
// C linkage so the symbol is plainly `process_main`.
extern "C" void process_main();

#define PROC_START_ADDR     0x100000UL
#define MEMSIZE_VIRTUAL     0x300000UL
#define PAGESIZE            4096UL


// make_syscall(n, a0..a3): `syscall` with the number in %rax and arguments
// in %rdi, %rsi, %rdx, %r10. The kernel destroys only %rcx and %r11 (and
// returns in %rax); "memory" because the kernel may read or write any
// buffer we passed.
inline uintptr_t make_syscall(int syscallno, uintptr_t a0 = 0, uintptr_t a1 = 0,
                              uintptr_t a2 = 0, uintptr_t a3 = 0) {
    register uintptr_t rax asm("rax") = syscallno;
    register uintptr_t rdi asm("rdi") = a0;
    register uintptr_t rsi asm("rsi") = a1;
    register uintptr_t rdx asm("rdx") = a2;
    register uintptr_t r10 asm("r10") = a3;
    asm volatile("syscall"
                 : "+a"(rax)
                 : "r"(rdi), "r"(rsi), "r"(rdx), "r"(r10)
                 : "rcx", "r11", "cc", "memory");
    return rax;
}

// sys_getpid: return the current process's pid.
inline pid_t sys_getpid() {
    return make_syscall(SYSCALL_GETPID);
}

// sys_yield: let other processes run. Returns 0.
inline int sys_yield() {
    return make_syscall(SYSCALL_YIELD);
}

// sys_panic(msg): print "USER PANIC: msg" and stop the whole system.
[[noreturn]] inline void sys_panic(const char* msg) {
    make_syscall(SYSCALL_PANIC, uintptr_t(msg));
    while (true) {              // the kernel never returns here
    }
}

// sys_page_alloc(addr): map a fresh zeroed page at page-aligned `addr` in
// [PROC_START_ADDR, MEMSIZE_VIRTUAL), replacing any page there. Returns 0,
// E_INVAL for a bad address, E_NOMEM when out of memory (nothing changed).
inline int sys_page_alloc(void* addr) {
    return make_syscall(SYSCALL_PAGE_ALLOC, uintptr_t(addr));
}

// sys_getsysname(buf): copy the system name (at most SYSNAME_MAX bytes,
// NUL included) into `buf`. Returns 0 or E_FAULT.
inline int sys_getsysname(char* buf) {
    return make_syscall(SYSCALL_GETSYSNAME, uintptr_t(buf));
}

// sys_spawn(name): start program `name` (a program, not a pseudo-command)
// as a new process, with its own fresh memory. Returns its pid, or
// E_FAULT (`name` is not a string in our accessible memory), E_RANGE (no
// NUL in the first 32 bytes: no program has so long a name), E_INVAL (no
// such program, or its ELF is bad), E_AGAIN (no free process slot) or
// E_NOMEM.
inline pid_t sys_spawn(const char* name) {
    return make_syscall(SYSCALL_SPAWN, uintptr_t(name));
}

// sys_pipewrite(buf, n): write to the system-wide pipe (a one-page kernel
// buffer). Copies as much of [buf, buf + n) as fits and returns that
// count; while the pipe is full, waits (blocked, using no CPU) until a
// reader makes room. Returns 0 for n == 0, E_FAULT if the whole buffer is
// not readable memory of ours, E_PIPE if the pipe is full and no process
// can ever read it.
inline ssize_t sys_pipewrite(const void* buf, size_t n) {
    return make_syscall(SYSCALL_PIPEWRITE, uintptr_t(buf), n);
}

// sys_piperead(buf, n): read from the pipe: waits (blocked) until it holds
// at least one byte, then returns what is there, up to n bytes. Returns 0
// for n == 0 or at end of file (the pipe is empty and no process can ever
// write to it), E_FAULT if the whole buffer is not writable memory of ours.
inline ssize_t sys_piperead(void* buf, size_t n) {
    return make_syscall(SYSCALL_PIPEREAD, uintptr_t(buf), n);
}

// sys_fork(): copy this process: a new process with a copy of every page
// of our memory and our registers. Returns 0 in the child, the child's pid
// in the parent, or E_AGAIN (no free process slot) or E_NOMEM (nothing
// was allocated) in the parent.
inline pid_t sys_fork() {
    return make_syscall(SYSCALL_FORK);
}

// sys_exit(status): end this process. Never returns.
[[noreturn]] inline void sys_exit(int status) {
    make_syscall(SYSCALL_EXIT, uintptr_t(status));
    sys_panic("sys_exit returned");
}


// End of the program image (process.ld): the heap may start above it.
extern "C" char _end[];

// Burn about `n` loop iterations of CPU without touching memory (a stand-in
// for real work between system calls).
inline void spin(unsigned long n) {
    for (unsigned long i = 0; i != n; ++i) {
        asm volatile("" : "+r"(i));
    }
}

// A deterministic pseudo-random generator (a 32-bit LCG): same seed, same
// sequence, on every run.
inline unsigned rand_next(unsigned* state) {
    *state = *state * 1664525U + 1013904223U;
    return *state >> 8;
}

// Stamp the page at `va` with marks that only process `pid` would write
// there; page_intact checks them. Sharing a page that should be private
// (a fork that does not copy, two processes given one physical page)
// shows up as a page that is not intact.
void page_stamp(pid_t pid, uintptr_t va);
bool page_intact(pid_t pid, uintptr_t va);

// "E_FAULT" etc. for a system-call result that is an error, else "ok".
const char* error_name(intptr_t r);


// Printing: straight into the CGA buffer at the shared cursor.
void printf(const char* format, ...) __attribute__((format(printf, 1, 2)));
void vprintf(const char* format, va_list val) __attribute__((format(printf, 1, 0)));

#endif
