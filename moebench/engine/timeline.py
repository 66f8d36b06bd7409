"""The measured clock: CUDA events on a dedicated copy stream (the simulated one is
`moebench.offload.clock.SimTimeline`; both speak the protocol described there).

**CUDA** (`CudaTimeline`): copies run with `non_blocking=True` from pinned memory on a dedicated
high-priority stream; each copy records an event; compute waits with `wait_event` (never a host
sync). A decode step is timed by an event pair on the compute stream and read after one
synchronise at the end of the step. Stall is measured by an event pair around each wait, copy
engine busy time by an event pair around each copy.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moebench.offload.clock import SimTimeline, StepClock, Ticket


class CudaTimeline:
    kind = "cuda-events"

    def __init__(self, device: Any):
        import torch

        self.torch = torch
        self.device = device
        self.label = "cuda-events"
        self.copy_stream = torch.cuda.Stream(device=device, priority=-1)
        self._start = None
        self._waits: list[tuple[Any, Any, bool]] = []   # (before, after, late) per wait
        self._host = 0.0                                  # host compute seconds, this step
        self._copies: list[tuple[Any, Any]] = []

    def _event(self) -> Any:
        return self.torch.cuda.Event(enable_timing=True)

    def step_begin(self) -> None:
        self._waits.clear()           # copies still in flight from the last step stay listed
        self._host = 0.0
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
        stall = sum(a.elapsed_time(b) for a, b, _ in self._waits) / 1e3
        late = sum(a.elapsed_time(b) for a, b, is_late in self._waits if is_late) / 1e3
        done, pending = [], []
        for pair in self._copies:
            (done if pair[1].query() else pending).append(pair)
        self._copies = pending
        busy = sum(a.elapsed_time(b) for a, b in done) / 1e3
        return StepClock(latency, stall, busy, max(0.0, latency - stall), late, self._host)

    def note_host(self, seconds: float) -> None:
        """Host compute measured around the CPU kernels (they run synchronously on the host)."""
        self._host += seconds

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

    def wait(self, ticket: Ticket, late: bool = False) -> float:
        if ticket.event is None:
            return 0.0
        compute = self.torch.cuda.current_stream(self.device)
        a, b = self._event(), self._event()
        a.record(compute)
        compute.wait_event(ticket.event)
        b.record(compute)
        self._waits.append((a, b, late))
        return 0.0  # measured at step end

    def synchronize(self) -> None:
        self.torch.cuda.synchronize(self.device)


def make_timeline(clock: str, profile: Any, device: Any) -> SimTimeline | CudaTimeline:
    """`sim` -> simulated; `cuda` -> CUDA events (the caller checked a GPU exists)."""
    if clock == "cuda":
        return CudaTimeline(device)
    return SimTimeline(profile)
