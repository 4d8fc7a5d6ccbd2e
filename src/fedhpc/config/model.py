"""The `model` section: which base model, its dtype, and how a worker trains it (LoRA or every weight)."""

from __future__ import annotations

import importlib.util
import platform
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from fedhpc.config.types import (
    DType,
    Frozen,
    KeyedValueError,
    ModelDim,
    PositiveFloat,
    RelPath,
    Seed,
    SeqLen,
    base_dir,
    path_exists,
)

MODEL_NAMES = ("tiny-llama", "smollm2-135m-instruct")

#: A Hugging Face Hub model id as the Hub spells them: ``org/name``, each part of letters, digits, ``_.-``.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
#: A revision: a branch, tag or commit hash (branches may hold slashes; nothing that climbs out of a folder).
REVISION = re.compile(r"[\w][\w./-]{0,254}")

Quantize = Literal["none", "nf4"]
"""How the frozen base's linear layers are stored: as loaded, or 4-bit NormalFloat (QLoRA, docs/qlora.md)."""

#: Bytes per weight of an nf4 linear layer with double quantisation: 4 bits, an 8-bit absmax per block of 64
#: weights, and an fp32 scale per 256 of those blocks (QLoRA, Dettmers et al. 2023, section 3).
NF4_BYTES_PER_PARAMETER = (4 + 8 / 64 + 32 / (64 * 256)) / 8

#: Where the kernel reports the CPU's instruction sets; bitsandbytes' x86-64 CPU build needs AVX2.
CPUINFO = Path("/proc/cpuinfo")


class LoraConfig(Frozen):
    r: ModelDim = 8
    alpha: PositiveFloat = 16.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1
    )


class TinyLlamaConfig(Frozen):
    """A randomly initialised Llama built from a seed: identical at every facility."""

    hidden_size: ModelDim = 64
    num_layers: ModelDim = 2
    num_heads: ModelDim = 4
    num_kv_heads: ModelDim = 2
    intermediate_size: ModelDim = 128
    max_position_embeddings: SeqLen = 1024
    seed: Seed = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyLlamaConfig:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must be divisible by num_heads, and num_heads by num_kv_heads")
        return self


class FullFinetuneConfig(Frozen):
    """How a worker trains every weight (`model.peft: none`); LoRA ignores it (docs/full-finetuning.md).

    FSDP2 shards parameters, gradients and optimizer state over the job's ranks,
    so a model that does not fit one GPU with AdamW (16 bytes per parameter in
    fp32 master + moments) still trains; DDP keeps a whole copy per rank and is
    faster for models that fit.
    """

    sharding: Literal["auto", "fsdp", "ddp"] = Field(
        "auto", description="auto: FSDP on more than one rank, a single process otherwise; ddp: a copy per rank"
    )
    compute_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="forward/backward dtype (autocast on one rank); auto: bfloat16 on GPUs, float32 on CPUs"
    )
    reduce_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype of FSDP's gradient reduce-scatter"
    )
    activation_checkpointing: bool = Field(
        True, description="recompute each decoder layer in the backward pass: one layer's activations, not all"
    )
    cpu_offload: bool = Field(
        False, description="FSDP keeps parameters, gradients and optimizer state in host memory between uses"
    )


