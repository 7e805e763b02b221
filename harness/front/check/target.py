"""What `check` boots: a kernel ELF (with the programs of its directory), a build directory, or a disk image.

A check needs to start programs by name, which only a multiboot command line does; a disk image runs the
command written in it, so on an image only the checks that need no chosen program apply (the others are N/A).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ... import project
from ...pc.errors import HarnessError
from ...pc.loader import ElfImage, read_elf

ELF_MAGIC = b"\x7fELF"


@dataclass
class Target:
    """One kernel to check, as the user named it."""

    label: str
    kernel: Path | None  # the ELF, booted with a command line
    programs: dict[str, Path] = field(default_factory=dict)
    disk: Path | None = None  # a disk image, booted from its boot sector
    image_kernel: ElfImage | None = None  # the symbols for a disk image's kernel, when the build has them


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
    return Target(str(argument), None, build.programs(), disk=argument, image_kernel=symbols_for_image(image, build))
