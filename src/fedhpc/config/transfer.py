"""`transfer:` of a simulated facility: the link its globals and updates cross, so bytes cost virtual time.

A real round moves the staged global down to each facility and its update back
up; between sites that is minutes for a 7B model (docs/full-finetuning.md), and
it is what update compression saves. `fedhpc simulate` charges each job
(bytes of the staged global + bytes of the update it published) / bandwidth
virtual seconds, from the files' real sizes (a compressed update's encoded bytes).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ByteSize, ConfigDict, Field, TypeAdapter, ValidationError

_PER_SECOND = re.compile(r"^\s*(.+?)\s*/\s*s\s*$")


def _bytes_per_second(value: Any) -> Any:
    """'2GB/s', '500MiB/s' or a number of bytes per second; pydantic's ByteSize reads the size and its unit."""
    if isinstance(value, str):
        match = _PER_SECOND.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a rate: write a size per second, e.g. '2GB/s' or '500MiB/s'")
        try:
            return float(TypeAdapter(ByteSize).validate_python(match.group(1)))
        except ValidationError:
            raise ValueError(f"{value!r}: {match.group(1)!r} is not a size (e.g. 2GB, 500MiB, 10KB)") from None
    return value


Bandwidth = Annotated[float, BeforeValidator(_bytes_per_second), Field(gt=0.0, allow_inf_nan=False)]


class TransferConfig(BaseModel):
    """The facility's link to the server, in bytes per second each way."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bandwidth: Bandwidth = Field(description="bytes per second between the server and the facility, e.g. '2GB/s'")

    def seconds(self, nbytes: int) -> float:
        return nbytes / self.bandwidth
