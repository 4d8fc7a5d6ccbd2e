"""`exchange.compression:` (and a facility's `compression:` over it): how updates are encoded before they travel.

Only updates are compressed, and only as deltas (trained − the global they started
from): a delta's values are small and centred on zero, so a block's absmax scale or
its top entries keep what matters, and error feedback can carry what a round dropped
into the next. Staged globals are weights and travel uncompressed: every facility
starts its round from them, and a quantised global would be a different model at
each round, with no residual to correct it (docs/compression.md).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from fedhpc.config.types import Frozen, KeyedValueError

Codec = Literal["none", "int8", "nf4", "topk"]
LOSSY_CODECS = ("int8", "nf4", "topk")


class CompressionConfig(Frozen):
    codec: Codec = Field(
        "none", description="none; int8 or nf4 (blockwise, an fp32 absmax scale per block); topk (largest entries)"
    )
    block_size: int = Field(256, ge=2, le=1 << 20, description="int8, nf4: values sharing one fp32 scale")
    fraction: float = Field(0.01, gt=0, le=1, description="topk: the fraction of each tensor's entries sent")
    error_feedback: bool | None = Field(
        None,
        description="add what compression dropped in one round to the next round's delta (a residual kept at the "
        "facility, never sent); default: on with a lossy codec",
    )

    @model_validator(mode="after")
    def _feedback_needs_a_codec(self) -> CompressionConfig:
        if self.error_feedback and self.codec == "none":
            raise KeyedValueError(
                "exchange.compression.error_feedback", "is true but codec is 'none': nothing is dropped to feed back; "
                "choose a codec (int8, nf4, topk) or remove error_feedback"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.codec != "none"

    @property
    def feedback(self) -> bool:
        """Error feedback is on: a lossy codec, unless `error_feedback: false`."""
        return self.codec in LOSSY_CODECS and self.error_feedback is not False


def compression_for(experiment_default: CompressionConfig, facility_override: CompressionConfig | None) -> CompressionConfig:
    """A facility's codec: its own `compression:` section when it has one, else `exchange.compression`."""
    return facility_override if facility_override is not None else experiment_default


def check_compression(
    index: int, compression: CompressionConfig, own: bool, update_form: str, sharded: bool
) -> None:
    """Refuse what cannot work for facility `index`: a codec on weights, or on an FSDP job's row-sharded update.

    `own`: the facility sets `compression:` itself (the key to name). `sharded`: its
    jobs are full fine-tuning under FSDP on several ranks, each writing its own rows;
    compressing those would need each rank's residual and its rows' blocks kept apart,
    which is not built.
    """
    if not compression.enabled:
        return
    key = f"facilities.{index}.compression.codec" if own else "exchange.compression.codec"
    if update_form != "delta":
        raise KeyedValueError(
            key, f"{compression.codec!r} compresses updates sent as deltas, but exchange.update_form is "
            f"{update_form!r}; set exchange.update_form: delta (weights are not compressed)"
        )
    if sharded:
        raise KeyedValueError(
            key, f"{compression.codec!r} cannot compress the update of facility {index}: its jobs are full "
            "fine-tuning sharded by FSDP over several ranks, each writing its own rows, and compressed updates are "
            "written whole by one rank; use codec: none there, one rank, or model.full.sharding: ddp"
        )


def compressed_bytes(values: int, compression: CompressionConfig) -> int:
    """About how many bytes of tensor data `values` update values take under `compression` (for `fedhpc validate`).

    Exact for one tensor; a model's tensors each round their last block (and top-k's k) up.
    """
    blocks = -(-values // compression.block_size)
    if compression.codec == "int8":
        return values + 4 * blocks
    if compression.codec == "nf4":
        return (values + 1) // 2 + 4 * blocks
    if compression.codec == "topk":
        return 8 * math.ceil(values * compression.fraction)
    raise ValueError(f"codec {compression.codec!r} does not compress")
