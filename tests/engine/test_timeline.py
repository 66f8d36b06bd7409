"""The simulated clock on hand-built schedules (pure; exact arithmetic)."""
from __future__ import annotations

import pytest

from moebench.offload.clock import SimTimeline
from moebench.offload.profile import HardwareProfile

# 1 GB/s and 1 us latency: a 1,000-byte copy takes exactly 2 us.
HW = HardwareProfile(name="unit", h2d_bandwidth_gbps=1.0, h2d_latency_us=1.0, mem_bandwidth_gbps=100.0,
                     peak_tflops=1.0, launch_overhead_us=0.0, mem_efficiency=1.0)


def test_copy_that_lands_before_it_is_needed_costs_no_stall() -> None:
    t = SimTimeline(HW)
    t.step_begin()
    ticket = t.copy(1000)           # done at 2 us
    t.compute(5e-6)                 # compute runs to 5 us meanwhile
    assert t.wait(ticket) == 0.0
    clock = t.step_end()
    assert clock.latency_s == pytest.approx(5e-6)
    assert clock.stall_s == 0.0


def test_copy_that_lands_later_stalls_exactly_the_difference() -> None:
    t = SimTimeline(HW)
    t.step_begin()
    ticket = t.copy(9000)           # 1 us + 9 us = done at 10 us
    t.compute(4e-6)
    assert t.wait(ticket) == pytest.approx(6e-6)
    assert t.step_end().latency_s == pytest.approx(10e-6)


def test_copies_serialise_on_the_copy_engine() -> None:
    t = SimTimeline(HW)
    t.step_begin()
    a = t.copy(1000)
    b = t.copy(1000)
    assert a.done_at == pytest.approx(2e-6)
    assert b.done_at == pytest.approx(4e-6)   # waits for the first copy
    t.wait(b)
    clock = t.step_end()
    assert clock.copy_busy_s == pytest.approx(4e-6)
    assert clock.stall_s == pytest.approx(4e-6)


def test_a_copy_is_issued_no_earlier_than_compute_reaches_it() -> None:
    t = SimTimeline(HW)
    t.compute(10e-6)
    ticket = t.copy(1000)
    assert ticket.done_at == pytest.approx(12e-6)
    assert not t.ready(ticket)
    t.compute(3e-6)
    assert t.ready(ticket)


def test_kernel_cost_is_a_roofline_plus_launches() -> None:
    hw = HardwareProfile(name="r", h2d_bandwidth_gbps=1, h2d_latency_us=0, mem_bandwidth_gbps=1000,
                         peak_tflops=1, launch_overhead_us=2, mem_efficiency=0.5)
    # memory-bound: 1e6 bytes / (1e12 * 0.5) = 2 us, + 3 launches * 2 us
    assert hw.kernel_seconds(flops=1e3, nbytes=1e6, kernels=3) == pytest.approx(8e-6)
    # compute-bound: 1e7 flops / 1e12 = 10 us
    assert hw.kernel_seconds(flops=1e7, nbytes=1.0, kernels=0) == pytest.approx(10e-6)
