#ifndef WEENSYOS_SYSCALLS_H
#define WEENSYOS_SYSCALLS_H

// The system-call ABI, in one place. The kernel, the user library and
// (through gen-syscalls.py -> build/syscalls.json) the harness all read
// this file, so they cannot disagree about numbers or signatures.
//
// Calling convention: `syscall` instruction; number in %rax, arguments in
// %rdi, %rsi, %rdx, %r10; result in %rax. %rcx and %r11 are destroyed,
// every other register is preserved.
//
// gen-syscalls.py parses the lines below: each `#define SYSCALL_<NAME> <n>`
// must carry a `// <return type> <name>(<args>)` signature comment whose
// name is <NAME> in lower case. Keep one definition per line.

#define SYSCALL_GETPID      1   // pid_t getpid()
#define SYSCALL_YIELD       2   // int yield()
#define SYSCALL_PANIC       3   // void panic(const char* msg)
#define SYSCALL_PAGE_ALLOC  4   // int page_alloc(uintptr_t addr)
#define SYSCALL_GETSYSNAME  5   // int getsysname(char* buf)
#define SYSCALL_SPAWN       6   // pid_t spawn(const char* name)
#define SYSCALL_PIPEWRITE   7   // ssize_t pipewrite(const void* buf, size_t n)
#define SYSCALL_PIPEREAD    8   // ssize_t piperead(void* buf, size_t n)
#define SYSCALL_FORK        9   // pid_t fork()
#define SYSCALL_EXIT        10  // void exit(int status)

// Error returns: small negative numbers, as in the course. A system call
// result `r` is an error iff `is_error(r)` (see lib.hh).
#define E_AGAIN     -11     // resource temporarily unavailable
#define E_NOMEM     -12     // out of memory
#define E_FAULT     -14     // bad user pointer
#define E_INVAL     -22     // invalid argument
#define E_PIPE      -32     // pipe write that no process can ever read
#define E_RANGE     -34     // result out of range
#define E_NOSYS     -38     // no such system call (or not implemented yet)

// Length of the buffer `getsysname` fills, including the terminating NUL.
#define SYSNAME_MAX         32

// Bytes the pipe holds: a writer blocks when this many are unread.
#define PIPE_SIZE           4096

#endif
