"""The simulated clock, and the vocabulary every clock speaks (tickets, step clocks).

Two clocks drive one engine: CUDA events (measured, `moebench.engine.timeline.CudaTimeline`)
and this discrete-event simulator; both answer the same calls.

The engine tells the timeline about three things, in program order:

    copy(nbytes, do_copy) -> Ticket   a host->device expert copy on the copy engine
    compute(seconds)                   work on the compute stream (the simulator's cost; on CUDA the
                                       real kernels already ran, so it is ignored)
    wait(ticket, late) -> stall secs   compute needs a copy: wait for it (`late`: the copy is a
                                       prefetch still in flight, else a demand fetch; the step's
                                       clock keeps the two stalls apart)

**Simulated** (`SimTimeline`): two resources, the compute stream and one copy engine.
A copy issued while compute is at time `t` starts at `max(t, copy_engine_free)` (the copy stream
waits on the compute stream before issuing, as YALIS does, so a slot is never overwritten while
a kernel may still read it) and takes `latency + bytes / bandwidth`. A wait is
`now = max(now, copy_done)`; the stall is the difference. Copies serialise on the copy engine.
Everything is a pure function of the sequence of calls: same calls, same times, bit for bit.

"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    late_stall_s: float = 0.0     # the part of stall_s spent waiting for late prefetches
    host_s: float = 0.0           # host CPU busy computing experts (host-computing strategies)
    host_stall_s: float = 0.0     # the part of stall_s spent waiting for host-computed experts


class SimTimeline:
    kind = "simulated"

    def __init__(self, profile: Any):
        self.profile = profile
        self.label = f"simulated:{profile.name}"
        self.now = 0.0            # where the compute stream has got to
        self.copy_free = 0.0      # when the copy engine becomes free
        self._step_start = 0.0
        self._stall = 0.0
        self._late_stall = 0.0
        self._host = self._host_stall = 0.0
        self.host_free = 0.0      # when the host CPU becomes free
        self._busy = 0.0
        self._compute = 0.0

    # -- step window -------------------------------------------------------------------------
    def step_begin(self) -> None:
        self._step_start = self.now
        self._stall = self._late_stall = self._busy = self._compute = 0.0
        self._host = self._host_stall = 0.0

    def step_end(self) -> StepClock:
        return StepClock(self.now - self._step_start, self._stall, self._busy, self._compute,
                         self._late_stall, self._host, self._host_stall)

    def host_compute(self, d2h_seconds: float, seconds: float, back_bytes: int) -> Ticket:
        """An expert computed on the host, a third resource: the activation leaves when compute
        reaches this point (on the D2H engine, which H2D copies do not occupy), the host runs the
        expert when it is free, and the result comes back on the H2D copy engine, behind any copy
        already queued there."""
        start = max(self.now + d2h_seconds, self.host_free)
        self.host_free = start + seconds
        self._host += seconds
        back = max(self.host_free, self.copy_free)
        cost = self.profile.copy_seconds(back_bytes)
        self.copy_free = back + cost
        self._busy += cost
        return Ticket(nbytes=back_bytes, done_at=self.copy_free)

    def note_host(self, seconds: float) -> None:
        """Host compute that really ran (the CUDA clock measures it; here it is charged above)."""

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

    def wait(self, ticket: Ticket, late: bool = False, host: bool = False) -> float:
        stall = max(0.0, ticket.done_at - self.now)
        self.now += stall
        self._stall += stall
        if late:
            self._late_stall += stall
        if host:
            self._host_stall += stall
        return stall

    def synchronize(self) -> None:
        pass
