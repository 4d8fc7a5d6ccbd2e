"""A compressed delta update with error feedback: what a round's encoding dropped goes into the next round's delta.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019, "EF-SGD"): with
c = delta_t + e_{t-1}, the facility sends encode(c) and keeps e_t = c − decode(encode(c)).
Over rounds the sum of what the server decodes equals the sum of the true deltas
minus the last residual only, so a biased codec (top-k, coarse quantisation) does
not drift. This is the classic EF, not EF21 (which compresses the change of a
gradient estimate, a different state).

The residual never travels. It is a safetensors file in the facility's own area
(`WorkerTask.residual_dir`, beside but outside `updates/`, which is all the server
pulls), one file per round: round r reads the newest file of a round before r and
writes ``r<r>.safetensors`` after its update is published. A relaunched round-r
attempt therefore reads round r-1's residual again, and an attempt that dies
before publishing leaves no file a later one would read. A persistent worker
reads the same file: the file is the one state, whatever the process's lifetime.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedhpc.errors import ExchangeError
from fedhpc.exchange import ExchangeMeta, Manifest, WorkerTask
from fedhpc.exchange.codecs import Codec, Encoded, codec_for
from fedhpc.exchange.codecs.write import write_compressed

logger = logging.getLogger(__name__)
_RESIDUAL_FILE = re.compile(r"r(\d{4,})\.safetensors")


class ResidualStore:
    """The facility's error-feedback residuals, one safetensors file per round, in `directory`."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def _rounds(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _RESIDUAL_FILE.fullmatch(p.name)))

    def path(self, round: int) -> Path:
        return self.directory / f"r{round:04d}.safetensors"

    def latest_before(self, round: int) -> int | None:
        earlier = [r for r in self._rounds() if r < round]
        return earlier[-1] if earlier else None

    def load(self, round: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        """The residual saved by `round`, checked against this update's tensors (a stale file names itself)."""
        path = self.path(round)
        residual = load_file(path)
        wrong = [n for n in shapes if n not in residual or tuple(residual[n].shape) != shapes[n]] + [
            n for n in residual if n not in shapes
        ]
        if wrong:
            raise ExchangeError(
                f"{path}: the error-feedback residual does not fit this model's trainable tensors (e.g. {wrong[0]!r}); "
                "it belongs to another model or run: delete the directory to start error feedback afresh"
            )
        return residual

    def save(self, round: int, residual: dict[str, torch.Tensor], keep_from: int | None) -> None:
        """Write round `round`'s residual atomically; drop rounds before `keep_from` (the one this round read)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(round)
        temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
        save_file({name: value.contiguous() for name, value in residual.items()}, temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
        for old in self._rounds():
            if old < round and (keep_from is None or old < keep_from):
                self.path(old).unlink(missing_ok=True)


def write_compressed_update(task: WorkerTask, delta: dict[str, torch.Tensor], meta: ExchangeMeta) -> Manifest:
    """Encode `delta` (fp32, by name) into `task.update_dir`; with error feedback, carry the residual over."""
    codec = codec_for(task.compression)
    assert codec is not None, "write_compressed_update needs a codec"
    shapes = {name: tuple(value.shape) for name, value in delta.items()}
    store = ResidualStore(task.residual_dir) if task.compression.feedback and task.residual_dir else None
    read_round = store.latest_before(task.round) if store is not None else None
    previous = store.load(read_round, shapes) if store is not None and read_round is not None else {}
    residual: dict[str, torch.Tensor] = {}

    def keep_residual(name: str, corrected: torch.Tensor, encoded: Encoded) -> None:
        residual[name] = corrected - _decoded(codec, encoded, shapes[name])

    def corrected() -> Iterator[tuple[str, torch.Tensor]]:
        for name, value in delta.items():
            yield name, value + previous[name] if name in previous else value

    manifest = write_compressed(
        task.update_dir, shapes, corrected(), meta, codec, task.shard_bytes,
        observe=keep_residual if store is not None else None,
    )  # fmt: skip
    if store is not None:
        store.save(task.round, residual, keep_from=read_round)
        logger.info("error feedback: residual of round %d kept in %s (read round %s)", task.round, store.directory,
                    read_round)
    return manifest


def _decoded(codec: Codec, encoded: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
    return codec.decode(encoded.parts, encoded.params, shape)
