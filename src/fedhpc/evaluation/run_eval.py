"""`fedhpc eval`: which global, which data, with which settings; the results file and its predictions.

The results document is `fedhpc.evaluation.results`'s; values that cannot be
computed (RMSE when no answer parses) are JSON null. The answers scored are
written beside it (`eval/r0003.json` -> `eval/r0003.predictions.jsonl`), so
`fedhpc score` can score them again, or anyone can score them their own way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedhpc.atomic_files import atomic_write_json
from fedhpc.config import Experiment
from fedhpc.errors import ConfigError, FedhpcError
from fedhpc.evaluation.chem_eval import evaluate_chem
from fedhpc.evaluation.predictions import predictions_path, write_predictions


@dataclass(frozen=True)
class EvalRequest:
    """Everything one `fedhpc eval` needs, settled from the command line and the run's experiment."""

    experiment: Experiment
    run_dir: Path
    round: int
    data: Path
    split: str
    limit_per_task: int | None
    batch_size: int
    num_beams: int
    max_new_tokens: int | dict[str, int] | None
    lenient: bool
    device: str

    @property
    def global_dir(self) -> Path:
        return self.run_dir / "global" / f"r{self.round:04d}"

    @classmethod
    def from_cli(
        cls,
        model: str,
        data: Path | None,
        split: str | None,
        limit: int | None,
        batch_size: int | None,
        max_new_tokens: int | None,
        device: str | None,
        num_beams: int | None = None,
        lenient: bool = False,
    ) -> EvalRequest:
        """Command-line values where given, else the run's `evaluation` settings, else their defaults.

        `--lenient` can only turn lenient extraction on; the run's `evaluation.lenient: true` also does.
        """
        run_text, _, round_text = model.rpartition(":") if _has_round(model) else (model, "", "")
        run_dir = Path(run_text)
        experiment = _read_run_experiment(run_dir)
        round = int(round_text) if round_text else _last_global_round(run_dir)
        settings = experiment.evaluation
        if data is None and settings is None:
            raise ConfigError("no --data given and the run's experiment has no evaluation.data", key="--data")
        request = cls(
            experiment=experiment,
            run_dir=run_dir,
            round=round,
            data=data or settings.data,
            split=split or (settings.split if settings else "test"),
            limit_per_task=limit if limit is not None else (settings.limit_per_task if settings else None),
            batch_size=batch_size or (settings.batch_size if settings else 16),
            num_beams=num_beams or (settings.num_beams if settings else 1),
            max_new_tokens=max_new_tokens or (settings.max_new_tokens if settings else None),
            lenient=lenient or (settings.lenient if settings else False),
            device=device or (settings.device if settings else "cpu"),
        )
        if not request.global_dir.exists():
            raise FedhpcError(f"{request.global_dir} does not exist (not a completed round, or pruned)")
        return request


def _has_round(model: str) -> bool:
    head, sep, tail = model.rpartition(":")
    return bool(sep) and tail.isdigit()


def _read_run_experiment(run_dir: Path) -> Experiment:
    path = run_dir / "experiment.yaml"
    if not path.exists():
        raise FedhpcError(f"{run_dir} has no experiment.yaml; pass a run directory made by `fedhpc run`")
    try:
        return Experiment.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as e:
        raise ConfigError(f"the run's recorded experiment no longer validates: {e}", file=str(path)) from e


def _last_global_round(run_dir: Path) -> int:
    rounds = sorted(int(p.name[1:]) for p in (run_dir / "global").glob("r[0-9]*") if (p / "manifest.json").exists())
    if not rounds:
        raise FedhpcError(f"{run_dir} has no global model yet")
    return rounds[-1]


def evaluate_run(request: EvalRequest, out: Path | None) -> dict[str, Any]:
    """Generate and score; with `out`, write the results there and the predictions beside it (atomically)."""
    console = Console(stderr=True)
    with Progress(
        TextColumn(f"eval round {request.round}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        bar = progress.add_task("generate", total=None)
        scored, predictions = evaluate_chem(
            request.experiment.model,
            request.global_dir,
            request.data,
            split=request.split,
            limit_per_task=request.limit_per_task,
            batch_size=request.batch_size,
            num_beams=request.num_beams,
            max_new_tokens=request.max_new_tokens,
            lenient=request.lenient,
            device=request.device,
            on_batch=lambda done, total: progress.update(bar, completed=done, total=total),
        )
    result = {"round": request.round, "data": str(request.data), "split": request.split, **scored}
    if out is not None:
        write_predictions(predictions_path(out), predictions)
        atomic_write_json(out, result, indent=1, make_parents=True)
    return result
