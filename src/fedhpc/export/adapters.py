"""A LoRA global as a PEFT adapter directory: `adapter_config.json` + `adapter_model.safetensors`.

The global's tensor names are already PEFT's (`get_peft_model_state_dict`
without the adapter name, docs/contracts.md), which is what
`PeftModel.from_pretrained` reads from `adapter_model.safetensors`; the config
is PEFT's own `LoraConfig` built from the run's `model.lora`, so no model is
constructed and nothing but the adapter tensors is read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig

from fedhpc.config import ModelConfig
from fedhpc.exchange import ExchangeDir
from fedhpc.exchange.safetensors_stream import StreamingShardWriter

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def write_adapter(global_: ExchangeDir, model: ModelConfig, base_name: str, dtype: torch.dtype, out: Path) -> int:
    """Write the adapter of `global_` (LoRA on the base `base_name`) into `out` in `dtype`; return its bytes."""
    PeftLoraConfig(
        r=model.lora.r,
        lora_alpha=model.lora.alpha,
        lora_dropout=model.lora.dropout,
        target_modules=list(model.lora.target_modules),
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_name,
        revision=model.revision,  # a Hub id's branch, tag or commit; None: main
    ).save_pretrained(str(out))
    layout = global_.layout(dtype)
    with StreamingShardWriter(out / ADAPTER_WEIGHTS, layout) as writer:
        for item in layout:
            writer.write(item.name, global_.get(item.name).to(dtype))
    return sum(item.nbytes for item in layout)