class ModelConfig(Frozen):
    source: str = Field(
        "tiny-llama",
        description="'tiny-llama', 'smollm2-135m-instruct', a Hugging Face model directory, a .gguf file, or a "
        "Hub id (org/name) held in the Hugging Face cache where the model loads (docs/inputs.md)",
    )
    tiny: TinyLlamaConfig = TinyLlamaConfig()
    dtype: DType = "float32"
    peft: Literal["lora", "none"] = "lora"
    lora: LoraConfig = LoraConfig()
    quantize: Quantize = Field(
        "none",
        description="nf4: QLoRA, the frozen base's linear layers held in 4 bits by bitsandbytes (compute and "
        "adapters in model.dtype); LoRA only; needs `pip install 'fedhpc[qlora]'` where the worker runs",
    )
    full: FullFinetuneConfig = FullFinetuneConfig()
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile each decoder layer; auto: on GPUs only (docs/performance.md)"
    )
    cache_dir: RelPath | None = Field(
        None, description="converted-model and compiled-kernel cache; default ~/.cache/fedhpc/models"
    )
    keep_optimizer_state: bool = Field(
        False,
        description="a persistent worker keeps AdamW's moments from one task to the next (never shipped), "
        "for LoRA and full fine-tuning alike",
    )

    revision: str | None = Field(
        None, description="with a Hub id as source: the branch, tag or commit the Hugging Face cache must hold; "
        "default: the cache's main"
    )

    @field_validator("source", mode="before")  # before pydantic's str check, which drops a --set value's mark
    @classmethod
    def _resolve_source_path(cls, value: object, info: ValidationInfo) -> object:
        """A source that names a file or directory resolves like every other path (the file's folder, or the cwd).

        A hub id (``org/name``) also has a slash, so a bare ``a/b`` counts as a path
        only when it exists next to the file; ``./a/b`` and ``x.gguf`` always do.
        What is neither an existing path nor a Hub id is refused here, so `validate`
        and the worker agree (`hub_id` is the one rule both apply).
        """
        if not isinstance(value, str) or value in MODEL_NAMES or Path(value).is_absolute():
            return value
        base = base_dir(value, info)
        if base is None:
            return value
        candidate = base / value
        looks_like_path = value.endswith(".gguf") or value.startswith(".") or path_exists(candidate)
        if looks_like_path:
            return str(candidate)
        if hub_id(value) is None:
            raise ValueError(
                f"{value!r} is no file or directory (looked for {candidate}) and no Hugging Face Hub id (org/name); "
                f"give {' or '.join(map(repr, MODEL_NAMES))}, a model directory, a .gguf file or a Hub id"
            )
        return value

    @model_validator(mode="after")
    def _revision_needs_a_hub_id(self) -> ModelConfig:
        if self.revision is None:
            return self
        if hub_id(self.source) is None:
            raise KeyedValueError("model.revision", f"applies to a Hub id, but model.source {self.source!r} is not "
                                  "one; remove model.revision")
        if not REVISION.fullmatch(self.revision) or ".." in self.revision:
            raise KeyedValueError("model.revision", f"{self.revision!r} is not a branch, tag or commit name")
        return self

    @model_validator(mode="after")
    def _full_needs_full_finetuning(self) -> ModelConfig:
        # Not fields_set: a task.json carries every key, defaults included.
        if self.full != FullFinetuneConfig() and self.peft != "none":
            raise KeyedValueError(
                "model.full", f"configures full fine-tuning, but model.peft is {self.peft!r}; set model.peft: none "
                "to train every weight, or remove model.full"
            )
        return self

    @model_validator(mode="after")
    def _quantized_base_needs_lora(self) -> ModelConfig:
        # A 4-bit weight has no gradient and no optimizer step: only adapters over it can train.
        if self.quantize != "none" and self.peft != "lora":
            raise KeyedValueError(
                "model.quantize", f"{self.quantize} freezes the base in 4 bits, which full fine-tuning (model.peft: "
                f"{self.peft}) would have to train; set model.peft: lora, or model.quantize: none"
            )
        return self


def hub_id(source: str) -> str | None:
    """`source` when it is a Hugging Face Hub id (``org/name``, not a path, a .gguf or a built-in name), else None.

    A relative path that exists next to the experiment file was already made
    absolute by `ModelConfig`, so what is left in ``org/name`` form is an id.
    """
    if source in MODEL_NAMES or source.startswith((".", "~", "/")) or source.lower().endswith(".gguf"):
        return None
    return source if HUB_ID.fullmatch(source) and ".." not in source and "--" not in source else None


def quantize_refusal(device: str, runs_here: bool) -> str | None:
    """Why a facility training on `device` cannot hold its base in 4 bits, or None where it can.

    bitsandbytes (>= 0.50) quantizes to nf4 on every device fedhpc trains on:
    x86-64 CPUs with AVX2 and aarch64 CPUs, NVIDIA GPUs of compute capability 6.0
    and newer, AMD GPUs under ROCm (MI250X's gfx90a among its wheels' targets) and
    Intel XPUs with PyTorch >= 2.6. What the server can check is therefore its own
    machine only, for a facility whose worker runs in this Python on this machine
    (`runs_here`: the local and simulated launchers); a remote facility's worker
    checks the same when it loads the model (`fedhpc.worker.model`).
    """
    if not runs_here:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        return "trains in this Python environment, which lacks bitsandbytes: pip install 'fedhpc[qlora]'"
    if device == "cpu" and platform.machine() in ("x86_64", "AMD64") and not _cpu_has_avx2():
        return ("trains on this machine's CPU, which lacks AVX2, the least bitsandbytes' x86-64 CPU kernels need; "
                "train it on a GPU or set model.quantize: none")
    return None


def _cpu_has_avx2() -> bool:
    """Whether the kernel lists AVX2 among the CPU's flags; True where it does not say (not Linux)."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    return flags is None or "avx2" in flags
