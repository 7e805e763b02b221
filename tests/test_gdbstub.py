"""The gdb stub survives whatever arrives on its socket: malformed packets get an error reply, oversized ones are
dropped as they stream in, checksums and acknowledgements follow the protocol.

The stub serves one end of a socket pair in a thread; the test plays gdb on the other end.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import project
from harness.api import boot_machine
from harness.front.gdbstub import ERROR, MAX_PACKET, GdbStub, checksum

CASES = int(os.environ.get("WEENSY_FUZZ_CASES", "300"))
EXECUTION = (b"c", b"C", b"s", b"S", b"v", b"D", b"k")  # packets that run or end the machine, not parsers


def frame(payload: bytes) -> bytes:
    return b"$" + payload + b"#" + checksum(payload)


class Gdb:
    """The client side: sends packets, reads acknowledgements and replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(30)
        self.pending = b""

    def read(self, count: int) -> bytes:
        while len(self.pending) < count:
            chunk = self.sock.recv(65536)
            assert chunk, "the stub closed the connection"
            self.pending += chunk
        data, self.pending = self.pending[:count], self.pending[count:]
        return data

    def reply(self, ack: bool = True) -> bytes:
        """The next reply's payload (acknowledged with '+' unless `ack` is False)."""
        assert self.read(1) == b"$"
        payload = b""
        while (byte := self.read(1)) != b"#":
            payload += byte
        assert self.read(2) == checksum(payload)
        if ack:
            self.sock.sendall(b"+")
        return payload

    def ask(self, payload: bytes) -> bytes:
        self.sock.sendall(frame(payload))
        assert self.read(1) == b"+"
        return self.reply()


@pytest.fixture
def gdb(build_tree: project.BuildTree) -> Iterator[Gdb]:
    machine = boot_machine(build_tree.kernel, "hello", build_tree.programs())
    stub = GdbStub(machine, 0, announce=lambda _: None)
    stub.server.close()
    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=stub.serve_connection, args=(ours,), daemon=True)
    thread.start()
    client = Gdb(theirs)
    yield client
    theirs.close()
    thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.mark.parametrize("packet", [
    b"mzz,4", b"m1000", b"m1000,", b"m,4", b"m-1,4", b"m0x10,4", b"m1000,ffffffff",
    b"M1000,2", b"M1000,2:zz00", b"M1000,2:00", b"M1000:0000", b"G0", b"Gzz", b"p", b"pxyz", b"p1 ",
    b"P", b"P1", b"P1=zz", b"P=00", b"Z0", b"Z0,zz,1", b"z0,", b"Z0,10000000000000000,1", b"Z0,,1",
])
def test_a_malformed_packet_gets_an_error_reply_and_the_session_goes_on(gdb: Gdb, packet: bytes) -> None:
    assert gdb.ask(packet) == ERROR
    registers = gdb.ask(b"g")
    assert len(registers) == (17 * 8 + 7 * 4) * 2


def test_an_oversized_packet_without_an_end_is_dropped_as_it_arrives(gdb: Gdb) -> None:
    flood = b"$" + b"m" * (16 << 20)  # 16 MiB and no '#': the stub must neither buffer it all nor stall
    sender = threading.Thread(target=gdb.sock.sendall, args=(flood + b"#00",))
    sender.start()
    assert gdb.read(1) == b"+"
    assert gdb.reply() == ERROR
    sender.join(timeout=60)
    assert gdb.ask(b"qAttached") == b"1"
    assert gdb.ask(b"m0," + b"%x" % (MAX_PACKET,)) == ERROR  # a reply that would not fit one packet


def test_a_bad_checksum_is_refused_and_the_resent_packet_answered(gdb: Gdb) -> None:
    gdb.sock.sendall(b"$qAttached#00")
    assert gdb.read(1) == b"-"
    assert gdb.ask(b"qAttached") == b"1"


def test_a_negative_acknowledgement_makes_the_stub_send_its_reply_again(gdb: Gdb) -> None:
    gdb.sock.sendall(frame(b"qAttached"))
    assert gdb.read(1) == b"+"
    assert gdb.reply(ack=False) == b"1"
    gdb.sock.sendall(b"-")
    assert gdb.reply() == b"1"  # the same reply again
    assert gdb.ask(b"qC") == b"QC1"


def test_a_packet_instead_of_an_acknowledgement_is_still_answered(gdb: Gdb) -> None:
    gdb.sock.sendall(frame(b"qAttached"))
    assert gdb.read(1) == b"+"
    assert gdb.reply(ack=False) == b"1"
    assert gdb.ask(b"qC") == b"QC1"  # gdb never acknowledged: its next packet is read, not swallowed


def test_gdb_vanishing_mid_session_ends_the_session_quietly(build_tree: project.BuildTree) -> None:
    machine = boot_machine(build_tree.kernel, "hello", build_tree.programs())
    stub = GdbStub(machine, 0, announce=lambda _: None)
    stub.server.close()
    ours, theirs = socket.socketpair()
    theirs.sendall(frame(b"g") + frame(b"g"))
    theirs.shutdown(socket.SHUT_RD)  # replies now fail to send (EPIPE), like a gdb killed mid-session
    theirs.close()
    assert stub.serve_connection(ours) is None  # no exception: the session simply ends


def test_memory_written_then_read_back(gdb: Gdb) -> None:
    assert gdb.ask(b"M100000,4:deadbeef") == b"OK"  # the kernel's identity-mapped first megabyte and above
    assert gdb.ask(b"m100000,4") == b"deadbeef"


packet_bytes = st.binary(max_size=64).filter(lambda p: p[:1] not in EXECUTION)
structured = st.tuples(st.sampled_from([b"m", b"M", b"G", b"p", b"P", b"Z", b"z", b"g", b"H", b"q", b"?"]),
                       st.lists(st.sampled_from([b",", b":", b"=", b";", b"0", b"1", b"f", b"ff", b"zz",
                                                 b"-", b"x", b"ffffffffffffffff", b"10000000000000000",
                                                 b" ", b"#", b"$", b"}"]), max_size=8))


@pytest.fixture(scope="module")
def idle_stub(build_tree: project.BuildTree) -> GdbStub:
    """A stub whose packets are answered in-process (no socket): the parsers alone, fast enough to fuzz."""
    stub = GdbStub(boot_machine(build_tree.kernel, "hello", build_tree.programs()), 0, announce=lambda _: None)
    stub.server.close()
    return stub


@settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck))
@given(packets=st.lists(st.one_of(packet_bytes, structured.map(lambda t: t[0] + b"".join(t[1]))), max_size=6))
def test_fuzzed_packets_get_a_reply_and_never_end_the_session(idle_stub: GdbStub, packets: list[bytes]) -> None:
    for packet in packets:
        reply = idle_stub._answer(packet)
        assert isinstance(reply, bytes)
        assert all(32 <= b < 127 and b not in b"$#}*" for b in reply)  # printable, and frames cleanly
