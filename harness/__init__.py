"""A PC on the Unicorn CPU emulator that boots, runs, traces and tests a compiled x86-64 WeensyOS."""

from .pc import engine as _engine

__version__ = "0.1.0"

# Before any module of the package imports `unicorn`: have Unicorn's binding load our patched engine (engine.py).
_engine.select_library()
