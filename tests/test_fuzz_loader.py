"""Loader fuzzing: mutated kernel and program ELF files and multiboot inputs either boot or fail with one clear
error line; never a traceback, never a hang.

Hypothesis drives byte flips, truncations, insertions and targeted header fields on real ELF files (our kernel
and a program) and random command lines and module lists. Every mutated kernel that still loads is also run
for a short budget of virtual time, so a loadable-but-nonsense kernel must end in a clean stop.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import project
from harness.machine import Machine, MachineConfig
from harness.pc.errors import LoaderError
from harness.pc.loader import Module, parse_elf, prepare_boot

from .elfmaker import make_elf

pytestmark = pytest.mark.cost(1.5)  # seconds, roughly: the session starts the costly modules first

RAM = 16 << 20
# Cases per test. CI runs a short form; `WEENSY_FUZZ_CASES=5000 pytest tests/test_fuzz_loader.py` runs the full
# campaign (three tests: over 10,000 cases).
CASES = int(os.environ.get("WEENSY_FUZZ_CASES", "300"))
RUN_ONE_IN = 8  # of the mutated kernels that still load, run this fraction (by content hash: reproducible)

# Offsets of the header fields worth aiming at: e_entry, e_phoff, e_phentsize, e_phnum, and the first program
# header's p_offset, p_vaddr, p_paddr, p_filesz, p_memsz.
TARGETS = [(24, 8), (32, 8), (54, 2), (56, 2), (64 + 8, 8), (64 + 16, 8), (64 + 24, 8), (64 + 32, 8), (64 + 40, 8)]

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.integers(0, 255)),
    st.tuples(st.just("field"), st.integers(0, len(TARGETS) - 1), st.integers(0, (1 << 64) - 1)),
)


def mutate(data: bytes, steps: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in steps:
        if kind == "field":
            offset, size = TARGETS[where]
            if offset + size <= len(out):
                out[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        elif not out:
            continue
        elif kind == "flip":
            out[where % len(out)] ^= value
        elif kind == "truncate":
            del out[where % len(out):]
        else:
            out.insert(where % (len(out) + 1), value)
    return bytes(out)


def one_line_error(error: LoaderError) -> None:
    text = str(error)
    assert text and "\n" not in text and "Traceback" not in text


@pytest.fixture(scope="module")
def seeds(build_tree: project.BuildTree) -> dict[str, bytes]:
    return {"kernel": build_tree.kernel.read_bytes(), "program": (build_tree.directory / "p-hello").read_bytes(),
            "tiny": make_elf()}


def check_kernel(data: bytes) -> None:
    try:
        image = parse_elf(data, "kernel <fuzzed>")
        memory = memoryview(bytearray(RAM))
        prepare_boot(memory, image, "hello", [])
    except LoaderError as error:
        one_line_error(error)
        return
    # It loads: (a reproducible sample of them) must also run to a clean stop of some kind within the budget.
    if zlib.crc32(data) % RUN_ONE_IN:
        return
    machine = Machine(MachineConfig(ram_size=RAM))
    machine.boot(image, "hello", [])
    stop = machine.run(max_time_ns=200_000)
    assert stop is not None and stop.message


@settings(max_examples=CASES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.sampled_from(["kernel", "tiny"]), steps=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_kernels_load_or_fail_clearly(seeds: dict[str, bytes], which: str,
                                              steps: list[tuple[str, int, int]]) -> None:
    check_kernel(mutate(seeds[which], steps))


@settings(max_examples=CASES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_programs_are_accepted_or_refused_clearly(seeds: dict[str, bytes],
                                                          steps: list[tuple[str, int, int]]) -> None:
    try:
        parse_elf(mutate(seeds["program"], steps), "program 'hello' <fuzzed>")
    except LoaderError as error:
        one_line_error(error)


@settings(max_examples=CASES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(command=st.text(max_size=3000), names=st.lists(st.text(min_size=0, max_size=40), max_size=20),
       sizes=st.lists(st.integers(0, 3 << 20), max_size=20))
def test_any_command_line_and_modules_boot_or_fail_clearly(seeds: dict[str, bytes], command: str,
                                                           names: list[str], sizes: list[int]) -> None:
    kernel = parse_elf(seeds["kernel"], "kernel")
    program = parse_elf(seeds["program"], "program")
    modules = [Module(name, program if size % 2 else parse_elf(seeds["tiny"] + bytes(size), "p"))
               for name, size in zip(names, sizes, strict=False)]
    memory = memoryview(bytearray(RAM))
    try:
        state = prepare_boot(memory, kernel, command, modules)
    except LoaderError as error:
        one_line_error(error)
        return
    flags, _, _, _, cmdline, count, _ = struct.unpack_from("<7I", memory, state.multiboot_info)
    assert count == len(modules)
    assert bytes(memory[cmdline:cmdline + len(command.encode()) + 1]) == command.encode() + b"\0"


def test_a_dangerous_elf_header_is_refused_not_followed(tmp_path: Path) -> None:
    """Program headers said to be far beyond the file: a clear error, not an attempt to read them."""
    data = bytearray(make_elf())
    struct.pack_into("<Q", data, 32, 1 << 60)  # e_phoff
    with pytest.raises(LoaderError, match="truncated|malformed"):
        parse_elf(bytes(data), "kernel <crafted>")
