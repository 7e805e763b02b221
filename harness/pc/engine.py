"""Which CPU engine runs: our patched Unicorn 2.1.4 (engine/), handed to Unicorn's own binding, never the stock one.

The binding (the `unicorn` wheel) loads its C library when `unicorn` is first imported, from the directory in
LIBUNICORN_PATH if that holds one, else from the wheel. `select_library()` runs when the `harness` package is
imported (before any module of it imports `unicorn`) and points LIBUNICORN_PATH at the engine that
`pip install -e .` built into the cache (engine/weensy_engine.py). The binding quietly falls back to the
wheel's library when ours is missing, so `require()` checks what was really loaded (our library says what it is
through `weensy_engine_info`) and refuses to run on anything else: a run on the stock engine would not match
the goldens, so it is an error with one line that says how to build the engine, not a fall-back.

Each patch can be switched off for measurement (`configure`; WEENSY_ENGINE_OFF=code-pages,exit-checks for the
CLI and the bench); none of them changes a run, which tests/test_engine.py checks.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

from .errors import HarnessError

ENGINE_SOURCE = Path(__file__).resolve().parents[2] / "engine"
OFF_VARIABLE = "WEENSY_ENGINE_OFF"


class EngineError(HarnessError):
    """The patched engine is missing, stale, or not the library that Unicorn's binding loaded."""


class EngineCounter(ctypes.Structure):
    """Mirror of the engine's `struct weensy_icount` (engine/patches/engine-api.patch).

    Laid out as QEMU's icount: the live 16-bit budget sits in the CPU next to the exit request, so that
    translated code counts and checks with one load, subtract, store and branch. The count is
    `base + budget_set - *budget`; `base` and `deadline` change only through `set_clock` (the engine's
    `weensy_engine_set_clock`), which recomputes the budget."""

    _fields_ = [("base", ctypes.c_uint64), ("deadline", ctypes.c_uint64), ("stops", ctypes.c_uint64),
                ("budget_set", ctypes.c_uint64), ("budget", ctypes.POINTER(ctypes.c_uint16))]


@dataclass(frozen=True)
class EngineInfo:
    """What runs: the library's own description, its file, and the patches it was built with."""

    description: str  # from the library: "unicorn 2.1.4 weensy-engine key=k..."
    key: str
    library: Path
    patches: tuple[str, ...]  # in the order they apply

    def summary(self, switched_off: frozenset[str] = frozenset(), where: bool = True) -> str:
        """What runs, for people: the patches (those switched off marked) and the key; `where` adds the library's
        path on this machine (for --version; a record meant for others, like the bench's JSON, leaves it out)."""
        shown = [name.removesuffix(".patch") + (" (off)" if name.removesuffix(".patch") in switched_off else "")
                 for name in self.patches]
        return (f"engine: Unicorn 2.1.4 built for x86 with our patches {', '.join(shown)} "
                f"(key {self.key}{f'; {self.library}' if where else ''})")


@cache
def recipe() -> ModuleType | None:
    """engine/weensy_engine.py of this checkout (None when the harness was installed without its engine/)."""
    path = ENGINE_SOURCE / "weensy_engine.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("weensy_engine", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def select_library() -> None:
    """Point Unicorn's binding at our engine, if it is built; called before anything imports `unicorn`."""
    if "unicorn" in sys.modules:
        return  # too late to choose; require() will say so if the loaded library is not ours
    module = recipe()
    if module is None:
        return
    try:
        library = module.built_library()
    except module.EngineBuildError:
        return
    if library is not None:
        os.environ["LIBUNICORN_PATH"] = str(library.parent)


def _not_built_message(module: ModuleType | None) -> str:
    if module is None:
        return (f"the patched Unicorn engine is not available: no {ENGINE_SOURCE.name}/ next to the harness "
                "(install from a checkout: pip install -e .)")
    try:
        expected = module.library_dir() / module.LIBRARY_NAME
    except module.EngineBuildError as error:
        return str(error)
    return (f"the patched Unicorn engine is not built for these patches ({expected} is missing): "
            "run `.venv/bin/pip install -e .` (or `python3 engine/weensy_engine.py`)")


