"""Trace outputs: strace-like text, JSONL (schema below), Perfetto/Chrome trace JSON, and the summary table.

JSONL schema, version 1: one JSON object per event, keys always present: `v` (1), `seq` (start order), `t_ns`
(virtual time), `type` (syscall, exception, pagefault, interrupt, switch, process, console, log, panic,
machine), `pid` (int or null), `mode` ("user" or "kernel"), `rip`. By type:
- syscall: `nr`, `name`, `args` (raw integers by name), `shown` (strace-style rendering by name), `ret` (signed,
  null if it never returned), `error` (E_* name or null), `dur_ns`, `blocked`, `start_ns` (when it was entered),
  `unfinished` (true: the call blocked and is shown now, at its entry; a later record resolves it), `resumes`
  (null, or the `seq` of the unfinished entry that this record resolves; its `t_ns` is when the call returned);
  `exit` never returns: its one record has `ret` null and the process record follows;
- exception / pagefault / interrupt: `vector`, `vector_name`, `error_code`; pagefault adds `address`,
  `access`, `fault_mode`, `problem`, `walk` (levels with entry and flags), `stopped`, `decided_by`,
  `instruction`, `where`, `outcome`;
- switch: `from`, `to`; process: `event` (created/exited), `name`, `status`; console: `rows`, `text`;
  log / machine: `text`; panic: `text`, `backtrace`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from ..pc.cpu import vector_name
from ..pc.events import Event, Kind
from .syscallview import signed
from .trace import Tracer

SCHEMA_VERSION = 1
FILTERS = ("syscall", "pagefault", "exception", "interrupt", "switch", "process", "console", "log", "panic",
           "machine")


def event_type(event: Event) -> str:
    return "pagefault" if event.is_page_fault else event.kind.value


def selected(event: Event, filters: set[str] | None, pid: int | None) -> bool:
    if filters is not None and event_type(event) not in filters:
        return False
    return pid is None or event.pid == pid


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.3f} ms"


def record_is_unfinished_entry(event: Event) -> bool:
    """A system call passed on when it blocked; a record with `resumes` resolves it later."""
    return bool(event.detail.get("unfinished"))


def strace_lines(tracer: Tracer, event: Event) -> list[str]:
    """One event as strace-like text (a page fault takes several lines)."""
    stamp = f"{event.time_ns / 1e9:.6f}"
    who = f"[pid {event.pid}]" if event.pid is not None else "[kernel]"
    prefix = f"{stamp} {who}"
    if event.kind is Kind.SYSCALL:
        name = tracer.syscalls.name(event.number)
        shown = event.detail.get("args")
        if shown is None:
            args = ", ".join(f"{a:#x}" for a in event.args)
        else:
            args = ", ".join(f"{arg}={value}" for arg, value in shown)
        resumes = event.detail.get("resumes")
        if record_is_unfinished_entry(event):
            return [f"{prefix} {name}({args}) <unfinished ...>"]
        timing = "" if event.end_ns is None else \
            f" <{_ms(event.end_ns - event.time_ns)}{', blocked' if event.blocked else ''}>"
        if resumes is not None:
            resumed = f"{event.detail['resolved_ns'] / 1e9:.6f} {who}"
            return [f"{resumed} <... {name} resumed> ({args}) = {tracer.format_return(event)}{timing}"]
        return [f"{prefix} {name}({args}) = {tracer.format_return(event)}{timing}"]
    if event.is_page_fault:
        d = event.detail
        where = d.get("where") or f"{event.rip:#x}"
        head = (f"{prefix} --- page fault: {d.get('access', '?')} of {event.address or 0:#x} in "
                f"{d.get('fault_mode', d.get('mode', '?'))} mode, {d.get('problem', '?')}")
        lines = [head, f"      at {where}: {d.get('instruction') or '?'}"]
        for step in d.get("walk", []):
            lines.append(f"      {step['level']:<20} [{step['index']:3d}] @{step['entry_address']:#x} = "
                         f"{step['entry']:#018x} {step['flags']}")
        if d.get("stopped"):
            lines.append(f"      walk stopped: {d['stopped']}")
        elif d.get("decided_by"):
            lines.append(f"      refused at: {d['decided_by']}")
        lines.append(f"      then: {d.get('outcome', 'unknown')} ---")
        return lines
    if event.kind is Kind.EXCEPTION:
        error = f" error {event.error_code:#x}" if event.error_code is not None else ""
        where = tracer.describe(event.pid, event.rip, event.user)
        return [f"{prefix} --- {vector_name(event.number)}{error} at {where} ---"]
    if event.kind is Kind.INTERRUPT:
        what = "timer" if event.number == 32 else f"vector {event.number}"
        mode = "user" if event.user else "kernel"
        return [f"{prefix} --- interrupt {event.number} ({what}) in {mode} mode ---"]
    if event.kind is Kind.SWITCH:
        source = event.detail.get("from")
        return [f"{stamp} --- switch: {'' if source is None else f'pid {source} '}-> pid {event.detail.get('to')} ---"]
    if event.kind is Kind.PROCESS:
        return [f"{prefix} +++ {event.text} +++"]
    if event.kind is Kind.CONSOLE:
        return [f"{prefix} console: {json.dumps(line)}" for line in event.text.splitlines() if line.strip()]
    if event.kind is Kind.LOG:
        return [f"{stamp} log: {event.text}"]
    if event.kind is Kind.PANIC:
        return [f"{stamp} !!! {event.text}"] + [f"      {frame}" for frame in event.detail.get("backtrace", [])]
    return [f"{stamp} machine: {event.text}"]


def jsonl_record(tracer: Tracer, event: Event) -> dict[str, Any]:
    resumes = event.detail.get("resumes")
    when = event.detail["resolved_ns"] if resumes is not None else event.time_ns
    record: dict[str, Any] = {"v": SCHEMA_VERSION, "seq": event.seq, "t_ns": when,
                              "type": event_type(event), "pid": event.pid,
                              "mode": "user" if event.user else "kernel", "rip": event.rip}
    if event.kind is Kind.SYSCALL:
        spec = tracer.syscalls.by_number.get(event.number)
        names = [a.name for a in spec.args] if spec else [f"arg{i}" for i in range(len(event.args))]
        ret = signed(event.ret) if event.ret is not None else None
        record.update(nr=event.number, name=tracer.syscalls.name(event.number),
                      args={n: v for n, v in zip(names, event.args, strict=False)},
                      shown=dict(event.detail.get("args", [])),
                      ret=ret, error=tracer.syscalls.errors.get(ret) if ret is not None else None,
                      dur_ns=event.end_ns - event.time_ns if event.end_ns is not None else None,
                      blocked=event.blocked, unfinished=record_is_unfinished_entry(event),
                      resumes=resumes, start_ns=event.time_ns)
    elif event.kind in (Kind.EXCEPTION, Kind.INTERRUPT):
        record.update(vector=event.number, vector_name=vector_name(event.number) if event.kind is Kind.EXCEPTION
                      else ("timer" if event.number == 32 else f"vector {event.number}"),
                      error_code=event.error_code)
        if event.is_page_fault:
            d = dict(event.detail)
            d["fault_mode"] = d.pop("mode", None)
            record.update(address=event.address, **d)
    elif event.kind is Kind.SWITCH:
        record.update({"from": event.detail.get("from"), "to": event.detail.get("to")})
    elif event.kind is Kind.PROCESS:
        record.update(event=event.detail.get("event"), name=event.detail.get("name"),
                      status=event.detail.get("status"))
    elif event.kind is Kind.CONSOLE:
        record.update(rows=event.detail.get("rows", []), text=event.text)
    elif event.kind is Kind.PANIC:
        record.update(text=event.text, backtrace=event.detail.get("backtrace", []))
    else:
        record.update(text=event.text)
    return record


class PerfettoWriter:
    """Chrome trace-event JSON (opens in ui.perfetto.dev): a track per process, system calls as slices."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.records: list[dict[str, Any]] = []
        self.names: dict[int, str] = {0: "kernel"}

    def add(self, event: Event) -> None:
        pid = event.pid if event.pid is not None else 0
        ts = event.time_ns / 1000
        if event.kind is Kind.PROCESS and event.detail.get("name"):
            self.names[pid] = f"pid {pid} ({event.detail['name']})"
        self.names.setdefault(pid, f"pid {pid}")
        base = {"pid": pid, "tid": pid, "ts": ts}
        if event.kind is Kind.SYSCALL:
            if record_is_unfinished_entry(event):
                return  # its resolution follows and makes the one slice
            end = event.end_ns if event.end_ns is not None else event.time_ns
            record = jsonl_record(self.tracer, event)
            self.records.append({**base, "ph": "X", "cat": "syscall", "name": record["name"],
                                 "dur": (end - event.time_ns) / 1000,
                                 "args": {"args": record["shown"] or record["args"], "ret": record["ret"],
                                          "error": record["error"], "blocked": event.blocked}})
        else:
            record = jsonl_record(self.tracer, event)
            name = {"pagefault": "page fault", "interrupt": record.get("vector_name", "interrupt")}.get(
                record["type"], record["type"])
            if event.kind is Kind.EXCEPTION and not event.is_page_fault:
                name = record["vector_name"]
            args = {k: v for k, v in record.items() if k not in ("v", "pid", "t_ns", "type")}
            self.records.append({**base, "ph": "i", "s": "t", "cat": record["type"], "name": name, "args": args})

    def write(self, out: TextIO) -> None:
        metadata = [{"ph": "M", "name": "process_name", "pid": pid, "tid": pid, "args": {"name": name}}
                    for pid, name in sorted(self.names.items())]
        json.dump({"traceEvents": metadata + self.records, "displayTimeUnit": "ns"}, out)
        out.write("\n")


