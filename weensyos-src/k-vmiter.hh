#ifndef WEENSYOS_K_VMITER_HH
#define WEENSYOS_K_VMITER_HH
#include "kernel.hh"

// `vmiter` walks over virtual address mappings.
// `pa()` and `perm()` read current addresses and permissions;
// `map()` installs new mappings.
//
// The walk stops at the first entry that is not a pointer to a lower-level
// table: a missing entry, a large (PS) page, or an L1 entry. `pep_` points
// at that entry and `level_` says which level it is at.

class vmiter {
  public:
    // initialize a `vmiter` for `pt` pointing at `va`
    inline vmiter(x86_64_pagetable* pt, uintptr_t va = 0);
    inline vmiter(const proc* p, uintptr_t va = 0);

    inline uintptr_t va() const;        // current virtual address
    inline uint64_t pa() const;         // current physical address (all ones if unmapped)
    template <typename T = void*>
    inline T kptr() const;              // kernel pointer to pa() (nullptr if unmapped)

    inline uint64_t perm() const;       // current permissions (0 if unmapped)
    inline bool present() const;        // is va present?
    inline bool writable() const;       // is va writable?
    inline bool user() const;           // is va user-accessible (unprivileged)?

    inline vmiter& find(uintptr_t va);              // change virtual address to `va`
    inline vmiter& operator+=(intptr_t delta);      // advance `va` by `delta`

    // map current va to `pa` with permissions `perm`
    // Current va must be page-aligned. Calls kalloc() to allocate
    // page table pages if necessary. Panics on failure.
    void map(uintptr_t pa, int perm);

    // like `map`, but returns 0 on success and -1 on failure
    // (nothing allocated on the way is kept after a failure)
    int try_map(uintptr_t pa, int perm);

  private:
    x86_64_pagetable* pt_;              // top-level (L4) page table
    x86_64_pageentry_t* pep_;           // entry where the walk stopped
    int level_;                         // its level: 0 = L1 ... 3 = L4
    uint64_t perm_;                     // P|W|U allowed by the levels above
    uintptr_t va_;

    static x86_64_pageentry_t zero_entry;   // stands in for non-canonical VAs

    void real_find(uintptr_t va);
};


// `ptiter` walks over the page-table pages of a page table, in depth-first
// order: all level-1 pages under a level-2 page come before that level-2
// page, and so on. It never visits the top-level page. Freeing each page
// as it is visited is safe.

class ptiter {
  public:
    // initialize a `ptiter` for `pt` pointing at `va`
    inline ptiter(x86_64_pagetable* pt, uintptr_t va = 0);
    inline ptiter(const proc* p, uintptr_t va = 0);

    inline uintptr_t va() const;            // current virtual address
    inline uintptr_t last_va() const;       // one past last va covered by ptp
    inline bool active() const;             // does va exist?
    inline x86_64_pagetable* kptr() const;  // current page table page
    inline uintptr_t pa() const;            // physical address of ptp

    // move to next page table page in depth-first order
    inline void next();

  private:
    // tables_[k] is the level-k table on the path to the current position
    // (tables_[3] is the top). While scanning, `level_` is the level of the
    // table being scanned and `va_` the address of its current entry; when
    // stopped on a page, `level_` is that page's level and `va_` the start
    // of the range it covers.
    x86_64_pagetable* tables_[4];
    int level_;
    uintptr_t va_;
    bool active_;

    void scan(bool skip_current);
};


// The first page-aligned address in [va, end) that `pt` maps present, or
// `end` if there is none (`va` page-aligned, `end` <= VA_LOWMAX). Unmapped
// stretches are skipped a whole table entry, or eight L1 entries, at a
// time, so a loop costs what is mapped rather than the size of the range:
//
//     for (vmiter it(pt, next_mapped_va(pt, lo, hi)); it.va() < hi;
//          it.find(next_mapped_va(pt, it.va() + PAGESIZE, hi))) { ... }
uintptr_t next_mapped_va(const x86_64_pagetable* pt, uintptr_t va, uintptr_t end);


inline vmiter::vmiter(x86_64_pagetable* pt, uintptr_t va)
    : pt_(pt) {
    real_find(va);
}
inline vmiter::vmiter(const proc* p, uintptr_t va)
    : vmiter(p->pagetable, va) {
}
inline uintptr_t vmiter::va() const {
    return va_;
}
inline uint64_t vmiter::pa() const {
    if (!(*pep_ & PTE_P)) {
        return uint64_t(-1);
    }
    // A leaf at level k maps a 2^(12 + 9k)-byte page.
    uintptr_t span = pageentry_span(level_);
    return (*pep_ & PTE_PAMASK & ~(span - 1)) | (va_ & (span - 1));
}
template <typename T>
inline T vmiter::kptr() const {
    return present() ? pa2kptr<T>(pa()) : nullptr;
}
inline uint64_t vmiter::perm() const {
    if (!(*pep_ & PTE_P)) {
        return 0;
    }
    // Leaf flags, with P/W/U limited by every level on the way down.
    return (*pep_ & PTE_FLAGMASK & ~(PTE_PWU & ~perm_)) & ~PTE_PS;
}
inline bool vmiter::present() const {
    return perm() & PTE_P;
}
inline bool vmiter::writable() const {
    return (perm() & PTE_PW) == PTE_PW;
}
inline bool vmiter::user() const {
    return (perm() & PTE_PU) == PTE_PU;
}
inline vmiter& vmiter::find(uintptr_t va) {
    real_find(va);
    return *this;
}
inline vmiter& vmiter::operator+=(intptr_t delta) {
    uintptr_t va = va_ + delta;
    // Fast path: same L1 table, so only the entry pointer moves.
    if (level_ == 0 && va_is_canonical(va)
        && (va >> (PAGEOFFBITS + PAGEINDEXBITS)) == (va_ >> (PAGEOFFBITS + PAGEINDEXBITS))) {
        pep_ += int(pageindex(va, 0)) - int(pageindex(va_, 0));
        va_ = va;
        return *this;
    }
    return find(va);
}


inline ptiter::ptiter(x86_64_pagetable* pt, uintptr_t va)
    : level_(3), va_(va), active_(true) {
    assert(va < VA_LOWMAX);             // lower half only
    tables_[3] = pt;
    scan(false);
}
inline ptiter::ptiter(const proc* p, uintptr_t va)
    : ptiter(p->pagetable, va) {
}
inline uintptr_t ptiter::va() const {
    return va_;
}
inline uintptr_t ptiter::last_va() const {
    return va_ + pageentry_span(level_ + 1);
}
inline bool ptiter::active() const {
    return active_;
}
inline x86_64_pagetable* ptiter::kptr() const {
    return active_ ? tables_[level_] : nullptr;
}
inline uintptr_t ptiter::pa() const {
    return kptr2pa(kptr());
}
inline void ptiter::next() {
    scan(true);
}

#endif
