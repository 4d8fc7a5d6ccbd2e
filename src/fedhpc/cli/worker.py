"""`fedhpc worker`: what the launcher starts on every rank at a facility, for one task or as a persistent worker."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional, get_args

import typer

from fedhpc.cli.common import console
from fedhpc.config import Device


def worker(
    task: Annotated[Optional[Path], typer.Option("--task", help="The task.json the server staged.")] = None,
    persistent: Annotated[
        bool, typer.Option("--persistent", help="Stay up and train every task the server assigns in --inbox.")
    ] = False,
    inbox: Annotated[Optional[Path], typer.Option("--inbox", help="--persistent: the worker's inbox directory.")] = None,
    heartbeat_interval: Annotated[
        float, typer.Option("--heartbeat-interval", min=0.01, help="--persistent: seconds between heartbeats.")
    ] = 5.0,
    idle_timeout: Annotated[
        float, typer.Option("--idle-timeout", min=0.0, help="--persistent: exit after this many seconds without work.")
    ] = 600.0,
    device: Annotated[
        str, typer.Option("--device", help="--persistent: auto, cpu, cuda, rocm or xpu (docs/devices.md).")
    ] = "auto",
    store: Annotated[
        Optional[str],
        typer.Option("--store", help="--task: JSON of the proxystore mover the task's files travel through."),
    ] = None,
) -> None:
    """Run one job at a facility, or a persistent worker (started by the launcher on every rank)."""
    problem = None
    if (task is None) == (not persistent):
        problem = "give exactly one of --task TASK.json and --persistent --inbox DIR"
    elif task is not None and inbox is not None:
        problem = "--inbox goes with --persistent, not with --task"
    elif persistent and inbox is None:
        problem = "--persistent needs --inbox DIR"
    elif persistent and store is not None:
        problem = "--store goes with --task, not with --persistent"
    elif device not in get_args(Device):
        problem = f"--device must be one of {', '.join(get_args(Device))}, not {device!r}"
    if problem is not None:
        console.print(f"[red]error:[/red] {problem}", highlight=False)
        raise typer.Exit(2)
    if task is not None:
        from fedhpc.worker.secure_jobs import run_secure_task_file

        if run_secure_task_file(task):  # a secure-aggregation key or unmask job: no torch, no model
            return
        hide_bitsandbytes_unless_quantized(task)
        from fedhpc.worker.main import run_task

        run_task(task, store)
    else:
        from fedhpc.worker.persistent import run_persistent

        assert inbox is not None
        run_persistent(inbox, heartbeat_interval, idle_timeout, device)


def hide_bitsandbytes_unless_quantized(task: Path) -> None:
    """Keep bitsandbytes out of a job whose model is not quantized (`model.quantize: none`).

    peft and transformers import bitsandbytes wherever it is installed, and it brings torch's
    compiler stack with it: about 1.5 s of CPU at every rank's start (25% of the worker's
    imports), for a package only a QLoRA job uses. With its `sys.modules` entry set to None,
    their availability checks (`importlib.util.find_spec`) find nothing, as if it were not
    installed. A task that cannot be read here is left for `run_task` to report.
    """
    try:
        quantize = json.loads(task.read_text(encoding="utf-8"))["model"].get("quantize", "none")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    if quantize == "none":
        sys.modules.setdefault("bitsandbytes", None)  # type: ignore[arg-type]
