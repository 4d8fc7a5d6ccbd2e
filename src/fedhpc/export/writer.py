"""`fedhpc export`: one global of a run as a directory that PEFT or transformers loads (docs/export.md).

The output appears whole or not at all: everything is written into a hidden
sibling directory, which is renamed to `--out` once complete. An `--out` that
exists and is not an empty directory is refused before anything is read, and
the global is verified (sha256 of every shard) before it is exported.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from fedhpc.errors import ConfigError, UpdateRejected
from fedhpc.exchange import ExchangeDir, dtype_from_name
from fedhpc.export.adapters import write_adapter
from fedhpc.export.base import base_name, write_config, write_tokenizer
from fedhpc.export.card import model_card
from fedhpc.export.full import write_full
from fedhpc.export.merged import write_merged
from fedhpc.export.selection import Selected, select

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DEFAULT_SHARD_BYTES = 5 * 1000**3  # transformers' own default for save_pretrained


@dataclass(frozen=True)
class Exported:
    selected: Selected
    out: Path
    form: str  # adapter, merged or full
    dtype: str
    bytes: int


def export(
    target: str, out: Path, *, merge: bool = False, dtype: str | None = None, shard_bytes: int = DEFAULT_SHARD_BYTES
) -> Exported:
    """Write global `target` (RUN, RUN:N, RUN:best) into `out`; `ConfigError` for bad arguments, nothing written."""
    out = Path(out)
    _check_out(out)
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"must be one of {', '.join(DTYPES)}, not {dtype!r}", key="--dtype")
    selected = select(target)
    model = selected.model
    if merge and model.peft != "lora":
        raise ConfigError(f"{selected.run_dir.root} fine-tuned every weight (model.peft: none): its export is a "
                          "full model already; drop --merge", key="--merge")
    dtype_name = DTYPES[dtype] if dtype is not None else model.dtype
    torch_dtype = dtype_from_name(dtype_name)
    form = "full" if model.peft == "none" else "merged" if merge else "adapter"
    global_ = ExchangeDir(selected.global_dir)
    try:
        global_.verify()
    except UpdateRejected as e:
        raise ConfigError(f"the global of round {selected.round} is damaged: {e}", key="RUN") from e
    name = base_name(model)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if form == "adapter":
            size = write_adapter(global_, model, name, torch_dtype, staging)
        else:
            write_config(model, torch_dtype, staging)
            if form == "merged":
                size = write_merged(global_, model, torch_dtype, staging, shard_bytes)
            else:
                size = write_full(global_, torch_dtype, staging, shard_bytes)
        write_tokenizer(model, staging)
        (staging / "README.md").write_text(model_card(selected, form, name, dtype_name))
        _check_out(out)  # nothing appeared there meanwhile
        os.replace(staging, out)  # an empty directory is replaced; none is created
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        global_.close()
    return Exported(selected, out, form, dtype_name, size)


def _check_out(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"{out} exists and is not a directory; choose a new --out", key="--out")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose a new --out (nothing was written)", key="--out")
