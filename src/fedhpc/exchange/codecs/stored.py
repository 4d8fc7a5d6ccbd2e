"""A compressed tensor in an exchange directory: where its stored parts are, and how it is read back.

The reader (`fedhpc.exchange.reader`) asks this module two things about a tensor
whose manifest entry names a codec: which stored tensors the files must hold
(`stored_places`, checked against the file headers), and the decoded tensor
(`decode_entry`). Both turn anything wrong into `UpdateRejected("codec", ...)`
naming the directory, the tensor and what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from fedhpc.errors import CodecError, UpdateRejected
from fedhpc.exchange.codecs import DECODERS, Codec
from fedhpc.exchange.manifest import STORED_SEPARATOR, TensorEntry


class StoredPlace(NamedTuple):
    file: str
    stored_name: str
    shape: list[int]
    dtype: str


def stored_name(name: str, part: str) -> str:
    return f"{name}{STORED_SEPARATOR}{part}"


def stored_places(path: Path, name: str, entry: TensorEntry) -> list[StoredPlace]:
    """The stored tensors of compressed `name`, after checking the manifest's account of them against its codec."""
    assert entry.codec is not None
    codec = _codec(path, name, entry)
    try:
        expected = codec.expected_parts(tuple(entry.shape), entry.codec.params)
    except CodecError as e:
        raise UpdateRejected("codec", f"{path}: tensor {name!r} ({entry.codec.name}): {e}") from None
    stored = entry.codec.stored
    if set(stored) != set(expected):
        raise UpdateRejected(
            "codec", f"{path}: tensor {name!r} ({entry.codec.name}) stores parts {sorted(stored)}, expected "
            f"{sorted(expected)}"
        )
    for part, spec in expected.items():
        if stored[part].dtype != spec.dtype or tuple(stored[part].shape) != spec.shape:
            raise UpdateRejected(
                "codec", f"{path}: tensor {name!r} ({entry.codec.name}) part {part!r} is {stored[part].dtype}"
                f"{stored[part].shape}, but shape {entry.shape} with {entry.codec.params} needs {spec.dtype}"
                f"{list(spec.shape)}"
            )
    return [StoredPlace(part.file, stored_name(name, key), part.shape, part.dtype) for key, part in stored.items()]


def decode_entry(
    path: Path, name: str, entry: TensorEntry, read: Callable[[str, str], torch.Tensor]
) -> torch.Tensor:
    """The fp32 tensor `name` decoded from its stored parts; `read(file, stored_name)` reads one of them."""
    assert entry.codec is not None
    codec = _codec(path, name, entry)
    places = stored_places(path, name, entry)
    parts = {place.stored_name.rsplit(STORED_SEPARATOR, 1)[1]: read(place.file, place.stored_name) for place in places}
    for place, tensor in zip(places, parts.values(), strict=True):
        if list(tensor.shape) != place.shape or str(tensor.dtype).removeprefix("torch.") != place.dtype:
            raise UpdateRejected("codec", f"{path}: {place.stored_name!r} is {tensor.dtype}{list(tensor.shape)} in "
                                 f"{place.file}, the manifest says {place.dtype}{place.shape}")
    try:
        return codec.decode(parts, entry.codec.params, tuple(entry.shape))
    except CodecError as e:
        raise UpdateRejected("codec", f"{path}: tensor {name!r} ({entry.codec.name}): {e}") from None


def _codec(path: Path, name: str, entry: TensorEntry) -> Codec:
    assert entry.codec is not None
    codec = DECODERS.get(entry.codec.name)
    if codec is None:
        raise UpdateRejected(
            "codec", f"{path}: tensor {name!r} names codec {entry.codec.name!r}; this server reads "
            f"{', '.join(sorted(DECODERS))}"
        )
    return codec
