# The boot sector (stage 1 of the boot loader). The BIOS loads it to 0x7C00
# and jumps to it in real mode. It asks the BIOS for the memory map, builds
# the boot page table, goes straight to 64-bit long mode the way the
# course's loader does (one CR0 write, no 32-bit step), reads stage 2
# (boot.cc, the sectors that follow) with ATA PIO and calls it. It prints
# nothing: the screen is the kernel's to compare.

#define BOOT_STACK      0x7C00          /* grows down from the boot sector */
#define PML4            0x1000          /* boot page table: L4 ... */
#define PDPT            0x2000          /*   ... and L3 (1 GiB pages) */
#define E820_MAP        0x0500          /* BIOS memory map, after the BIOS data area */
#define E820_MAP_END    0x1000
#define E820_ENTRY      20
#define PTE_PW          0x03
#define PTE_PS          0x80
#define SEGSEL_BOOT_CODE 0x08

#define ATA_DATA        0x1F0
#define ATA_COUNT       0x1F2           /* then LBA 0-7, 8-15, 16-23, drive/head */
#define ATA_STATUS      0x1F7           /* read: status; write: command */
#define ATA_ALTSTATUS   0x3F6
#define ATA_READY       0x40C0          /* wait: (status & 0xC0) == 0x40, DRDY and not BSY */
#define ATA_DATAREADY   0x0888          /* wait: (status & 0x88) == 0x08, DRQ and not BSY */
#define ATA_READ_SECTORS 0x20

        .section .bootsector, "ax"
        .code16
        .globl boot_start
boot_start:
        cli
        cld
        xorw %ax, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movl $BOOT_STACK, %esp
        ljmp $0, $1f                    # CS = 0, whichever CS:IP the BIOS used
1:
        movw $0xEC00, %ax               # "the OS will run in long mode"
        movw $2, %bx
        int $0x15
        movw $0x2401, %ax               # A20 on: SeaBIOS did it, not every BIOS does
        int $0x15

        # The BIOS memory map (E820), 20-byte entries from E820_MAP up to
        # e820_end: stage 2 turns it into multiboot's mem_lower/mem_upper.
        xorl %ebx, %ebx
        movw $E820_MAP, %di
2:      movl $0xE820, %eax
        movl $0x534D4150, %edx          # "SMAP"
        movl $E820_ENTRY, %ecx
        int $0x15
        jc 3f                           # no map, or past the last entry
        cmpl $0x534D4150, %eax
        jne 3f
        addw $E820_ENTRY, %di
        cmpw $(E820_MAP_END - E820_ENTRY), %di
        ja 3f
        testl %ebx, %ebx                # 0: that was the last entry
        jnz 2b
3:      movw %di, e820_end

        # Boot page table: L4 entries 0, 256 and 511 -> the L3, whose
        # entries 0 and 510 are 1 GiB pages at PA 0. So PA 0..1 GiB appears
        # at VA 0, 0xFFFF800000000000 and 0xFFFFFFFF80000000.
        movw $PML4, %di
        movw $0x1000, %cx               # both pages, in words
        xorw %ax, %ax
        rep stosw
        movl $(PDPT | PTE_PW), %eax
        movl %eax, PML4
        movl %eax, PML4 + 256 * 8
        movl %eax, PML4 + 511 * 8
        movb $(PTE_PS | PTE_PW), PDPT
        movb $(PTE_PS | PTE_PW), PDPT + 510 * 8

        # Long mode: exact register values, whatever the BIOS left there.
        movl $0x30, %eax                # CR4 = PAE | PSE
        movl %eax, %cr4
        movl $PML4, %eax
        movl %eax, %cr3
        movl $0xC0000080, %ecx          # EFER = NXE | LME | SCE (LMA follows)
        movl $0x901, %eax
        xorl %edx, %edx
        wrmsr
        lgdtw boot_gdt_desc
        movl $0x80010011, %eax          # CR0 = PG | WP | ET | PE, in one write
        movl %eax, %cr0
        ljmp $SEGSEL_BOOT_CODE, $long_mode

        .code64
long_mode:
        movl $BOOT_STACK, %esp
        movl $stage2_start, %edi        # stage 2: sectors 1..stage2_sectors
        movl $1, %esi
        movl $stage2_sectors, %edx
        call boot_read_sectors
        movl $boot_bss_start, %edi      # its bss is not on the disk
        movl $boot_bss_size, %ecx
        xorl %eax, %eax
        rep stosb
        call boot_main                  # never returns

# boot_read_sectors(void* dst, uint32_t lba, uint32_t count): ATA PIO
# read of `count` (1..256) sectors from the primary master, LBA28, polling.
# A disk that reports an error never raises DRQ: the boot then hangs here.
        .globl boot_read_sectors
boot_read_sectors:
        movl %edx, %r8d
        movw $ATA_READY, %cx
        call ata_wait
        movw $ATA_COUNT, %dx
        movl %r8d, %eax                 # 256 is written as 0, which means 256
        outb %al, %dx
        movl %esi, %eax
        incw %dx
        outb %al, %dx                   # LBA bits 0-7
        shrl $8, %eax
        incw %dx
        outb %al, %dx                   #          8-15
        shrl $8, %eax
        incw %dx
        outb %al, %dx                   #          16-23
        shrl $8, %eax
        andb $0x0F, %al
        orb $0xE0, %al                  # LBA mode, master, bits 24-27
        incw %dx
        outb %al, %dx
        movb $ATA_READ_SECTORS, %al
        incw %dx
        outb %al, %dx
1:      movw $ATA_DATAREADY, %cx
        call ata_wait
        movw $ATA_DATA, %dx
        movl $128, %ecx
        rep insl
        decl %r8d
        jnz 1b
        ret

# Wait until (status & %cl) == %ch. The status is only valid 400 ns after
# a command or a sector: four reads of the alternate status take that long.
ata_wait:
        movw $ATA_ALTSTATUS, %dx
        inb %dx, %al
        inb %dx, %al
        inb %dx, %al
        inb %dx, %al
        movw $ATA_STATUS, %dx
1:      inb %dx, %al
        andb %cl, %al
        cmpb %ch, %al
        jne 1b
        ret

        .balign 8
boot_gdt:
        .quad 0
        .quad 0x00AF9A000000FFFF        # 0x08: 64-bit code, ring 0
boot_gdt_desc:
        .word boot_gdt_desc - boot_gdt - 1
        .long boot_gdt

        .globl e820_end
e820_end:
        .word E820_MAP

        # Fails to assemble ("attempt to move .org backwards") if stage 1
        # outgrew its 510 bytes.
        .org 510
        .word 0xAA55

        .section .note.GNU-stack, "", @progbits
