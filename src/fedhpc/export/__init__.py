"""`fedhpc export`: a run's global as a PEFT adapter or a transformers model directory (docs/export.md).

`selection` (which round), `adapters` / `merged` / `full` (the three forms),
`base` (the base model's config, tokenizer and weights), `shards` (sharded
safetensors + index), `card` (README.md), `hub` (the push), `writer` (all of it,
into a directory that appears whole).
"""

from fedhpc.export.writer import DTYPES, Exported, export

__all__ = ["DTYPES", "Exported", "export"]
