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

// sys_spawn(name): start program `name` as a new process; returns its pid
// or a negative error. (Not implemented yet: E_NOSYS.)
inline pid_t sys_spawn(const char* name) {
    return make_syscall(SYSCALL_SPAWN, uintptr_t(name));
}

// sys_pipewrite(buf, n) / sys_piperead(buf, n): the system-wide pipe.
// Return bytes transferred or a negative error. (Not implemented yet.)
inline ssize_t sys_pipewrite(const void* buf, size_t n) {
    return make_syscall(SYSCALL_PIPEWRITE, uintptr_t(buf), n);
}
inline ssize_t sys_piperead(void* buf, size_t n) {
    return make_syscall(SYSCALL_PIPEREAD, uintptr_t(buf), n);
}

// sys_fork(): copy this process; 0 in the child, the child's pid in the
// parent, or a negative error. (Not implemented yet.)
inline pid_t sys_fork() {
    return make_syscall(SYSCALL_FORK);
}

// sys_exit(status): end this process. Never returns.
[[noreturn]] inline void sys_exit(int status) {
    make_syscall(SYSCALL_EXIT, uintptr_t(status));
    sys_panic("sys_exit returned");
}


// Printing: straight into the CGA buffer at the shared cursor.
void printf(const char* format, ...) __attribute__((format(printf, 1, 2)));
void vprintf(const char* format, va_list val) __attribute__((format(printf, 1, 0)));

#endif
