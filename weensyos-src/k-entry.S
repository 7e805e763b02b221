# Kernel entry points: boot, exceptions/interrupts, system calls, and the
# return to user mode. Frame offsets follow `struct regstate` (x86-64.h) and
# `struct proc` (kernel.hh).

#define KERNEL_STACK_TOP    0x80000
#define USER_RSP_SAVE       (KERNEL_STACK_TOP - 16)
#define SEGSEL_APP_CODE     0x18
#define SEGSEL_APP_DATA     0x20
#define PROC_PAGETABLE      0
#define PROC_REGS           16
#define REGS_RIP            152

        .text

# kernel_entry: the boot hand-off, as boot.cc and the harness's loader
# (harness/pc/loader.py) leave it: 64-bit mode, IF = 0, boot page table at
# 0x1000; EAX = multiboot magic and RBX = multiboot information when there
# is a command line (EAX = 0 when there is none). The stack is anything:
# set ours up first.
        .section .text.kernel_entry, "ax"
        .globl kernel_entry
        .type kernel_entry, @function
kernel_entry:
        movl %eax, %r12d                # keep the hand-off registers
        movq %rbx, %r13
        movq $KERNEL_STACK_TOP, %rsp
        xorl %ebp, %ebp                 # end of the backtrace chain
        pushq $0                        # clear IF, DF, AC, ...
        popfq
        # Zero .bss ourselves rather than trust the loader.
        movq $__bss_start, %rdi
        movq $_kernel_end, %rcx
        subq %rdi, %rcx
        xorl %eax, %eax
        rep stosb
        movl %r12d, %edi                # kernel_start(magic, mbinfo)
        movq %r13, %rsi
        call kernel_start
1:      hlt                             # kernel_start never returns
        jmp 1b
        .size kernel_entry, . - kernel_entry

        .text

# Exception and interrupt stubs, one per vector, 16 bytes apart so the IDT
# can be filled by arithmetic. Each pushes a zero error code (unless the CPU
# pushes one) and the vector, then joins exception_entry.
        .balign 16
        .globl exception_stubs
exception_stubs:
        .set vector, 0
        .rept 256
        .balign 16
        .if (vector == 8) || (vector >= 10 && vector <= 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
        # the CPU pushed an error code
        .else
        pushq $0
        .endif
        pushq $vector
        jmp exception_entry
        .set vector, vector + 1
        .endr
        # Fails to assemble ("move .org backwards") if any stub outgrew 16 bytes.
        .org exception_stubs + 256 * 16

// Push the general-purpose registers in regstate order (rax ends up at the lowest address).
.macro PUSH_GPRS
        pushq %r15
        pushq %r14
        pushq %r13
        pushq %r12
        pushq %r11
        pushq %r10
        pushq %r9
        pushq %r8
        pushq %rdi
        pushq %rsi
        pushq %rbp
        pushq %rbx
        pushq %rdx
        pushq %rcx
        pushq %rax
.endm

# exception_entry: complete the regstate on the stack (the CPU pushed
# ss..rip, the stub errcode and intno), switch to the kernel page table and
# call exception(regstate*). exception() returns only for interrupts taken
# in kernel mode (the idle loop); then we resume exactly where we were.
        .globl exception_entry
        .type exception_entry, @function
exception_entry:
        subq $16, %rsp                  # gs, fs slots
        PUSH_GPRS
        movl %fs, %eax                  # zero-extends the selector
        movq %rax, 120(%rsp)
        movl %gs, %eax
        movq %rax, 128(%rsp)
        cld                             # user code may have left DF set
        movq $kernel_pagetable, %rax
        movq %rax, %cr3
        movq %rsp, %rdi
        xorl %ebp, %ebp                 # backtraces stop at the trap frame
        call exception

        # Return to the interrupted kernel code (same page table, same stack).
restore_and_iret:
        popq %rax
        popq %rcx
        popq %rdx
        popq %rbx
        popq %rbp
        popq %rsi
        popq %rdi
        popq %r8
        popq %r9
        popq %r10
        popq %r11
        popq %r12
        popq %r13
        popq %r14
        popq %r15
        addq $32, %rsp                  # fs, gs, intno, errcode
        iretq
        .size exception_entry, . - exception_entry


# syscall_entry: LSTAR points here. The CPU left RCX = user RIP, R11 = user
# RFLAGS, CS/SS = kernel, IF = DF = 0 (FMASK), and RSP = the user's. Build
# a full regstate with an iret frame on the kernel stack, switch to the
# kernel page table and call syscall(regstate*). On return, restore every
# register but RAX (the result) and iretq: sysretq is never used.
        .globl syscall_entry
        .type syscall_entry, @function
syscall_entry:
        movq %rsp, USER_RSP_SAVE        # the slot the second push overwrites
        movq $KERNEL_STACK_TOP, %rsp
        pushq $(SEGSEL_APP_DATA | 3)    # ss
        pushq USER_RSP_SAVE             # rsp (read before the write)
        pushq %r11                      # rflags
        pushq $(SEGSEL_APP_CODE | 3)    # cs
        pushq %rcx                      # rip
        pushq $0                        # errcode
        pushq $-1                       # intno = -1 (0xFFFFFFFF) ...
        movl $0, 4(%rsp)                # ... and swapgs = 0
        pushq $0                        # gs
        pushq $0                        # fs
        PUSH_GPRS
        movq $kernel_pagetable, %rax
        movq %rax, %cr3
        movq %rsp, %rdi
        xorl %ebp, %ebp
        call syscall

        # Same process again: its page table, then the saved registers.
        movq %rax, (%rsp)               # result into the saved rax
        movq current, %rax
        movq PROC_PAGETABLE(%rax), %rax
        movq %rax, %cr3
        jmp restore_and_iret
        .size syscall_entry, . - syscall_entry


# exception_return(proc* p): run `p` from its saved registers. Loads its
# page table; the kernel stack and p->regs stay mapped (kernel-only) in
# every process page table, so this code keeps running after the switch.
        .globl exception_return
        .type exception_return, @function
exception_return:
        movq PROC_PAGETABLE(%rdi), %rax
        movq %rax, %cr3
        leaq PROC_REGS(%rdi), %rsp
        jmp restore_and_iret
        .size exception_return, . - exception_return

        .section .note.GNU-stack, "", @progbits
