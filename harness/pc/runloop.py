"""The run loop: slices of guest execution between deadlines, interrupt delivery, idling and stop conditions.

`run()` executes the guest in slices. Each slice is one `emu_start` that ends when the engine's instruction
clock reaches the next deadline (a timer expiry, the budget, a poll), when the guest halts, or when a device asks
the machine to stop (power-off, reset). Between slices the loop delivers due interrupts through the guest IDT
(`cpu.deliver`) and jumps the clock over idle time. A mixin of the board (board.py), whose devices, CPU and
clock it drives.
"""

from __future__ import annotations

from collections.abc import Callable

from unicorn import UcError
from unicorn import x86_const as X

from .cpu import FLAG_IF, GP, NOT_AN_ADDRESS, MissingMemory, TripleFault
from .events import Event
from .stop import RESUMABLE, Stop, StopKind
from .wallguard import CHECK_EVERY_NS, WallGuard, Watchdog, default_limit_s

UNTIL_LOOK_NS = 1_000_000  # with `until`, end a slice this often (virtual) to look at the screen

STORM_WINDOW_NS = 1_000_000  # more than STORM_LIMIT device interrupts in this much virtual time is a storm
STORM_LIMIT = 200  # (200 kHz: far beyond any timer a kernel means to program, and cheap to reach)
POLL_NS = 100_000  # while an interrupt waits for IF=1, look again this often (the hooks below usually see it first)


