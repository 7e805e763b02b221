#ifndef WEENSYOS_BOOTDISK_H
#define WEENSYOS_BOOTDISK_H
#include "types.h"

// The disk image (see README.md, "Booting from a disk"): the boot loader in
// sectors 0..BOOT_SECTORS-1 (sector 0 is the boot sector), then this
// directory, then the files it names, each starting on a sector of its own.
// mkimage.py writes it; boot.cc reads it. Keep the two in step.

#define BOOTDIR_MAGIC       "WeensyOS"      // 8 bytes, no NUL
#define BOOTDIR_VERSION     1
#define BOOTDIR_SECTORS     4
#define BOOTDIR_COMMAND_MAX 256             // including the NUL
#define BOOTDIR_NAME_MAX    32              // including the NUL
#define BOOTDIR_NENTRIES    44

struct bootdir_entry {
    char name[BOOTDIR_NAME_MAX];            // NUL-terminated
    uint32_t lba;                           // first sector of the file
    uint32_t size;                          // bytes
};

// Entry 0 is the kernel; entries 1..count-1 are user programs, handed to
// the kernel as multiboot modules named `name`.
struct bootdir {
    char magic[8];
    uint32_t version;
    uint32_t count;                         // entries in use, >= 1
    char command[BOOTDIR_COMMAND_MAX];      // multiboot command line
    bootdir_entry entries[BOOTDIR_NENTRIES];
    uint8_t reserved[16];
};
static_assert(sizeof(bootdir_entry) == 40, "directory entry layout");
static_assert(sizeof(bootdir) == BOOTDIR_SECTORS * 512, "directory layout");

#endif
