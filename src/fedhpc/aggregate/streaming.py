"""The streaming reduction every linear aggregation rule shares.

One tensor name at a time: read that tensor from each source in turn, add it,
scaled, into a single fp32 accumulator, drop it. bf16 or fp16 inputs are
accumulated in fp32 so small contributions are not rounded away.

When every source can serve a tensor in pieces (`FlatSource`: an exchange
directory whose tensor is stored whole), the loop is turned inside out: for each
piece of PIECE elements, each source's piece is read into a small buffer and added
into the accumulator's piece, source after source. The accumulator's piece then
stays in the CPU's cache across all K sources instead of streaming the whole fp32
tensor through memory K times, no source tensor is ever held whole, and the pieces
are shared out to one thread per core (reads and torch's adds release the GIL).
Each element still gets its terms added in the same (facility) order with the same
kernel, so the result is bit-for-bit that of the tensor-at-a-time loop. Peak memory:
the accumulator and one piece per thread, whatever the number of facilities.

FedAvg is Σ p_k·w_k over the updates; the asynchronous rules are weighted sums
over the global, the updates and (FedBuff) the globals the updates were trained
from, so all of them are `weighted_sum` with different terms.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import torch

from fedhpc.aggregate.base import TensorSource, Update

CAST_CHUNK = 1 << 22  # elements cast to fp32 at once: a 16 MiB temporary instead of a tensor-sized one
# Elements per piece in the piecewise loop: a 4 MiB fp32 accumulator piece and a 2 MiB bf16 buffer fit a
# core's share of the cache. A multiple of every vector width, so pieces split no SIMD block differently.
PIECE = 1 << 20
# Below this many elements a tensor is reduced whole on the calling thread (norms, biases, small LoRA factors).
PIECEWISE_MIN = 4 * PIECE
THREADS = max(1, min(len(os.sched_getaffinity(0)), torch.get_num_threads()))

# (label naming the source in errors, e.g. a facility; the source; its weight)
Term = tuple[str, TensorSource, float]


@runtime_checkable
class FlatSource(Protocol):
    """A source that can read any range of a tensor's flattened elements (`fedhpc.exchange.ExchangeDir`)."""

    def flat_layout(self, name: str) -> tuple[list[int], torch.dtype] | None: ...

    def read_elements(self, name: str, start: int, out: torch.Tensor) -> None: ...


def weighted_sum(name: str, terms: Sequence[Term]) -> torch.Tensor:
    """Σ weight · source[name] over `terms`, in fp32; the first term fixes the shape, no source is modified."""
    if not terms:
        raise ValueError("a weighted sum needs at least one term")
    layouts = [origin.flat_layout(name) if isinstance(origin, FlatSource) else None for _, origin, _ in terms]
    first = layouts[0]
    if first is not None and all(layout is not None for layout in layouts):
        numel = _numel(first[0])
        if numel >= PIECEWISE_MIN:
            for (label, _, _), layout in zip(terms, layouts, strict=True):
                if layout is not None and layout[0] != first[0]:
                    raise ValueError(f"{name!r} from {label} has shape {layout[0]}, expected {first[0]}")
            return _piecewise_sum(name, terms, [layout[1] for layout in layouts if layout is not None], first[0])
    return _tensorwise_sum(name, terms)


def _tensorwise_sum(name: str, terms: Sequence[Term]) -> torch.Tensor:
    """One whole source tensor at a time, cast to fp32 a chunk at a time."""
    accumulator: torch.Tensor | None = None
    for label, origin, weight in terms:
        tensor = origin.get(name)
        if accumulator is None:
            accumulator = torch.zeros(tensor.shape, dtype=torch.float32)
        elif tensor.shape != accumulator.shape:
            raise ValueError(
                f"{name!r} from {label} has shape {list(tensor.shape)}, expected {list(accumulator.shape)}"
            )
        source, target = tensor.reshape(-1), accumulator.view(-1)
        for start in range(0, source.numel(), CAST_CHUNK):
            target[start : start + CAST_CHUNK].add_(source[start : start + CAST_CHUNK], alpha=weight)
        del tensor, source
    assert accumulator is not None
    return accumulator


def _piecewise_sum(name: str, terms: Sequence[Term], dtypes: list[torch.dtype], shape: list[int]) -> torch.Tensor:
    accumulator = torch.empty(shape, dtype=torch.float32)
    sources = [(origin, weight) for _, origin, weight in terms]

    def reduce_piece(start: int, target: torch.Tensor, buffers: Buffers) -> None:
        target.zero_()
        for (origin, weight), dtype in zip(sources, dtypes, strict=True):
            piece = buffers.get(dtype, target.numel())
            origin.read_elements(name, start, piece)  # type: ignore[attr-defined]
            target.add_(piece, alpha=weight)

    for_each_piece(accumulator.view(-1), reduce_piece)
    return accumulator


class Buffers:
    """One thread's scratch pieces, one per dtype, reused for every piece it reduces."""

    def __init__(self) -> None:
        self._by_dtype: dict[torch.dtype, torch.Tensor] = {}

    def get(self, dtype: torch.dtype, count: int) -> torch.Tensor:
        buffer = self._by_dtype.get(dtype)
        if buffer is None:
            buffer = self._by_dtype[dtype] = torch.empty(PIECE, dtype=dtype)
        return buffer[:count]


def for_each_piece(flat: torch.Tensor, work: Callable[[int, torch.Tensor, Buffers], None]) -> None:
    """Call `work(start, flat[start:start + PIECE], buffers)` for every piece of `flat`, pieces shared out
    round-robin to THREADS threads (each with its own `Buffers`); the first error is raised."""
    starts = range(0, flat.numel(), PIECE)

    def run(worker: int) -> None:
        buffers = Buffers()
        for start in starts[worker::THREADS]:
            work(start, flat[start : start + PIECE], buffers)

    if THREADS == 1:
        run(0)
        return
    with ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="reduce") as pool:
        for done in [pool.submit(run, worker) for worker in range(THREADS)]:
            done.result()


def flat_dtypes(name: str, sources: Sequence[TensorSource], shape: Sequence[int]) -> list[torch.dtype] | None:
    """Each source's dtype for `name` when all can serve it in pieces with exactly `shape` and it is large
    enough to be worth it; None: reduce it whole."""
    if _numel(shape) < PIECEWISE_MIN:
        return None
    dtypes = []
    for source in sources:
        layout = source.flat_layout(name) if isinstance(source, FlatSource) else None
        if layout is None or list(layout[0]) != list(shape):
            return None
        dtypes.append(layout[1])
    return dtypes


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def weighted_mean(name: str, updates: list[Update], weights: list[float]) -> torch.Tensor:
    """Σ_k weights[k] · updates[k][name], in fp32; the update tensors are not modified."""
    return weighted_sum(
        name, [(update.facility, update.source, weight) for update, weight in zip(updates, weights, strict=True)]
    )