@dataclass
class SyscallStats:
    calls: int = 0
    errors: int = 0
    total_ns: int = 0


def summary(tracer: Tracer, events: Iterable[Event]) -> dict[str, SyscallStats]:
    stats: dict[str, SyscallStats] = defaultdict(SyscallStats)
    for event in events:
        if event.kind is not Kind.SYSCALL or record_is_unfinished_entry(event):
            continue  # a call that blocked comes twice (unfinished, then resolved): count its resolution
        entry = stats[tracer.syscalls.name(event.number)]
        entry.calls += 1
        if event.ret is not None and tracer.syscalls.errors.get(signed(event.ret)):
            entry.errors += 1
        if event.end_ns is not None:
            entry.total_ns += event.end_ns - event.time_ns
    return dict(stats)


def summary_table(stats: dict[str, SyscallStats]) -> str:
    total_ns = sum(s.total_ns for s in stats.values()) or 1
    lines = [f"{'% time':>7} {'virtual ms':>11} {'usecs/call':>11} {'calls':>8} {'errors':>7} syscall",
             f"{'-' * 7} {'-' * 11} {'-' * 11} {'-' * 8} {'-' * 7} {'-' * 16}"]
    for name, s in sorted(stats.items(), key=lambda item: (-item[1].total_ns, item[0])):
        per_call = s.total_ns / s.calls / 1000 if s.calls else 0
        lines.append(f"{100 * s.total_ns / total_ns:7.2f} {s.total_ns / 1e6:11.3f} {per_call:11.1f} {s.calls:8d} "
                     f"{s.errors or '':>7} {name}")
    calls = sum(s.calls for s in stats.values())
    errors = sum(s.errors for s in stats.values())
    lines.append(f"{'-' * 7} {'-' * 11} {'-' * 11} {'-' * 8} {'-' * 7} {'-' * 16}")
    lines.append(f"{100.0:7.2f} {sum(s.total_ns for s in stats.values()) / 1e6:11.3f} {'':>11} {calls:8d} "
                 f"{errors or '':>7} total")
    return "\n".join(lines)


def summary_json(stats: dict[str, SyscallStats]) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "syscalls": {name: {"calls": s.calls, "errors": s.errors, "virtual_ns": s.total_ns}
                                              for name, s in sorted(stats.items())}}


def first_divergence(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> int | None:
    """Index of the first record that differs between two traces (None if identical)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
