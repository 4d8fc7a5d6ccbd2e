"""`fedhpc validate`: check an experiment file, its facilities' data and memory plan, without running anything."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from fedhpc.cli.common import ExperimentArg, SetOption, console, failure, globus_module, load_or_exit
from fedhpc.config import Experiment, FacilityConfig
from fedhpc.errors import ConfigError, FedhpcError


def validate(
    experiment: ExperimentArg,
    set_: SetOption = None,
    online: Annotated[
        bool,
        typer.Option("--online", help="Also check that each Globus Compute endpoint is online and each Globus "
                                      "collection lists and takes a write (needs `fedhpc login`)."),
    ] = False,
    params: Annotated[
        Optional[str],
        typer.Option("--params", help="What-if model size for the memory plan, e.g. 7e9 or 13B (a Llama shape); "
                                      "overrides the model's own shape."),
    ] = None,
    gpus: Annotated[
        Optional[int], typer.Option("--gpus", min=1, help="What-if ranks (GPUs) per job, for every facility.")
    ] = None,
    gpu_memory: Annotated[
        Optional[str], typer.Option("--gpu-memory", help="What-if memory of one GPU, e.g. 40GiB, for every facility.")
    ] = None,
) -> None:
    """Check an experiment file without running anything; print each facility's recipe and memory plan per GPU."""
    from fedhpc.cli.privacy_lines import describe_privacy
    from fedhpc.globus.facilities import describe
    from fedhpc.memory_plan import describe_memory

    shape, memory = _what_if(params, gpu_memory)
    exp = load_or_exit(experiment, set_)
    out = Console(markup=False, highlight=False, soft_wrap=True)  # every line quotes paths and names from the file
    out.print(f"ok {experiment}: experiment {exp.name!r}, {exp.algorithm.rounds} rounds of {exp.algorithm.name}",
              style="green")
    out.print(f"  model {exp.model.source} ({exp.model.dtype}, peft={exp.model.peft}), run dir {exp.resolved_run_dir()}")
    data_problems = _check_hub_model(exp, out)
    for facility in exp.facilities:
        out.print(
            f"  facility {facility.name}: {facility.launcher.kind} x{facility.launcher.nprocs}, "
            f"mover {facility.mover.kind}, data {facility.data}"
            + (", persistent worker" if facility.mode == "persistent" else ""),
        )
        for line in describe(facility):
            out.print(f"    {line}")
        for line in describe_recipe(exp, facility):
            out.print(f"    {line}")
        data_problems += _check_data(facility, exp.model.source, out)
    if data_problems:
        for problem in data_problems:
            console.print(f"[red]error:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    for line in describe_memory(exp, shape, gpus=gpus, gpu_memory=memory):
        out.print(line)
    for line in describe_privacy(exp):
        out.print(line, style="yellow" if "WARNING" in line else None)
    if online:
        try:
            checks = globus_module("online_checks").run_online_checks(exp)
        except FedhpcError as e:
            raise failure(e) from e
        for check in checks:
            out.print(check.line())
        if not checks:
            out.print("no Globus endpoint or collection to check online")
        if not all(check.ok for check in checks):
            raise typer.Exit(1)


def describe_recipe(exp: Experiment, facility: FacilityConfig) -> list[str]:
    """The facility's effective recipe (`Experiment.recipe_for`): what its jobs are told to train with."""
    from fedhpc.lr_schedule import learning_rate
    from fedhpc.run.launches import federation_schedule, schedule_start

    recipe, algorithm = exp.recipe_for(facility), exp.algorithm
    given = f" (its own: {', '.join(recipe.overridden)})" if recipe.overridden else " (all inherited)"
    ranks = f"{recipe.ranks} rank{'s' * (recipe.ranks > 1)}"
    if recipe.local_epochs is not None:
        steps = f"{recipe.local_epochs:g} epoch(s) of its data per job, at most {recipe.local_steps} steps"
    elif algorithm.name == "fedcompass":
        fewest, most = algorithm.compass_steps()
        steps = f"{fewest} to {most} local steps per job, as fedcompass assigns"
    else:
        steps = f"{recipe.local_steps} local steps per job"
    schedule = federation_schedule(algorithm)
    lr = f"{recipe.lr:g}"
    if schedule is not None:
        span, last_round = algorithm.local_steps, algorithm.rounds
        unit = "version" if algorithm.is_async else "round"

        def over(round: int) -> str:
            start = schedule_start(algorithm, round)
            first = learning_rate(schedule, recipe.lr, start)
            last = learning_rate(schedule, recipe.lr, start + span * (recipe.local_steps - 1) / recipe.local_steps)
            return f"{unit} {round} {first:.3g} -> {last:.3g}"

        warmup = f"{schedule.warmup_steps:g} warm-up steps then " if schedule.warmup_steps else ""
        lr += (f" peak; {warmup}{schedule.kind} to {schedule.min_lr_ratio:g} x peak over {schedule.total_steps:g} "
               f"federation steps: {over(1)}, {over(last_round)}")
    clipping = f"global norm {recipe.max_grad_norm:g}" if recipe.max_grad_norm is not None else "off"
    checkpointing = {None: "n/a (LoRA)", True: "on", False: "off"}[recipe.activation_checkpointing]
    return [
        f"recipe{given}:",
        f"  batch          micro-batch {recipe.batch_size} x accumulation {recipe.grad_accum_steps} x {ranks} "
        f"= {recipe.global_batch} sequences of {recipe.seq_len} tokens per step",
        f"  steps          {steps}",
        f"  lr             {lr}",
        f"  clipping       {clipping}; activation checkpointing {checkpointing}; weighting {algorithm.weighting}",
    ]


def _check_hub_model(exp: Experiment, out: Console) -> list[str]:
    """A Hub id must be in this machine's Hugging Face cache (round 0 is built here); facilities' caches are theirs.

    Returns the problem (the worker's own `ModelError`, naming the id and the cache) or nothing.
    """
    from fedhpc.config.model import hub_id
    from fedhpc.errors import ModelError
    from fedhpc.hub_cache import hub_snapshot

    if hub_id(exp.model.source) is None:
        return []
    try:
        snapshot = hub_snapshot(exp.model.source, exp.model.revision)
    except ModelError as e:
        return [str(e)]
    out.print(f"    model ok: Hub id in this machine's Hugging Face cache, {snapshot}")
    remote = [facility.name for facility in exp.facilities if facility.remote]
    if remote:
        out.print(f"    model not checked for {', '.join(remote)}: each resolves the id in its own Hugging Face "
                  "cache (HF_HOME there), which must hold the same revision")
    return []


def _check_data(facility: Any, source: str, out: Console) -> list[str]:
    """`validate`: read the first records of a facility's data as its worker will, if this machine can reach it.

    Returns the problem (the worker's own `DataError`, naming file and row) or nothing; writes nothing.
    """
    from fedhpc.errors import DataError
    from fedhpc.train_examples import summarize_examples

    try:
        reachable = Path(facility.data).exists()
    except OSError:  # a remote path this machine cannot even look up (too long here)
        reachable = False
    if not reachable:
        out.print(f"    data not checked: {facility.data} is not reachable from here (read at the facility)")
        return []
    try:
        summary = summarize_examples(Path(facility.data))
    except DataError as e:
        return [f"facility {facility.name}: {e}"]
    if summary.chats and source == "tiny-llama":
        return [f"facility {facility.name}: {facility.data} holds chat (messages) records, which need a chat "
                "template; tiny-llama's byte tokenizer has none (use prompt/completion records, or another model)"]
    out.print(f"    data ok: {summary.line}")
    return []


def _what_if(params: str | None, gpu_memory: str | None) -> tuple[Any, int | None]:
    """`validate`'s --params (a Llama shape of that size) and --gpu-memory (bytes); a bad one exits 2."""
    from pydantic import ByteSize, TypeAdapter, ValidationError

    from fedhpc.model_shape import parse_param_count, shape_for_params

    try:
        shape = shape_for_params(parse_param_count(params)) if params is not None else None
    except ConfigError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e
    try:
        memory = int(TypeAdapter(ByteSize).validate_python(gpu_memory)) if gpu_memory is not None else None
    except ValidationError:
        memory = 0
    if memory is not None and memory <= 0:
        console.print(f"[red]error:[/red] --gpu-memory {gpu_memory!r}: give a size such as 40GiB or 80GB",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    return shape, memory
