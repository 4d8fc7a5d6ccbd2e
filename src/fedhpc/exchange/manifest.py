"""`manifest.json`: what an exchange directory holds, written last so its presence means complete.

The format is versioned and pinned by a golden-file test (tests/golden/): a
change here is a change to what every deployed facility must read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedhpc.errors import UpdateRejected

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "fedhpc-exchange"
FORMAT_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorEntry(_Strict):
    shape: list[int]
    dtype: str
    file: str


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


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


class Manifest(ExchangeMeta):
    format: Literal["fedhpc-exchange"] = FORMAT_NAME
    format_version: Literal[1] = FORMAT_VERSION
    tensors: dict[str, TensorEntry]
    files: dict[str, FileEntry]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=False) + "\n"


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_NAME
    try:
        text = path.read_bytes()  # bytes: undecodable garbage is a bad manifest, not a UnicodeDecodeError
    except FileNotFoundError:
        raise UpdateRejected("missing_manifest", f"{path} does not exist (incomplete or not an exchange dir)") from None
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as e:
        raise UpdateRejected("bad_manifest", f"{path}: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from e
