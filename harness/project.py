"""Where the guest lives: the source tree, the build directory, its programs, and rebuilding when stale."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .pc.errors import HarnessError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
PROGRAM_PREFIX = "p-"


def default_source_dir() -> Path | None:
    """The repository's weensyos-src/, if the harness runs from a checkout."""
    candidate = PACKAGE_ROOT / "weensyos-src"
    return candidate if (candidate / "GNUmakefile").exists() else None


def default_build_dir() -> Path:
    env = os.environ.get("WEENSY_BUILD_DIR")
    if env:
        return Path(env)
    return PACKAGE_ROOT / "build" if default_source_dir() else Path.cwd() / "build"


@dataclass(frozen=True)
class BuildTree:
    """The kernel, programs and syscall table of one build directory."""

    directory: Path

    @property
    def kernel(self) -> Path:
        return self.directory / "kernel"

    @property
    def syscall_table(self) -> Path:
        return self.directory / "syscalls.json"

    @property
    def command_table(self) -> Path:
        return self.directory / "commands.json"

    def commands(self) -> dict[str, list[str]]:
        """Pseudo-commands the kernel expands (e.g. friends -> alice eve), from build/commands.json."""
        try:
            raw = json.loads(self.command_table.read_text())
            return {str(name): [str(word) for word in words] for name, words in raw["commands"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise HarnessError(f"{self.command_table}: not a valid command table ({e})") from None

    def options(self) -> dict[str, str]:
        """Command-line words the kernel takes as options (e.g. memviewer), with their descriptions."""
        try:
            raw = json.loads(self.command_table.read_text())
            return {str(name): str(text) for name, text in raw.get("options", {}).items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise HarnessError(f"{self.command_table}: not a valid command table ({e})") from None

    def programs(self) -> dict[str, Path]:
        """name -> ELF for every user program (`p-<name>` files without an extension)."""
        if not self.directory.is_dir():
            return {}
        return {path.name[len(PROGRAM_PREFIX):]: path for path in sorted(self.directory.iterdir())
                if path.name.startswith(PROGRAM_PREFIX) and path.is_file() and "." not in path.name}


BUILD_STAMP = ".weensy-harness-build"  # in a directory the harness built: it may rebuild it


def ours_to_build(build_dir: Path) -> bool:
    """May the harness (re)build `build_dir` from the repository's sources when it is stale?

    Yes for the repository's own build/, for a directory that the harness built (its stamp is there) and for
    one that does not exist yet or is empty. Never for a build the user made (`make BUILD=DIR` of their own
    sources): rebuilding it would silently replace their kernel with ours, and they would test the wrong one."""
    build_dir = build_dir.resolve()
    if build_dir == (PACKAGE_ROOT / "build").resolve() or not build_dir.exists():
        return True
    return (build_dir / BUILD_STAMP).exists() or not any(build_dir.iterdir())


def _outputs_signature(build_dir: Path) -> list[tuple[str, int]]:
    if not build_dir.is_dir():
        return []
    return sorted((p.name, p.stat().st_mtime_ns) for p in build_dir.iterdir() if p.is_file())


def build(source: Path, build_dir: Path) -> bool:
    """Run the guest's make (it rebuilds only what is stale); show its output only when it fails.

    Returns True if any output file changed."""
    import subprocess  # (imported here: most starts build nothing)

    before = _outputs_signature(build_dir)
    jobs = str(os.cpu_count() or 1)
    try:
        result = subprocess.run(["make", "-C", str(source), f"BUILD={build_dir}", "-j", jobs],
                                capture_output=True, text=True)
    except FileNotFoundError:
        raise HarnessError("cannot build WeensyOS: `make` is not installed") from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise HarnessError(f"building WeensyOS failed (make exited {result.returncode}):\n{output}")
    stamp = build_dir / BUILD_STAMP
    if not stamp.exists():
        stamp.touch()
    return _outputs_signature(build_dir) != before
