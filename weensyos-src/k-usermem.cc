#include "kernel.hh"
#include "k-vmiter.hh"

// Reaching user memory from system calls. The kernel runs on
// kernel_pagetable, where every physical page is reachable, so a user
// pointer passed through unchecked would let a process read or write any
// memory with the kernel's privilege (a confused deputy). Every access goes
// through the caller's own page table instead, checked over the whole range
// before a single byte moves, and page by page, because consecutive virtual
// pages need not be consecutive physical pages.

bool user_range_ok(const proc* p, uintptr_t va, size_t n, bool write) {
    if (n == 0) {
        return true;
    }
    uintptr_t end = va + n;
    if (end < va) {
        return false;                   // wraps around the address space
    }
    uint64_t need = PTE_PU | (write ? PTE_W : 0);
    // Ends: the first page that fails, which comes before the loop could
    // wrap (nothing near the top of the address space is user memory).
    for (vmiter it(p, round_down(va, PAGESIZE)); it.va() < end; it += PAGESIZE) {
        if ((it.perm() & need) != need) {
            return false;
        }
    }
    return true;
}

namespace {
// Move `n` bytes between user address `va` of `p` and kernel address
// `kva`, one page at a time. The range must already be checked.
void copy_user_pages(const proc* p, uintptr_t va, uintptr_t kva, size_t n, bool to_user) {
    while (n != 0) {
        vmiter it(p, va);
        assert(it.user());
        size_t chunk = min(n, size_t(PAGESIZE - va % PAGESIZE));
        if (to_user) {
            memcpy(it.kptr(), reinterpret_cast<const void*>(kva), chunk);
        } else {
            memcpy(reinterpret_cast<void*>(kva), it.kptr(), chunk);
        }
        va += chunk, kva += chunk, n -= chunk;
    }
}
}

int copy_to_user(const proc* p, uintptr_t dst, const void* src, size_t n) {
    if (!user_range_ok(p, dst, n, true)) {
        return E_FAULT;
    }
    copy_user_pages(p, dst, reinterpret_cast<uintptr_t>(src), n, true);
    return 0;
}

int copy_from_user(const proc* p, void* dst, uintptr_t src, size_t n) {
    if (!user_range_ok(p, src, n, false)) {
        return E_FAULT;
    }
    copy_user_pages(p, src, reinterpret_cast<uintptr_t>(dst), n, false);
    return 0;
}

ssize_t copy_string_from_user(const proc* p, uintptr_t src, char* buf, size_t size) {
    assert(size > 0);
    // Byte by byte: the string's length is unknown until its NUL, and a
    // string may legitimately end one byte before an unmapped page.
    vmiter it(p, src);
    for (size_t len = 0; len != size; ++len, it += 1) {
        if (!it.user() || it.va() < src) {  // (it.va() < src: wrapped)
            buf[min(len, size - 1)] = '\0';
            return E_FAULT;
        }
        char c = *it.kptr<const char*>();
        if (c == '\0') {
            buf[len] = '\0';
            return len;
        }
        if (len + 1 < size) {
            buf[len] = c;
        }
    }
    buf[size - 1] = '\0';
    return E_RANGE;
}
