"""Snapshots of a running machine: CPU, RAM, devices, clock, log and trace state, in memory or in a file.

A snapshot is taken between run slices and restored into a machine booted with the same kernel (the hooks that
depend on the kernel's code are installed at boot), after which the run continues exactly as it would have: the
same screen, log and trace, event for event. Translated code is flushed on restore; since translation blocks
depend only on the code and the address they start at, the block clock counts the same either way.

File format (version 1): the line `WEENSYOS-SNAPSHOT 1`, a 4-byte little-endian length, a JSON header (CPU
state in base64, device, machine, clock, trace and event state, the kernel's SHA-256), then the non-zero RAM
pages as a zlib stream of (4-byte page number, 4096 bytes) records. No code is ever unpickled from a file.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import json
import mmap
import struct
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unicorn.unicorn_py3.unicorn import uclib

from .errors import HarnessError
from .events import Event, Kind

if TYPE_CHECKING:
    from .board import Board

MAGIC = b"WEENSYOS-SNAPSHOT 1\n"
PAGE = 4096
_ZERO_PAGE = bytes(PAGE)


@dataclass
class Snapshot:
    cpu: bytes
    ram: dict[int, bytes]  # page number -> contents, for every page that is not all zeros
    ram_size: int
    state: dict[str, Any]  # devices, machine, clock, events, log, tracer: JSON-compatible
    kernel_sha256: str


def _event_to_json(event: Event) -> dict[str, Any]:
    data = {f.name: getattr(event, f.name) for f in fields(Event)}
    data["kind"] = event.kind.value
    data["args"] = list(event.args)
    data["detail"] = dict(event.detail)
    return data


def _event_from_json(data: dict[str, Any]) -> Event:
    values = {f.name: data[f.name] for f in fields(Event) if f.name in data}
    values["kind"] = Kind(data["kind"])
    values["args"] = tuple(data.get("args", ()))
    return Event(**values)


def kernel_digest(machine: Board) -> str:
    image = machine.kernel_image
    return hashlib.sha256(image.data).hexdigest() if image is not None else ""


def _touched_pages(machine: Board) -> range | list[int]:
    """Pages of guest RAM the host has ever backed (the rest of an anonymous mapping is still all zeros).

    /proc/self/pagemap says which pages of the mapping are present or swapped out, so a snapshot of 128 MiB of
    mostly untouched RAM looks at a few hundred pages instead of 32768. Without it, every page is looked at."""
    size = len(machine._ram)
    count = size // PAGE
    address = ctypes.addressof(machine._ram_anchor)
    try:
        with open("/proc/self/pagemap", "rb") as pagemap:
            pagemap.seek((address // PAGE) * 8)
            entries = pagemap.read(count * 8)
    except OSError:
        return range(count)
    if len(entries) != count * 8:
        return range(count)
    flags = struct.unpack(f"<{count}Q", entries)
    mapped = (1 << 63) | (1 << 62)  # present in RAM, or swapped out
    return [page for page in range(count) if flags[page] & mapped]


def take(machine: Board) -> Snapshot:
    """Capture the machine between run slices."""
    cpu = machine.cpu
    cpu.save()
    blob = ctypes.string_at(cpu.context_pointer, uclib.uc_context_size(cpu.handle))
    ram_file = machine._ram  # the mmap: slicing it gives bytes, much faster to compare than a memoryview
    ram = {}
    for page in _touched_pages(machine):
        chunk = ram_file[page * PAGE:(page + 1) * PAGE]
        if chunk != _ZERO_PAGE:
            ram[page] = chunk
    state = {
        "devices": {name: device.snapshot_state() for name, device in machine.devices().items()},
        "clock": machine.clock.state(),
        "machine": machine.run_state(),
        "log": base64.b64encode(bytes(machine.log.data)).decode(),
        "log_line": base64.b64encode(bytes(machine.log._line)).decode(),
        "events": {"ring": [_event_to_json(e) for e in machine.events.ring],
                   "counts": {kind.value: n for kind, n in machine.events.counts.items()},
                   "next_seq": machine.events.next_seq, "capacity": machine.events.ring.maxlen},
        "tracer": machine.tracer.snapshot_state(_event_to_json),
        "unassigned_pages": sorted(machine.bus.unassigned_pages),
    }
    return Snapshot(blob, ram, len(ram_file), json.loads(json.dumps(state)), kernel_digest(machine))


def restore(machine: Board, snapshot: Snapshot) -> None:
    """Put `machine` (booted with the same kernel) into the snapshot's state."""
    if snapshot.kernel_sha256 != kernel_digest(machine):
        raise HarnessError("the snapshot was taken with a different kernel than the one booted")
    if snapshot.ram_size != len(machine.memory):
        raise HarnessError(f"the snapshot has {snapshot.ram_size >> 20} MiB of RAM, the machine "
                           f"{len(machine.memory) >> 20} MiB (use --memory)")
    cpu = machine.cpu
    size = uclib.uc_context_size(cpu.handle)
    if len(snapshot.cpu) != size:
        raise HarnessError("the snapshot's CPU state does not match this version of Unicorn")
    memory = machine.memory
    # Hand every page back to the host: an anonymous mapping reads as zeros afterwards, without touching
    # (and so allocating) the pages the guest never used.
    machine._ram.madvise(mmap.MADV_DONTNEED)
    for page, contents in snapshot.ram.items():
        memory[page * PAGE:(page + 1) * PAGE] = contents
    ctypes.memmove(cpu.context_pointer, snapshot.cpu, size)
    cpu.restore()
    state = snapshot.state
    for name, device in machine.devices().items():
        device.restore_state(state["devices"][name])
    machine.clock.restore(state["clock"])
    machine.restore_run_state(state["machine"])
    machine.log.data = bytearray(base64.b64decode(state["log"]))
    machine.log._line = bytearray(base64.b64decode(state["log_line"]))
    events = machine.events
    events.ring.clear()
    ring = {}
    for data in state["events"]["ring"]:
        event = _event_from_json(data)
        events.ring.append(event)
        ring[event.seq] = event
    events.counts.clear()
    events.counts.update({Kind(kind): n for kind, n in state["events"]["counts"].items()})
    events.next_seq = state["events"]["next_seq"]

    def relink(data: dict[str, Any]) -> Event:
        return ring.get(data["seq"]) or _event_from_json(data)

    machine.tracer.restore_state(state["tracer"], relink)
    for address in state["unassigned_pages"]:
        if address not in machine.bus.unassigned_pages:
            machine.bus.add_unassigned_page(machine.uc, address, report=False)
    machine.uc.ctl_flush_tb()


