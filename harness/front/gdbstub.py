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
MAX_PACKET = 0x4000  # payload bytes we accept: what qSupported announces (PacketSize is in hex)
MAX_MEMORY_READ = (MAX_PACKET - 4) // 2  # an 'm' reply is hex: two characters a byte
ACK_RETRIES = 3  # resends of a packet gdb answers '-'
ERROR = b"E01"  # the reply to a malformed packet
TOO_LONG = b"\x00too long"  # _read_packet's marker for a dropped oversized packet (no real packet starts with NUL)
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
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


class MalformedPacket(ValueError):
    """A packet's fields do not parse: the stub answers ERROR and goes on."""


def number(text: bytes, digits: int = 16) -> int:
    """A hex number as gdb writes one: 1 to `digits` hex digits, nothing else (no sign, prefix or space)."""
    if not 0 < len(text) <= digits or not set(text) <= HEX_DIGITS:
        raise MalformedPacket(f"not a hex number: {text[:20]!r}")
    return int(text, 16)


def hex_bytes(text: bytes) -> bytes:
    if len(text) % 2 or not set(text) <= HEX_DIGITS:
        raise MalformedPacket("not hex bytes")
    return bytes.fromhex(text.decode("ascii"))


def fields(text: bytes, separator: bytes, count: int) -> list[bytes]:
    parts = text.split(separator, count - 1)
    if len(parts) != count:
        raise MalformedPacket(f"expected {count} fields separated by {separator!r}")
    return parts


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
        self._at = 0  # next unread byte of `buffer`
        image = machine.kernel_image
        self.kernel = KernelView(machine.memory, machine.symbols, image.data if image is not None else None)
        self.last_stop: Stop | None = None

    # -- transport -----------------------------------------------------------------------------------------
    def _send(self, payload: bytes) -> None:
        """Send a packet; with acknowledgements on, resend it on '-' (a few times at most)."""
        assert self.conn is not None
        packet = b"$" + payload + b"#" + checksum(payload)
        for _ in range(1 + ACK_RETRIES):
            self.conn.sendall(packet)
            if not self.ack:
                return
            byte = self._read_byte()
            if byte == ord("+") or byte is None:
                return
            if byte != ord("-"):
                self._at -= 1  # not an acknowledgement: gdb went on (a packet, a Ctrl-C); keep the byte
                return

    def _fill(self) -> bool:
        """Refill the buffer once it is used up; False when gdb disconnects."""
        assert self.conn is not None
        if self._at < len(self.buffer):
            return True
        try:
            chunk = self.conn.recv(65536)
        except OSError:
            return False
        if not chunk:
            return False
        self.buffer, self._at = chunk, 0
        return True

    def _read_byte(self) -> int | None:
        if not self._fill():
            return None
        byte = self.buffer[self._at]
        self._at += 1
        return byte

    def _read_payload(self) -> tuple[bytes, bool] | None:
        """The bytes up to '#' (after a '$'), whole buffers at a time: (at most MAX_PACKET of them, whether
        more were dropped); None when gdb disconnects. A '$' on the way starts the packet again."""
        payload = bytearray()
        oversized = False
        while self._fill():
            buffer, at = self.buffer, self._at
            end = buffer.find(b"#", at)
            stop = end if end >= 0 else len(buffer)
            restart = buffer.rfind(b"$", at, stop)
            if restart >= 0:  # a new packet starts: what came before it was noise
                payload.clear()
                oversized = False
                at = restart + 1
            room = MAX_PACKET - len(payload)
            payload += buffer[at:at + min(room, stop - at)]
            oversized = oversized or stop - at > room
            self._at = stop + 1 if end >= 0 else stop
            if end >= 0:
                return bytes(payload), oversized
        return None

    def _read_packet(self) -> bytes | None:
        """The next packet's payload; b'\\x03' for an interrupt; TOO_LONG for a payload over MAX_PACKET bytes
        (dropped as it arrives, never buffered whole); None when gdb disconnects.

        A packet whose checksum is wrong is answered '-' (gdb sends it again) while acknowledgements are on."""
        while True:
            byte = self._read_byte()
            while byte not in (None, 0x03, ord("$")):
                byte = self._read_byte()  # acknowledgements and noise between packets
            if byte is None:
                return None
            if byte == 0x03:
                return b"\x03"
            read = self._read_payload()
            digits = bytes(b for b in (self._read_byte(), self._read_byte()) if b is not None)
            if read is None or len(digits) < 2:
                return None
            payload, oversized = read
            if self.ack:
                assert self.conn is not None
                if digits.lower() != checksum(payload) and not oversized:
                    self.conn.sendall(b"-")
                    continue
                self.conn.sendall(b"+")
            return TOO_LONG if oversized else payload

    def _interrupt_pending(self) -> bool:
        """Did gdb send Ctrl-C while the machine ran? (It is taken out of the input.)"""
        assert self.conn is not None
        self.conn.setblocking(False)
        try:
            data = self.conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            data = b""
        except OSError:
            return False
        finally:
            self.conn.setblocking(True)
        pending = self.buffer[self._at:] + data
        interrupted = b"\x03" in pending
        if len(pending) > 4 * MAX_PACKET:  # gdb sends nothing but Ctrl-C while the machine runs: a flood is dropped
            pending = b""
        self.buffer, self._at = pending.replace(b"\x03", b"", 1), 0
        return interrupted

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
                return self._stop_reply(None, SIGINT)

    def _step(self) -> bytes:
        stop = self.machine.step()
        self.last_stop = stop
        return self._stop_reply(stop if stop is not None and stop.kind is not StopKind.BREAKPOINT else None)

    # -- the session -------------------------------------------------------------------------------------------
    def serve(self) -> Stop | None:
        """Wait for gdb, then answer its packets until it detaches, kills the machine or disconnects."""
        self.announce(f"harness: waiting for gdb on 127.0.0.1:{self.port} (in gdb: target remote :{self.port})")
        conn, _ = self.server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.serve_connection(conn)

    def serve_connection(self, conn: socket.socket) -> Stop | None:
        """Answer packets on an open connection (a TCP one from `serve`, or any stream socket) until it ends."""
        self.conn = conn
        try:
            while True:
                packet = self._read_packet()
                if packet is None:
                    return self.last_stop
                if packet == b"\x03":
                    self._send(self._stop_reply(None, SIGINT))
                    continue
                reply = ERROR if packet == TOO_LONG else self._answer(packet)
                if reply is None:  # detach or kill
                    return self.last_stop
                self._send(reply)
                if self._stop_acking:
                    self.ack = self._stop_acking = False
        except OSError:  # gdb went away mid-reply (a reset or broken connection): the session is over
            return self.last_stop
        finally:
            self.conn.close()
            self.server.close()

    def _answer(self, packet: bytes) -> bytes | None:
        """The reply to a packet; ERROR for one whose fields do not parse, and the session goes on."""
        try:
            return self._handle(packet)
        except (MalformedPacket, ValueError, UnicodeDecodeError):
            return ERROR

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
            raw = hex_bytes(rest)
            offsets = [8] * len(GPRS) + [4] * len(SMALL)
            at = 0
            for index, size in enumerate(offsets):
                if at + size <= len(raw):
                    self._write_register(index, raw[at:at + size])
                at += size
            return b"OK"
        if command == b"p":
            index = number(rest, 4)
            data = self._registers()
            sizes = [8] * len(GPRS) + [4] * len(SMALL)
            if index >= len(sizes):
                return b"E45"
            start = sum(sizes[:index])
            return data[start:start + sizes[index]].hex().encode()
        if command == b"P":
            index, value = fields(rest, b"=", 2)
            return b"OK" if self._write_register(number(index, 4), hex_bytes(value)) else b"E45"
        if command == b"m":
            address, length = (number(x) for x in fields(rest, b",", 2))
            if length > MAX_MEMORY_READ:
                return ERROR
            data = self._read_memory(address, length)
            return data.hex().encode() if data else b"E14"
        if command == b"M":
            where, text = fields(rest, b":", 2)
            address, length = (number(x) for x in fields(where, b",", 2))
            data = hex_bytes(text)
            if len(data) != length:
                return ERROR
            return b"OK" if self._write_memory(address, data) else b"E14"
        if command in (b"Z", b"z"):
            kind, text, _ = fields(rest, b",", 3)  # the third field is the length, then any conditions
            address = number(text)
            if kind not in (b"0", b"1"):
                return b""  # watchpoints are not supported
            if command == b"Z":
                self.machine.add_breakpoint(address)
            else:
                self.machine.remove_breakpoint(address)
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
