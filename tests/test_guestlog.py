"""The kernel's log in memory stays bounded whatever the guest prints; the --log file keeps every byte."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from harness.pc.guestlog import LINE_LIMIT, MEMORY_LIMIT, GuestLog

from .x86asm import assemble_kernel

# A kernel that prints 'x' on its log port (LPT1) for ever, never a newline.
ENDLESS_LINE = r"""
    mov $'x', %al
    mov $0x378, %dx
    out %al, %dx
loop:
    mov $0x37a, %dx
    mov $0x0d, %al
    out %al, %dx
    mov $0x0c, %al
    out %al, %dx
    jmp loop
"""


def test_an_endless_line_is_cut_into_bounded_pieces_and_memory_stays_bounded() -> None:
    sink = io.BytesIO()
    log = GuestLog(sink, memory_limit=1 << 16, line_limit=1024)
    pieces: list[str] = []
    log.on_line = pieces.append
    for _ in range(1000):
        log.write(b"y" * 1000)
    assert len(log.data) <= 2 * (1 << 16) and len(log._line) < 1024
    assert log.dropped + len(log.data) == 1_000_000
    assert len(pieces) == 1_000_000 // 1024 and all(piece == "y" * 1024 for piece in pieces)
    log.flush()
    assert sink.getvalue() == b"y" * 1_000_000  # the sink has every byte, with no newline added


def test_memory_keeps_whole_lines_of_the_most_recent_part() -> None:
    log = GuestLog(memory_limit=1000, line_limit=100)
    for n in range(1000):
        log.write(f"line {n}\n".encode())
    lines = log.lines()
    assert lines[-1] == "line 999" and lines[0].startswith("line ") and len(log.data) <= 2000
    assert [int(line.split()[1]) for line in lines] == list(range(1000 - len(lines), 1000))


def test_a_guest_printing_without_newline_does_not_grow_the_harness(tmp_path: Path) -> None:
    kernel = assemble_kernel(ENDLESS_LINE, tmp_path / "kernel")
    script = (
        "import sys\n"
        "from harness.api import boot_machine\n"
        "from harness.machine import MachineConfig\n"
        "from harness.pc.clock import ClockCosts\n"
        "config = MachineConfig(costs=ClockCosts.instructions_only())\n"  # the log's limits, not the speed model
        "machine = boot_machine(sys.argv[1], 'x', {}, config)\n"
        "with open(sys.argv[2], 'wb') as sink:\n"
        "    machine.log.sink = sink\n"
        "    machine.run(max_time_ns=600_000_000)\n"  # 10 M bytes: 6 instructions of 10 ns a byte
        "    machine.log.flush()\n"
        "print(len(machine.log.data), machine.log.dropped, len(machine.log._line))\n")
    result = subprocess.run([sys.executable, "-c", script, str(kernel), str(tmp_path / "log")], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    kept, dropped, line = map(int, result.stdout.split())
    printed = (tmp_path / "log").stat().st_size
    assert printed > 2 * MEMORY_LIMIT and dropped > 0  # the guest printed more than the log keeps
    assert kept <= 2 * MEMORY_LIMIT and line < LINE_LIMIT
    assert kept + dropped == printed  # and the file has all of it
