"""`fedhpc eval` and `score`: score a run's global model on a dataset split, or score predictions made anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fedhpc.cli.common import console, failure
from fedhpc.errors import ConfigError, FedhpcError

EVAL_DEVICES = ("cpu", "cuda", "rocm", "xpu")
"""The values of evaluation.device (EvaluationConfig), checked here so that a typo exits 2 before a model loads."""


def evaluate(
    model: Annotated[str, typer.Option("--model", help="RUN_DIR or RUN_DIR:ROUND (default: the last complete round; 0 is the base model).")],
    data: Annotated[Optional[Path], typer.Option("--data", help="The SMolInstruct release or a built dataset; default: the run's evaluation.data.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split to score (default: the run's evaluation.split or test).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most this many examples per task (seeded sample).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size")] = None,
    max_new_tokens: Annotated[
        Optional[int], typer.Option("--max-new-tokens", min=1, help="Budget for every task (default: per answer "
                                                                     "family, see docs/chem-eval.md).")
    ] = None,
    num_beams: Annotated[Optional[int], typer.Option("--num-beams", min=1, help="Beam width (1: greedy).")] = None,
    lenient: Annotated[
        bool, typer.Option("--lenient", help="Tolerant answer extraction instead of LlaSMol's strict one.")
    ] = False,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, rocm or xpu (docs/devices.md)")] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Also write the results as JSON here, and the answers beside it "
                                                   "(NAME.predictions.jsonl).")
    ] = None,
) -> None:
    """Generate answers for a test split with a run's global model and score them (LlaSMol's metrics)."""
    from fedhpc.errors import DataError
    from fedhpc.evaluation.run_eval import EvalRequest, evaluate_run
    from fedhpc.evaluation.table import print_results

    try:
        if device is not None and device not in EVAL_DEVICES:
            raise ConfigError(f"must be one of {', '.join(EVAL_DEVICES)}, not {device!r}", key="--device")
        request = EvalRequest.from_cli(model, data, split, limit, batch_size, max_new_tokens, device, num_beams,
                                       lenient)
        result = evaluate_run(request, out)
    except (ConfigError, DataError) as e:  # bad arguments or data: exit 2, as `score` and `validate` do
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e
    except FedhpcError as e:
        raise failure(e) from e
    print_results(Console(), result)


def score(
    predictions: Annotated[Path, typer.Argument(help="JSONL, one answer a line: task, split, idx, target, pred.")],
    data: Annotated[Path, typer.Option("--data", help="The SMolInstruct release or a built dataset directory.")],
    split: Annotated[str, typer.Option(help="The split the predictions answer.")] = "test",
    lenient: Annotated[
        bool, typer.Option("--lenient", help="Tolerant answer extraction instead of LlaSMol's strict one.")
    ] = False,
) -> None:
    """Score predictions made anywhere against a dataset split; print the results as JSON (table on stderr)."""
    import json

    from fedhpc.errors import DataError
    from fedhpc.evaluation.score_file import score_predictions
    from fedhpc.evaluation.table import print_results

    try:
        result = score_predictions(predictions, data, split, lenient=lenient)
    except DataError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e
    except FedhpcError as e:
        raise failure(e) from e
    print_results(console, result)
    typer.echo(json.dumps(result, indent=1))