def save(snapshot: Snapshot, path: Path) -> None:
    header = json.dumps({"cpu": base64.b64encode(snapshot.cpu).decode(), "ram_size": snapshot.ram_size,
                         "state": snapshot.state, "kernel_sha256": snapshot.kernel_sha256}).encode()
    compressor = zlib.compressobj(1)
    try:
        with open(path, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(header)) + header)
            for page, contents in sorted(snapshot.ram.items()):
                f.write(compressor.compress(struct.pack("<I", page) + contents))
            f.write(compressor.flush())
    except OSError as e:
        raise HarnessError(f"cannot write the snapshot {path}: {e.strerror}") from None


def load(path: Path) -> Snapshot:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HarnessError(f"no such snapshot: {path}") from None
    except OSError as e:
        raise HarnessError(f"cannot read the snapshot {path}: {e.strerror}") from None
    if not data.startswith(MAGIC):
        raise HarnessError(f"{path} is not a harness snapshot (version 1)")
    try:
        offset = len(MAGIC)
        (length,) = struct.unpack_from("<I", data, offset)
        header = json.loads(data[offset + 4:offset + 4 + length])
        raw = zlib.decompress(data[offset + 4 + length:])
        ram = {}
        record = 4 + PAGE
        if len(raw) % record:
            raise ValueError("truncated RAM section")
        for at in range(0, len(raw), record):
            (page,) = struct.unpack_from("<I", raw, at)
            ram[page] = raw[at + 4:at + record]
        return Snapshot(base64.b64decode(header["cpu"]), ram, int(header["ram_size"]), header["state"],
                        str(header["kernel_sha256"]))
    except (ValueError, KeyError, TypeError, struct.error, zlib.error) as e:
        raise HarnessError(f"{path}: damaged snapshot ({e})") from None
