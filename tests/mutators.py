"""Seeded mutations of the harness's input files, shared by the fuzz tests and the campaign (tests/campaign.py).

Byte-level mutations (flips, truncations, insertions, overwritten runs, aimed 8-byte fields) suit binary inputs;
structured ones rewrite one value of a snapshot header or a system-call table, so the checks behind the parser
are reached too. Everything is driven by a `random.Random`, so a case is reproduced from its seed.
"""

from __future__ import annotations

import copy
import json
import random
import struct
import zlib
from typing import Any

from harness.pc import snapshot as snapshots

ODD_VALUES: list[Any] = [-1, 0, 1, 7, 255, 0x10000, 1 << 31, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 64,
                         1 << 256, 1.5, "", "x" * 9, "zz", None, True, [], [0] * 5, {}, {"a": 1}]


def odd_value(rng: random.Random) -> Any:
    """One of ODD_VALUES, as a fresh copy (a shared list placed twice in a document would make a cycle)."""
    return copy.deepcopy(rng.choice(ODD_VALUES))


def mutate_bytes(rng: random.Random, data: bytes, hot: int | None = None, steps: int | None = None) -> bytes:
    """1-4 byte mutations; `hot` bytes at the start (headers) get most of them."""
    out = bytearray(data)
    for _ in range(steps or rng.randint(1, 4)):
        if not out:
            out += bytes([rng.randrange(256)])
            continue
        span = min(len(out), hot) if hot and rng.random() < 0.8 else len(out)
        where = rng.randrange(span)
        choice = rng.random()
        if choice < 0.4:
            out[where] ^= rng.randint(1, 255)
        elif choice < 0.5:
            del out[rng.randrange(len(out)):]
        elif choice < 0.6:
            out[where:where] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif choice < 0.75:
            size = rng.choice((1, 2, 4, 8))
            value = rng.choice(ODD_VALUES[:12]) if rng.random() < 0.7 else rng.getrandbits(64)
            out[where:where + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        elif choice < 0.9:
            length = rng.randint(1, 64)
            out[where:where + length] = bytes(rng.randrange(256) for _ in range(length))
        else:
            del out[where:where + rng.randint(1, 64)]
    return bytes(out)


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every value in a JSON document (containers included)."""
    paths = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += _leaves(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value[:64]):
            paths += _leaves(item, path + (index,))
    return paths


def mutate_json(rng: random.Random, document: Any) -> Any:
    """One to three values of `document` replaced by odd ones (a type change, an extreme, a deletion)."""
    document = json.loads(json.dumps(document))
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _leaves(document) if p]
        if not paths:
            return odd_value(rng)
        path = rng.choice(paths)
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        roll = rng.random()
        if roll < 0.1 and isinstance(parent, dict):
            del parent[key]
        elif roll < 0.2 and isinstance(parent, dict):
            parent[f"extra{rng.randrange(100)}"] = odd_value(rng)
        elif roll < 0.4 and isinstance(parent[key], int) and not isinstance(parent[key], bool):
            parent[key] = parent[key] ^ (1 << rng.randrange(70))
        else:
            parent[key] = odd_value(rng)
    return document


def snapshot_file(header: dict[str, Any], ram: dict[int, bytes]) -> bytes:
    data = json.dumps(header).encode()
    records = b"".join(struct.pack("<I", page) + contents for page, contents in sorted(ram.items()))
    return snapshots.MAGIC + struct.pack("<I", len(data)) + data + zlib.compress(records, 1)


def mutate_snapshot(rng: random.Random, header: dict[str, Any], ram: dict[int, bytes], original: bytes) -> bytes:
    """A snapshot file with its bytes, one header value, its CPU fields or its page list mutated."""
    roll = rng.random()
    if roll < 0.3:
        return mutate_bytes(rng, original, hot=len(snapshots.MAGIC) + 4 + 64)
    if roll < 0.55:
        return snapshot_file(mutate_json(rng, header), ram)
    if roll < 0.8:
        cpu = dict(header["cpu"])
        name = rng.choice(sorted(cpu))
        cpu[name] = odd_value(rng) if rng.random() < 0.5 else (
            cpu[name] ^ (1 << rng.randrange(64)) if isinstance(cpu[name], int) else cpu[name][::-1])
        return snapshot_file({**header, "cpu": cpu}, ram)
    pages = dict(ram)
    for _ in range(rng.randint(1, 3)):
        page = rng.choice([rng.randrange(1 << 32), rng.randrange(header["ram_size"] // 4096), 0, (1 << 32) - 1])
        pages[page] = bytes(rng.randrange(256) for _ in range(8)) * 512
    return snapshot_file(header, pages)


GDB_PIECES = [b",", b":", b"=", b";", b"0", b"1", b"f", b"ff", b"zz", b"-", b"x", b"ffffffffffffffff",
              b"10000000000000000", b" ", b"#", b"$", b"}", b"*", b"100000", b"4000", b"\x00", b"\xff"]
GDB_COMMANDS = [b"m", b"M", b"G", b"g", b"p", b"P", b"Z", b"z", b"H", b"q", b"Q", b"?", b"T", b"X", b"v", b"qSupported",
                b"qRcmd,", b"vFile:", b"qXfer:features:read:target.xml:0,fff"]
GDB_EXECUTION = (b"c", b"C", b"s", b"S", b"vCont", b"D", b"k")  # run or end the machine: not parser inputs


def gdb_packet(rng: random.Random) -> bytes:
    """A packet payload: a command with odd arguments, or random bytes; never one that runs the machine."""
    if rng.random() < 0.7:
        packet = rng.choice(GDB_COMMANDS) + b"".join(rng.choice(GDB_PIECES) for _ in range(rng.randint(0, 8)))
    else:
        packet = bytes(rng.randrange(256) for _ in range(rng.randint(0, 48)))
    return b"?" if packet.startswith(GDB_EXECUTION) else packet
