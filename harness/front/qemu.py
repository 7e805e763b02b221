"""Boot a disk image in QEMU, the reference PC, and return what it showed: the kernel log and the final screen.

The machine is the course's (contract 2.1): q35, one CPU, 128 MiB, the image as the primary master of a
PIIX4 IDE controller, the log on the parallel port. QEMU runs with `-no-shutdown`, so when the guest powers
off the VM only stops and the screen can still be read; QMP (a unix socket) reports the power-off and reads
the text buffer with `pmemsave`.

    run = boot_image(Path("build/weensyos.img"), timeout=10)   # (harness.front.qemu)
    run.powered_off, run.log, run.text, run.lines[0], run.cells[0][0]

`until="some log text"` stops the run as soon as the log contains it (for programs that never end); the
screen is read after `settle` more seconds. Without QEMU installed, `qemu_available()` is False.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..pc.devices.cga import CP437

QEMU = "qemu-system-x86_64"
CONSOLE_ADDR, COLUMNS, ROWS = 0xB8000, 80, 25


@dataclass(frozen=True)
class QemuRun:
    log: str  # the parallel-port log
    cells: list[list[tuple[int, int]]]  # 25 rows of 80 (character byte, attribute byte)
    powered_off: bool  # the guest powered off (ACPI soft-off) before the run was stopped
    seconds: float  # wall time from QEMU's start to the end of the run
    first_log_seconds: float | None = None  # wall time from QEMU's start to the first byte of the log
    memory: dict[int, bytes] | None = None  # physical address -> bytes, for each range asked for with `read`

    @property
    def lines(self) -> list[str]:
        """25 strings of exactly 80 characters, code page 437 (as the harness's CgaConsole.text_lines)."""
        return ["".join(CP437[char] for char, _ in row) for row in self.cells]

    @property
    def text(self) -> str:
        """Rows without trailing spaces, trailing empty rows dropped (as the harness's screen text)."""
        lines = [line.rstrip(" ") for line in self.lines]
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines)


def qemu_available() -> bool:
    return shutil.which(QEMU) is not None


def qemu_command(image: Path, log: Path, qmp: Path, memory_mib: int = 128) -> list[str]:
    return [QEMU, "-M", "q35", "-smp", "1", "-net", "none", "-m", str(memory_mib), "-display", "none",
            "-device", "piix4-ide,bus=pcie.0,id=piix4-ide",
            "-drive", f"file={image},if=none,format=raw,id=bootdisk,snapshot=on",
            "-device", "ide-hd,drive=bootdisk,bus=piix4-ide.0",
            "-parallel", f"file:{log}", "-no-reboot", "-no-shutdown",
            "-qmp", f"unix:{qmp},server=on,wait=off"]


class _Qmp:
    """A minimal QMP client: commands one at a time; events are noted as they pass."""

    def __init__(self, path: Path, process: subprocess.Popen[bytes], deadline: float) -> None:
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if process.poll() is not None:
                    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                    raise RuntimeError(f"QEMU exited with status {process.returncode}: {output.strip()}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("QEMU's QMP socket never appeared") from None
                time.sleep(0.01)
        self.buffer = b""
        self.events: list[str] = []
        self._message(None)  # the greeting
        self.execute("qmp_capabilities")

    def _message(self, timeout: float | None) -> dict | None:
        """The next message, or None if none arrived within `timeout` seconds."""
        self.sock.settimeout(timeout)
        while b"\n" not in self.buffer:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise RuntimeError("QEMU closed the QMP connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message = json.loads(line)
        if "event" in message:
            self.events.append(message["event"])
        return message

    def execute(self, command: str, **arguments: object) -> object:
        request = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            message = self._message(10.0)
            if message is None:
                raise RuntimeError(f"QEMU did not answer {command}")
            if "return" in message:
                return message["return"]
            if "error" in message:
                raise RuntimeError(f"QEMU {command}: {message['error'].get('desc')}")

    def wait_event(self, name: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while name not in self.events:
            left = end - time.monotonic()
            if left <= 0:
                return False
            self._message(min(left, 0.05))
        return True


def boot_image(image: Path, *, timeout: float = 10.0, until: str | None = None, settle: float = 0.0,
               memory_mib: int = 128, read: tuple[tuple[int, int], ...] = ()) -> QemuRun:
    """Boot `image` until the guest powers off, the log contains `until`, or `timeout` seconds pass.

    `read`: (physical address, length) ranges of guest memory to save when the run ends (`QemuRun.memory`)."""
    with tempfile.TemporaryDirectory(prefix="weensy-qemu-") as tmp:
        log, qmp, screen = Path(tmp, "log.txt"), Path(tmp, "qmp.sock"), Path(tmp, "screen.bin")
        start = time.monotonic()
        process = subprocess.Popen(qemu_command(Path(image).resolve(), log, qmp, memory_mib),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            monitor = _Qmp(qmp, process, start + 10.0)
            deadline = start + timeout
            powered_off = False
            first_log = None
            while time.monotonic() < deadline:
                if first_log is None and log.exists() and log.stat().st_size:
                    first_log = time.monotonic() - start
                if monitor.wait_event("SHUTDOWN", 0.005):  # fine-grained: the benchmark times runs with this
                    powered_off = True
                    break
                if until is not None and log.exists() and until in log.read_text(errors="replace"):
                    if first_log is None:
                        first_log = time.monotonic() - start
                    time.sleep(settle)
                    break
            powered_off = powered_off or "SHUTDOWN" in monitor.events
            seconds = time.monotonic() - start
            monitor.execute("stop")
            monitor.execute("pmemsave", val=CONSOLE_ADDR, size=COLUMNS * ROWS * 2, filename=str(screen))
            saved = {}
            for i, (address, length) in enumerate(read):
                path = Path(tmp, f"memory-{i}.bin")
                monitor.execute("pmemsave", val=address, size=length, filename=str(path))
                saved[address] = path
            with contextlib.suppress(RuntimeError, OSError):  # QEMU may close the socket before answering
                monitor.execute("quit")
            process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        raw = screen.read_bytes()
        cells = [[(raw[i], raw[i + 1]) for i in range(row * COLUMNS * 2, (row + 1) * COLUMNS * 2, 2)]
                 for row in range(ROWS)]
        return QemuRun(log.read_text(errors="replace") if log.exists() else "", cells, powered_off, seconds,
                       first_log, {address: path.read_bytes() for address, path in saved.items()})
