"""`fedhpc export`: write a run's global where PEFT or transformers loads it, and optionally push it to the Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from fedhpc.cli.common import console, failure
from fedhpc.errors import ConfigError, FedhpcError


def export(
    target: Annotated[str, typer.Argument(metavar="RUN[:ROUND|best]", help="A run directory; :ROUND picks a round, "
                                          ":best the best by evaluation.key_metric (default: the latest).")],
    out: Annotated[Path, typer.Option("--out", help="The directory to write; must not exist or be empty.")],
    merge: Annotated[bool, typer.Option("--merge", help="Fold LoRA adapters into the base: a full model.")] = False,
    dtype: Annotated[
        Optional[str], typer.Option("--dtype", help="bf16, fp16 or fp32 (default: the run's model.dtype).")
    ] = None,
    max_shard_size: Annotated[
        str, typer.Option("--max-shard-size", help="Split a full model's safetensors at this size.")
    ] = "5GB",
    push_to_hub: Annotated[
        Optional[str], typer.Option("--push-to-hub", metavar="REPO", help="Then upload it to this Hub model repo.")
    ] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the Hub repo private.")] = False,
) -> None:
    """Export a run's global model: a PEFT adapter, a merged model (--merge) or a full fine-tune, with its
    tokenizer and a model card."""
    from pydantic import ByteSize, TypeAdapter, ValidationError

    from fedhpc.export import export as export_global
    from fedhpc.export.hub import push_to_hub as push

    try:
        try:
            shard_bytes = int(TypeAdapter(ByteSize).validate_python(max_shard_size))
        except ValidationError:
            shard_bytes = 0
        if shard_bytes <= 0:
            raise ConfigError(f"must be a positive size such as 5GB or 500MB, not {max_shard_size!r}",
                              key="--max-shard-size")
        done = export_global(target, out, merge=merge, dtype=dtype, shard_bytes=shard_bytes)
    except ConfigError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e
    except FedhpcError as e:
        raise failure(e) from e
    selected = done.selected
    console.print(f"exported round {selected.round} of {selected.run_dir.root} ({selected.how}) as {done.form} "
                  f"({done.dtype}, {done.bytes / 2**20:.1f} MiB of weights) to {done.out}", highlight=False)
    if push_to_hub:
        try:
            url = push(done.out, push_to_hub, f"fedhpc export of round {selected.round} ({done.form})", private)
        except FedhpcError as e:
            raise failure(e) from e
        console.print(f"pushed to {push_to_hub}: {url}", highlight=False)
