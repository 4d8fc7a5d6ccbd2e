"""`fedhpc eval`: which global, which data, with which settings, and the scores table.

Scores that cannot be computed (RMSE when no answer parses) are written as JSON null.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedhpc.config import Experiment
from fedhpc.errors import ConfigError, FedhpcError
from fedhpc.evaluation.chem_eval import evaluate_chem


@dataclass(frozen=True)
class EvalRequest:
    experiment: Experiment
    run_dir: Path
    round: int
    data: Path
    split: str
    limit_per_task: int | None
    batch_size: int
    max_new_tokens: int
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
    ) -> EvalRequest:
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
            max_new_tokens=max_new_tokens or (settings.max_new_tokens if settings else 32),
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
        result = evaluate_chem(
            request.experiment.model,
            request.global_dir,
            request.data,
            split=request.split,
            limit_per_task=request.limit_per_task,
            batch_size=request.batch_size,
            max_new_tokens=request.max_new_tokens,
            device=request.device,
            on_batch=lambda done, total: progress.update(bar, completed=done, total=total),
        )
    result = {"round": request.round, "data": str(request.data), "split": request.split, **result}
    result["scores"] = {
        task: {metric: None if value != value else value for metric, value in metrics.items()}
        for task, metrics in result["scores"].items()
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out)
    return result


def print_scores(console: Console, result: dict[str, Any]) -> None:
    table = Table(title=f"round {result['round']}: {result['examples']} examples, {result['seconds']} s")
    table.add_column("task")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for task, metrics in result["scores"].items():
        for metric, value in metrics.items():
            table.add_row(task, metric, "n/a" if value is None else f"{value:.4g}")
    console.print(table)
