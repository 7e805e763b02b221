#!/usr/bin/env python3
"""Build a bootable WeensyOS disk image (raw, for QEMU's IDE disk or the harness's ATA disk).

Layout (see README.md, "Booting from a disk", and bootdisk.h, which boot.cc reads):

    sector 0            boot sector (stage 1 of the boot loader, ends with 0x55 0xAA)
    sectors 1..B-1      stage 2 of the boot loader (B = boot loader size in sectors)
    sectors B..B+3      directory: magic, version, count, command line, entries
    then                the kernel, then each program, each from a fresh sector

Directory (2048 bytes, little-endian):

    0x000  8 bytes    magic "WeensyOS"
    0x008  u32        version (1)
    0x00C  u32        count: entries in use (entry 0 is the kernel)
    0x010  256 bytes  command line, NUL-terminated (handed over as multiboot cmdline)
    0x110  44 x 40    entries: name (32 bytes, NUL-terminated), u32 first sector, u32 size in bytes
    0x7F0  16 bytes   reserved (zero)

With no programs the loader boots course-style: the kernel alone, no multiboot information.
Files are stored as their loadable part (ELF header, program headers and segment bytes; debug
sections dropped) unless --whole-files is given: the loader and the kernel read nothing else.

    mkimage.py --command "fault hello" -o out.img
    mkimage.py --kernel build/kernel-course --no-programs -o course.img
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

SECTOR = 512
MAGIC = b"WeensyOS"
VERSION = 1
DIRECTORY_SECTORS = 4
COMMAND_MAX = 256  # including the NUL
NAME_MAX = 32  # including the NUL
ENTRIES = 44
ENTRY = struct.Struct("<32sII")
HEADER = struct.Struct("<8sII256s")
MIN_IMAGE = 64 * 1024  # disks this small still get a sane geometry everywhere

SOURCE_DIR = Path(__file__).resolve().parent
DEFAULT_BUILD = SOURCE_DIR.parent / "build"


class ImageError(Exception):
    """A problem with the inputs, as one line for the user."""


def _sectors(size: int) -> int:
    return (size + SECTOR - 1) // SECTOR


def loadable_part(data: bytes, label: str) -> bytes:
    """The ELF file cut after its last program header or segment byte, with no section headers."""
    if data[:4] != b"\x7fELF" or len(data) < 64:
        raise ImageError(f"{label}: not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ImageError(f"{label}: not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    end = phoff + phentsize * phnum
    if phentsize < 56 or end > len(data):
        raise ImageError(f"{label}: program headers outside the file")
    for i in range(phnum):
        p_type, _, offset, _, _, filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            if offset + filesz > len(data):
                raise ImageError(f"{label}: segment {i} outside the file")
            end = max(end, offset + filesz)
    head = bytearray(data[:max(end, 64)])
    struct.pack_into("<Q", head, 40, 0)  # e_shoff: no section headers
    struct.pack_into("<HH", head, 60, 0, 0)  # e_shnum, e_shstrndx
    return bytes(head)


def build_image(boot: bytes, kernel: bytes, programs: list[tuple[str, bytes]], command: str = "hello",
                whole_files: bool = False) -> bytes:
    """The disk image as bytes. `programs` are (name, ELF file contents), in module order."""
    if len(boot) < SECTOR or boot[510:512] != b"\x55\xaa":
        raise ImageError("boot loader: no boot signature 0x55 0xAA at the end of sector 0")
    if len(boot) % SECTOR:
        # Stage 2 finds the directory right after its own last sector (boot.ld pads it).
        raise ImageError(f"boot loader: {len(boot)} bytes, not a whole number of sectors")
    encoded = command.encode()
    if len(encoded) >= COMMAND_MAX or b"\0" in encoded:
        raise ImageError(f"command line: at most {COMMAND_MAX - 1} bytes, no NUL")
    if len(programs) + 1 > ENTRIES:
        raise ImageError(f"too many programs ({len(programs)}; the directory holds {ENTRIES - 1})")
    files = [("kernel", kernel)] + list(programs)
    if not whole_files:
        files = [(name, loadable_part(data, name)) for name, data in files]

    boot_sectors = _sectors(len(boot))
    lba = boot_sectors + DIRECTORY_SECTORS
    entries = bytearray()
    for name, data in files:
        raw = name.encode()
        if not raw or len(raw) >= NAME_MAX or b"\0" in raw or b" " in raw:
            raise ImageError(f"program name {name!r}: 1-{NAME_MAX - 1} bytes, no spaces")
        entries += ENTRY.pack(raw, lba, len(data))
        lba += _sectors(len(data))
    directory = HEADER.pack(MAGIC, VERSION, len(files), encoded) + entries
    directory = directory.ljust(DIRECTORY_SECTORS * SECTOR, b"\0")

    image = bytearray(boot.ljust(boot_sectors * SECTOR, b"\0"))
    image += directory
    for _, data in files:
        image += data.ljust(_sectors(len(data)) * SECTOR, b"\0")
    return bytes(image.ljust(max(len(image), MIN_IMAGE), b"\0"))


def default_programs(build: Path) -> list[tuple[str, Path]]:
    """Every p-NAME file (no extension) in the build directory, by name."""
    return [(path.name[2:], path) for path in sorted(build.glob("p-*")) if path.is_file() and "." not in path.name]


def _read(path: Path, label: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ImageError(f"{label} {path}: cannot read ({e.strerror})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a bootable WeensyOS disk image.")
    parser.add_argument("-o", "--output", type=Path, required=True, help="image file to write")
    parser.add_argument("--command", default="hello", help='command line for the kernel (default "hello")')
    parser.add_argument("--build", type=Path, default=DEFAULT_BUILD, help="build directory for the defaults")
    parser.add_argument("--boot", type=Path, help="boot loader binary (default BUILD/boot)")
    parser.add_argument("--kernel", type=Path, help="kernel ELF (default BUILD/kernel)")
    parser.add_argument("--program", action="append", default=[], metavar="NAME=ELF",
                        help="a program module (repeatable; default: every BUILD/p-NAME)")
    parser.add_argument("--no-programs", action="store_true",
                        help="the kernel alone: the loader boots it course-style, without multiboot")
    parser.add_argument("--whole-files", action="store_true", help="store the ELF files whole (debug sections too)")
    args = parser.parse_args(argv)
    try:
        if args.no_programs and args.program:
            raise ImageError("--no-programs and --program contradict each other")
        programs: list[tuple[str, Path]] = []
        for spec in args.program:
            name, sep, file = spec.partition("=")
            if not sep or not name or not file:
                raise ImageError(f"--program {spec!r}: expected NAME=ELF")
            programs.append((name, Path(file)))
        if not args.program and not args.no_programs:
            programs = default_programs(args.build)
        image = build_image(_read(args.boot or args.build / "boot", "boot loader"),
                            _read(args.kernel or args.build / "kernel", "kernel"),
                            [(name, _read(path, f"program {name}")) for name, path in programs],
                            args.command, args.whole_files)
        temporary = args.output.with_name(args.output.name + ".tmp")
        temporary.write_bytes(image)
        temporary.replace(args.output)
    except (ImageError, OSError) as e:
        print(f"mkimage: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
