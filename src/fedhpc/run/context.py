"""What every part of a running server shares, passed as one value.

The round loops, the launches, the intake and the chain of globals all write
to the same run directory, record to the same event log, read the same clock,
report to the same progress view and stop on the same flag. Passing those five
as one frozen value keeps each constructor down to what is its own: its
sub-config (`AlgorithmConfig`, `ExchangeConfig`, ...) and its collaborators.
Only the orchestrator holds the whole `Experiment`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedhpc.clock import Clock
from fedhpc.report.progress import ProgressView
from fedhpc.run.events import EventLog
from fedhpc.run.interrupts import StopFlag
from fedhpc.run.rundir import RunDir


@dataclass(frozen=True)
class RunContext:
    run_dir: RunDir
    events: EventLog
    clock: Clock
    progress: ProgressView
    stop: StopFlag
