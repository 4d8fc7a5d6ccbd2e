"""Clocks: the virtual one jumps to the next event and never back; the real one polls."""

from __future__ import annotations

import time

import pytest

from fedhpc.errors import FedhpcError, SimulationStalled
from fedhpc.clock import RealClock, VirtualClock


def test_virtual_clock_jumps_to_the_earliest_of_wake_at_and_the_next_scheduled_time():
    clock = VirtualClock(start=1000.0)
    clock.schedule(1300.0)
    clock.schedule(1100.0)
    clock.sleep_until(2000.0)
    assert clock.now() == 1100.0
    clock.sleep_until(1200.0)  # the deadline comes before the next job ends
    assert clock.now() == 1200.0
    clock.sleep_until(None)
    assert clock.now() == 1300.0
    clock.sleep_until(1500.0)  # nothing scheduled any more: the deadline
    assert clock.now() == 1500.0


def test_virtual_clock_drops_passed_times_and_never_moves_back():
    clock = VirtualClock(start=100.0)
    clock.schedule(50.0)  # already passed
    clock.schedule(100.0)  # now: not strictly after it
    clock.schedule(150.0)
    clock.sleep_until(None)
    assert clock.now() == 150.0
    clock.sleep_until(120.0)  # a wake-up time already passed does not turn time back
    assert clock.now() == 150.0
    clock.advance_to(90.0)
    assert clock.now() == 150.0
    clock.advance_to(400.0)  # a resumed run's recorded time
    assert clock.now() == 400.0


def test_virtual_clock_with_nothing_to_wait_for_stalls():
    clock = VirtualClock(start=0.0)
    with pytest.raises(SimulationStalled, match="nothing left to wait for"):
        clock.sleep_until(None)
    clock.schedule(10.0)
    clock.sleep_until(None)
    with pytest.raises(FedhpcError):  # 10.0 was consumed
        clock.sleep_until(None)
    assert clock.now() == 10.0


def test_real_clock_sleeps_at_most_the_poll_interval():
    clock = RealClock(poll_seconds=0.05)
    assert abs(clock.now() - time.time()) < 1.0
    for wake_at in (None, time.time() + 3600):
        started = time.monotonic()
        clock.sleep_until(wake_at)
        assert 0.04 <= time.monotonic() - started < 0.5
    started = time.monotonic()
    clock.sleep_until(time.time() - 10)  # already due: no sleep at all
    assert time.monotonic() - started < 0.03
