"""The held-out loss of every global a run kept: the common yardstick for comparing algorithms.

Facilities' training losses are measured on different data at different times;
comparing algorithms needs one loss on the same examples for every global.
The base model is built once; each global's trainable tensors are applied in
turn, so a run with hundreds of versions (FedAsync) is scored in seconds with
the tiny model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedhpc.config import DataConfig, ModelConfig
from fedhpc.errors import DataError
from fedhpc.exchange import ExchangeDir
from fedhpc.worker.data import IGNORE_INDEX, collate, encode_example, read_examples
from fedhpc.worker.model import add_trainable, apply_global, build_base_model

BATCH_SIZE = 32


class HeldoutScorer:
    def __init__(self, model: ModelConfig, data: DataConfig, heldout: Path):
        base = build_base_model(model)
        self.model = add_trainable(base.model, model)
        self.model.train(False)  # inference behaviour (no dropout)
        tokenizer = base.tokenizer
        encoded = [item for e in read_examples(heldout) if (item := encode_example(tokenizer, e, data.seq_len))]
        if not encoded:
            raise DataError(f"{heldout}: no held-out example fits data.seq_len={data.seq_len}")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.batches = [
            collate([[item] for item in encoded[start : start + BATCH_SIZE]], pad_id, packed=False)
            for start in range(0, len(encoded), BATCH_SIZE)
        ]

    @torch.inference_mode()
    def loss(self, global_dir: Path) -> float:
        """Mean next-token loss over the held-out completions (prompt tokens masked), under this global."""
        source = ExchangeDir(global_dir)
        apply_global(self.model, source)
        source.close()
        total, tokens = 0.0, 0
        for batch in self.batches:
            count = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())  # the model shifts labels by one
            loss = self.model(**batch.model_inputs(torch.device("cpu")), use_cache=False).loss
            total += float(loss) * count
            tokens += count
        return total / tokens
