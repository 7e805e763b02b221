#ifndef WEENSYOS_ELF_H
#define WEENSYOS_ELF_H
#include "types.h"

// The parts of the ELF64 format the program loader reads.

#define ELF_MAGIC       0x464C457FU     // "\x7FELF" as a little-endian word

struct elf_header {
    uint32_t e_magic;
    uint8_t e_class;            // ELFCLASS64
    uint8_t e_data;             // ELFDATA2LSB
    uint8_t e_version_ident;
    uint8_t e_osabi;
    uint8_t e_ident_pad[8];
    uint16_t e_type;            // ET_EXEC
    uint16_t e_machine;         // EM_X86_64
    uint32_t e_version;
    uint64_t e_entry;
    uint64_t e_phoff;           // program headers: file offset
    uint64_t e_shoff;
    uint32_t e_flags;
    uint16_t e_ehsize;
    uint16_t e_phentsize;       // size of one program header
    uint16_t e_phnum;           // number of program headers
    uint16_t e_shentsize;
    uint16_t e_shnum;
    uint16_t e_shstrndx;
};
static_assert(sizeof(elf_header) == 64, "ELF header layout");

struct elf_program {
    uint32_t p_type;
    uint32_t p_flags;
    uint64_t p_offset;          // file offset of the segment's bytes
    uint64_t p_va;              // virtual address
    uint64_t p_pa;
    uint64_t p_filesz;          // bytes in the file
    uint64_t p_memsz;           // bytes in memory (the rest is zero)
    uint64_t p_align;
};
static_assert(sizeof(elf_program) == 56, "ELF program header layout");

#define ELFCLASS64      2
#define ELFDATA2LSB     1
#define ET_EXEC         2
#define EM_X86_64       62

#define ELF_PTYPE_LOAD  1
#define ELF_PFLAG_EXEC  1
#define ELF_PFLAG_WRITE 2
#define ELF_PFLAG_READ  4

#endif
