"""How many training examples a facility may claim in an update: its weight in a samples-weighted average.

`num_samples` is self-reported, so a facility claiming 1e15 would outweigh all
the others. The cap is `facilities[].max_samples` when set; else, where the
server can count the facility's data itself (the data path exists on this
machine and the job runs here: a `local` or `simulated` launcher), exactly what
the worker reports, counted by the worker's own `read_examples`; else none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fedhpc.config import FacilityConfig
from fedhpc.errors import DataError
from fedhpc.train_examples import read_examples

logger = logging.getLogger(__name__)

COUNTABLE_LAUNCHERS = ("local", "simulated")


@dataclass(frozen=True)
class SampleCap:
    """The most samples a facility may claim, and where that number comes from (for the rejection message)."""

    limit: int
    origin: str


def sample_cap(facility: FacilityConfig) -> SampleCap | None:
    """The cap on `facility`'s `num_samples`, or None where nothing bounds it."""
    key = f"facilities[{facility.name}].max_samples"
    if facility.max_samples is not None:
        return SampleCap(facility.max_samples, f"{key} = {facility.max_samples}")
    if facility.launcher.kind not in COUNTABLE_LAUNCHERS or not Path(facility.data).exists():
        return None
    count = data_size(Path(facility.data).absolute())
    if count is None:
        return None
    return SampleCap(count, f"the {count} training examples in {facility.data} (set {key} to allow more)")


@lru_cache(maxsize=None)
def data_size(path: Path) -> int | None:
    """The worker's `num_samples` for data at `path`; counted once per server process (reading a large
    dataset takes a while, and it does not change during a run). None where it cannot be read: the
    worker would fail on it too, and its update never comes."""
    try:
        return len(read_examples(path))
    except (DataError, OSError) as e:
        logger.warning("cannot count the training examples in %s (%s); num_samples is not bounded there", path, e)
        return None
