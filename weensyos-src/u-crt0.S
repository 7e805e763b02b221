# Process entry point. The kernel starts us at _start with RSP = 0x300000
# (16-byte aligned) and every other register zero. Call process_main, then
# exit with status 0 if it returns.
#include "syscalls.h"

        .section .text.start, "ax"
        .globl _start
        .type _start, @function
_start:
        xorl %ebp, %ebp                 # end of the frame chain
        call process_main
        xorl %edi, %edi                 # sys_exit(0)
        movl $SYSCALL_EXIT, %eax
        syscall
1:      jmp 1b                          # exit does not return
        .size _start, . - _start

        .section .note.GNU-stack, "", @progbits
