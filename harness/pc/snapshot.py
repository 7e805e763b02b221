"""Snapshots of a running machine: CPU, RAM, devices, clock, log and trace state, in memory or in a file.

A snapshot is taken between run slices and restored into a machine booted with the same kernel (the hooks that
depend on the kernel's code are installed at boot), after which the run continues exactly as it would have: the
same screen, log and trace, event for event. Translated code and the TLB are flushed on restore; since
translation blocks depend only on the code and the address they start at, the instruction clock counts the same
either way.

File format (version 2): the line `WEENSYOS-SNAPSHOT 2`, a 4-byte little-endian length, a JSON header (the CPU
state as named fields, device, machine, clock, trace and event state, the kernel's SHA-256), then the non-zero RAM
pages as a zlib stream of (4-byte page number, 4096 bytes) records in increasing page order. No code is ever
unpickled from a file, and no byte of the file is copied into the engine unchecked: the CPU state goes through
`cpustate` (named fields, each range-checked), the rest through `snapshotschema`, the sizes are capped before
anything is inflated. Version 1 files, which carried the engine's raw CPU state, are refused.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import json
import mmap
import os
import stat
import struct
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import cpustate
from .engine import flush_tlb
from .errors import HarnessError
from .events import Event, Kind
from .snapshotschema import DeviceTemplate, SchemaError, check_state

if TYPE_CHECKING:
    from .board import Board

MAGIC = b"WEENSYOS-SNAPSHOT 2\n"
OLD_MAGIC = b"WEENSYOS-SNAPSHOT 1\n"
PAGE = 4096
RECORD = 4 + PAGE  # a RAM record: page number, contents
_ZERO_PAGE = bytes(PAGE)
MAX_RAM_SIZE = 16 << 30  # the largest RAM a snapshot may describe
MAX_HEADER = 64 << 20  # bytes of JSON header (the log and the event ring are its bulk)
SHA256_HEX = frozenset("0123456789abcdef")


@dataclass
class Snapshot:
    cpu: dict[str, Any]  # named CPU fields (see cpustate): never the engine's raw state
    ram: dict[int, bytes]  # page number -> contents, for every page that is not all zeros
    ram_size: int
    state: dict[str, Any]  # devices, machine, clock, events, log, tracer: JSON-compatible
    kernel_sha256: str


_EVENT_FIELDS = tuple(f.name for f in fields(Event))  # (dataclasses.fields costs as much as the copy, per event)


def _event_to_json(event: Event) -> dict[str, Any]:
    data = {name: getattr(event, name) for name in _EVENT_FIELDS}
    data["kind"] = event.kind.value
    data["args"] = list(event.args)
    data["detail"] = dict(event.detail)
    return data


def _event_from_json(data: dict[str, Any]) -> Event:
    values = {name: data[name] for name in _EVENT_FIELDS if name in data}
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


def _state(machine: Board) -> dict[str, Any]:
    """Everything but the CPU and RAM, as JSON-compatible data."""
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
    return json.loads(json.dumps(state))


def take(machine: Board) -> Snapshot:
    """Capture the machine between run slices."""
    cpu = machine.cpu
    if cpustate.armed_breakpoints(cpu):
        raise HarnessError("the guest has armed hardware breakpoints (DR7), which a snapshot cannot carry")
    ram_file = machine._ram  # the mmap: slicing it gives bytes, much faster to compare than a memoryview
    ram = {}
    for page in _touched_pages(machine):
        chunk = ram_file[page * PAGE:(page + 1) * PAGE]
        if chunk != _ZERO_PAGE:
            ram[page] = chunk
    return Snapshot(cpustate.capture(cpu), ram, len(ram_file), _state(machine), kernel_digest(machine))


def check(machine: Board, snapshot: Snapshot) -> tuple[dict[str, Any], dict[str, Any]]:
    """(checked CPU fields, checked state) of a snapshot for `machine`, or one clear HarnessError.
    Nothing is changed: a snapshot that fails any check leaves the machine as it was."""
    if snapshot.kernel_sha256 != kernel_digest(machine):
        raise HarnessError("the snapshot was taken with a different kernel than the one booted")
    if snapshot.ram_size != len(machine.memory):
        raise HarnessError(f"the snapshot has {snapshot.ram_size >> 20} MiB of RAM, the machine "
                           f"{len(machine.memory) >> 20} MiB (use --memory)")
    pages = snapshot.ram_size // PAGE
    for page, contents in snapshot.ram.items():
        if type(page) is not int or not 0 <= page < pages or len(contents) != PAGE:
            raise HarnessError(f"damaged snapshot (RAM page {page!r} is outside the machine's RAM)")
    if cpustate.armed_breakpoints(machine.cpu):
        raise HarnessError("this machine has armed hardware breakpoints (DR7): restore into a fresh machine")
    try:
        cpu = cpustate.check(snapshot.cpu)
        if cpu["cr3"] & ~0xFFF >= snapshot.ram_size:
            raise cpustate.CpuStateError(f"CPU field cr3 = {cpu['cr3']:#x} points outside the machine's RAM")
        state = check_state(snapshot.state, DeviceTemplate(_state(machine)["devices"]))
        _check_unassigned_pages(machine, state["unassigned_pages"])
        for name, device in machine.devices().items():
            device.check_state(state["devices"][name])
    except (cpustate.CpuStateError, SchemaError, ValueError) as e:
        raise HarnessError(f"damaged snapshot ({e})") from None
    return cpu, state


def _check_unassigned_pages(machine: Board, pages: list[int]) -> None:
    """Empty-bus pages are mapped into the engine on restore: each must be a page beyond RAM, below the
    physical address limit, clear of every device's registers (the engine refuses overlapping regions)."""
    for address in pages:
        clash = any(base < address + PAGE and address < base + size for base, size, _ in machine.bus.mmio)
        if address % PAGE or address < len(machine.memory) or address >= cpustate.PHYSICAL_LIMIT or clash:
            raise SchemaError(f"state.unassigned_pages: {address:#x} is not a free page beyond RAM")


