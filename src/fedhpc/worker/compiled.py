"""`torch.compile` of the decoder layers: the worker's default on GPUs (`model.compile: auto`).

Between a decoder layer's matmuls sits memory-bound element-wise work that
eager PyTorch runs as one kernel each, every one a round trip through GPU
memory: RMSNorm upcast to fp32 and back, rotary embeddings, SiLU·up, residual
adds, LoRA's scaling and add. Inductor fuses each run of them into one kernel,
forward and backward; docs/performance.md has the measured gain.

Only each layer's `forward` is compiled ("regional" compilation), not the model:
- every Llama layer runs the same code, so one graph serves them all (dynamo
  compiles a second time when it meets the next layer's index, then treats it
  as dynamic), and compile time is that of one layer, not of 32;
- what varies or needs eager mode stays outside the graph: the chunked loss,
  peft's wrapper, and the hooks that wrap a module's `forward` (FSDP's gathers,
  activation checkpointing's recompute, DDP's gradient hooks);
- parameter names do not change (no `_orig_mod.` prefix), so the tensors that
  travel keep their exchange names.

Cost: the first steps of a job compile (12-18 s for a 7B on an H200). Inductor
caches what it compiled on disk, and `keep_compiled_kernels` puts that cache
where the next job finds it (below). On CPUs compiling costs more than it saves
for the sizes a CPU trains, hence `auto`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from fedhpc.worker.device import compiles, is_accelerator
from fedhpc.worker.fsdp import decoder_layers
from fedhpc.worker.loss import causal_lm_of
from fedhpc.worker.pretrained import default_cache_dir

INDUCTOR_CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"

logger = logging.getLogger(__name__)


def wants_compile(setting: bool | str, device: torch.device) -> bool:
    """`model.compile`: true, false, or auto (accelerators only); off, with one line, where inductor cannot build."""
    return compiles(device, is_accelerator(device) if setting == "auto" else bool(setting))


def compile_decoder_layers(model: nn.Module) -> int:
    """Replace each decoder layer's `forward` by its compiled version, in place; returns the layers compiled.

    Compilation itself happens lazily at the first forward, so this may run
    before the model is moved, sharded or given adapters.
    """
    layers = decoder_layers(causal_lm_of(model))
    for layer in layers:
        layer.forward = torch.compile(layer.forward)
    logger.info("decoder layers compiled with torch.compile: %d", len(layers))
    return len(layers)


def keep_compiled_kernels(model_cache_dir: Path | None) -> Path:
    """Inductor's cache in `<model cache>/torchinductor`, unless `TORCHINDUCTOR_CACHE_DIR` says otherwise.

    Inductor's own default is /tmp/torchinductor_<user>: node-local, and often
    wiped when a batch job ends, so every per-round job at an HPC facility would
    compile from scratch. The model cache (`model.cache_dir`, `$FEDHPC_CACHE`,
    ~/.cache/fedhpc/models) is where a facility already keeps what outlives a job;
    ranks and jobs share it safely (inductor writes its entries atomically).
    Returns the directory in use.
    """
    root = Path(model_cache_dir).expanduser() if model_cache_dir is not None else default_cache_dir()
    chosen = os.environ.setdefault(INDUCTOR_CACHE_VARIABLE, str(root / "torchinductor"))
    return Path(chosen)
