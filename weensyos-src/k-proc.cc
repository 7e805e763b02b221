#include "kernel.hh"
#include "k-vmiter.hh"
#include "elf.h"

// Programs and processes: the table of user-program images (multiboot
// modules), loading an ELF image into a fresh address space, and tearing
// an address space down again.

program programs[NPROGRAMS];
int nprograms;

const program* program_find(const char* name) {
    for (int i = 0; i != nprograms; ++i) {
        if (strcmp(programs[i].name, name) == 0) {
            return &programs[i];
        }
    }
    return nullptr;
}


namespace {
char elf_problem[96];

// Check that `prog` is an x86-64 executable that fits in user memory and
// whose every byte the loader will read lies inside the image. Returns
// nullptr if so, or why not.
const char* elf_check(const program* prog) {
    const uintptr_t user_end = MEMSIZE_VIRTUAL - PAGESIZE;  // the stack page is ours
    auto eh = reinterpret_cast<const elf_header*>(prog->data);
    if (prog->size < sizeof(elf_header)) {
        return "bad ELF: file too short";
    } else if (eh->e_magic != ELF_MAGIC) {
        return "bad ELF: not an ELF file";
    } else if (eh->e_class != ELFCLASS64 || eh->e_data != ELFDATA2LSB) {
        return "bad ELF: not 64-bit little-endian";
    } else if (eh->e_machine != EM_X86_64) {
        return "bad ELF: not an x86-64 program";
    } else if (eh->e_type != ET_EXEC) {
        return "bad ELF: not an executable (ET_EXEC)";
    } else if (eh->e_phentsize != sizeof(elf_program)) {
        return "bad ELF: unexpected program header size";
    } else if (eh->e_phoff > prog->size
               || eh->e_phnum > (prog->size - eh->e_phoff) / sizeof(elf_program)) {
        return "bad ELF: program headers outside the file";
    }

    auto ph = reinterpret_cast<const elf_program*>(prog->data + eh->e_phoff);
    int nload = 0;
    bool entry_ok = false;
    for (int i = 0; i != eh->e_phnum; ++i) {
        if (ph[i].p_type != ELF_PTYPE_LOAD || ph[i].p_memsz == 0) {
            continue;
        }
        ++nload;
        if (ph[i].p_filesz > ph[i].p_memsz) {
            return "bad ELF: segment file size exceeds its memory size";
        } else if (ph[i].p_offset > prog->size
                   || ph[i].p_filesz > prog->size - ph[i].p_offset) {
            return "bad ELF: segment data outside the file";
        } else if (ph[i].p_va < PROC_START_ADDR || ph[i].p_va >= user_end
                   || ph[i].p_memsz > user_end - ph[i].p_va) {
            snprintf(elf_problem, sizeof(elf_problem),
                     "bad ELF: segment [%p, +%#lx) outside user memory [%p, %p)",
                     (void*) ph[i].p_va, (unsigned long) ph[i].p_memsz,
                     (void*) PROC_START_ADDR, (void*) user_end);
            return elf_problem;
        }
        if (eh->e_entry >= ph[i].p_va && eh->e_entry - ph[i].p_va < ph[i].p_memsz) {
            entry_ok = true;
        }
    }
    if (nload == 0) {
        return "bad ELF: no loadable segments";
    } else if (!entry_ok) {
        return "bad ELF: entry point outside the program";
    }
    return nullptr;
}

// Free what `pt` owns: the user pages of [PROC_START_ADDR, MEMSIZE_VIRTUAL)
// and every page-table page, top level last. Lower user-accessible
// mappings (the console) belong to the kernel and are left alone.
void free_everything(x86_64_pagetable* pt) {
    for (vmiter it(pt, PROC_START_ADDR); it.va() < MEMSIZE_VIRTUAL; it += PAGESIZE) {
        if (it.user()) {
            kfree(it.kptr());
        }
    }
    for (ptiter it(pt); it.active(); it.next()) {
        kfree(it.kptr());
    }
    kfree(pt);
}

// Map `va` in `pt` to a zeroed page for process `pid` (or reuse the user
// page already there, adding write permission if asked). Returns a kernel
// pointer to the page, or nullptr when out of memory.
uint8_t* map_program_page(x86_64_pagetable* pt, pid_t pid, uintptr_t va, int perm) {
    vmiter it(pt, va);
    if (it.user()) {
        if ((perm & PTE_W) && !it.writable()) {
            it.map(it.pa(), PTE_PWU);       // the L1 page exists: cannot fail
        }
        return it.kptr<uint8_t*>();
    }
    void* page = kalloc(PAGESIZE);
    if (!page) {
        return nullptr;
    }
    if (it.try_map(kptr2pa(page), perm) < 0) {
        kfree(page);
        return nullptr;
    }
    physpage_set_owner(kptr2pa(page), pid);
    return static_cast<uint8_t*>(page);
}

// Build `pt`: the kernel's low memory kernel-only (entry code, tables
// and the kernel stack must stay reachable until the entry code switches
// to kernel_pagetable), the console for everyone, then the program and a
// stack page. Returns false when out of memory.
bool build_address_space(x86_64_pagetable* pt, pid_t pid, const program* prog) {
    for (uintptr_t va = PAGESIZE; va < PROC_START_ADDR; va += PAGESIZE) {
        int perm = va == CONSOLE_ADDR ? PTE_PWU : PTE_PW;
        if (vmiter(pt, va).try_map(va, perm) < 0) {
            return false;
        }
    }

    auto eh = reinterpret_cast<const elf_header*>(prog->data);
    auto ph = reinterpret_cast<const elf_program*>(prog->data + eh->e_phoff);
    for (int i = 0; i != eh->e_phnum; ++i) {
        if (ph[i].p_type != ELF_PTYPE_LOAD || ph[i].p_memsz == 0) {
            continue;
        }
        uintptr_t seg_va = ph[i].p_va;
        uintptr_t file_end = seg_va + ph[i].p_filesz;
        int perm = ph[i].p_flags & ELF_PFLAG_WRITE ? PTE_PWU : PTE_PU;
        for (uintptr_t va = round_down(seg_va, PAGESIZE);
             va < seg_va + ph[i].p_memsz; va += PAGESIZE) {
            uint8_t* page = map_program_page(pt, pid, va, perm);
            if (!page) {
                return false;
            }
            // Copy the part of the file image that lands on this page; the
            // rest stays zero (kalloc zeroes).
            uintptr_t lo = max(va, seg_va), hi = min(va + PAGESIZE, file_end);
            if (lo < hi) {
                memcpy(page + (lo - va), prog->data + ph[i].p_offset + (lo - seg_va), hi - lo);
            }
        }
    }

    uintptr_t stack_va = MEMSIZE_VIRTUAL - PAGESIZE;
    assert(!vmiter(pt, stack_va).present());        // elf_check keeps it free
    return map_program_page(pt, pid, stack_va, PTE_PWU) != nullptr;
}
}


