"""Floats to the ring Z_2^64 and back: the encoding the masks are added in.

A value x becomes round(x * 2^f) (round half to even) as a two's-complement 64-bit integer, seen as
uint64 so numpy's additions wrap modulo 2^64 by definition. Each value must satisfy |x| <= R, and
K * R * 2^f < 2^63 for K participants, so the sum of every facility's encoding never wraps and decodes
exactly. The precision lost is at most 2^-(f+1) per coordinate per facility (rounding to nearest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedhpc.errors import SecAggRangeError, SecAggRejected


@dataclass(frozen=True)
class FixedPoint:
    """`fractional_bits` f and `value_range` R of the encoding."""

    fractional_bits: int = 24
    value_range: float = 64.0

    @property
    def scale(self) -> float:
        return float(2 ** self.fractional_bits)

    def max_participants(self) -> int:
        """The largest K with K * R * 2^f < 2^63: more facilities could wrap the sum."""
        return int((2 ** 63 - 1) // (self.value_range * self.scale))

    def check_capacity(self, participants: int) -> None:
        if participants > self.max_participants():
            raise SecAggRejected(
                f"{participants} participants x range {self.value_range} x 2^{self.fractional_bits} reaches 2^63: "
                f"the sum could wrap; lower fractional_bits or value_range (at most "
                f"{self.max_participants()} participants fit)")

    def encode(self, name: str, values: np.ndarray) -> np.ndarray:
        """`values` as ring elements (uint64); SecAggRangeError, naming the tensor, for any |x| > R or non-finite x."""
        values = np.asarray(values, dtype=np.float64)
        if values.size:
            worst = float(np.max(np.abs(values)))
            if not np.isfinite(worst) or worst > self.value_range:
                raise SecAggRangeError(
                    f"tensor {name!r}: a value of magnitude {worst:g} is outside the secure-aggregation range "
                    f"|x| <= {self.value_range:g} (secure_aggregation.value_range); it is refused here rather than "
                    "wrapped into a wrong sum")
        return np.rint(values * self.scale).astype(np.int64).view(np.uint64)

    def decode(self, ring: np.ndarray) -> np.ndarray:
        """A ring element (a sum of encodings) back to float64."""
        return ring.view(np.int64).astype(np.float64) / self.scale

    def to_json(self) -> dict[str, Any]:
        return {"fractional_bits": self.fractional_bits, "value_range": self.value_range}

    @classmethod
    def from_json(cls, data: Any) -> FixedPoint:
        if not isinstance(data, dict):
            raise SecAggRejected("fixed_point: expected an object")
        return cls(fractional_bits=int(data["fractional_bits"]), value_range=float(data["value_range"]))
