"""What `check` boots: a kernel ELF (with the programs of its directory), a build directory, or a disk image.

A check needs to start programs by name, which only a multiboot command line does; a disk image runs the
command written in it (our image's directory holds one), or, booted course-style (the loader and the kernel
alone, no command line), the program compiled into its kernel. So on an image only the checks that need no
chosen program apply; the others are N/A, and their reason says which of the two the image is.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path

from ... import project
from ...pc.errors import HarnessError
from ...pc.loader import ElfImage, read_elf

ELF_MAGIC = b"\x7fELF"
DIRECTORY_MAGIC = b"WeensyOS"  # our image's directory (weensyos-src/bootdisk.h): magic, version 1, entries, command
DIRECTORY_SEARCH_SECTORS = 64
ENTRIES_AT, COMMAND_AT, COMMAND_MAX = 0xC, 0x10, 256


@dataclass
class Target:
    """One kernel to check, as the user named it."""

    label: str
    kernel: Path | None  # the ELF, booted with a command line
    programs: dict[str, Path] = field(default_factory=dict)
    disk: Path | None = None  # a disk image, booted from its boot sector
    image_kernel: ElfImage | None = None  # the symbols for a disk image's kernel, when the build has them
    image_command: str | None = None  # the command written in a disk image's directory (None: course-style)

    @property
    def disk_reason(self) -> str:
        """Why a check that starts programs of its choosing cannot on this target (a disk image)."""
        if self.image_command is not None:
            return (f"this disk image runs only the command written in it (`{self.image_command}`): check the "
                    f"kernel ELF or the build directory")
        return ("this disk image boots course-style, with no command line: its kernel runs only the program "
                "compiled into it; check its kernel ELF, which the harness boots with a command line")


def resolve(argument: Path, build: project.BuildTree) -> Target:
    """The target named by `argument`; a HarnessError (one line) when it is none of the three."""
    if argument.is_dir():
        tree = project.BuildTree(argument)
        if not tree.kernel.is_file():
            raise HarnessError(f"{argument}: a directory without a kernel (expected {tree.kernel})")
        return Target(str(argument), tree.kernel, tree.programs())
    if not argument.is_file():
        raise HarnessError(f"{argument}: no such kernel, build directory or disk image")
    try:
        with argument.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise HarnessError(f"{argument}: cannot read it ({e.strerror})") from None
    if magic == ELF_MAGIC:
        read_elf(argument, "kernel")  # a malformed ELF is one clear line now, not a failed check later
        programs = project.BuildTree(argument.parent).programs() or build.programs()
        return Target(str(argument), argument, programs)
    from ...pc.diskimage import open_image
    from ..imagekernel import symbols_for_image

    image = open_image(argument)
    return Target(str(argument), None, build.programs(), disk=argument, image_kernel=symbols_for_image(image, build),
                  image_command=_written_command(image))


def _written_command(image: bytes | mmap.mmap) -> str | None:
    """The command line in our image's directory (the first sector that starts with its magic and version 1),
    or None for an image booted course-style: without a directory (the course's layout: boot sectors, then the
    kernel), or whose directory holds the kernel alone (our loader then hands over no command line)."""
    for sector in range(1, DIRECTORY_SEARCH_SECTORS):
        at = sector * 512
        if image[at:at + 8] == DIRECTORY_MAGIC and image[at + 8:at + 12] == (1).to_bytes(4, "little"):
            if int.from_bytes(image[at + ENTRIES_AT:at + ENTRIES_AT + 4], "little") <= 1:
                return None
            raw = bytes(image[at + COMMAND_AT:at + COMMAND_AT + COMMAND_MAX]).split(b"\0")[0]
            return raw.decode("latin-1")
    return None
