"""Checks of a snapshot's saved state (devices, clock, machine, log, events, tracer) before any of it is used.

A snapshot file is untrusted input: every value it carries is checked for type, range and size here, and the
first bad one is named in a `SchemaError`, before the machine or the engine is touched. Device states are
checked against the target machine's own current state (same keys, same types, same lengths for the fixed
arrays), since each device defines its own; the rest follows the explicit schema below.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from .clock import MAX_INSTRUCTIONS, MAX_SKIPPED_NS
from .events import Event, Kind

U64 = (1 << 64) - 1
I64_MIN = -(1 << 63)
MAX_LIST = 1 << 20  # entries in any saved list
MAX_TEXT = 1 << 20  # characters in a saved string (names, event text, a long log line)
MAX_BLOB = 64 << 20  # bytes of a saved base64 or hex blob (the log)
MAX_DEPTH = 8  # nesting of free-form event details
MAX_UNASSIGNED_PAGES = 4096  # empty-bus pages a snapshot may map (each is one engine region)
DEVICE_INT_MAX = (1 << 256) - 1  # the widest device register: the local APIC's 256-bit IRR/ISR/TMR


class SchemaError(ValueError):
    """A saved value is missing, of the wrong type, out of range or too large (the message says where)."""


Check = Callable[[Any, str], Any]


def integer(low: int = 0, high: int = U64) -> Check:
    def check(value: Any, where: str) -> int:
        if type(value) is not int:
            raise SchemaError(f"{where} is not an integer")
        if not low <= value <= high:
            raise SchemaError(f"{where} = {value} is out of range ({low}..{high})")
        return value
    return check


def boolean(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise SchemaError(f"{where} is not true or false")
    return value


def text(limit: int = MAX_TEXT) -> Check:
    def check(value: Any, where: str) -> str:
        if type(value) is not str or len(value) > limit:
            raise SchemaError(f"{where} is not a string of at most {limit} characters")
        return value
    return check


def encoded(kind: str, limit: int = MAX_BLOB) -> Check:
    """A base64 ("b64") or hex ("hex") string of at most `limit` bytes once decoded."""
    def check(value: Any, where: str) -> str:
        if type(value) is not str or len(value) > 2 * limit:
            raise SchemaError(f"{where} is not {kind} text of at most {limit} bytes")
        try:
            base64.b64decode(value, validate=True) if kind == "b64" else bytes.fromhex(value)
        except (binascii.Error, ValueError):
            raise SchemaError(f"{where} is not valid {kind}") from None
        return value
    return check


def nullable(inner: Check) -> Check:
    def check(value: Any, where: str) -> Any:
        return None if value is None else inner(value, where)
    return check


def list_of(item: Check, limit: int = MAX_LIST, exact: int | None = None) -> Check:
    def check(value: Any, where: str) -> list[Any]:
        if type(value) is not list:
            raise SchemaError(f"{where} is not a list")
        if exact is not None and len(value) != exact:
            raise SchemaError(f"{where} has {len(value)} entries, not {exact}")
        if len(value) > limit:
            raise SchemaError(f"{where} has more than {limit} entries")
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return check


def pair(first: Check, second: Check) -> Check:
    def check(value: Any, where: str) -> list[Any]:
        if type(value) is not list or len(value) != 2:
            raise SchemaError(f"{where} is not a pair")
        return [first(value[0], f"{where}[0]"), second(value[1], f"{where}[1]")]
    return check


def record(shape: dict[str, Check], optional: frozenset[str] = frozenset()) -> Check:
    def check(value: Any, where: str) -> dict[str, Any]:
        if type(value) is not dict:
            raise SchemaError(f"{where} is not a record")
        missing = sorted(set(shape) - set(value) - optional)
        if missing:
            raise SchemaError(f"{where}.{missing[0]} is missing")
        unknown = sorted(set(value) - set(shape))
        if unknown:
            raise SchemaError(f"{where} has an unknown field {str(unknown[0])[:40]!r}")
        return {key: shape[key](v, f"{where}.{key}") for key, v in value.items()}
    return check


def plain(value: Any, where: str, depth: int = 0) -> Any:
    """Free-form JSON (an event's details), bounded in depth and size."""
    if depth > MAX_DEPTH:
        raise SchemaError(f"{where} is nested too deeply")
    if value is None or type(value) in (bool, int, float):
        return value if type(value) is not int else integer(I64_MIN, U64)(value, where)
    if type(value) is str:
        return text()(value, where)
    if type(value) is list and len(value) <= MAX_LIST:
        return [plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if type(value) is dict and len(value) <= MAX_LIST:
        return {text()(k, f"{where} key"): plain(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    raise SchemaError(f"{where} is not plain data")


KINDS = frozenset(kind.value for kind in Kind)


def kind(value: Any, where: str) -> str:
    if type(value) is not str or value not in KINDS:
        raise SchemaError(f"{where} is not an event kind")
    return value


SIGNED = integer(I64_MIN, U64)
EVENT_FIELDS: dict[str, Check] = {
    "time_ns": integer(), "kind": kind, "rip": integer(), "cr3": integer(), "number": integer(-1),
    "error_code": nullable(integer()), "address": nullable(integer()), "args": list_of(SIGNED, 16),
    "text": text(), "seq": integer(-1), "pid": nullable(SIGNED), "user": boolean, "ret": nullable(SIGNED),
    "end_ns": nullable(integer()), "blocked": boolean, "detail": plain,
}
assert set(EVENT_FIELDS) == {f.name for f in fields(Event)}, "the event schema must name every Event field"
event = record(EVENT_FIELDS, optional=frozenset(EVENT_FIELDS) - {"time_ns", "kind"})


def counts(value: Any, where: str) -> dict[str, int]:
    if type(value) is not dict or len(value) > len(KINDS):
        raise SchemaError(f"{where} is not a count per event kind")
    return {kind(k, f"{where} key"): integer()(v, f"{where}.{k}") for k, v in value.items()}


def _panic(value: Any, where: str) -> list[Any]:
    """[message, time_ns, rip, backtrace (return addresses)] of a panic seen but not yet stopped for."""
    if type(value) is not list or len(value) != 4:
        raise SchemaError(f"{where} is not [message, time, rip, backtrace]")
    return [text()(value[0], f"{where}[0]"), integer()(value[1], f"{where}[1]"),
            integer()(value[2], f"{where}[2]"), list_of(integer(), 64)(value[3], f"{where}[3]")]


# The board's run state (`Board.run_state()`): the one list of its keys. A key added to the run state is added
# here, with its check; keys older snapshots may lack go in RUN_STATE_OPTIONAL (restore_run_state defaults them).
RUN_STATE_FIELDS: dict[str, Check] = {
    "halted": boolean, "irq_waiting": boolean, "storm": pair(SIGNED, SIGNED),
    "panic_deadline": nullable(integer()),
    "panic": nullable(_panic),
    "reported": list_of(pair(SIGNED, SIGNED)), "input": list_of(pair(integer(), encoded("hex"))),
    "entropy": record({"last_tsc": integer(-1), "drawn": integer()}),  # -1: no rdtsc read yet
}
RUN_STATE_OPTIONAL = frozenset({"input"})

# The tracer's state (`Tracer.snapshot_state()`, in observe/, which this layer cannot import): the one list of
# its keys, kept the same way.
TRACER_FIELDS: dict[str, Check] = {
    "full": boolean, "pending_syscall": list_of(pair(SIGNED, event)),
    "pending_fault": list_of(pair(SIGNED, event)),
    "names": list_of(pair(SIGNED, nullable(text()))), "last_user_pid": nullable(SIGNED),
    "exit_status": list_of(pair(nullable(SIGNED), nullable(SIGNED))),  # exit called, process not yet gone
    "screen": encoded("b64", 1 << 16),
}
TRACER_OPTIONAL = frozenset({"exit_status"})

STATE = record({
    "devices": lambda value, where: value,  # checked against the machine's own devices: see check_state
    # (the clock's range: beyond it the engine's deadlines would wrap into the past and no slice would advance)
    "clock": record({"instructions": integer(0, MAX_INSTRUCTIONS), "skipped_ns": integer(0, MAX_SKIPPED_NS),
                     "stops": integer()}),
    "machine": record(RUN_STATE_FIELDS, optional=RUN_STATE_OPTIONAL),
    "log": encoded("b64"), "log_line": encoded("b64"),
    "events": record({"ring": list_of(event), "counts": counts, "next_seq": integer(),
                      "capacity": nullable(integer(0, MAX_LIST))}),
    "tracer": record(TRACER_FIELDS, optional=TRACER_OPTIONAL),
    "unassigned_pages": list_of(integer(), MAX_UNASSIGNED_PAGES),
})


def like(value: Any, template: Any, where: str) -> None:
    """`value` has the shape of `template` (a device's own current state): same keys, same types, the same
    length for arrays the device sizes itself, and integers within 64 bits and of the template's sign."""
    if isinstance(template, bool) or template is None:
        if type(value) is not type(template) and not (template is None and (value is None or type(value) is int)):
            raise SchemaError(f"{where} is not {'true or false' if template is not None else 'empty'}")
    elif isinstance(template, int):
        integer(0 if template >= 0 and where not in SIGNED_INTEGERS else I64_MIN, DEVICE_INT_MAX)(value, where)
    elif isinstance(template, str):
        limit = VARIABLE_STRINGS.get(where)
        if type(value) is not str or (len(value) > limit if limit is not None else len(value) != len(template)):
            raise SchemaError(f"{where} is not a string of the expected size")
        if (limit is not None or _is_hex(template)) and not _is_hex(value):
            raise SchemaError(f"{where} is not hex")  # device buffers and PCI configuration spaces are saved as hex
    elif isinstance(template, list):
        if type(value) is not list or len(value) > MAX_LIST:
            raise SchemaError(f"{where} is not a list")
        if template and all(isinstance(t, int) for t in template) and len(value) != len(template) \
                and where not in VARIABLE_LISTS:
            raise SchemaError(f"{where} has {len(value)} entries, not {len(template)}")
        for i, item in enumerate(value):
            like(item, template[0] if template else 0, f"{where}[{i}]")
    elif isinstance(template, dict):
        if type(value) is not dict or set(value) != set(template):
            raise SchemaError(f"{where} does not have the fields this machine's device has")
        for key in template:
            like(value[key], template[key], f"{where}.{key}")
    else:  # pragma: no cover - device states are JSON
        raise SchemaError(f"{where}: unexpected saved type")


def _is_hex(text: str) -> bool:
    return len(text) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in text)


# Device integers that may be negative whatever the machine's own value is now.
SIGNED_INTEGERS = frozenset({"devices.lapic.timer_start_ns"})  # a timer started with a phase before time 0

# Device strings whose length varies in a run, with their longest; every other one (a PCI function's configuration
# space, say) has the length the machine's own device gives it.
VARIABLE_STRINGS = {"devices.ata0.buffer": 2 * 512}  # the sector (or IDENTIFY block) being transferred, in hex

# Device lists whose length varies in a run (queues, records); every other integer list has a fixed size.
VARIABLE_LISTS = frozenset({"devices.keyboard.keys", "devices.keyboard.replies",
                            "devices.acpi_pm.unsupported_sleep"})


@dataclass(frozen=True)
class DeviceTemplate:
    """The machine's own device states, which a snapshot's must match in shape."""

    states: dict[str, Any]

    def check(self, saved: Any) -> None:
        if type(saved) is not dict or set(saved) != set(self.states):
            names = sorted(saved) if type(saved) is dict else []
            raise SchemaError(f"the snapshot has devices {names[:16]}, this machine {sorted(self.states)}")
        for name, template in self.states.items():
            like(saved[name], template, f"devices.{name}")


def check_state(state: Any, devices: DeviceTemplate) -> dict[str, Any]:
    checked = STATE(state, "state")
    devices.check(checked["devices"])
    return checked
