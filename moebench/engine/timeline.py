"""Two clocks for one engine: CUDA events (measured) and a discrete-event simulator.

The engine tells the timeline about three things, in program order:

    copy(nbytes, do_copy) -> Ticket   a host->device expert copy on the copy engine
    compute(seconds)                   work on the compute stream (the simulator's cost; on CUDA the
                                       real kernels already ran, so it is ignored)
    wait(ticket) -> stall seconds      compute needs a copy: wait for it

**Simulated** (`SimTimeline`): two resources, the compute stream and one copy engine.
A copy issued while compute is at time `t` starts at `max(t, copy_engine_free)` (the copy stream
waits on the compute stream before issuing, as YALIS does, so a slot is never overwritten while
a kernel may still read it) and takes `latency + bytes / bandwidth`. A wait is
`now = max(now, copy_done)`; the stall is the difference. Copies serialise on the copy engine.
Everything is a pure function of the sequence of calls: same calls, same times, bit for bit.

**CUDA** (`CudaTimeline`): copies run with `non_blocking=True` from pinned memory on a dedicated
high-priority stream; each copy records an event; compute waits with `wait_event` (never a host
sync). A decode step is timed by an event pair on the compute stream and read after one
synchronise at the end of the step. Stall is measured by an event pair around each wait, copy
engine busy time by an event pair around each copy.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Ticket:
    """A copy in flight. `done_at` (simulated seconds) or `event` (a CUDA event)."""

    nbytes: int
    done_at: float = 0.0
    event: Any = None


@dataclass
class StepClock:
    latency_s: float = 0.0
    stall_s: float = 0.0
    copy_busy_s: float = 0.0
    compute_s: float = 0.0


class SimTimeline:
    kind = "simulated"

    def __init__(self, profile: Any):
        self.profile = profile
        self.label = f"simulated:{profile.name}"
        self.now = 0.0            # where the compute stream has got to
        self.copy_free = 0.0      # when the copy engine becomes free
        self._step_start = 0.0
        self._stall = 0.0
        self._busy = 0.0
        self._compute = 0.0

    # -- step window -------------------------------------------------------------------------
    def step_begin(self) -> None:
        self._step_start = self.now
        self._stall = self._busy = self._compute = 0.0

    def step_end(self) -> StepClock:
        return StepClock(self.now - self._step_start, self._stall, self._busy, self._compute)

    # -- operations --------------------------------------------------------------------------
    def compute(self, seconds: float) -> None:
        self.now += seconds
        self._compute += seconds

    def copy(self, nbytes: int, do_copy: Callable[[], None] | None = None) -> Ticket:
        if do_copy is not None:
            do_copy()  # the real data movement still happens (the numerics must be real)
        start = max(self.now, self.copy_free)
        cost = self.profile.copy_seconds(nbytes)
        self.copy_free = start + cost
        self._busy += cost
        return Ticket(nbytes=nbytes, done_at=self.copy_free)

    def ready(self, ticket: Ticket) -> bool:
        return ticket.done_at <= self.now

    def wait(self, ticket: Ticket) -> float:
        stall = max(0.0, ticket.done_at - self.now)
        self.now += stall
        self._stall += stall
        return stall

    def synchronize(self) -> None:
        pass


class CudaTimeline:
    kind = "cuda-events"

    def __init__(self, device: Any):
        import torch

        self.torch = torch
        self.device = device
        self.label = "cuda-events"
        self.copy_stream = torch.cuda.Stream(device=device, priority=-1)
        self._start = None
        self._waits: list[tuple[Any, Any]] = []
        self._copies: list[tuple[Any, Any]] = []

    def _event(self) -> Any:
        return self.torch.cuda.Event(enable_timing=True)

    def step_begin(self) -> None:
        self._waits.clear()           # copies still in flight from the last step stay listed
        self._start = self._event()
        self._start.record(self.torch.cuda.current_stream(self.device))

    def step_end(self) -> StepClock:
        end = self._event()
        end.record(self.torch.cuda.current_stream(self.device))
        end.synchronize()
        # Never wait for the copy stream here: a prefetch for the next step must keep running
        # across the step boundary, as it does on the simulated clock (waiting would finish it
        # off the clock). Copies still in flight are counted in the step in which they complete.
        latency = self._start.elapsed_time(end) / 1e3
        stall = sum(a.elapsed_time(b) for a, b in self._waits) / 1e3
        done, pending = [], []
        for pair in self._copies:
            (done if pair[1].query() else pending).append(pair)
        self._copies = pending
        busy = sum(a.elapsed_time(b) for a, b in done) / 1e3
        return StepClock(latency, stall, busy, max(0.0, latency - stall))

    def compute(self, seconds: float) -> None:
        pass  # the kernels really ran on the compute stream

    def copy(self, nbytes: int, do_copy: Callable[[], None] | None = None) -> Ticket:
        torch = self.torch
        compute = torch.cuda.current_stream(self.device)
        issued = compute.record_event()
        begin, done = self._event(), self._event()
        with torch.cuda.stream(self.copy_stream):
            # Never overwrite a slot a queued kernel may still read: wait for compute first.
            self.copy_stream.wait_event(issued)
            begin.record(self.copy_stream)
            if do_copy is not None:
                do_copy()
            done.record(self.copy_stream)
        self._copies.append((begin, done))
        return Ticket(nbytes=nbytes, event=done)

    def ready(self, ticket: Ticket) -> bool:
        return ticket.event is None or ticket.event.query()

    def wait(self, ticket: Ticket) -> float:
        if ticket.event is None:
            return 0.0
        compute = self.torch.cuda.current_stream(self.device)
        a, b = self._event(), self._event()
        a.record(compute)
        compute.wait_event(ticket.event)
        b.record(compute)
        self._waits.append((a, b))
        return 0.0  # measured at step end

    def synchronize(self) -> None:
        self.torch.cuda.synchronize(self.device)


def make_timeline(clock: str, profile: Any, device: Any) -> SimTimeline | CudaTimeline:
    """`sim` -> simulated; `cuda` -> CUDA events (the caller checked a GPU exists)."""
    if clock == "cuda":
        return CudaTimeline(device)
    return SimTimeline(profile)