def restore(machine: Board, snapshot: Snapshot) -> None:
    """Put `machine` (booted with the same kernel) into the snapshot's state, after checking all of it."""
    cpu_fields, state = check(machine, snapshot)
    try:
        for name, device in machine.devices().items():
            device.restore_state(state["devices"][name])
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as e:
        raise HarnessError(f"damaged snapshot (device state: {e})") from None
    memory = machine.memory
    # Hand every page back to the host: an anonymous mapping reads as zeros afterwards, without touching
    # (and so allocating) the pages the guest never used.
    machine._ram.madvise(mmap.MADV_DONTNEED)
    for page, contents in snapshot.ram.items():
        memory[page * PAGE:(page + 1) * PAGE] = contents
    cpustate.apply(machine.cpu, cpu_fields)
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
        return ring.get(data.get("seq", -1)) or _event_from_json(data)

    machine.tracer.restore_state(state["tracer"], relink)
    for address in state["unassigned_pages"]:
        if address not in machine.bus.unassigned_pages:
            machine.bus.add_unassigned_page(machine.uc, address, report=False)
    machine.uc.ctl_flush_tb()
    flush_tlb(machine.uc._uch)  # the TLB still maps what the page tables said before the restore


def save(snapshot: Snapshot, path: Path) -> None:
    header = json.dumps({"cpu": snapshot.cpu, "ram_size": snapshot.ram_size, "state": snapshot.state,
                         "kernel_sha256": snapshot.kernel_sha256}).encode()
    compressor = zlib.compressobj(1)
    try:
        with open(path, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(header)) + header)
            for page, contents in sorted(snapshot.ram.items()):
                f.write(compressor.compress(struct.pack("<I", page) + contents))
            f.write(compressor.flush())
    except OSError as e:
        raise HarnessError(f"cannot write the snapshot {path}: {e.strerror}") from None


