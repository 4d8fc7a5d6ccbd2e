"""Update codecs (docs/compression.md): one module per codec, this registry, and the stored-tensor glue.

`codec_for(config)` builds the encoder a facility's `CompressionConfig` asks for;
`DECODERS` is what a reader accepts, by the name a manifest records.
"""

from __future__ import annotations

from fedhpc.config.compression import CompressionConfig
from fedhpc.exchange.codecs.base import Codec, Encoded, PartSpec
from fedhpc.exchange.codecs.int8 import Int8Codec
from fedhpc.exchange.codecs.nf4 import Nf4Codec
from fedhpc.exchange.codecs.topk import TopKCodec

DECODERS: dict[str, Codec] = {codec.name: codec for codec in (Int8Codec(), Nf4Codec(), TopKCodec())}


def codec_for(config: CompressionConfig) -> Codec | None:
    """The encoder `config` selects; None for `codec: none`."""
    if config.codec == "int8":
        return Int8Codec(config.block_size)
    if config.codec == "nf4":
        return Nf4Codec(config.block_size)
    if config.codec == "topk":
        return TopKCodec(config.fraction)
    return None


__all__ = ["DECODERS", "Codec", "Encoded", "PartSpec", "codec_for"]
