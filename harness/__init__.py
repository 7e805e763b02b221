"""A PC on the Unicorn CPU emulator that boots, runs, traces and tests a compiled x86-64 WeensyOS."""

__version__ = "0.1.0"