def _read_capped(path: Path, limit: int) -> bytes:
    """The file's bytes, refusing anything but a regular file of at most `limit` bytes (a FIFO, a device
    such as /dev/zero or a huge file would otherwise be read for ever or into memory whole)."""
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise HarnessError(f"{path} is not a regular file, so not a snapshot")
            if info.st_size > limit:
                raise HarnessError(f"{path}: {info.st_size} bytes is too large for a snapshot "
                                   f"(at most {limit})")
            return f.read(limit + 1)
    except FileNotFoundError:
        raise HarnessError(f"no such snapshot: {path}") from None
    except OSError as e:
        raise HarnessError(f"cannot read the snapshot {path}: {e.strerror}") from None


def _header(raw: Any, ram_limit: int) -> tuple[dict[str, Any], int, str]:
    """(cpu, ram_size, kernel digest) of a parsed header, type-checked; the state is checked at restore."""
    if type(raw) is not dict or set(raw) != {"cpu", "ram_size", "state", "kernel_sha256"}:
        raise ValueError("the header is not a snapshot header")
    ram_size, digest = raw["ram_size"], raw["kernel_sha256"]
    if type(ram_size) is not int or ram_size <= 0 or ram_size % PAGE or ram_size > ram_limit:
        raise ValueError(f"RAM size {str(ram_size)[:32]} is not a whole number of pages up to {ram_limit >> 20} MiB")
    if type(digest) is not str or (digest and (len(digest) != 64 or not set(digest) <= SHA256_HEX)):
        raise ValueError("the kernel digest is not a SHA-256")
    cpustate.check(raw["cpu"])
    return raw["cpu"], ram_size, digest


def _pages(compressed: bytes, ram_size: int) -> dict[int, bytes]:
    """Inflate the RAM records, never beyond what `ram_size` can hold; pages strictly increasing, in RAM."""
    limit = (ram_size // PAGE) * RECORD
    inflater = zlib.decompressobj()
    raw = inflater.decompress(compressed, limit + 1)
    if len(raw) > limit or inflater.unconsumed_tail:
        raise ValueError(f"the RAM section inflates beyond {limit} bytes, more than {ram_size >> 20} MiB of pages")
    if not inflater.eof:
        raise ValueError("truncated RAM section")
    if inflater.unused_data:
        raise ValueError("data after the RAM section")
    if len(raw) % RECORD:
        raise ValueError("truncated RAM record")
    ram: dict[int, bytes] = {}
    previous = -1
    view = memoryview(raw)
    for at in range(0, len(raw), RECORD):
        (page,) = struct.unpack_from("<I", raw, at)
        if page <= previous or page >= ram_size // PAGE:
            raise ValueError(f"RAM page {page} is out of order or outside {ram_size >> 20} MiB")
        ram[page] = bytes(view[at + 4:at + RECORD])
        previous = page
    return ram


def load(path: Path, ram_size: int | None = None) -> Snapshot:
    """Read and check a snapshot file; `ram_size` (the machine's) bounds what the file may inflate to."""
    ram_limit = MAX_RAM_SIZE if ram_size is None else ram_size
    data = _read_capped(path, len(MAGIC) + 4 + MAX_HEADER + ram_limit + ram_limit // 64 + (1 << 20))
    if data.startswith(OLD_MAGIC):
        raise HarnessError(f"{path} is a version 1 snapshot, which carried raw engine state and is no longer "
                           "accepted: take the snapshot again")
    if not data.startswith(MAGIC):
        raise HarnessError(f"{path} is not a harness snapshot (version 2)")
    try:
        offset = len(MAGIC)
        (length,) = struct.unpack_from("<I", data, offset)
        if length > MAX_HEADER or offset + 4 + length > len(data):
            raise ValueError(f"header length {length} runs past the file")
        header = json.loads(data[offset + 4:offset + 4 + length])
        cpu, size, digest = _header(header, ram_limit)
        if ram_size is not None and size != ram_size:
            raise HarnessError(f"the snapshot has {size >> 20} MiB of RAM, the machine {ram_size >> 20} MiB "
                               "(use --memory)")
        ram = _pages(data[offset + 4 + length:], size)
        return Snapshot(cpu, ram, size, header["state"], digest)
    except (ValueError, KeyError, TypeError, RecursionError, struct.error, zlib.error, MemoryError,
            cpustate.CpuStateError) as e:
        raise HarnessError(f"{path}: damaged snapshot ({str(e)[:200]})") from None
