"""The small real runs that `test_export.py` and `test_best_checkpoint.py` share, each made once per session.

In process on the simulated launcher (the real orchestrator, worker recipe and
aggregator; round 0 and each evaluation are the real `fedhpc worker` and
`fedhpc eval` subprocesses), with the tiny Llama (1 layer, width 32).

The LoRA run keeps only its latest global (`checkpoint.keep_last: 1`), ranks
each evaluated round by `evaluation.key_metric`, and is stopped after round 2
and resumed to round 3 (a second `run` call, as after a kill): what the ledger
held between the two calls is kept in `LoraRun`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from smolinstruct_release import write_release
from test_async_e2e import QUICKSTART_DATA, run

from fedhpc.run.best_round import Best, recorded_best
from fedhpc.run.ledger import Ledger

TINY = {"hidden_size": 32, "num_layers": 1, "intermediate_size": 64}
KEY_METRIC = "property_prediction-esol.no_answer"


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
        "algorithm": {"rounds": 1, "local_steps": 2, "lr": 0.01, "batch_size": 2, "round_timeout": 3600},
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


@cache
def lora_run(root: Path) -> LoraRun:
    """Rounds 1-2, then resumed to round 3; evaluated after rounds 2 and 3 (every 2, and the final round)."""
    release = write_release(root / "release", ("property_prediction-esol",))
    evaluation = {"data": str(release), "every": 2, "include_base": False, "limit_per_task": 1,
                  "max_new_tokens": 2, "key_metric": KEY_METRIC, "mode": "min"}
    path = experiment(root, "lora", evaluation=evaluation, checkpoint={"keep_last": 1})
    run_dir = run(path, "algorithm.rounds=2")
    ledger = Ledger(run_dir / "ledger.sqlite")
    best = recorded_best(ledger)
    ledger.close()
    on_disk = sorted(p.name for p in (run_dir / "global").iterdir())
    run(path, "algorithm.rounds=3")
    return LoraRun(path, run_dir, best, on_disk)


@cache
def full_run(root: Path) -> Path:
    """Full fine-tuning, one round."""
    return run(experiment(root, "none"))
