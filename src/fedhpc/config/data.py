"""The `data` section: how a facility's examples become training sequences."""

from __future__ import annotations

from fedhpc.config.types import Frozen, SeqLen


class DataConfig(Frozen):
    seq_len: SeqLen = 256
    packing: bool = False
