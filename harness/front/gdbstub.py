"""A gdb remote stub (the GDB Remote Serial Protocol over TCP) for the emulated machine.

`gdb build/kernel` then `target remote :PORT` can set breakpoints on kernel symbols, continue, step, interrupt
with Ctrl-C, read and write registers, and read and write memory by *virtual* address: through the current
page table, and for a user address seen from the kernel (which runs on its own page table) through the page
table of the process the kernel calls `current`, so a user variable reads correctly at a kernel breakpoint.
Breakpoints are one-address code hooks; guest memory is never patched.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

from unicorn import x86_const as X

from ..machine import Machine, Stop, StopKind
from ..observe.kernelview import KernelView
from ..pc.paging import PageFault, PhysicalFault, translate, walk

SIGINT, SIGTRAP = 2, 5
RUN_SLICE_NS = 2_000_000  # between slices the stub looks for gdb's Ctrl-C

# The register order of gdb's default x86-64 description (the 'g' packet): 64-bit GPRs, rip, then 32-bit
# eflags and segment selectors; floating-point and vector registers are left out (gdb shows them unavailable).
GPRS = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
        "r15", "rip"]
SMALL = ["eflags", "cs", "ss", "ds", "es", "fs", "gs"]
UC_REGISTER = {name: getattr(X, f"UC_X86_REG_{'RFLAGS' if name == 'eflags' else name.upper()}")
               for name in GPRS + SMALL}


def checksum(data: bytes) -> bytes:
    return b"%02x" % (sum(data) & 0xFF)


class GdbStub:
    def __init__(self, machine: Machine, port: int, host: str = "127.0.0.1",
                 announce: Callable[[str], None] = print) -> None:
        self.machine = machine
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((host, port))
        self.server.listen(1)
        self.port = self.server.getsockname()[1]
        self.announce = announce
        self.conn: socket.socket | None = None
        self.ack = True
        self._stop_acking = False
        self.detached = False
        self.buffer = b""
        image = machine.kernel_image
        self.kernel = KernelView(machine.memory, machine.symbols, image.data if image is not None else None)
        self.last_stop: Stop | None = None

    # -- transport -----------------------------------------------------------------------------------------
    def _send(self, payload: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(b"$" + payload + b"#" + checksum(payload))
        if self.ack:
            self._read_byte()  # '+' (a '-' would ask for a resend; TCP does not lose packets)

    def _read_byte(self) -> int | None:
        assert self.conn is not None
        if not self.buffer:
            chunk = self.conn.recv(4096)
            if not chunk:
                return None
            self.buffer = chunk
        byte, self.buffer = self.buffer[0], self.buffer[1:]
        return byte

    def _read_packet(self) -> bytes | None:
        """The next packet's payload; b'\\x03' for an interrupt; None when gdb disconnects."""
        while True:
            byte = self._read_byte()
            if byte is None:
                return None
            if byte == 0x03:
                return b"\x03"
            if byte == ord("$"):
                break
        payload = bytearray()
        while (byte := self._read_byte()) not in (None, ord("#")):
            payload.append(byte)
        if byte is None:
            return None
        self._read_byte()
        self._read_byte()  # the checksum: TCP has already checked the bytes
        if self.ack:
            assert self.conn is not None
            self.conn.sendall(b"+")
        return bytes(payload)

    def _interrupt_pending(self) -> bool:
        """Did gdb send Ctrl-C while the machine ran?"""
        assert self.conn is not None
        self.conn.setblocking(False)
        try:
            data = self.conn.recv(4096)
        except BlockingIOError:
            return False
        finally:
            self.conn.setblocking(True)
        self.buffer += data
        return b"\x03" in data

    # -- registers and memory ------------------------------------------------------------------------------------
    def _registers(self) -> bytes:
        cpu = self.machine.cpu
        data = b"".join(struct.pack("<Q", cpu.read_register(UC_REGISTER[name])) for name in GPRS)
        data += b"".join(struct.pack("<I", cpu.read_register(UC_REGISTER[name]) & 0xFFFFFFFF) for name in SMALL)
        return data

    def _write_register(self, index: int, raw: bytes) -> bool:
        names = GPRS + SMALL
        if index >= len(names):
            return False
        name = names[index]
        value = int.from_bytes(raw[:8 if index < len(GPRS) else 4], "little")
        if name in ("cs", "ss", "ds", "es"):
            return False  # selectors cannot be loaded from outside the CPU without a descriptor load
        self.machine.cpu.write_register(UC_REGISTER[name], value)
        return True

    def _page_tables(self) -> list[int]:
        """Page tables to translate through, in order of preference."""
        cpu = self.machine.cpu
        cr3 = cpu.read_register(X.UC_X86_REG_CR3)
        tables = []
        if cpu.cpl() == 0 and self.kernel.available:
            for proc in self.kernel.processes(cr3):
                if proc.pid == self.kernel.current_pid(cr3) and proc.pagetable:
                    tables.append(proc.pagetable)
        return tables + [cr3]

    def _translate(self, address: int) -> int | None:
        memory = self.machine.memory
        tables = self._page_tables()
        for table in tables[:-1]:  # the current process's table, for its user pages only
            try:
                mapping = walk(memory, table, address)
            except PhysicalFault:
                mapping = None
            if mapping is not None and mapping.user:
                return mapping.pa
        try:
            return translate(memory, tables[-1], address)
        except (PageFault, PhysicalFault):
            return None

    def _read_memory(self, address: int, length: int) -> bytes | None:
        out = bytearray()
        while len(out) < length:
            pa = self._translate(address + len(out))
            chunk = min(length - len(out), 4096 - ((address + len(out)) & 0xFFF))
            if pa is None or pa + chunk > len(self.machine.memory):
                return bytes(out) if out else None
            out += self.machine.memory[pa:pa + chunk]
        return bytes(out)

    def _write_memory(self, address: int, data: bytes) -> bool:
        done = 0
        while done < len(data):
            pa = self._translate(address + done)
            chunk = min(len(data) - done, 4096 - ((address + done) & 0xFFF))
            if pa is None or pa + chunk > len(self.machine.memory):
                return False
            self.machine.memory[pa:pa + chunk] = data[done:done + chunk]
            self.machine.uc.ctl_remove_cache(address + done, address + done + chunk)
            done += chunk
        return True

    # -- execution ---------------------------------------------------------------------------------------------
    def _stop_reply(self, stop: Stop | None, signal: int = SIGTRAP) -> bytes:
        if stop is not None and stop.kind is StopKind.POWER_OFF:
            return b"W00"
        if stop is not None and not stop.ok:
            return b"X%02x" % 6  # the machine died (panic, triple fault...): report it like SIGABRT
        return b"S%02x" % signal

    def _continue(self) -> bytes:
        machine = self.machine
        while True:
            stop = machine.run(for_ns=RUN_SLICE_NS)
            if stop.kind is not StopKind.PAUSED:
                self.last_stop = stop
                return self._stop_reply(stop)
            if self._interrupt_pending():
                self.buffer = self.buffer.replace(b"\x03", b"", 1)
                return self._stop_reply(None, SIGINT)

    def _step(self) -> bytes:
        stop = self.machine.step()
        self.last_stop = stop
        return self._stop_reply(stop if stop is not None and stop.kind is not StopKind.BREAKPOINT else None)

    # -- the session -------------------------------------------------------------------------------------------
    def serve(self) -> Stop | None:
        """Wait for gdb, then answer its packets until it detaches, kills the machine or disconnects."""
        self.announce(f"harness: waiting for gdb on 127.0.0.1:{self.port} (in gdb: target remote :{self.port})")
        self.conn, _ = self.server.accept()
        self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                packet = self._read_packet()
                if packet is None:
                    return self.last_stop
                if packet == b"\x03":
                    self._send(self._stop_reply(None, SIGINT))
                    continue
                reply = self._handle(packet)
                if reply is None:  # detach or kill
                    return self.last_stop
                self._send(reply)
                if self._stop_acking:
                    self.ack = self._stop_acking = False
        finally:
            self.conn.close()
            self.server.close()

    def _handle(self, packet: bytes) -> bytes | None:
        command, rest = packet[:1], packet[1:]
        if packet.startswith(b"qSupported"):
            return b"PacketSize=4000;QStartNoAckMode+;swbreak+;hwbreak+;vContSupported+"
        if packet == b"QStartNoAckMode":
            self._stop_acking = True  # after this reply, which gdb still acknowledges
            return b"OK"
        if packet == b"?":
            return self._stop_reply(None)
        if packet in (b"qAttached",):
            return b"1"
        if packet == b"qC":
            return b"QC1"
        if packet == b"qfThreadInfo":
            return b"m1"
        if packet == b"qsThreadInfo":
            return b"l"
        if command == b"H" or packet.startswith(b"T"):
            return b"OK"
        if packet == b"g":
            return self._registers().hex().encode()
        if command == b"G":
            raw = bytes.fromhex(rest.decode())
            offsets = [8] * len(GPRS) + [4] * len(SMALL)
            at = 0
            for index, size in enumerate(offsets):
                if at + size <= len(raw):
                    self._write_register(index, raw[at:at + size])
                at += size
            return b"OK"
        if command == b"p":
            index = int(rest, 16)
            data = self._registers()
            sizes = [8] * len(GPRS) + [4] * len(SMALL)
            if index >= len(sizes):
                return b"E45"
            start = sum(sizes[:index])
            return data[start:start + sizes[index]].hex().encode()
        if command == b"P":
            index, value = rest.split(b"=")
            return b"OK" if self._write_register(int(index, 16), bytes.fromhex(value.decode())) else b"E45"
        if command == b"m":
            address, length = (int(x, 16) for x in rest.split(b","))
            data = self._read_memory(address, length)
            return data.hex().encode() if data else b"E14"
        if command == b"M":
            where, data = rest.split(b":")
            address, _ = (int(x, 16) for x in where.split(b","))
            return b"OK" if self._write_memory(address, bytes.fromhex(data.decode())) else b"E14"
        if command in (b"Z", b"z"):
            kind, address, _ = rest.split(b",")
            if kind not in (b"0", b"1"):
                return b""  # watchpoints are not supported
            if command == b"Z":
                self.machine.add_breakpoint(int(address, 16))
            else:
                self.machine.remove_breakpoint(int(address, 16))
            return b"OK"
        if packet == b"vCont?":
            return b"vCont;c;C;s;S"
        if packet.startswith(b"vCont;"):
            action = packet[6:7]
            return self._step() if action in (b"s", b"S") else self._continue()
        if command in (b"c", b"C"):
            return self._continue()
        if command in (b"s", b"S"):
            return self._step()
        if command == b"D":
            self._send(b"OK")
            self.detached = True
            return None
        if command == b"k":
            return None
        return b""  # not supported: gdb falls back
