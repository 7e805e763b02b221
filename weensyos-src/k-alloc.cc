#include "kernel.hh"

// Physical page allocator: one page at a time from the 512 pages below
// MEMSIZE_PHYSICAL. physpages[] records who owns each page and how many
// references it has (refcounts leave room for sharing, e.g. fork).

physpageinfo physpages[NPAGES];

namespace {
size_t next_search;         // rotate, so a freed page is not reused at once
size_t nfree;               // pages with owner PO_FREE

bool reserved_physical_address(uintptr_t pa) {
    return pa < PAGESIZE                                    // null page
        || (pa >= round_down(kptr2pa(_kernel_start), PAGESIZE)
            && pa < round_up(kptr2pa(_kernel_end), PAGESIZE)) // kernel image
        || (pa >= KERNEL_STACK_TOP - PAGESIZE && pa < KERNEL_STACK_TOP)
        || (pa >= IOHOLE_START && pa < IOHOLE_END);         // includes the console
}

physpageinfo& page_of(uintptr_t pa) {
    assert(pa < MEMSIZE_PHYSICAL);
    return physpages[pa / PAGESIZE];
}
}

void init_physpages() {
    nfree = 0;
    for (size_t pn = 0; pn != NPAGES; ++pn) {
        physpages[pn].owner = reserved_physical_address(pn * PAGESIZE)
            ? PO_RESERVED : PO_FREE;
        physpages[pn].refcount = 0;
        nfree += physpages[pn].owner == PO_FREE;
    }
    next_search = 0;
}

void* kalloc(size_t size) {
    if (size > PAGESIZE) {
        return nullptr;
    }
    for (size_t i = 0; i != NPAGES; ++i) {
        size_t pn = (next_search + i) % NPAGES;
        if (physpages[pn].owner == PO_FREE) {
            assert(physpages[pn].refcount == 0);
            physpages[pn].owner = PO_KERNEL;
            physpages[pn].refcount = 1;
            next_search = pn + 1;
            --nfree;
            // Zeroed: page tables and user pages both rely on it.
            void* ptr = pa2kptr(pn * PAGESIZE);
            memset(ptr, 0, PAGESIZE);
            return ptr;
        }
    }
    return nullptr;
}

void kfree(void* ptr) {
    if (!ptr) {
        return;
    }
    uintptr_t pa = kptr2pa(ptr);
    if (pa % PAGESIZE != 0 || pa >= MEMSIZE_PHYSICAL) {
        panic("kfree(%p): not a page returned by kalloc", ptr);
    }
    physpageinfo& pp = physpages[pa / PAGESIZE];
    if (pp.owner == PO_RESERVED) {
        panic("kfree(%p): page is reserved (null page, kernel, stack or I/O hole)", ptr);
    }
    if (pp.owner == PO_FREE || pp.refcount == 0) {
        panic("kfree(%p): page is already free (double free?)", ptr);
    }
    if (--pp.refcount == 0) {
        pp.owner = PO_FREE;
        ++nfree;
        // Poison it: a stale pointer into a freed page shows up quickly.
        memset(ptr, 0xCC, PAGESIZE);
    }
}

void physpage_set_owner(uintptr_t pa, int owner) {
    physpageinfo& pp = page_of(pa);
    assert(pp.owner != PO_FREE && pp.owner != PO_RESERVED && pp.refcount > 0);
    assert(owner > 0 || owner == PO_KERNEL);
    pp.owner = owner;
}

size_t kalloc_free_pages() {
    return nfree;
}
