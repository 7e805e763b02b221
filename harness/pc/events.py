"""The event stream: one record per system call, exception, interrupt, context switch and machine event.

Every output (diagnoses, strace/JSONL/Perfetto traces, tests, golden files) reads this one stream. The machine
keeps the most recent events in a bounded ring, so a run of billions of instructions keeps a flat memory
footprint; `counts` keeps totals per kind; sinks (a trace file, a test's list) receive every finished event.
"""

from __future__ import annotations

import enum
import heapq
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from itertools import repeat
from operator import attrgetter
from typing import Any, Protocol


class Kind(enum.Enum):
    SYSCALL = "syscall"
    EXCEPTION = "exception"  # page faults are exceptions with number 14 (and a page-walk explanation)
    INTERRUPT = "interrupt"
    SWITCH = "switch"  # the CPU returned to user mode in a different process
    PROCESS = "process"  # a process appeared in or left the kernel's process table
    CONSOLE = "console"  # rows of the CGA screen changed
    LOG = "log"  # a line of the kernel's log
    PANIC = "panic"
    MACHINE = "machine"  # power-off, reset, unknown device access, budget

    # Members are singletons: hash by identity, in C (Enum's own __hash__ is Python code, and the event log
    # counts every event by kind).
    __hash__ = object.__hash__


