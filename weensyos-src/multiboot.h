#ifndef WEENSYOS_MULTIBOOT_H
#define WEENSYOS_MULTIBOOT_H
#include "types.h"

// The multiboot (version 1) hand-off: what a loader passes to the kernel in
// EAX (the magic) and EBX (the information's physical address). Shared by
// the kernel, which reads it, and our boot loader, which writes it.

#define MULTIBOOT_MAGIC         0x2BADB002U
#define MULTIBOOT_FLAG_MEM      0x1U        // mem_lower, mem_upper valid
#define MULTIBOOT_FLAG_CMDLINE  0x4U        // cmdline valid
#define MULTIBOOT_FLAG_MODS     0x8U        // mods_count, mods_addr valid

struct multiboot_info {
    uint32_t flags;
    uint32_t mem_lower;         // KiB below 1 MiB
    uint32_t mem_upper;         // KiB above 1 MiB
    uint32_t boot_device;
    uint32_t cmdline;           // physical address of a C string
    uint32_t mods_count;
    uint32_t mods_addr;         // physical address of multiboot_module[]
};
static_assert(sizeof(multiboot_info) == 28, "multiboot information layout");

struct multiboot_module {
    uint32_t mod_start;
    uint32_t mod_end;           // exclusive
    uint32_t string;            // physical address of the module's name
    uint32_t reserved;
};
static_assert(sizeof(multiboot_module) == 16, "multiboot module layout");

#endif
