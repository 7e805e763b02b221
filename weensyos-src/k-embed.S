# Course mode only (kernel-course): the user programs built into the
# kernel, as the course's kernel has them, instead of multiboot modules.
# `embedded_programs` is a table of `struct program` (kernel.hh): name,
# data, size; a null name ends it. The make file generates programs.inc,
# one `embed NAME` line per program, and builds the compact p-NAME files
# it includes (no debug sections, no page padding).

        .macro embed name
        .pushsection .rodata.embedded_images, "a"
        .balign 16
1:      .incbin "p-\name"
2:
        .popsection
        .pushsection .rodata.embedded_names, "a"
3:      .asciz "\name"
        .popsection
        .quad 3b, 1b, 2b - 1b
        .endm

        .section .rodata.embedded_programs, "a"
        .balign 8
        .globl embedded_programs
embedded_programs:
        .include "programs.inc"
        .quad 0, 0, 0

        .section .note.GNU-stack, "", @progbits
