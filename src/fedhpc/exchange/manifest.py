"""`manifest.json`: what an exchange directory holds, written last so its presence means complete.

The format is versioned and pinned by a golden-file test (tests/golden/): a
change here is a change to what every deployed facility must read.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError
from pydantic import model_serializer, model_validator

from fedhpc.errors import ExchangeError, UpdateRejected
from fedhpc.exchange.safetensors_stream import read_regular

MANIFEST_NAME = "manifest.json"
# A manifest lists every tensor, and a sharded one (format version 2) every rank's rows of it: about
# 110 bytes per tensor per rank, so some 20 MB for a 700-tensor model written by 256 FSDP ranks.
# Anything larger is refused before it is parsed, so a facility cannot make the server parse gigabytes.
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
FORMAT_NAME = "fedhpc-exchange"
SHARDED_FORMAT_VERSION = 2  # some tensor is stored as row ranges in several files (`TensorEntry.parts`)
# Version 3: every file's digest is BLAKE3 (`FileEntry.blake3`) instead of sha256. Both are cryptographic;
# BLAKE3 hashes on every core and about 3x faster than sha256 on one, so hashing stops being what a write
# or a verify waits for. Versions 1 and 2 (sha256) stay readable, so older run directories resume.
BLAKE3_FORMAT_VERSION = 3
FORMAT_VERSION = BLAKE3_FORMAT_VERSION  # what the writers produce, with or without parts
# Version 4: some tensor is stored encoded by a codec (`TensorEntry.codec`): a compressed delta update
# (docs/compression.md). Only compressed updates carry it; everything else is still written as version 3.
COMPRESSED_FORMAT_VERSION = 4
#: Between a tensor's name and its part's in a compressed tensor's stored names: ``<name>::codes``.
STORED_SEPARATOR = "::"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _plain_name(name: str) -> str:
    """A file name that can only mean a file directly inside the exchange directory.

    The manifest comes from a facility: a name with a separator or `..` (or an
    absolute path) would make the server read, hash or copy a file outside the
    update, e.g. one of its own globals. Hidden names are refused too: they are
    what a writer's temporary files look like, and nothing the writers publish.
    """
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"file name {name!r} must be a plain name inside the directory (no '/', '\\', "
                         "leading '.', or empty name)")
    if name == MANIFEST_NAME or len(name.encode()) > 255:
        raise ValueError(f"file name {name!r} cannot be a data file (the manifest itself, or over 255 bytes)")
    return name


FileName = Annotated[str, AfterValidator(_plain_name)]


class PartEntry(_Strict):
    """Rows [start, stop) of a tensor's first dimension, stored in `file` under the tensor's name."""

    file: FileName
    rows: tuple[int, int]


class StoredPart(_Strict):
    """One tensor a codec stored for a compressed tensor, under ``<tensor>::<part>`` in `file`."""

    file: FileName
    shape: list[int]
    dtype: str


class CodecEntry(_Strict):
    """How a compressed tensor is stored: the codec's name, its JSON params and its stored parts by part name."""

    name: str
    params: dict[str, int | float]
    stored: dict[str, StoredPart]


