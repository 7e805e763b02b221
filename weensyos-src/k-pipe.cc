#include "kernel.hh"

// The pipe: one system-wide byte stream through a one-page ring buffer in
// the kernel.
//
// pipewrite copies as much as fits and returns that count; piperead returns
// what is there, up to its length. A writer finding the pipe full and a
// reader finding it empty block: they leave the run queue (no CPU, no
// polling system calls) and the kernel finishes their call for them as soon
// as the pipe allows, storing the result in their saved %rax. So each
// transfer is exactly one system call, however long it waited.
//
// Invariant between system calls: no reader waits while the pipe holds
// data, and no writer waits while it has room.

namespace {
uint8_t pipe_buffer[PIPE_SIZE];
size_t pipe_head;           // index of the oldest byte
size_t pipe_len;            // bytes in the pipe
uint64_t wait_clock;        // stamps blocked processes, so the oldest goes first

// Copy up to `n` bytes from `p`'s `buf` into the pipe; return how many.
size_t pipe_put(const proc* p, uintptr_t buf, size_t n) {
    n = min(n, PIPE_SIZE - pipe_len);
    for (size_t done = 0; done != n; ) {
        size_t tail = (pipe_head + pipe_len) % PIPE_SIZE;
        size_t chunk = min(n - done, PIPE_SIZE - tail);
        // Checked when the call was made, and a process cannot change its
        // mappings while the kernel works for it.
        int r = copy_from_user(p, pipe_buffer + tail, buf + done, chunk);
        assert(r == 0);
        pipe_len += chunk;
        done += chunk;
    }
    return n;
}

// Copy up to `n` bytes from the pipe into `p`'s `buf`; return how many.
size_t pipe_get(const proc* p, uintptr_t buf, size_t n) {
    n = min(n, pipe_len);
    for (size_t done = 0; done != n; ) {
        size_t chunk = min(n - done, PIPE_SIZE - pipe_head);
        int r = copy_to_user(p, buf + done, pipe_buffer + pipe_head, chunk);
        assert(r == 0);
        pipe_head = (pipe_head + chunk) % PIPE_SIZE;
        pipe_len -= chunk;
        done += chunk;
    }
    return n;
}

// Finish `p`'s system call with `result` and make it runnable again.
void finish(proc* p, ssize_t result) {
    p->regs.reg_rax = result;
    p->wait = W_NONE;
    p->state = P_RUNNABLE;
}

bool block(proc* p, int kind, uintptr_t buf, size_t n) {
    p->state = P_BLOCKED;
    p->wait = kind;
    p->wait_buf = buf;
    p->wait_len = n;
    p->wait_since = ++wait_clock;
    return false;
}

proc* oldest_waiter(int kind) {
    proc* oldest = nullptr;
    for (pid_t pid = 1; pid != NPROC; ++pid) {
        proc* p = &ptable[pid];
        if (p->state == P_BLOCKED && p->wait == kind
            && (!oldest || p->wait_since < oldest->wait_since)) {
            oldest = p;
        }
    }
    return oldest;
}

// The pipe changed: finish every waiting call that can now make progress.
void pipe_wake() {
    while (true) {
        if (proc* r = pipe_len != 0 ? oldest_waiter(W_PIPEREAD) : nullptr) {
            finish(r, pipe_get(r, r->wait_buf, r->wait_len));
        } else if (proc* w = pipe_len != PIPE_SIZE ? oldest_waiter(W_PIPEWRITE) : nullptr) {
            finish(w, pipe_put(w, w->wait_buf, w->wait_len));
        } else {
            return;
        }
    }
}
}

bool pipe_write(proc* p, uintptr_t buf, size_t n) {
    assert(p->state == P_RUNNABLE);
    if (!user_range_ok(p, buf, n, false)) {
        p->regs.reg_rax = E_FAULT;
    } else if (n == 0) {
        p->regs.reg_rax = 0;
    } else if (pipe_len == PIPE_SIZE) {
        return block(p, W_PIPEWRITE, buf, n);
    } else {
        p->regs.reg_rax = pipe_put(p, buf, n);
        pipe_wake();
    }
    return true;
}

bool pipe_read(proc* p, uintptr_t buf, size_t n) {
    assert(p->state == P_RUNNABLE);
    if (!user_range_ok(p, buf, n, true)) {
        p->regs.reg_rax = E_FAULT;
    } else if (n == 0) {
        p->regs.reg_rax = 0;
    } else if (pipe_len == 0) {
        return block(p, W_PIPEREAD, buf, n);
    } else {
        p->regs.reg_rax = pipe_get(p, buf, n);
        pipe_wake();
    }
    return true;
}

void pipe_end_waits() {
    int n = 0;
    for (pid_t pid = 1; pid != NPROC; ++pid) {
        proc* p = &ptable[pid];
        if (p->state == P_BLOCKED) {
            // Blocked readers see an empty pipe nobody will write (end of
            // file); blocked writers, a full one nobody will read.
            assert(p->wait == W_PIPEREAD ? pipe_len == 0 : pipe_len == PIPE_SIZE);
            finish(p, p->wait == W_PIPEREAD ? 0 : E_PIPE);
            ++n;
        }
    }
    log_printf("pipe: no process can run; ended %d pipe wait(s)\n", n);
}