class RunLoop:
    """`run()` and `run_slice()`, keyboard input in virtual time, and the stops the loop itself decides.

    Drives the board's `uc`, `cpu`, `clock`, `lapic`, `keyboard` and `tracer`; its own state is `_until`,
    `_budget_end`, `_pause_end`, `_input`, `_storm_window`, `_next_stop_ns`, `_wall_check` and `_watchdog` (made in
    `Board.__init__`)."""

    def run(self, *, ticks: int | None = None, max_time_ns: int | None = None, until: str | None = None,
            for_ns: int | None = None, until_event: Callable[[Event], bool] | None = None,
            max_wall_s: float | None = None) -> Stop:
        """Run until the guest powers off or a stop condition holds; returns why it stopped.

        `ticks`: stop (successfully) once the guest has taken that many more timer interrupts (periods that pass
        while it keeps interrupts masked are not ticks it took).
        `max_time_ns`: the safety budget of virtual time; running out of it is a failure.
        `max_wall_s`: the wall-clock guard, in host seconds (StopKind.WALL); by default scaled to
        `max_time_ns`, or to `for_ns` without a budget (wallguard.py), and none without either.
        `until`: stop (successfully) once this text is on the screen or in a line of the log. The log is
        checked line by line as it is written; the screen at every system call and whenever the CPU stops.
        `for_ns`: pause (successfully) after this much virtual time. `until_event`: stop (successfully) right
        after an event for which this returns true (a system call entry, a fault, a process exit, ...).
        """
        if until_event is not None:
            def watch(event: Event) -> None:
                if self.stop is None and until_event(event):
                    self._request_stop(StopKind.UNTIL, f"event {event.kind.value} #{event.seq} happened")

            self.events.observers.append(watch)
            try:
                return self.run(ticks=ticks, max_time_ns=max_time_ns, until=until, for_ns=for_ns,
                                max_wall_s=max_wall_s)
            finally:
                self.events.observers.remove(watch)
        clock, cpu, lapic = self.clock, self.cpu, self.lapic
        if self.stop is not None and self.stop.kind in RESUMABLE:
            if self.stop.kind is StopKind.BREAKPOINT:
                self._resume_address = self.stop.rip
            self.stop = None  # a requested stop only paused the machine: run on
        self._until = until
        self._until_screen = self.console.screen_bytes()  # what the look below sees (see _until_on_screen)
        if until is not None and self._until_seen():
            self.stop = Stop(StopKind.UNTIL, f"{until!r} appeared", clock.now_ns(), cpu.rip())
        tick_target = lapic.timer_interrupts_taken + ticks if ticks is not None else None
        self._budget_end = clock.now_ns() + max_time_ns if max_time_ns is not None else None
        self._pause_end = clock.now_ns() + for_ns if for_ns is not None else None
        wall_limit = max_wall_s if max_wall_s is not None else default_limit_s(
            max_time_ns if max_time_ns is not None else for_ns)
        guard = WallGuard(wall_limit) if wall_limit is not None else None
        self._wall_check = CHECK_EVERY_NS if guard is not None else None
        self._watchdog = Watchdog(guard, self.uc.emu_stop) if guard is not None else None
        try:
            self._run_until_stop(guard, max_time_ns, tick_target, ticks, until)
        finally:
            if self._watchdog is not None:
                self._watchdog.close()
                self._watchdog = None
        self._until = None
        self._pause_end = None
        self._wall_check = None
        if self._panic is not None and self.stop.kind is not StopKind.PANIC:
            self.stop = self._panic  # a panic is what matters, even if a key then powered the machine off
        if self.stop.kind not in RESUMABLE:
            self.tracer.finish()  # the machine is done: close what will never complete
        self.log.flush()
        return self.stop

    def _run_until_stop(self, guard: WallGuard | None, max_time_ns: int | None, tick_target: int | None,
                        ticks: int | None, until: str | None) -> None:
        """The body of `run()`: slices, deliveries and idling until `self.stop` is set."""
        clock, cpu, lapic = self.clock, self.cpu, self.lapic
        while self.stop is None:
            now = clock.now_ns()
            if guard is not None and guard.expired():
                self.stop = Stop(StopKind.WALL, guard.message(now, max_time_ns), now, cpu.rip())
                self._machine_event(self.stop.message)
                break
            lapic.advance(now)
            self._deliver_input(now)
            if self._panic is not None and self._panic_deadline is not None and now >= self._panic_deadline:
                self.stop = self._panic
                break
            if tick_target is not None and lapic.timer_interrupts_taken >= tick_target:
                reached = f"{ticks} timer tick{'' if ticks == 1 else 's'} reached"
                self.stop = Stop(StopKind.TICKS, reached, now, cpu.rip())
                break
            if self._pause_end is not None and now >= self._pause_end:
                self.stop = Stop(StopKind.PAUSED, "paused", now, cpu.rip())
                break
            if self._budget_end is not None and now >= self._budget_end:
                self.stop = Stop(StopKind.BUDGET, f"the budget of {max_time_ns / 1e9:g} s of virtual time ran out",
                                 now, cpu.rip())
                break
            poll = None
            vector = lapic.pending_vector()
            if vector is not None:
                if cpu.interrupts_enabled():
                    if cpu.interrupt_shadow():
                        # Just after `sti` the CPU takes no interrupt before one more instruction. Unicorn also
                        # leaves this flag set in chained loops, so it cannot be trusted: run exactly one
                        # instruction (the shadow is then over on any CPU), and take the interrupt after it.
                        if self.step() is not None:
                            break
                        if self.halted_after_step():
                            self.halted = True
                    lapic.acknowledge(vector)
                    self._irq_waiting = False
                    if self._storm(now, vector):
                        break
                    try:
                        cpu.deliver(vector, external=True)
                    except TripleFault as fault:
                        self._triple_fault(fault)
                        break
                    continue
                self._irq_waiting = True
                if not self.halted:
                    poll = now + POLL_NS
            if self.halted:
                if not cpu.rflags() & FLAG_IF:
                    self.stop = Stop(StopKind.HANG, "the CPU halted with interrupts disabled; nothing can wake it",
                                     now, cpu.rip())
                    break
                wake = self.lapic.next_interrupt_deadline_ns()
                if self._input and (wake is None or self._input[0][0] < wake):
                    wake = self._input[0][0]
                if self._pause_end is not None and (wake is None or wake > self._pause_end):
                    wake = self._pause_end  # idle until the pause: the live console keeps time
                if self._budget_end is not None and (wake is None or wake > self._budget_end):
                    wake = self._budget_end if wake is not None else None
                if wake is None:
                    self.stop = Stop(StopKind.HANG, "the CPU halted with no timer or device that could wake it",
                                     now, cpu.rip())
                    break
                clock.skip_to_ns(wake)
                continue
            self.run_slice(self._next_deadline(poll))
            if until is not None and self.stop is None and self._until_on_screen():
                self.stop = Stop(StopKind.UNTIL, f"{until!r} appeared", clock.now_ns(), cpu.rip())

    def run_slice(self, deadline: int | None = None) -> None:
        """Run the CPU until `deadline` (virtual ns), a halt, or a hook's stop; handle what stopped it."""
        clock, cpu = self.clock, self.cpu
        self._next_stop_ns = deadline
        clock.stop_at_ns(deadline)
        deadline_stops = clock.deadline_stops
        self._slice_interrupted = False
        fast = self.fast
        if fast is not None:
            self._watching()
            fast.state.interrupted = 0
        rip = cpu.rip()
        cpu.clear_stale_exception()
        watchdog = self._watchdog
        if watchdog is not None:
            watchdog.inside = True
            if watchdog.fired:  # the guard expired since the loop looked: the loop will see it
                watchdog.inside = False
                return
        try:
            try:
                self.uc.emu_start(rip, NOT_AN_ADDRESS)
                while cpu.replay_requested:
                    cpu.replay_fault()
                    self._slice_interrupted = True
            finally:
                if watchdog is not None:
                    watchdog.inside = False
                self._after_native_run()
        except TripleFault as fault:
            self._triple_fault(fault)
            return
        except UcError as error:
            if cpu.triple_fault is None:
                self._emulator_error(error)
                return
        if cpu.triple_fault is not None:
            fault, cpu.triple_fault = cpu.triple_fault, None
            self._triple_fault(fault)
            return
        if self._pending_gp is not None:
            cpu.write_register(X.UC_X86_REG_RIP, self._pending_gp)
            self._pending_gp = None
            try:
                cpu.deliver(GP, error_code=0)
            except TripleFault as fault:
                self._triple_fault(fault)
            return
        if watchdog is not None and watchdog.fired:
            return  # the watchdog stopped the engine: the loop's guard check ends the run (StopKind.WALL)
        if clock.deadline_stops == deadline_stops and not self._slice_interrupted:
            rip = cpu.rip()
            halted = self._code_byte(rip - 1) == 0xF4
            if halted:
                self.halted = True
            elif self.stop is None:
                self.stop = Stop(StopKind.MACHINE_FAULT, "the emulator stopped for no known reason",
                                 clock.now_ns(), rip)

    def _until_seen(self) -> bool:
        assert self._until is not None
        return self._until in self.console.text()  # log lines are checked as they arrive, in _log_line

    def _until_on_screen(self) -> bool:
        """`_until_seen()`, looking only when the screen's bytes changed since the last look of this run: the
        text is then the same, and the last look found nothing (it would have stopped the run). Comparing
        4000 bytes costs far less than decoding the screen, which a boot would otherwise do every slice."""
        screen = self.console.screen_bytes()
        if screen == self._until_screen:
            return False
        self._until_screen = screen
        return self._until_seen()

    def _rearm(self) -> None:
        """A device moved its deadline in the middle of a slice: stop earlier if needed."""
        when = self._next_deadline()
        if when is not None and (self._next_stop_ns is None or when < self._next_stop_ns):
            self._next_stop_ns = when
            self.clock.stop_at_ns(when)

    def _next_deadline(self, poll: int | None = None) -> int | None:
        # (a timer whose expiries can change nothing does not end slices: --ticks counts interrupts taken)
        candidates = [self.lapic.next_effective_deadline_ns(), self._budget_end, self._panic_deadline, poll,
                      self._pause_end, self._input[0][0] if self._input else None,
                      self.clock.now_ns() + self._wall_check if self._wall_check is not None else None,
                      self.clock.now_ns() + UNTIL_LOOK_NS if self._until is not None else None]
        present = [c for c in candidates if c is not None]
        return min(present) if present else None

    def type_keys(self, codes: bytes, at_ns: int | None = None) -> None:
        """Queue scan codes for the keyboard at virtual time `at_ns` (default: now)."""
        when = self.clock.now_ns() if at_ns is None else at_ns
        self._input.append((when, codes))
        self._input.sort(key=lambda item: item[0])  # stable: same-time keys keep their order
        self._rearm()

    def _deliver_input(self, now: int) -> None:
        while self._input and self._input[0][0] <= now:
            self.keyboard.push(self._input.pop(0)[1])
            self.halted = False  # a real 8042 would raise IRQ1; a polling kernel needs the CPU to run
            self._refresh_fast_ports()

    def _storm(self, now: int, vector: int) -> bool:
        """Count device interrupts per window of virtual time; stop the run if they come as a storm."""
        start, count = self._storm_window
        if now - start >= STORM_WINDOW_NS:
            start, count = now, 0
        count += 1
        self._storm_window = (start, count)
        if count <= STORM_LIMIT:
            return False
        period = self.lapic.initial_count * self.lapic.divisor if self.lapic.timer_running else None
        cause = f"; the LAPIC timer's period is {period} ns" if period is not None and vector == 32 else ""
        self.stop = Stop(StopKind.STORM, f"interrupt storm: more than {STORM_LIMIT} interrupts (vector {vector}) "
                                         f"within {STORM_WINDOW_NS / 1e6:g} ms of virtual time{cause}",
                         now, self.cpu.rip())
        self._machine_event(self.stop.message)
        return True

    def _triple_fault(self, fault: TripleFault) -> None:
        if isinstance(fault, MissingMemory):  # a table or stack outside RAM: a machine fault, not a CPU reset
            self.stop = Stop(StopKind.MACHINE_FAULT, f"machine fault: {fault.reason}", self.clock.now_ns(), fault.rip)
        else:
            self.stop = Stop(StopKind.TRIPLE_FAULT, f"triple fault: {fault.reason}", self.clock.now_ns(), fault.rip)
        self._machine_event(self.stop.message)

    def _emulator_error(self, error: UcError) -> None:
        rip = self.cpu.rip()
        message = self._unmapped_access or f"the emulator refused to continue: {error}"
        if self.stop is None:
            self.stop = Stop(StopKind.MACHINE_FAULT, message, self.clock.now_ns(), rip)
            self._machine_event(message)
