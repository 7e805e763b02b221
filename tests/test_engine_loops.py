"""The engine's `unroll` patch (engine/README.md): a loop of one block whose body computes in registers only (a
spin loop, an arithmetic loop) runs as one block holding up to 16 copies of its body. Each copy but the last
leaves the block when the loop ends, giving back the copies that did not run, and the block starts only when
every copy before its last would have started; otherwise the body runs once. So the count, every stop and
every register are those of the loop run one body per block, at any deadline and whichever copy the loop ends
in: these tests run the same code to the same deadlines with the patch on and off.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from unicorn import x86_const as X

from .test_engine_paths import booted, run_engine

# Loops of 1 to 40 iterations (so that every copy of a 16-copy block is the one the loop ends in), each inner
# iteration 4 instructions: %rbx sums 3 + the countdown over every iteration.
LOOPS_OF_EVERY_LENGTH = r"""
    xor %ebx, %ebx
    mov $1, %edx
outer:
    mov %rdx, %rcx
inner:
    add $3, %rbx
    add %rcx, %rbx
    dec %rcx
    jnz inner
    inc %rdx
    cmp $41, %rdx
    jne outer
done:
    jmp done
"""

REGISTERS = (X.UC_X86_REG_RIP, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_EFLAGS)


def stops_along_the_loops(tmp_path: Path, off: frozenset[str], step: int) -> list[tuple[int, ...]]:
    """Deadlines `step` instructions apart from boot to the end of the loops: the count and registers at each
    stop."""
    machine = booted(LOOPS_OF_EVERY_LENGTH, tmp_path, off)
    done = machine.symbols.address_of("done")
    stops = []
    while machine.uc.reg_read(X.UC_X86_REG_RIP) != done:
        before = machine.clock.instructions
        run_engine(machine, step)
        assert before + step <= machine.clock.instructions < before + step + 8  # at the first block start
        stops.append((machine.clock.instructions, *(machine.uc.reg_read(r) for r in REGISTERS)))
        assert len(stops) < 5_000
    return stops


@pytest.mark.parametrize("step", [1, 3, 5, 37, 64, 65, 257])
def test_a_loop_stops_at_every_deadline_where_one_body_per_block_stops(tmp_path: Path, step: int) -> None:
    """Deadlines 1 instruction apart stop at every block start of the one-copy loop: each needs the body once
    (the copies do not fit); farther ones land in every phase of the 16 copies and of their side exits."""
    copied = stops_along_the_loops(tmp_path, frozenset(), step)
    single = stops_along_the_loops(tmp_path, frozenset({"unroll"}), step)
    assert copied == single
    count, _, rbx, *_ = copied[-1]
    assert rbx == sum(3 * k + k * (k + 1) // 2 for k in range(1, 41))
    assert count >= 2 + sum(4 * k + 4 for k in range(1, 41))  # every instruction of the loops counted


def test_loops_that_end_in_every_copy_give_back_what_did_not_run(tmp_path: Path) -> None:
    """Run through in one go (one deadline far beyond): every loop ends in a side exit or the last copy, and
    the count at the end is the one-copy count, to the instruction."""
    ends = []
    for off in (frozenset(), frozenset({"unroll"})):
        machine = booted(LOOPS_OF_EVERY_LENGTH, tmp_path, off)
        done = machine.symbols.address_of("done")
        start = machine.clock.instructions
        while machine.uc.reg_read(X.UC_X86_REG_RIP) != done:
            run_engine(machine, 100_000)
        ends.append((machine.clock.instructions - start, machine.uc.reg_read(X.UC_X86_REG_RBX)))
    assert ends[0] == ends[1]
    # xor, mov, then per loop: mov, 4 per iteration, inc, cmp, jne; plus the `done` loop's jmps up to the stop
    loops = 2 + sum(4 * k + 4 for k in range(1, 41))
    assert loops <= ends[0][0] < loops + 100_000
