"""The federation's learning-rate curve, and where on it each local step of a task falls.

One curve for the whole run, in federation steps: round r (1-based) covers
[(r-1)·L, r·L) with L = `algorithm.local_steps`. The server puts the curve and the
task's place on it (`schedule_start`, `schedule_span`) into every task; the worker
turns that into one learning rate per local step. Nothing here depends on what the
worker remembers, so a facility that joins late, trains 7 steps where another trains
30, runs in a persistent worker that keeps its optimizer, or restarts after a resume
lands on the same point of the curve. A schedule that restarted every round would
warm up and decay again each round: the late rounds would train at the peak rate,
never annealing, which is the failure this design exists to avoid.

Warm-up rises linearly and starts from a small fraction, not from 0: a step at
position p (p < warmup_steps) uses peak·(p + 1)/(warmup_steps + 1) (nanoGPT's rule),
so the run's first step already trains, and the rate reaches the peak at
p = warmup_steps. Decay then goes from the peak at warmup_steps to
`min_lr_ratio`·peak at `total_steps`, linearly or along a half cosine, and stays
there after the end (a round added past the planned total trains at the floor).

Plain arithmetic, no torch: the server calls `learning_rate` too, to print each
facility's effective recipe in `fedhpc validate`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedhpc.exchange.task import LrSchedule, TrainSettings


def learning_rate(schedule: LrSchedule | None, peak: float, position: float) -> float:
    """The learning rate at federation step `position` (`peak` throughout without a schedule)."""
    if schedule is None:
        return peak
    warmup = schedule.warmup_steps
    if position < warmup:
        return peak * (position + 1) / (warmup + 1)
    if schedule.kind == "constant":
        return peak
    decay_steps = schedule.total_steps - warmup
    progress = 1.0 if decay_steps <= 0 else min(1.0, (position - warmup) / decay_steps)
    if schedule.kind == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    floor = schedule.min_lr_ratio
    return peak * (floor + (1.0 - floor) * shape)


def task_positions(settings: TrainSettings, steps: int) -> list[float]:
    """The federation step at each of a task's `steps` local steps: evenly over the task's span.

    The span is `schedule_span` (what the server assigned: e.g. one round's L steps whatever
    the facility's own step count) or, when None, one federation step per local step.
    """
    span = settings.schedule_span if settings.schedule_span is not None else float(steps)
    return [settings.schedule_start + k * span / steps for k in range(steps)]


def task_learning_rates(settings: TrainSettings, steps: int) -> list[float]:
    """The learning rate of each of a task's `steps` local steps."""
    return [learning_rate(settings.schedule, settings.lr, p) for p in task_positions(settings, steps)]
