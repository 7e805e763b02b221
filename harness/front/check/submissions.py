"""The submissions of `check --submissions DIR`: one folder each, holding what `check` accepts.

A folder is graded as a build directory when it holds a `kernel` (or a `build/` subfolder does); otherwise its
one kernel ELF (any ELF file that is not a `p-*` program), else its one disk image (`*.img`). A folder that holds
none of these, or several, is not graded: it gets a one-line reason in its results (score 0) and the others are
graded all the same, since one student's mistake must not stop a whole course's grading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ... import project
from ...pc.errors import HarnessError
from .target import ELF_MAGIC, Target, resolve


@dataclass
class Submission:
    """One folder of DIR: its name, and the target to check or why there is none."""

    name: str
    folder: Path
    target: Target | None
    problem: str | None = None

    @property
    def stem(self) -> str:
        """The name as a file name (for its results folder and screens)."""
        return safe_stem(self.name)


def safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.") or "submission"


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def _what_to_check(folder: Path) -> Path:
    """The kernel ELF, build directory or disk image of one submission folder (a HarnessError when unclear)."""
    for candidate in (folder, folder / "build"):
        if (candidate / "kernel").is_file():
            return candidate
    files = sorted(path for path in folder.iterdir() if path.is_file())
    kernels = [path for path in files if not path.name.startswith(project.PROGRAM_PREFIX) and _is_elf(path)]
    if len(kernels) == 1:
        return kernels[0]
    if len(kernels) > 1:
        raise HarnessError(f"several kernel ELFs ({', '.join(p.name for p in kernels)}): keep one, or name it "
                           f"`kernel` in a build directory")
    images = [path for path in files if path.suffix == ".img"]
    if len(images) == 1:
        return images[0]
    if len(images) > 1:
        raise HarnessError(f"several disk images ({', '.join(p.name for p in images)}): keep one")
    raise HarnessError("no kernel: expected a build directory (with `kernel`), a kernel ELF or a disk image (.img)")


def find_submissions(directory: Path, build: project.BuildTree) -> list[Submission]:
    """Every folder of `directory`, in name order, resolved as `check` resolves its arguments."""
    if not directory.is_dir():
        raise HarnessError(f"{directory}: no such directory of submissions")
    folders = sorted(path for path in directory.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not folders:
        raise HarnessError(f"{directory}: no submission folders in it (one folder per submission)")
    found = []
    for folder in folders:
        try:
            target = resolve(_what_to_check(folder), build)
        except (HarnessError, OSError) as e:
            found.append(Submission(folder.name, folder, None, str(e)))
            continue
        target.label = folder.name
        found.append(Submission(folder.name, folder, target))
    return found
