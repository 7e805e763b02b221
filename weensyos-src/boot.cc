#include "x86-64.h"
#include "elf.h"
#include "multiboot.h"
#include "bootdisk.h"

// Stage 2 of the boot loader, called by bootentry.S in 64-bit mode on the
// boot page table (PA 0..1 GiB at VA 0), with interrupts off. It reads the
// directory that follows the loader on the disk (bootdisk.h), loads the
// kernel's segments, and then acts like a multiboot loader: each program
// file is copied to memory as a module and the information block names
// them and carries the command line. The layout is the harness's (ELF
// boot), so the kernel sees the same hand-off either way: the information,
// its module list 0x100 bytes in, then the strings, on the page at 64 KiB
// in conventional memory (where a kernel that maps only its low 2 MiB can
// read them; after the kernel if the kernel lies there), and the modules at
// max(0x200000, kernel end), each on fresh pages. A directory with no
// programs gives a course-style boot instead: the kernel alone, and EAX is
// not the multiboot magic. Nothing is printed; any error hangs.

extern "C" {
void boot_read_sectors(void* dst, uint32_t lba, uint32_t count);    // bootentry.S
[[noreturn]] void boot_main();
extern uint16_t e820_end;           // end of the BIOS memory map (bootentry.S)
extern char stage2_sectors[];       // boot.ld: the address is the count
}

#define E820_MAP            0x0500UL
#define E820_USABLE         1
#define BOOT_INFO_LOW       0x10000UL   // multiboot information and strings, if free
#define BOOT_DATA_MIN       0x200000UL  // modules: here or above the kernel
#define MBI_MODULES_OFFSET  0x100       // the module list follows the information
#define BOOT_MAP_LIMIT      0x40000000UL
#define SECTORSIZE          512
#define MAX_SECTORS_PER_READ 128

struct e820_entry {
    uint64_t base;
    uint64_t length;
    uint32_t type;
} __attribute__((packed));

// Stage 1 zeroes the bss, but nothing here relies on that: every global is
// written before it is read.
static bootdir directory;
static uint8_t bounce[SECTORSIZE];


[[noreturn]] static void boot_fail() {
    while (true) {
        asm volatile("cli; hlt");
    }
}

static uintptr_t round_up(uintptr_t x, uintptr_t align) {
    return (x + align - 1) / align * align;
}

// Byte loops: the boot loader has no library (and the compiler must not
// turn these into calls to one: -fno-tree-loop-distribute-patterns).
static void copy_bytes(void* dst, const void* src, size_t n) {
    auto d = static_cast<uint8_t*>(dst);
    auto s = static_cast<const uint8_t*>(src);
    for (size_t i = 0; i != n; ++i) {
        d[i] = s[i];
    }
}
static void zero_bytes(uintptr_t pa, size_t n) {
    auto d = reinterpret_cast<volatile uint64_t*>(pa);
    for (; n >= 8 && pa % 8 == 0; n -= 8, pa += 8) {
        *d++ = 0;
    }
    for (auto b = reinterpret_cast<volatile uint8_t*>(pa); n != 0; --n) {
        *b++ = 0;
    }
}
// Copy a string of at most `size - 1` bytes; returns the bytes written,
// NUL included.
static size_t copy_string(char* dst, const char* src, size_t size) {
    size_t n = 0;
    while (n + 1 < size && src[n] != '\0') {
        dst[n] = src[n];
        ++n;
    }
    dst[n] = '\0';
    return n + 1;
}

// Read `n` bytes at byte offset `pos` of the disk into `dst`. Whole
// sectors go straight to `dst`; a partial sector at either end goes through
// the bounce buffer, so nothing outside [dst, dst + n) is touched.
static void read_bytes(void* dst, uint64_t pos, size_t n) {
    auto d = static_cast<uint8_t*>(dst);
    while (n != 0) {
        uint32_t lba = pos / SECTORSIZE;
        size_t skip = pos % SECTORSIZE, done;
        if (skip == 0 && n >= SECTORSIZE) {
            size_t count = n / SECTORSIZE;
            if (count > MAX_SECTORS_PER_READ) {
                count = MAX_SECTORS_PER_READ;
            }
            boot_read_sectors(d, lba, count);
            done = count * SECTORSIZE;
        } else {
            boot_read_sectors(bounce, lba, 1);
            done = SECTORSIZE - skip < n ? SECTORSIZE - skip : n;
            copy_bytes(d, bounce + skip, done);
        }
        d += done;
        pos += done;
        n -= done;
    }
}

// Load the kernel's segments at their physical addresses; return its
// entry point, set `*start` to its lowest and `*end` past its highest segment.
static uintptr_t load_kernel(const bootdir_entry& kernel, uintptr_t* start, uintptr_t* end) {
    uint64_t base = uint64_t(kernel.lba) * SECTORSIZE;
    elf_header eh;
    read_bytes(&eh, base, sizeof(eh));
    if (eh.e_magic != ELF_MAGIC || eh.e_class != ELFCLASS64
        || eh.e_phentsize != sizeof(elf_program)) {
        boot_fail();
    }
    *start = BOOT_MAP_LIMIT;
    *end = 0;
    for (unsigned i = 0; i != eh.e_phnum; ++i) {
        elf_program ph;
        read_bytes(&ph, base + eh.e_phoff + i * sizeof(ph), sizeof(ph));
        if (ph.p_type != ELF_PTYPE_LOAD || ph.p_memsz == 0) {
            continue;
        }
        if (ph.p_filesz > ph.p_memsz || ph.p_pa + ph.p_memsz > BOOT_MAP_LIMIT) {
            boot_fail();
        }
        read_bytes(reinterpret_cast<void*>(ph.p_pa), base + ph.p_offset, ph.p_filesz);
        zero_bytes(ph.p_pa + ph.p_filesz, ph.p_memsz - ph.p_filesz);
        if (ph.p_pa < *start) {
            *start = ph.p_pa;
        }
        if (ph.p_pa + ph.p_memsz > *end) {
            *end = ph.p_pa + ph.p_memsz;
        }
    }
    return eh.e_entry;
}

