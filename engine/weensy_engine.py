"""Our engine: Unicorn 2.1.4's source distribution from PyPI with the patches in engine/patches, built for x86.

Why a build of our own: the harness's speed ceiling is Unicorn itself (engine/README.md says where and what each
patch changes), and the deterministic instruction clock has to live inside the translated code. The Python binding
stays Unicorn's own (the `unicorn` wheel from PyPI): the harness points it at our library with LIBUNICORN_PATH
before it imports `unicorn` (harness/pc/engine.py).

The library is cached under a key made of the Unicorn version, the build recipe below and the bytes of every
patch, so it is rebuilt only when one of them changes (and shared by every checkout on the machine). This file
uses the standard library only: the build backend (weensy_build_backend.py) imports it at `pip install -e .`, the
harness imports it to find the library, and `python3 engine/weensy_engine.py` builds by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

# fcntl, subprocess, tarfile and tempfile are imported by the functions that build: the harness imports this
# file at every start only to find the library.

UNICORN_VERSION = "2.1.4"
ENGINE_DIR = Path(__file__).resolve().parent
PATCH_DIR = ENGINE_DIR / "patches"
LIBRARY_NAME = "libunicorn.so.2"  # the name the binding loads from LIBUNICORN_PATH

# The patches, in the order they apply, and the bit each one has in the engine's switch mask
# (weensy_engine_configure; WEENSY_PATCH_* in engine-api.patch). engine-api.patch has no switch: it is the
# interface (version string, switches, the clock's counter).
SERIES = ("engine-api.patch", "instruction-clock.patch", "code-pages.patch", "exit-checks.patch",
          "code-hooks.patch", "tlb-flush.patch", "page-walk.patch",
          "io-pc.patch", "unroll.patch", "reuse.patch")
SWITCHES = {"code-pages": 1 << 0, "exit-checks": 1 << 1, "instruction-clock": 1 << 2, "code-hooks": 1 << 3,
            "tlb-flush": 1 << 4, "page-walk": 1 << 5,
            "io-pc": 1 << 6, "unroll": 1 << 7, "reuse": 1 << 8}

# Part of the key: a change here rebuilds the engine.
CMAKE_OPTIONS = ("-DCMAKE_BUILD_TYPE=Release", "-DUNICORN_ARCH=x86", "-DUNICORN_BUILD_TESTS=OFF",
                 "-DUNICORN_INSTALL=OFF", "-DUNICORN_LEGACY_STATIC_ARCHIVE=OFF", "-DBUILD_SHARED_LIBS=ON")
RECIPE = f"unicorn=={UNICORN_VERSION} sdist from PyPI; patch -p1 in SERIES order; cmake {' '.join(CMAKE_OPTIONS)}"

LOG_TAIL_LINES = 40  # how much of a failed step's log a failure shows: enough for the compiler's first error


class EngineBuildError(Exception):
    """The engine cannot be built; the message is one line that says what is missing.

    When a build step failed, `log_tail` holds the last lines of its log: the log itself may be out of reach
    (inside a failed `docker build`, on a CI machine), so report() shows them before the one error line.
    """

    def __init__(self, message: str, log_tail: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.log_tail = log_tail


def report(error: EngineBuildError, stream: TextIO) -> None:
    """Write a build failure to `stream`: the tail of the failed step's log, if any, then the error line last."""
    if error.log_tail:
        print(f"--- the last {len(error.log_tail)} lines of the engine's build log ---", file=stream)
        for line in error.log_tail:
            print(line, file=stream)
        print("---", file=stream)
    print(f"error: {error}", file=stream)


