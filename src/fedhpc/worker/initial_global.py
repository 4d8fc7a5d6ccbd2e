"""The round-0 global of full fine-tuning on a pretrained model, streamed from its checkpoint.

For LoRA the round-0 global is the seeded adapters (megabytes), built with the
model. For full fine-tuning it is every base weight in fp32; building the model
to extract them would hold the whole model in the server's memory (7B: 27 GB in
fp32, more while loading). So the names and shapes come from the architecture
built on the meta device (no memory), and each tensor is read from the
checkpoint files, cast to fp32, written and dropped: the server holds one tensor.
The tiny seeded model is built as before (its weights exist only as a seeded build).
"""

from __future__ import annotations

import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from fedhpc.config import ModelConfig
from fedhpc.errors import ModelError
from fedhpc.exchange import ExchangeMeta, Manifest, TensorLayout, WorkerTask, write_exchange
from fedhpc.worker.fsdp import CheckpointRows
from fedhpc.worker.model import TINY_LLAMA


def streams_from_checkpoint(config: ModelConfig) -> bool:
    return config.peft == "none" and config.source != TINY_LLAMA


def write_initial_global(task: WorkerTask) -> Manifest:
    """Publish the base model's weights as the round-0 global, one tensor at a time."""
    from fedhpc.worker.pretrained import fingerprint_model_dir, resolve_pretrained

    started = time.perf_counter()
    path = resolve_pretrained(task.model.source, task.model.cache_dir, task.model.revision)
    try:
        architecture = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the model config in {path} (from model.source {task.model.source!r}): {e}") from e
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(architecture)
    layout = [TensorLayout(name, torch.float32, tuple(p.shape)) for name, p in skeleton.named_parameters()]
    rows = CheckpointRows(path)
    meta = ExchangeMeta(
        kind="global", round=0, base_fingerprint=fingerprint_model_dir(path),
        metrics={"load_seconds": time.perf_counter() - started, "device": "cpu", "streamed": True},
    )  # fmt: skip
    tensors = ((item.name, rows(item.name, None, None).to(torch.float32)) for item in layout)
    return write_exchange(task.update_dir, layout, tensors, meta, task.shard_bytes)