class _NoDetail(Mapping[str, Any]):
    """The empty, read-only detail shared by the many events that carry none (hashable: a dataclass default)."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and not other

    def __repr__(self) -> str:
        return "{}"


NO_DETAIL: Mapping[str, Any] = _NoDetail()


@dataclass(slots=True)
class Event:
    """One thing that happened, at virtual time `time_ns`.

    `seq` orders events by when they started. A system call's `ret`, `end_ns` and `blocked` are filled in when
    it returns to user mode (full tracing only); `detail` holds kind-specific extras (a page walk, a backtrace).
    """

    time_ns: int
    kind: Kind
    rip: int = 0
    cr3: int = 0
    number: int = -1  # syscall number or vector
    error_code: int | None = None
    address: int | None = None  # CR2 for page faults
    args: tuple[int, ...] = ()
    text: str = ""
    seq: int = -1
    pid: int | None = None
    user: bool = False  # the CPU was in user mode when it happened
    ret: int | None = None
    end_ns: int | None = None
    blocked: bool = False
    detail: Mapping[str, Any] = NO_DETAIL  # writers give an event its own dict before adding to it

    @property
    def is_page_fault(self) -> bool:
        return self.kind is Kind.EXCEPTION and self.number == 14


_SEQ = attrgetter("seq")
# Deferred records may come out of seq order by up to the native ring's size (EventLog.take_seq): that many
# more than the ring holds are kept, so that none of the latest `capacity` events is forgotten.
DEFER_SLACK = 4096
CASCADE_KEPT = 4  # first faults of a cascade kept for the diagnosis, whatever the ring has lost since


@dataclass
class FaultCascade:
    """Kernel-mode exceptions each raised inside the handler of the one before: a handler that faults again and
    again (until its stack runs into something and the CPU gives up). The first fault is the cause; the ring of
    last events would show only the last ones, so the first few are kept here."""

    first: list[Event]
    nested: int = 0  # faults after the first
    frame: int = 0  # the stack pointer after the last one's delivery (each nested frame lies below)


class RawSyscalls(Protocol):
    """System-call entries recorded outside Python (fastpath.c), numbered from the same sequence as events."""

    next_seq: int  # the shared event numbering

    def total(self) -> int:
        """Records ever written."""
        ...

    def events(self, start: int, stop: int, limit: int) -> list[Event]:
        """Records number `start` to `stop` (of all ever written) as events, at most the last `limit`."""
        ...


class EventLog:
    """A ring of the most recent events plus per-kind totals, and the sinks that see every finished event.

    Sinks receive events in `seq` order: an event that is still open (a system call waiting for its return, a
    page fault waiting for the kernel's answer) holds back the ones after it. A system call that blocks is
    released early as a copy marked `detail["unfinished"]`, and when it completes its resolution follows as a
    record of its own (like strace's "<unfinished ...>" then "<... resumed>"): a copy numbered with a new `seq` at the
    time it completes, whose `detail["resumes"]` is the entry's seq and `detail["resolved_ns"]` the time. So the
    stream that sinks see has unique, increasing `seq` and never goes back in time.

    When nobody watches events as they happen (no sink, no observer, no full trace), system-call entries are
    recorded raw by the native fast path (`raw`) and become Event objects only when the ring or the counts are
    read: the hot path never builds a Python object. With full tracing but no sink or observer, the finished
    events a producer has as plain records (the tracer's system calls that came straight back, a run of them as
    the native ring's bytes, its switch, process, console and log events) are `defer`red the same way: kept as
    records and made into events, in their place by seq, when the ring is read; only the latest `capacity`
    (and DEFER_SLACK more) are kept, as the ring would.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._counts: Counter[Kind] = Counter({kind: 0 for kind in Kind})
        self.sinks: list[Callable[[Event], None]] = []
        self.observers: list[Callable[[Event], None]] = []  # see every event as it is added, unordered
        self._next_seq = 0
        self._next_release = 0
        self._ready: dict[int, Event] = {}
        self.raw: RawSyscalls | None = None
        self._raw_seen = 0  # raw records already merged into the ring and counts
        # Called before any event is added or the ring is read: lets a batch of raw system calls that a
        # consumer (the tracer) takes become events first, so that every event keeps its place in the order.
        self.before_add: Callable[[], None] | None = None
        self.cascade: FaultCascade | None = None  # the latest run of nested kernel-mode exceptions
        self._cascade_open = False  # nothing has happened since that could have ended it
        self._kernel_exception: Event | None = None  # the last kernel-mode exception added
        # Finished events kept as records until the ring is read (`defer`): (how many events, whether a chunk,
        # what makes them, the record or chunk), for at least the latest `capacity` events (older ones would
        # have left the ring anyway), nearly in seq order (DEFER_SLACK).
        self._deferred: deque[tuple[int, bool, Callable[[Any], Any], Any]] = deque()
        self._deferred_events = 0

    def connect_raw(self, raw: RawSyscalls) -> None:
        """Number events together with the native recorder from now on."""
        self.settle()
        raw.next_seq = self._next_seq
        self.raw = raw
        self._raw_seen = raw.total()

    @property
    def watched(self) -> bool:
        """Does somebody need every event as it happens?"""
        return bool(self.sinks or self.observers)

    @property
    def next_seq(self) -> int:
        return self.raw.next_seq if self.raw is not None else self._next_seq

    @next_seq.setter
    def next_seq(self, value: int) -> None:
        if self.raw is not None:
            self.raw.next_seq = value
        self._next_seq = value

    @property
    def ring(self) -> deque[Event]:
        self.settle()
        return self._ring

    @property
    def counts(self) -> Counter[Kind]:
        self.settle()
        return self._counts

    def raw_taken(self, total: int) -> None:
        """The first `total` raw records were taken by a consumer that adds them as events itself."""
        self._raw_seen = max(self._raw_seen, total)

    def settle(self) -> None:
        """Merge the deferred records and the raw ones written since the last look into the ring (by seq) and
        the counts."""
        if self.before_add is not None:
            self.before_add()
        if self._deferred:
            new: list[Event] = []
            for _count, chunk, make, record in self._deferred:
                if chunk:
                    new.extend(make(record))
                else:
                    new.append(make(record))
            self._deferred.clear()
            self._deferred_events = 0
            new.sort(key=_SEQ)  # (producers defer in seq order; this keeps the merge right whatever they do)
            self._merge(new)
        raw = self.raw
        if raw is None:
            return
        total = raw.total()
        if total == self._raw_seen:
            return
        new = raw.events(self._raw_seen, total, self._ring.maxlen or total)
        self._counts[Kind.SYSCALL] += total - self._raw_seen
        self._raw_seen = total
        self._merge(new)

    def defer(self, kind: Kind, records: list[tuple[Any, ...]], make: Callable[[tuple[Any, ...]], Event]) -> None:
        """Finished events of `kind`, as records in seq order (each already numbered: `make(record)` gives its
        event, seq included), that nobody needs to see now: they are counted now and become Event objects only
        when the ring is read. Only while nobody watches (`watched` is false): sinks and observers need every
        event as it happens."""
        if not records:
            return
        assert not self.watched, "deferred events would never reach the sinks"
        self._deferred.extend(zip(repeat(1), repeat(False), repeat(make), records))
        self._deferred_kept(kind, len(records))

    def defer_chunk(self, kind: Kind, count: int, chunk: Any, make: Callable[[Any], list[Event]]) -> None:
        """`defer` for `count` records held as one chunk (`make(chunk)` gives their events, in seq order)."""
        assert not self.watched, "deferred events would never reach the sinks"
        self._deferred.append((count, True, make, chunk))
        self._deferred_kept(kind, count)

    def _deferred_kept(self, kind: Kind, count: int) -> None:
        """Count `count` events deferred, and forget the deferred records older than the latest `capacity`."""
        self._counts[kind] += count
        deferred = self._deferred
        total = self._deferred_events + count
        keep = (self._ring.maxlen or total) + DEFER_SLACK
        while total - deferred[0][0] >= keep:
            total -= deferred.popleft()[0]
        self._deferred_events = total
        if kind is Kind.SYSCALL or kind is Kind.INTERRUPT or kind is Kind.EXCEPTION or kind is Kind.SWITCH:
            self._cascade_open = False  # as `add` does: the kernel was entered afresh

    def defer_one(self, kind: Kind, record: tuple[Any, ...], make: Callable[[tuple[Any, ...]], Event]) -> None:
        """`defer` for one record (numbered with `take_seq`)."""
        assert not (self.sinks or self.observers), "deferred events would never reach the sinks"
        self._deferred.append((1, False, make, record))
        self._deferred_kept(kind, 1)

    def take_seq(self, catch_up: bool = True) -> int:
        """The next event number, for an event made later (`defer_one`); as `add` numbers, after what the
        native path recorded before it has been taken (unless `catch_up` is False: its records, numbered
        already, are deferred later, out of order by at most the native ring's size: DEFER_SLACK)."""
        if catch_up and self.before_add is not None:
            self.before_add()
        raw = self.raw
        if raw is not None:
            seq = raw.next_seq
            raw.next_seq = seq + 1
        else:
            seq = self._next_seq
            self._next_seq += 1
        return seq

    def _merge(self, new: list[Event]) -> None:
        """Put `new` (in seq order) into the ring, which is kept in seq order: the latest `capacity` stay."""
        if not new:
            return
        later: list[Event] = []
        while self._ring and self._ring[-1].seq > new[0].seq:
            later.append(self._ring.pop())
        later.reverse()
        self._ring.extend(heapq.merge(later, new, key=lambda event: event.seq))

    def note_kernel_fault_frame(self, frame: int) -> None:
        """The kernel-mode exception just added was delivered with its frame at `frame`: it continues the
        cascade if it lies below the previous one's frame with nothing in between, else it starts one."""
        event = self._kernel_exception
        if event is None:
            return
        cascade = self.cascade
        if cascade is not None and self._cascade_open and frame < cascade.frame:
            cascade.nested += 1
            cascade.frame = frame
            if len(cascade.first) < CASCADE_KEPT:
                cascade.first.append(event)
            return
        self.cascade = FaultCascade([event], 0, frame)
        self._cascade_open = True

    @property
    def ongoing_cascade(self) -> FaultCascade | None:
        """The cascade of nested kernel faults the machine was in when it last stopped, if any."""
        cascade = self.cascade
        return cascade if cascade is not None and cascade.nested and self._cascade_open else None

    def attach(self, sink: Callable[[Event], None]) -> None:
        """Send every event finished from now on (in order) to `sink`."""
        if not self.sinks:
            self._next_release = self.next_seq
            self._ready.clear()
        self.sinks.append(sink)

    def add(self, event: Event, *, finished: bool = True, seq: int | None = None) -> Event:
        """Number the event (unless it was numbered when it happened: `seq`) and keep it; it goes to the sinks
        now if `finished`, else at `finish()`."""
        if self.before_add is not None:
            self.before_add()
        raw = self.raw
        if seq is not None:
            event.seq = seq
        elif raw is not None:
            event.seq = raw.next_seq
            raw.next_seq = event.seq + 1
        else:
            event.seq = self._next_seq
            self._next_seq += 1
        self._ring.append(event)
        kind = event.kind
        self._counts[kind] += 1
        if kind is Kind.EXCEPTION and not event.user:
            self._kernel_exception = event
        elif kind is Kind.SYSCALL or kind is Kind.INTERRUPT or kind is Kind.EXCEPTION or kind is Kind.SWITCH:
            self._cascade_open = False  # the kernel was entered afresh or went back to user mode
        for observer in self.observers:
            observer(event)
        if finished and self.sinks:
            self.finish(event)
        return event

    def finish(self, event: Event, resolved_ns: int | None = None) -> None:
        """The event is complete (`resolved_ns`: when, for one that was released early as unfinished)."""
        if not self.sinks:
            return
        if event.seq < self._next_release:  # released early as unfinished: this is its resolution
            event = self._resolution(event, resolved_ns)
        self._ready[event.seq] = event
        while self._next_release in self._ready:
            self._emit(self._ready.pop(self._next_release))
            self._next_release += 1

    def _resolution(self, entry: Event, resolved_ns: int | None) -> Event:
        """The record that resolves an entry released as unfinished: numbered now, in its place in time."""
        seq = self.take_seq()
        when = entry.end_ns if entry.end_ns is not None else resolved_ns if resolved_ns is not None else entry.time_ns
        return replace(entry, seq=seq, detail={**entry.detail, "resumes": entry.seq, "resolved_ns": when})

    def release_unfinished(self, event: Event) -> None:
        """Let a blocked event through now so that it does not hold back everyone else's."""
        if not self.sinks:
            return  # nobody to release it to (and no copy to make: `finish` would drop it)
        if event.seq >= self._next_release and event.seq not in self._ready:
            # A copy as it is now: the event itself goes on to be completed (and stays so in the ring).
            self.finish(replace(event, detail={**event.detail, "unfinished": True}))

    def _emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink(event)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.ring)

    def __len__(self) -> int:
        return len(self.ring)

    def last(self, n: int) -> list[Event]:
        return list(self.ring)[-n:]

    def of_kind(self, kind: Kind) -> list[Event]:
        return [event for event in self.ring if event.kind is kind]