def engine_key() -> str:
    """Hex digest of everything the built library depends on (besides the compiler)."""
    digest = hashlib.sha256(RECIPE.encode())
    for name in SERIES:
        path = PATCH_DIR / name
        try:
            digest.update(b"\0" + name.encode() + b"\0" + path.read_bytes())
        except OSError as e:
            raise EngineBuildError(f"engine patch {path} is missing ({e.strerror})") from None
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """Where built engines are kept: $WEENSY_ENGINE_CACHE, else the user's cache directory."""
    explicit = os.environ.get("WEENSY_ENGINE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "weensy-harness"


def library_dir(key: str | None = None) -> Path:
    """The directory that holds (or will hold) the engine built for `key` (default: the current patches)."""
    return cache_root() / f"engine-{key or engine_key()}"


def built_library() -> Path | None:
    """The cached library for the current patches, or None if it has not been built."""
    path = library_dir() / LIBRARY_NAME
    return path if path.is_file() else None


def _tool(name: str, module: str | None = None) -> str:
    """A build tool: from PATH, else from the PyPI package of the same name (cmake, ninja), else an error."""
    found = shutil.which(name)
    if found:
        return found
    if module:
        with contextlib.suppress(Exception):
            package = __import__(module)
            candidate = Path(getattr(package, "BIN_DIR", "") or getattr(package, "CMAKE_BIN_DIR", "")) / name
            if candidate.is_file():
                return str(candidate)
    hint = {"cmake": "pip install cmake", "ninja": "pip install ninja", "patch": "apt-get install patch",
            "cc": "apt-get install build-essential", "pkg-config": "apt-get install pkg-config"}.get(name, "")
    raise EngineBuildError(f"cannot build the patched Unicorn engine: `{name}` not found"
                           + (f" (install it: {hint})" if hint else ""))


def _run(command: list[str], cwd: Path, what: str, log_file: Path) -> None:
    import subprocess

    with log_file.open("ab") as log:
        log.write(("\n$ " + " ".join(command) + "\n").encode())
        log.flush()
        result = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise EngineBuildError(f"cannot build the patched Unicorn engine: {what} failed (log: {log_file})",
                               log_tail=_tail(log_file, LOG_TAIL_LINES))


def _check_configure(log_file: Path, start: int) -> None:
    """Fail on an error of Unicorn's own configure script, which its CMakeLists.txt runs without checking.

    The script reports with lines that start with "ERROR:"; cmake goes on regardless, and the compile that follows
    fails far from the cause (e.g. PROT_READ undeclared when configure stopped before it wrote CONFIG_POSIX).
    """
    with log_file.open("rb") as log:
        log.seek(start)
        output = log.read().decode(errors="replace").splitlines()
    for line in output:
        if line.startswith("ERROR: "):
            raise EngineBuildError(f"cannot build the patched Unicorn engine: Unicorn's configure failed: "
                                   f"{line[len('ERROR: '):].strip()} (log: {log_file})",
                                   log_tail=_tail(log_file, LOG_TAIL_LINES))


def _tail(log_file: Path, count: int) -> tuple[str, ...]:
    """The last `count` lines of a log (decoded leniently: compilers may print any bytes)."""
    try:
        with log_file.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 256 * 1024))  # the end of a long log is all that is shown
            text = log.read().decode(errors="replace")
    except OSError:
        return ()
    return tuple(text.rstrip("\n").splitlines()[-count:])


