"""The small real runs that `test_export.py` and `test_best_checkpoint.py` share, each made once per session.

In process on the simulated launcher and its virtual clock (the real
orchestrator, worker recipe and aggregator; round 0 and each evaluation are the
real `fedhpc worker` and `fedhpc eval` subprocesses), with the tiny Llama
(1 layer, width 32).

The LoRA run keeps only its latest global (`checkpoint.keep_last: 1`) and ranks
each evaluated round by `evaluation.key_metric`. Its first server stops at its
time limit after round 2, which is evaluated (`every: 2`); a second server
resumes it and stops after round 3, whose commit prunes with keep_last 1: only
the best round, read back from the ledger, keeps round 2. One evaluation in
all (each is a `fedhpc eval` process: the costly part). What the ledger held
between the two servers is kept in `LoraRun`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from smolinstruct_release import write_release
from rich.console import Console
from test_async_e2e import QUICKSTART_DATA, run

from fedhpc.clock import VirtualClock
from fedhpc.config import load_experiment
from fedhpc.report.progress import ProgressView
from fedhpc.run.best_round import Best, recorded_best
from fedhpc.run.ledger import Ledger
from fedhpc.run.orchestrator import Orchestrator
from fedhpc.simulate.launcher import simulated_launchers

TINY = {"hidden_size": 32, "num_layers": 1, "intermediate_size": 64}
KEY_METRIC = "property_prediction-esol.no_answer"
ALGORITHM = {"rounds": 1, "local_steps": 2, "lr": 0.01, "batch_size": 2, "round_timeout": 3600}


@dataclass(frozen=True)
class LoraRun:
    path: Path  # the experiment file
    run_dir: Path
    best_after_first_call: Best | None
    globals_after_first_call: list[str]


def experiment(root: Path, peft: str, **sections: object) -> Path:
    document = {
        "name": f"export-{peft}",
        "run_dir": str(root / "run"),
        "model": {"source": "tiny-llama", "tiny": TINY, "peft": peft,
                  "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        "data": {"seq_len": 48},
        "algorithm": ALGORITHM,
        "facilities": [
            {"name": name, "data": str(QUICKSTART_DATA / f"{name}.jsonl"), "launcher": {"kind": "simulated"}}
            for name in ("alpha", "beta")
        ],
        **sections,
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "experiment.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def run_until(path: Path, virtual_seconds: float) -> Path:
    """One server on the run: it stops after the first round that ends `virtual_seconds` after it started.

    A round of this experiment takes 2 virtual seconds (2 steps of 1 s, the facilities in parallel).
    """
    experiment = load_experiment(path, [])
    names = [f.name for f in experiment.facilities]
    with ProgressView(experiment.name, experiment.algorithm.rounds, names, console=Console(quiet=True)) as view:
        clock = VirtualClock(start=0.0)
        orchestrator = Orchestrator(experiment, view, clock, launchers=simulated_launchers(experiment.facilities, clock))
        try:
            orchestrator.run(time_limit=virtual_seconds)
        finally:
            orchestrator.close()
    return experiment.resolved_run_dir()


@cache
def lora_run(root: Path) -> LoraRun:
    """Rounds 1-2 (round 2 evaluated), then resumed by a second server for round 3, of 4 planned."""
    release = write_release(root / "release", ("property_prediction-esol",))
    evaluation = {"data": str(release), "every": 2, "include_base": False, "limit_per_task": 1,
                  "max_new_tokens": 2, "key_metric": KEY_METRIC, "mode": "min"}
    path = experiment(root, "lora", evaluation=evaluation, checkpoint={"keep_last": 1}, algorithm={**ALGORITHM,
                      "rounds": 4})
    run_dir = run_until(path, 3.0)
    ledger = Ledger(run_dir / "ledger.sqlite")
    best = recorded_best(ledger)
    ledger.close()
    on_disk = sorted(p.name for p in (run_dir / "global").iterdir())
    run_until(path, 1.0)
    return LoraRun(path, run_dir, best, on_disk)


@cache
def full_run(root: Path) -> Path:
    """Full fine-tuning, one round."""
    return run(experiment(root, "none"))