int process_setup(pid_t pid, const program* prog, const char** why) {
    assert(pid > 0 && pid < NPROC);
    proc* p = &ptable[pid];
    assert(p->state == P_FREE && p->pid == pid);

    if ((*why = elf_check(prog))) {
        return E_INVAL;
    }
    auto pt = static_cast<x86_64_pagetable*>(kalloc(PAGESIZE));
    if (!pt) {
        *why = "out of memory";
        return E_NOMEM;
    }
    if (!build_address_space(pt, pid, prog)) {
        free_everything(pt);
        *why = "out of memory";
        return E_NOMEM;
    }
    // Page-table pages belong to the process too (for memory inspection).
    physpage_set_owner(kptr2pa(pt), pid);
    for (ptiter it(pt); it.active(); it.next()) {
        physpage_set_owner(it.pa(), pid);
    }

    memset(&p->regs, 0, sizeof(p->regs));
    p->regs.reg_rip = reinterpret_cast<const elf_header*>(prog->data)->e_entry;
    p->regs.reg_rsp = MEMSIZE_VIRTUAL;
    p->regs.reg_cs = SEGSEL_APP_CODE | 3;
    p->regs.reg_ss = SEGSEL_APP_DATA | 3;
    p->regs.reg_rflags = EFLAGS_IF;
    p->pagetable = pt;
    strlcpy(p->name, prog->name, sizeof(p->name));
    p->state = P_RUNNABLE;
    return 0;
}

void process_free(proc* p) {
    assert(p->state != P_FREE && p->pagetable);
    // Never free the page table the CPU is using (the kernel runs on
    // kernel_pagetable whenever it gets here).
    assert((rdcr3() & PTE_PAMASK) != kptr2pa(p->pagetable));
    free_everything(p->pagetable);
    p->pagetable = nullptr;
    p->state = P_FREE;              // pid and name stay for post-mortems
}
