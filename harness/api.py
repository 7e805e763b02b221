"""The Python API: boot a kernel with programs in a few lines (used by the CLI and by tests).

    tree = BuildTree(default_build_dir())
    machine = boot_machine(tree.kernel, "hello", tree.programs())
    stop = machine.run(max_time_ns=5_000_000_000)
    assert "Hello" in machine.screen_text()
"""

from __future__ import annotations

from pathlib import Path

from .machine import Machine, MachineConfig
from .pc.loader import Module, read_elf


def boot_machine(kernel: Path, command_line: str | None, programs: dict[str, Path],
                 config: MachineConfig | None = None) -> Machine:
    """A machine with `kernel` loaded, every program passed as a multiboot module, ready to `run()`.

    `command_line` None boots without a multiboot hand-off (no command line, no modules), as the course's boot
    loader does: a course kernel then runs the program compiled into it."""
    image = read_elf(kernel, "kernel")
    modules = [Module(name, read_elf(path, f"program '{name}'")) for name, path in programs.items()]
    machine = Machine(config)
    machine.boot(image, command_line, modules)
    return machine
