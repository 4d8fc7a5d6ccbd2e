"""`fedhpc simulate`: the same scenario under several algorithms, on a virtual clock, scored on one held-out set.

Each variant is the scenario's experiment with a few overrides (at least
`algorithm.name`), run by the real orchestrator into its own run directory
with a `VirtualClock`: the facilities' simulated launchers (built here, one
per facility, and handed to the orchestrator) run the real worker at once and
report the job done when its drawn queue wait and step times have passed in
virtual time. Every global is kept and scored; the
result is virtual wall-clock time to a target held-out loss.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console

from fedhpc.config import Experiment, load_experiment
from fedhpc.errors import ConfigError
from fedhpc.report.progress import ProgressView
from fedhpc.clock import VirtualClock
from fedhpc.run.orchestrator import Orchestrator
from fedhpc.simulate.heldout import HeldoutScorer
from fedhpc.simulate.launcher import simulated_launchers

UNBOUNDED_ROUNDS = 1_000_000  # a simulation stops at its time horizon, not a round count


@dataclass(frozen=True)
class Variant:
    label: str
    overrides: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Variant:
        """`fedasync` or `fedbuff-k2:algorithm.name=fedbuff,algorithm.buffer_size=2` (label:overrides)."""
        label, _, rest = text.partition(":")
        if not label:
            raise ConfigError(f"--compare {text!r}: expected LABEL or LABEL:key=value,key=value")
        overrides = tuple(item for item in rest.split(",") if item) if rest else (f"algorithm.name={label}",)
        return cls(label, overrides)


@dataclass
class Outcome:
    label: str
    algorithm: str
    versions: int
    updates_applied: int
    jobs: int
    mean_staleness: float
    simulated_seconds: float
    wall_seconds: float
    time_to_target: float | None
    versions_to_target: int | None
    final_loss: float
    best_loss: float
    curve: list[tuple[float, float]] = field(default_factory=list)  # (virtual seconds, held-out loss) per version

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def simulate(
    scenario: Path, variants: list[Variant], heldout: Path, target_loss: float, horizon: float, out_dir: Path,
    say: Callable[[str], None],
) -> list[Outcome]:
    """Run every variant for `horizon` virtual seconds and score it; earlier runs in `out_dir` are replaced.

    The runs' own progress lines are not shown (hundreds of jobs a second); `say` gets one line per variant.
    """
    experiments = [(variant, _variant_experiment(scenario, variant, out_dir)) for variant in variants]
    scorer = HeldoutScorer(experiments[0][1].model, experiments[0][1].data, heldout)
    outcomes = []
    for variant, experiment in experiments:
        shutil.rmtree(experiment.resolved_run_dir(), ignore_errors=True)
        say(f"simulating {variant.label} ({experiment.algorithm.name}) for {horizon:g} virtual seconds")
        started = time.perf_counter()
        facilities = [f.name for f in experiment.facilities]
        with ProgressView(experiment.name, experiment.algorithm.rounds, facilities, console=Console(quiet=True)) as view:
            clock = VirtualClock(start=0.0)
            launchers = simulated_launchers(experiment.facilities, clock)
            orchestrator = Orchestrator(experiment, view, clock, launchers=launchers)
            try:
                orchestrator.run(time_limit=horizon)
            finally:
                orchestrator.close()
        outcome = _score(variant, experiment, scorer, target_loss, horizon, time.perf_counter() - started)
        reached = f"{outcome.time_to_target / 60:.1f} min" if outcome.time_to_target is not None else "not reached"
        say(f"  {outcome.versions} globals, {outcome.jobs} jobs, target {reached}, final loss {outcome.final_loss:.3f}")
        outcomes.append(outcome)
    return outcomes


def _variant_experiment(scenario: Path, variant: Variant, out_dir: Path) -> Experiment:
    overrides = [
        f"algorithm.rounds={UNBOUNDED_ROUNDS}",
        "evaluation=null",
        f"checkpoint.keep_last={UNBOUNDED_ROUNDS}",
        *variant.overrides,
        f"run_dir={(out_dir / variant.label).absolute()}",
    ]
    experiment = load_experiment(scenario, overrides)
    local = [f.name for f in experiment.facilities if f.launcher.kind != "simulated"]
    if local:
        raise ConfigError(
            f"facilities {', '.join(local)} do not use `launcher: {{kind: simulated}}`; a simulation runs "
            "every facility on the virtual clock", file=str(scenario), key="facilities",
        )
    return experiment


def _score(
    variant: Variant, experiment: Experiment, scorer: HeldoutScorer, target: float, horizon: float, wall: float
) -> Outcome:
    """Score the globals published within the horizon (a synchronous round may finish after it: not counted)."""
    run_dir = experiment.resolved_run_dir()
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    try:
        rounds = db.execute(
            "SELECT round, completed_at, global_dir, num_updates FROM rounds WHERE completed_at <= ? ORDER BY round",
            (horizon,),
        ).fetchall()
        jobs = db.execute("SELECT COUNT(*) FROM events WHERE event = 'submitted'").fetchone()[0]
        staleness = [
            float(value)
            for (value,) in db.execute("SELECT json_extract(detail, '$.staleness') FROM events WHERE event='accepted'")
            if value is not None
        ]
    finally:
        db.close()
    curve = [(completed_at, scorer.loss(Path(global_dir))) for _, completed_at, global_dir, _ in rounds]
    reached = next((index for index, (_, loss) in enumerate(curve) if loss <= target), None)
    return Outcome(
        label=variant.label,
        algorithm=experiment.algorithm.name,
        versions=len(rounds) - 1,
        updates_applied=sum(row[3] for row in rounds),
        jobs=jobs,
        mean_staleness=sum(staleness) / len(staleness) if staleness else 0.0,
        simulated_seconds=curve[-1][0],
        wall_seconds=wall,
        time_to_target=curve[reached][0] if reached is not None else None,
        versions_to_target=reached,
        final_loss=curve[-1][1],
        best_loss=min(loss for _, loss in curve),
        curve=curve,
    )


def markdown_table(outcomes: list[Outcome], target: float, horizon: float) -> str:
    lines = [
        f"| algorithm | time to held-out loss ≤ {target:g} | globals (to target) | updates applied | "
        f"mean staleness | loss at {horizon / 60:g} min | best loss | real seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        reached = f"{o.time_to_target / 60:.1f} min" if o.time_to_target is not None else "not reached"
        to_target = f"{o.versions} ({o.versions_to_target})" if o.versions_to_target is not None else f"{o.versions}"
        lines.append(
            f"| {o.label} | {reached} | {to_target} | {o.updates_applied} | {o.mean_staleness:.2f} | "
            f"{o.final_loss:.3f} | {o.best_loss:.3f} | {o.wall_seconds:.0f} |"
        )
    return "\n".join(lines)