def _fetch_sdist(work: Path, log_file: Path) -> Path:
    """Unicorn's source distribution: $WEENSY_UNICORN_SDIST if set, else `pip download` from the package index."""
    given = os.environ.get("WEENSY_UNICORN_SDIST")
    if given:
        path = Path(given)
        if not path.is_file():
            raise EngineBuildError(f"WEENSY_UNICORN_SDIST={given}: no such file")
        return path
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
          "--dest", str(work), f"unicorn=={UNICORN_VERSION}"], work,
         f"downloading the unicorn=={UNICORN_VERSION} source distribution (pip download)", log_file)
    found = sorted(work.glob(f"unicorn-{UNICORN_VERSION}.tar.gz"))
    if not found:
        raise EngineBuildError(f"pip download gave no unicorn-{UNICORN_VERSION}.tar.gz")
    return found[0]


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time per cache (parallel installs in several checkouts wait for the first)."""
    import fcntl

    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / "engine-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build(progress: Callable[[str], None] = lambda line: None, force: bool = False) -> Path:
    """Build the engine for the current patches unless it is cached; return the library's path."""
    import tarfile
    import tempfile

    key = engine_key()
    target_dir = library_dir(key)
    with _build_lock():
        library = target_dir / LIBRARY_NAME
        if library.is_file() and not force:
            return library
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not compiler:
            raise EngineBuildError("cannot build the patched Unicorn engine: no C compiler (cc or gcc) found "
                                   "(install it: apt-get install build-essential)")
        cmake, ninja, patch = _tool("cmake", "cmake"), _tool("ninja", "ninja"), _tool("patch")
        # Unicorn's configure (which its cmake runs) stops at once without pkg-config, and cmake carries on: the
        # build would fail much later, compiling with a half-written config-host.h. Say so now instead.
        _tool("pkg-config")
        started = time.monotonic()
        cache_root().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="engine-build-", dir=cache_root()) as scratch:
            work = Path(scratch)
            log_file = cache_root() / f"engine-{key}-build.log"
            log_file.write_text(f"weensy engine {key}: {RECIPE}\n")
            progress(f"engine: fetching unicorn {UNICORN_VERSION} source")
            sdist = _fetch_sdist(work, log_file)
            with tarfile.open(sdist) as archive:
                try:
                    archive.extractall(work, filter="data")
                except TypeError:  # Python < 3.11.4: no extraction filters (the sdist is PyPI's own)
                    archive.extractall(work)
            source = work / f"unicorn-{UNICORN_VERSION}" / "src"
            if not (source / "CMakeLists.txt").is_file():
                raise EngineBuildError(f"{sdist.name}: no src/CMakeLists.txt inside (not Unicorn's sdist?)")
            for name in SERIES:
                progress(f"engine: applying {name}")
                _run([patch, "-p1", "--batch", "--forward", "--quiet", "-i", str(PATCH_DIR / name)], source,
                     f"applying {name}", log_file)
            build_dir = work / "build"
            progress("engine: configuring (cmake, x86 only)")
            flags = f"-DWEENSY_ENGINE_KEY=k{key}"
            configure_start = log_file.stat().st_size
            _run([cmake, "-S", str(source), "-B", str(build_dir), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
                  f"-DCMAKE_C_COMPILER={compiler}", f"-DCMAKE_C_FLAGS={flags}", *CMAKE_OPTIONS], source,
                 "cmake", log_file)
            _check_configure(log_file, configure_start)
            jobs = str(os.cpu_count() or 2)
            progress(f"engine: compiling with {jobs} jobs (ninja)")
            _run([ninja, "-C", str(build_dir), "-j", jobs], source, "compiling (ninja)", log_file)
            built = build_dir / LIBRARY_NAME
            if not built.is_file():
                raise EngineBuildError(f"the build made no {LIBRARY_NAME} (log: {log_file})")
            # Publish atomically: a directory renamed into place, so no reader ever sees half a library.
            staging = work / "publish"
            staging.mkdir()
            shutil.copy2(built, staging / LIBRARY_NAME)
            (staging / "BUILD-INFO").write_text(
                f"key {key}\n{RECIPE}\ncompiler {compiler}\nseconds {time.monotonic() - started:.1f}\n")
            if target_dir.exists():
                shutil.rmtree(target_dir)
            os.replace(staging, target_dir)
        progress(f"engine: built in {time.monotonic() - started:.0f} s: {target_dir / LIBRARY_NAME}")
        return target_dir / LIBRARY_NAME


def main(argv: list[str] | None = None) -> int:
    """`python3 engine/weensy_engine.py [--key | --path | --force]`: build (or show) the engine."""
    args = sys.argv[1:] if argv is None else argv
    try:
        if "--key" in args:
            print(engine_key())
            return 0
        if "--path" in args:
            library = built_library()
            print(library if library else f"not built (would be {library_dir() / LIBRARY_NAME})")
            return 0 if library else 1
        print(build(progress=print, force="--force" in args))
        return 0
    except EngineBuildError as error:
        report(error, sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