class TensorEntry(_Strict):
    """A tensor held whole in `file`, or (format version 2) as `parts` written by the ranks that own them.

    Parts are what FSDP's dim-0 shards are: each rank writes its own rows and
    nothing is gathered; a reader joins them (`ExchangeDir.get`) or reads just
    the rows it needs (`ExchangeDir.get_rows`).
    """

    shape: list[int]
    dtype: str
    file: FileName | None = None
    parts: list[PartEntry] | None = None
    codec: CodecEntry | None = None  # format version 4: `shape` and `dtype` are what decoding yields

    @model_validator(mode="after")
    def _one_place(self) -> TensorEntry:
        if self.codec is not None:
            if self.file is not None or self.parts is not None or self.dtype != "float32":
                raise ValueError("a compressed tensor's files are its codec's stored parts and it decodes to float32")
            return self
        if (self.file is None) == (self.parts is None):
            raise ValueError("a tensor entry names either one file or its parts, not both or neither")
        if self.parts is not None:
            if not self.shape:
                raise ValueError("a tensor without dimensions cannot be split into row parts")
            expected = 0
            for part in self.parts:
                start, stop = part.rows
                if start != expected or stop <= start:
                    raise ValueError(f"parts must cover rows 0..{self.shape[0]} in order without gaps or overlaps")
                expected = stop
            if expected != self.shape[0]:
                raise ValueError(f"parts cover {expected} of {self.shape[0]} rows")
        return self

    @model_serializer(mode="wrap")
    def _omit_unused_place(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Version-1 entries keep exactly their v1 bytes: no `parts: null`."""
        data = handler(self)
        return {key: value for key, value in data.items() if not (key in ("file", "parts", "codec") and value is None)}

    def files(self) -> list[str]:
        if self.codec is not None:
            return [part.file for part in self.codec.stored.values()]
        return [self.file] if self.file is not None else [part.file for part in self.parts or []]


class FileEntry(_Strict):
    """A data file's size and digest: `sha256` (format versions 1 and 2) or `blake3` (version 3), never both."""

    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    blake3: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)

    @model_validator(mode="after")
    def _one_digest(self) -> FileEntry:
        if (self.sha256 is None) == (self.blake3 is None):
            raise ValueError("a file entry holds exactly one digest: sha256 (format versions 1, 2) or blake3 (3)")
        return self

    @model_serializer(mode="wrap")
    def _omit_other_digest(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Version-1 and -2 entries keep exactly their bytes: no `blake3: null`, and no `sha256: null` in v3."""
        return {key: value for key, value in handler(self).items() if value is not None}

    @property
    def algorithm(self) -> str:
        return "sha256" if self.sha256 is not None else "blake3"

    @property
    def digest(self) -> str:
        return self.sha256 if self.sha256 is not None else self.blake3 or ""


class ExchangeMeta(_Strict):
    """Everything in a manifest except the tensor and file tables."""

    kind: Literal["global", "update"]
    round: int = Field(ge=0, description="global: the round that produced it; update: the round it was trained in")
    facility: str | None = None
    based_on_round: int | None = Field(None, description="update: the global round it started from")
    num_samples: int = Field(0, ge=0, description="update: training examples the facility holds")
    local_steps: int = Field(0, ge=0)
    base_fingerprint: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    update_form: Literal["weights", "delta"] = Field(
        "weights", description="update: 'delta' tensors are trained − the global of based_on_round"
    )

    @model_validator(mode="after")
    def _delta_names_its_base(self) -> ExchangeMeta:
        if self.update_form == "delta" and (self.kind != "update" or self.based_on_round is None):
            raise ValueError("a delta is an update that names the global it is relative to (based_on_round)")
        return self

    @model_serializer(mode="wrap")
    def _omit_default_form(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Weights are what version 1 always held: their manifests keep exactly their v1 bytes."""
        data = handler(self)
        if data.get("update_form") == "weights":
            del data["update_form"]
        return data


class Manifest(ExchangeMeta):
    format: Literal["fedhpc-exchange"] = FORMAT_NAME
    format_version: Literal[1, 2, 3, 4] = FORMAT_VERSION
    tensors: dict[str, TensorEntry]
    files: dict[FileName, FileEntry]

    @model_validator(mode="after")
    def _version_fits_entries(self) -> Manifest:
        sharded = any(entry.parts is not None for entry in self.tensors.values())
        if sharded and self.format_version < SHARDED_FORMAT_VERSION:
            raise ValueError(f"tensors stored in parts need format_version {SHARDED_FORMAT_VERSION}")
        compressed = any(entry.codec is not None for entry in self.tensors.values())
        if compressed != (self.format_version == COMPRESSED_FORMAT_VERSION):
            raise ValueError(f"format_version {COMPRESSED_FORMAT_VERSION} is exactly the compressed updates: tensors "
                             f"that name a codec need it, and it needs one")
        wanted = "blake3" if self.format_version >= BLAKE3_FORMAT_VERSION else "sha256"
        for name, entry in self.files.items():
            if entry.algorithm != wanted:
                raise ValueError(f"format_version {self.format_version} files carry a {wanted} digest; {name!r} has "
                                 f"{entry.algorithm}")
        return self

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=False) + "\n"


def read_manifest(directory: Path) -> Manifest:
    """The manifest of an exchange directory, read without following a link or waiting on a FIFO."""
    path = directory / MANIFEST_NAME
    try:
        # bytes: undecodable garbage is a bad manifest, not a UnicodeDecodeError
        text = read_regular(path, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise UpdateRejected("missing_manifest", f"{path} does not exist (incomplete or not an exchange dir)") from None
    except ExchangeError as e:
        raise UpdateRejected("bad_manifest", str(e)) from e
    except OSError as e:
        reason = "missing_manifest" if e.errno == errno.ENOTDIR else "bad_manifest"
        raise UpdateRejected(reason, f"{path}: unreadable: {e.strerror}") from e
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as e:
        raise UpdateRejected("bad_manifest", f"{path}: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from e