// mem_lower and mem_upper from the BIOS memory map: the usable RAM at 0
// and the usable RAM running on from 1 MiB. False if there is no map.
static bool memory_sizes(multiboot_info* mbi) {
    bool found = false;
    auto map_end = reinterpret_cast<const e820_entry*>(uintptr_t(e820_end));
    for (auto e = reinterpret_cast<const e820_entry*>(E820_MAP); e < map_end; ++e) {
        if (e->type != E820_USABLE) {
            continue;
        }
        uint64_t end = e->base + e->length;
        if (e->base == 0) {
            mbi->mem_lower = (end < 0xA0000 ? end : 0xA0000) / 1024;
        } else if (e->base <= 0x100000 && end > 0x100000) {
            uint64_t kib = (end - 0x100000) / 1024;
            mbi->mem_upper = kib > 0xFFFFFFFFU ? 0xFFFFFFFFU : kib;
            found = true;
        }
    }
    return found;
}

[[noreturn]] static void enter_kernel(uintptr_t entry, uint32_t magic, uintptr_t mbinfo) {
    asm volatile("jmp *%2" : : "a"(magic), "b"(mbinfo), "r"(entry) : "memory");
    __builtin_unreachable();
}

void boot_main() {
    uint32_t dir_lba = 1 + uintptr_t(stage2_sectors);
    read_bytes(&directory, uint64_t(dir_lba) * SECTORSIZE, sizeof(directory));
    for (int i = 0; i != 8; ++i) {
        if (directory.magic[i] != BOOTDIR_MAGIC[i]) {
            boot_fail();
        }
    }
    if (directory.version != BOOTDIR_VERSION || directory.count == 0
        || directory.count > BOOTDIR_NENTRIES) {
        boot_fail();
    }

    uintptr_t kernel_start, kernel_end;
    uintptr_t entry = load_kernel(directory.entries[0], &kernel_start, &kernel_end);
    uint32_t nprograms = directory.count - 1;
    if (nprograms == 0) {
        enter_kernel(entry, 0, 0);      // the course's disk boot: no hand-off
    }

    // Information, module list and strings on their own page(s), zeroed.
    uintptr_t info_size = round_up(MBI_MODULES_OFFSET + nprograms * sizeof(multiboot_module)
                                   + BOOTDIR_COMMAND_MAX + nprograms * BOOTDIR_NAME_MAX, PAGESIZE);
    uintptr_t info = BOOT_INFO_LOW;
    uintptr_t cursor = round_up(kernel_end > BOOT_DATA_MIN ? kernel_end : BOOT_DATA_MIN, PAGESIZE);
    if (info + info_size > kernel_start / PAGESIZE * PAGESIZE && info < kernel_end) {
        info = cursor;                  // the kernel lies there: after it
        cursor += info_size;
    }
    uintptr_t mods_pa = info + MBI_MODULES_OFFSET;
    uintptr_t strings = mods_pa + nprograms * sizeof(multiboot_module);
    zero_bytes(info, info_size);
    auto mbi = reinterpret_cast<multiboot_info*>(info);
    auto mods = reinterpret_cast<multiboot_module*>(mods_pa);

    mbi->flags = MULTIBOOT_FLAG_CMDLINE | MULTIBOOT_FLAG_MODS;
    if (memory_sizes(mbi)) {
        mbi->flags |= MULTIBOOT_FLAG_MEM;
    }
    uintptr_t s = strings;
    mbi->cmdline = s;
    s += copy_string(reinterpret_cast<char*>(s), directory.command, BOOTDIR_COMMAND_MAX);
    for (uint32_t i = 0; i != nprograms; ++i) {
        mods[i].string = s;
        s += copy_string(reinterpret_cast<char*>(s), directory.entries[i + 1].name,
                         BOOTDIR_NAME_MAX);
    }

    // The program files, each from a fresh page, the rest of it zeroed.
    for (uint32_t i = 0; i != nprograms; ++i) {
        const bootdir_entry& e = directory.entries[i + 1];
        uintptr_t end = cursor + e.size;
        if (end > BOOT_MAP_LIMIT
            || ((mbi->flags & MULTIBOOT_FLAG_MEM)
                && end > 0x100000 + uintptr_t(mbi->mem_upper) * 1024)) {
            boot_fail();
        }
        read_bytes(reinterpret_cast<void*>(cursor), uint64_t(e.lba) * SECTORSIZE, e.size);
        zero_bytes(end, round_up(end, PAGESIZE) - end);
        mods[i].mod_start = cursor;
        mods[i].mod_end = end;
        cursor = round_up(end, PAGESIZE);
    }
    mbi->mods_count = nprograms;
    mbi->mods_addr = mods_pa;
    enter_kernel(entry, MULTIBOOT_MAGIC, info);
}