@cache
def require() -> EngineInfo:
    """The engine the binding loaded, checked to be ours and built from the current patches."""
    from unicorn.unicorn_py3.unicorn import uclib

    module = recipe()
    info = getattr(uclib, "weensy_engine_info", None)
    if info is None:
        raise EngineError(_not_built_message(module) if "LIBUNICORN_PATH" not in os.environ or module is None
                          else f"Unicorn's binding did not load our engine from {os.environ['LIBUNICORN_PATH']} "
                               "(was `unicorn` imported before `harness`?)")
    info.restype = ctypes.c_char_p
    description = info().decode()
    key = description.rpartition("key=k")[2]
    if module is not None:
        expected = module.engine_key()
        if key != expected:
            raise EngineError(f"the loaded engine was built from other patches (key {key}, expected {expected}): "
                              "run `.venv/bin/pip install -e .` to rebuild it")
    for name, restype, argtypes in (("weensy_engine_configure", ctypes.c_int, (ctypes.c_void_p, ctypes.c_uint32)),
                                    ("weensy_engine_patches", ctypes.c_uint32, (ctypes.c_void_p,)),
                                    ("weensy_engine_icount", ctypes.POINTER(EngineCounter), (ctypes.c_void_p,)),
                                    ("weensy_engine_set_clock", None,
                                     (ctypes.POINTER(EngineCounter), ctypes.c_uint64, ctypes.c_uint64))):
        function = getattr(uclib, name)
        function.restype, function.argtypes = restype, argtypes
    library = Path(os.environ.get("LIBUNICORN_PATH", "?")) / "libunicorn.so.2"
    patches = tuple(module.SERIES) if module is not None else ()
    return EngineInfo(description, key, library, patches)


def switches() -> dict[str, int]:
    """Patch name -> its bit in the engine's switch mask."""
    module = recipe()
    return dict(module.SWITCHES) if module is not None else {}


def switched_off_from_environment() -> frozenset[str]:
    """The patches named in WEENSY_ENGINE_OFF (comma-separated), checked."""
    names = frozenset(n.strip() for n in os.environ.get(OFF_VARIABLE, "").split(",") if n.strip())
    unknown = names - set(switches())
    if unknown:
        raise EngineError(f"{OFF_VARIABLE}: unknown patch {sorted(unknown)[0]!r} "
                          f"(switchable: {', '.join(sorted(switches()))})")
    return names


def set_clock_function() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    """The engine's `weensy_engine_set_clock(counter, instructions, deadline)`: the only way to move the count or
    the deadline, since the engine's budget follows from both."""
    from unicorn.unicorn_py3.unicorn import uclib

    require()
    return uclib.weensy_engine_set_clock


def configure(uc_handle: object, switched_off: frozenset[str]) -> EngineCounter:
    """Choose the patches a new engine runs (before it runs anything); return its instruction counter."""
    from unicorn.unicorn_py3.unicorn import uclib

    require()
    table = switches()
    unknown = switched_off - set(table)
    if unknown:
        raise EngineError(f"unknown engine patch {sorted(unknown)[0]!r} (switchable: {', '.join(sorted(table))})")
    mask = 0
    for name, bit in table.items():
        if name not in switched_off:
            mask |= bit
    if uclib.weensy_engine_configure(uc_handle, mask) != 0:
        raise EngineError("the engine refused its configuration")
    return uclib.weensy_engine_icount(uc_handle).contents


def flush_tlb(uc_handle: object) -> None:
    """Drop every TLB entry (the binding has no call for UC_CTL_TLB_FLUSH): after RAM or page tables were
    replaced behind the engine's back, as a snapshot restore does."""
    from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH
    from unicorn.unicorn_py3.unicorn import uclib

    if uclib.uc_ctl(uc_handle, ctypes.c_int(UC_CTL_TLB_FLUSH | (UC_CTL_IO_WRITE << 30))) != 0:
        raise EngineError("the engine refused to flush its TLB")
