"""`rdmsr` in the kernel: Unicorn reads IA32_APIC_BASE as 0, so the harness answers that MSR (a one-address
hook on every `0f 32` byte pair of the kernel); every other MSR is the engine's. With the native paths, C looks
at the MSR number and calls Python only for IA32_APIC_BASE: the kernel reads FS and GS bases at every context
save, which must not cost a Python call each."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from harness.machine import Machine, MachineConfig, StopKind
from harness.pc.devices.lapic import APIC_BASE_MSR_VALUE

from .x86asm import assemble_kernel

READ_MSRS = r"""
    mov $0x1b, %ecx               # IA32_APIC_BASE
    rdmsr
    mov %eax, 0x9000
    mov %edx, 0x9004
    mov $0xc0000100, %ecx         # IA32_FS_BASE, written first
    mov $0x12345678, %eax
    mov $0x9abc, %edx
    wrmsr
    xor %eax, %eax
    xor %edx, %edx
    rdmsr
    mov %eax, 0x9008
    mov %edx, 0x900c
    cli
    hlt
"""


@pytest.mark.parametrize("fast_paths", [True, False], ids=["native-paths", "python-paths"])
def test_rdmsr_of_the_apic_base_is_answered_and_other_msrs_are_the_engines(tmp_path: Path,
                                                                           fast_paths: bool) -> None:
    from harness.pc.loader import read_elf

    machine = Machine(MachineConfig(fast_paths=fast_paths))
    assert (machine.fast is not None) == fast_paths
    shim = machine._hook_rdmsr
    python_calls = []

    def counted(uc: object, address: int, size: int, user_data: object) -> None:
        python_calls.append(address)
        shim(uc, address, size, user_data)

    machine._hook_rdmsr = counted  # type: ignore[method-assign]
    machine.boot(read_elf(assemble_kernel(READ_MSRS, tmp_path / "kernel"), "kernel"), "", [])
    stop = machine.run(max_time_ns=100_000_000)
    assert stop.kind is StopKind.HANG, stop.message
    assert struct.unpack_from("<4I", machine.memory, 0x9000) == (APIC_BASE_MSR_VALUE & 0xFFFFFFFF,
                                                                APIC_BASE_MSR_VALUE >> 32, 0x12345678, 0x9abc)
    assert len(python_calls) == (1 if fast_paths else 2)  # natively, the FS base read never reaches Python
