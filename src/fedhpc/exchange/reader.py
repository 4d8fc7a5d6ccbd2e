"""Reading and verifying an exchange directory.

`ExchangeDir` is the `TensorSource` the aggregator streams from: `get(name)`
reads one tensor (see `ShardReader`), never the whole model.
`verify` is the gate every update passes before it counts; each failure is an
`UpdateRejected` with a short reason code the ledger records.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from fedhpc.errors import ExchangeError, UpdateRejected
from fedhpc.exchange.codecs.stored import StoredPlace, decode_entry, stored_places
from fedhpc.exchange.manifest import MANIFEST_NAME, Manifest, TensorEntry, read_manifest
from fedhpc.exchange.safetensors_stream import ShardReader, TensorLayout, all_finite, dtype_from_name, open_regular
from fedhpc.exchange.safetensors_stream import digest_of_fd, scan_fd

# The dtypes an exchange directory may hold: those of the fp32 global and of the updates a worker may
# send (exchange.update_dtype). float64 is refused: a value finite in fp64 (1e300) would pass the
# finiteness check and then become infinite in the fp32 global; every float16/bfloat16 or float32
# value that is finite stays finite in the fp32 accumulator.
FLOAT_DTYPES = ("float32", "bfloat16", "float16")


class ExchangeDir:
    """A published global model or update, opened lazily."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.manifest: Manifest = read_manifest(self.path)
        self._handles: dict[str, ShardReader] = {}

    def names(self) -> list[str]:
        return list(self.manifest.tensors)

    def layout(self, dtype: torch.dtype | None = None) -> list[TensorLayout]:
        """The tensors in file order; with `dtype`, as they would be after a cast."""
        return [
            TensorLayout(name, dtype or dtype_from_name(entry.dtype), tuple(entry.shape))
            for name, entry in self.manifest.tensors.items()
        ]

    def get(self, name: str) -> torch.Tensor:
        """The whole tensor; one held in parts is joined into one fresh tensor, a compressed one decoded (fp32)."""
        entry = self._entry(name)
        if entry.codec is not None:
            return decode_entry(self.path, name, entry, lambda file, stored: self._handle(file).read(stored))
        if entry.file is not None:
            return self._handle(entry.file).read(name)
        return self.get_rows(name, 0, entry.shape[0])

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the tensor's first dimension, reading only their bytes.

        An FSDP rank loads its shard of a global this way, whether the global
        was written whole (by the server) or in parts (by another job's ranks).
        """
        entry = self._entry(name)
        if not entry.shape or not 0 <= start <= stop <= entry.shape[0]:
            raise ExchangeError(f"{self.path}: {name!r} {entry.shape} has no rows [{start}, {stop})")
        if entry.codec is not None:  # only updates are compressed, and the server reads them whole
            return self.get(name)[start:stop].clone()
        out = torch.empty([stop - start, *entry.shape[1:]], dtype=dtype_from_name(entry.dtype))
        if entry.file is not None:
            self._handle(entry.file).read_rows(name, start, out)
            return out
        for part in entry.parts or []:
            first, last = max(start, part.rows[0]), min(stop, part.rows[1])
            if first < last:
                self._handle(part.file).read_rows(name, first - part.rows[0], out[first - start : last - start])
        return out

    def flat_layout(self, name: str) -> tuple[list[int], torch.dtype] | None:
        """Shape and dtype of `name` when it is stored whole in one file, so `read_elements` can serve it
        in pieces; None for a tensor held in parts or encoded (read those with `get`)."""
        entry = self._entry(name)
        if entry.file is None or getattr(entry, "codec", None) is not None:
            return None
        self._handle(entry.file)  # opened here, once: `read_elements` may run on several threads
        return entry.shape, dtype_from_name(entry.dtype)

    def read_elements(self, name: str, start: int, out: torch.Tensor) -> None:
        """Elements [start, start + out.numel()) of `name` flattened, into `out` (see `flat_layout`)."""
        entry = self._entry(name)
        if entry.file is None:
            raise ExchangeError(f"{self.path}: {name!r} is not stored whole in one file; read it with get()")
        self._handle(entry.file).read_elements(name, start, out)

    def _entry(self, name: str) -> TensorEntry:
        entry = self.manifest.tensors.get(name)
        if entry is None:
            raise UpdateRejected("missing_tensor", f"{self.path}: no tensor {name!r}")
        return entry

    def _handle(self, file_name: str) -> ShardReader:
        if file_name not in self._handles:
            try:
                self._handles[file_name] = ShardReader(self.path / file_name)
            except (OSError, ExchangeError) as e:
                raise UpdateRejected("checksum", f"{self.path / file_name}: unreadable: {e}") from e
        return self._handles[file_name]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def verify(
        self,
        expected_shapes: Mapping[str, Sequence[int]] | None = None,
        fingerprint: str | None = None,
        check_finite: bool = True,
    ) -> None:
        """Raise `UpdateRejected` unless the directory is exactly what its manifest claims.

        With `expected_shapes` (the current global's), the tensor names and shapes
        must match it; with `fingerprint`, the base model must be the same one.
        Each file is read once, front to back, in pieces that are hashed (BLAKE3 on
        every core, or sha256 for format versions 1 and 2) and checked for NaN/Inf
        while in cache (`scan_fd`). A checksum failure wins over any other reason:
        damaged bytes explain the rest. Before either, the directory must hold nothing
        but its manifest and the regular files it lists (`unexpected_file`), so nothing
        else is ever opened.
        """
        self._verify_listing()
        scanned, non_finite = self._verify_files(check_finite)
        self._verify_contents(expected_shapes, fingerprint, check_finite, scanned, non_finite)

    def _verify_contents(
        self,
        expected_shapes: Mapping[str, Sequence[int]] | None,
        fingerprint: str | None,
        check_finite: bool,
        scanned: set[str],
        non_finite: set[str],
    ) -> None:
        self._verify_headers()
        if fingerprint is not None and self.manifest.base_fingerprint != fingerprint:
            raise UpdateRejected(
                "fingerprint",
                f"{self.path}: trained on base model {self.manifest.base_fingerprint[:19]}…, but this run's base "
                f"is {fingerprint[:19]}…; the facility must load the same model.source",
            )
        if expected_shapes is not None:
            self._verify_against(expected_shapes)
        if check_finite:
            for name, entry in self.manifest.tensors.items():
                whole_scan = entry.codec is None and all(file in scanned for file in entry.files())
                if name in non_finite or not (whole_scan or all_finite(self.get(name))):
                    raise UpdateRejected("non_finite", f"{self.path}: tensor {name!r} holds NaN or Inf values")

    def _verify_listing(self) -> None:
        """Only the manifest and the files it lists, each a regular file: a junk file, a subdirectory,
        a link or a FIFO is refused by its name before anything in the directory is opened."""
        expected = {MANIFEST_NAME, *self.manifest.files}
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name not in expected:
                    raise UpdateRejected(
                        "unexpected_file",
                        f"{entry.path} is not listed in {MANIFEST_NAME}; an exchange directory holds only its manifest "
                        "and the files it lists",
                    )
                mode = entry.stat(follow_symlinks=False).st_mode
                if not stat.S_ISREG(mode):
                    raise UpdateRejected("unexpected_file", f"{entry.path} is not a regular file (a link, FIFO or "
                                         "directory); an exchange directory holds only regular files")

    def _verify_files(self, check_finite: bool) -> tuple[set[str], set[str]]:
        """Check every file's size and digest; return the files whose tensors were scanned for finiteness
        on the way and the tensors found holding NaN/Inf (a file laid out unusually is only hashed)."""
        scanned: set[str] = set()
        non_finite: set[str] = set()
        for file_name, entry in self.manifest.files.items():
            path = self.path / file_name
            try:
                fd = open_regular(path)
            except FileNotFoundError:
                raise UpdateRejected("checksum", f"{path} is missing") from None
            except (OSError, ExchangeError) as e:
                raise UpdateRejected("checksum", f"{path}: unreadable: {e}") from e
            try:
                size = os.fstat(fd).st_size
                if size != entry.bytes:
                    raise UpdateRejected("checksum", f"{path} has {size} bytes, manifest says {entry.bytes}")
                handle = self._scannable(file_name) if check_finite else None
                plan = handle.tiling() if handle is not None else None
                if handle is not None and plan is not None:
                    digest, found = scan_fd(fd, entry.algorithm, handle.data_start, plan)
                else:
                    digest, found = digest_of_fd(fd, entry.algorithm), set()
                if digest != entry.digest:
                    raise UpdateRejected(
                        "checksum", f"{path} does not match its {entry.algorithm} digest (corrupted in transit?)"
                    )
            except UpdateRejected:
                raise
            except ExchangeError as e:
                raise UpdateRejected("checksum", f"{path}: unreadable: {e}") from e
            finally:
                os.close(fd)
            if plan is not None:
                scanned.add(file_name)
                non_finite |= found
        return scanned, non_finite

    def _scannable(self, file_name: str) -> ShardReader | None:
        """The file's reader if its header parses; a bad header is reported by `_verify_headers` later."""
        try:
            return self._handle(file_name)
        except UpdateRejected:
            return None

    def _verify_headers(self) -> None:
        held: dict[str, dict[str, tuple[list[int], str]]] = {}  # file -> stored name -> its shape and dtype there
        for name, entry in self.manifest.tensors.items():
            if entry.dtype not in FLOAT_DTYPES:
                raise UpdateRejected(
                    "dtype", f"{self.path}: tensor {name!r} has dtype {entry.dtype}; an exchange directory holds "
                    f"{', '.join(FLOAT_DTYPES)} only (float64 values can overflow the float32 global)",
                )
            places = [StoredPlace(entry.file, name, entry.shape, entry.dtype)] if entry.file is not None else [
                StoredPlace(part.file, name, [part.rows[1] - part.rows[0], *entry.shape[1:]], entry.dtype)
                for part in entry.parts or []
            ] if entry.codec is None else stored_places(self.path, name, entry)
            for file_name, stored, shape, dtype in places:
                if file_name not in self.manifest.files:
                    raise UpdateRejected("bad_manifest", f"{self.path}: tensor {name!r} names unknown file {file_name}")
                if stored in held.setdefault(file_name, {}):
                    raise UpdateRejected("bad_manifest", f"{self.path}: tensor {stored!r} has two parts in {file_name}")
                held[file_name][stored] = (shape, dtype)
        for file_name in self.manifest.files:
            handle = self._handle(file_name)
            expected = held.get(file_name, {})
            for name in handle.keys():
                if name not in expected:
                    raise UpdateRejected("unexpected_tensor", f"{self.path}/{file_name}: {name!r} is not in the manifest")
                shape, dtype = expected[name]
                actual_dtype, actual_shape = handle.dtype_name(name), handle.shape(name)
                if actual_shape != shape or actual_dtype != dtype:
                    raise UpdateRejected(
                        "shape" if actual_shape != shape else "dtype",
                        f"{self.path}: {name!r} is {actual_dtype}{actual_shape} in {file_name} "
                        f"but {dtype}{shape} in the manifest",
                    )
            present = set(handle.keys())
            for name in expected:
                if name not in present:
                    raise UpdateRejected("missing_tensor", f"{self.path}/{file_name}: {name!r} is missing")

    def _verify_against(self, expected_shapes: Mapping[str, Sequence[int]]) -> None:
        names = set(self.manifest.tensors)
        missing = [name for name in expected_shapes if name not in names]
        if missing:
            raise UpdateRejected("missing_tensor", f"{self.path}: lacks {len(missing)} tensor(s), e.g. {missing[0]!r}")
        extra = [name for name in self.manifest.tensors if name not in expected_shapes]
        if extra:
            raise UpdateRejected("unexpected_tensor", f"{self.path}: has tensor(s) the global lacks, e.g. {extra[0]!r}")
        for name, shape in expected_shapes.items():
            if self.manifest.tensors[name].shape != list(shape):
                raise UpdateRejected(
                    "shape", f"{self.path}: {name!r} has shape {self.manifest.tensors[name].shape}, expected {list(shape)}"
                )
