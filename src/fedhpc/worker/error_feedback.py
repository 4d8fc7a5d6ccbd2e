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
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from fedhpc.errors import ExchangeError
from fedhpc.exchange import ExchangeMeta, Manifest, WorkerTask
from fedhpc.exchange.codecs import Codec, Encoded, codec_for
from fedhpc.exchange.codecs.write import write_compressed
from fedhpc.exchange.safetensors_stream import StreamingShardWriter, TensorLayout

logger = logging.getLogger(__name__)
_RESIDUAL_FILE = re.compile(r"r(\d{4,})\.safetensors")
Shapes = dict[str, tuple[int, ...]]


class ResidualStore:
    """The facility's error-feedback residuals, one safetensors file per round, in `directory`.

    Read tensor by tensor and written as the update is encoded, so the worker holds
    no more than one residual tensor at a time beside its delta.
    """

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

    @contextmanager
    def reader(self, round: int, shapes: Shapes) -> Iterator[Any]:
        """The residual saved by `round`, opened lazily, checked against this update's tensors (a stale file names
        itself)."""
        path = self.path(round)
        with safe_open(path, framework="pt") as handle:
            held = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
            wrong = [n for n in shapes if held.get(n) != shapes[n]] + [n for n in held if n not in shapes]
            if wrong:
                raise ExchangeError(
                    f"{path}: the error-feedback residual does not fit this model's trainable tensors (e.g. "
                    f"{wrong[0]!r}); it belongs to another model or run: delete the directory to start error feedback "
                    "afresh"
                )
            yield handle

    def load(self, round: int, shapes: Shapes) -> dict[str, torch.Tensor]:
        with self.reader(round, shapes) as handle:
            return {name: handle.get_tensor(name) for name in shapes}

    def writer(self, round: int, shapes: Shapes) -> StreamingShardWriter:
        """A hidden file that `commit` renames to round `round`'s residual; removed if writing fails."""
        self.directory.mkdir(parents=True, exist_ok=True)
        temp = self.directory / f".{self.path(round).name}.partial-{os.getpid()}"
        return StreamingShardWriter(temp, [TensorLayout(n, torch.float32, s) for n, s in shapes.items()])

    def commit(self, written: StreamingShardWriter, round: int, keep_from: int | None) -> None:
        """Make round `round`'s residual the one a later round reads; drop rounds before `keep_from` (the one this
        round read, which a relaunch of this round reads again)."""
        os.replace(written.path, self.path(round))
        for old in self._rounds():
            if old < round and (keep_from is None or old < keep_from):
                self.path(old).unlink(missing_ok=True)


def write_compressed_update(task: WorkerTask, delta: dict[str, torch.Tensor], meta: ExchangeMeta) -> Manifest:
    """Encode `delta` (fp32, by name) into `task.update_dir`; with error feedback, carry the residual over."""
    codec = codec_for(task.compression)
    assert codec is not None, "write_compressed_update needs a codec"
    shapes = {name: tuple(value.shape) for name, value in delta.items()}
    if not (task.compression.feedback and task.residual_dir is not None):
        return write_compressed(task.update_dir, shapes, delta.items(), meta, codec, task.shard_bytes)
    store = ResidualStore(task.residual_dir)
    read_round = store.latest_before(task.round)
    with ExitStack() as stack:
        previous = stack.enter_context(store.reader(read_round, shapes)) if read_round is not None else None
        residual = stack.enter_context(store.writer(task.round, shapes))

        def corrected() -> Iterator[tuple[str, torch.Tensor]]:
            for name, value in delta.items():
                yield name, value + previous.get_tensor(name) if previous is not None else value

        def keep_residual(name: str, value: torch.Tensor, encoded: Encoded) -> None:
            residual.write(name, value - _decoded(codec, encoded, shapes[name]))

        manifest = write_compressed(
            task.update_dir, shapes, corrected(), meta, codec, task.shard_bytes, observe=keep_residual
        )
    store.commit(residual, task.round, keep_from=read_round)
    logger.info("error feedback: round %d's residual kept in %s (round %s's read)", task.round, store.directory,
                read_round)
    return manifest


def _decoded(codec: Codec, encoded: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
    return codec.decode(encoded.parts, encoded.params, shape)
