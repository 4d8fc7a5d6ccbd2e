"""The base model, its adapters, and the trainable state that crosses to the server.

Every facility must start from bit-identical base weights, or averaging their
updates is meaningless. For ``tiny-llama`` that comes from building the model
from `ModelConfig.tiny` under `torch.manual_seed(tiny.seed)`; for a pretrained
model from loading the same files. The base-model fingerprint lets the server
check this instead of trusting it.

Only trainable tensors travel. Their names are peft's adapter state-dict names
without the adapter name (`get_peft_model_state_dict`) for LoRA, and the plain
`named_parameters` names for full fine-tuning (docs/contracts.md).

With ``model.quantize: nf4`` (QLoRA, docs/qlora.md) the same base is built or
loaded and its linear layers are then held in 4 bits by bitsandbytes; the
adapters, their names and the update format are the same as without. The
fingerprint gains an ``nf4:`` prefix, so the server refuses an update trained
on the full-precision base in a quantized run, and the other way round.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedhpc.config import ModelConfig, TinyLlamaConfig
from fedhpc.config.model import Quantize
from fedhpc.errors import ModelError
from fedhpc.exchange import ExchangeDir, dtype_from_name
from fedhpc.worker.tokenizer import build_byte_tokenizer

log = logging.getLogger(__name__)

TINY_LLAMA = "tiny-llama"


@dataclass
class BaseModel:
    """A base model ready for adapters, with the tokenizer that goes with it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    # "sha256:<hex>", identical wherever the same base weights were built or loaded; "nf4:sha256:<hex>" for
    # those weights held in 4 bits (the hex names the weights quantized, not the 4-bit bytes)
    fingerprint: str


def build_base_model(config: ModelConfig) -> BaseModel:
    """Build (tiny-llama) or load (anything else) the base model in `config.dtype`, on the CPU.

    With `config.quantize`, its linear layers (not the embeddings, norms or
    output head) are quantized to 4 bits as they load.
    """
    if config.source != TINY_LLAMA:
        return _load_pretrained(config)
    base = _build_tiny_llama(config.tiny, dtype_from_name(config.dtype))
    if config.quantize == "none":
        return base
    model = LlamaForCausalLM.from_pretrained(
        None, config=base.model.config, state_dict=base.model.state_dict(), dtype=dtype_from_name(config.dtype),
        **_quantization(config),
    )  # fmt: skip
    return _quantized(BaseModel(model, base.tokenizer, base.fingerprint), config.quantize)


def _quantization(config: ModelConfig) -> dict[str, BitsAndBytesConfig]:
    """`from_pretrained`'s quantization argument for `config.quantize`: none, or QLoRA's nf4 recipe.

    nf4 with double quantisation (QLoRA, Dettmers et al. 2023) over blocks of 64
    weights; matmuls dequantize to `model.dtype`, the dtype the adapters train in.
    """
    if config.quantize == "none":
        return {}
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            f"model.quantize {config.quantize!r} needs bitsandbytes in the worker's Python environment, which lacks "
            "it: pip install 'fedhpc[qlora]' there (docs/qlora.md)"
        )
    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=config.quantize, bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype_from_name(config.dtype),
    )}  # fmt: skip


def _quantized(base: BaseModel, quantize: Quantize) -> BaseModel:
    """The loaded 4-bit base, made safe to train on the CPU, under a fingerprint that says it is quantized.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a 4-bit layer's
    weight for its fused inference kernel the first time the layer runs in
    eval mode without gradients, and from then on every forward, training
    included, takes that kernel, which has no backward: gradients through the
    frozen layers are silently lost. A base that trains is never repacked.
    """
    import bitsandbytes as bnb

    layers = [module for module in base.model.modules() if isinstance(module, bnb.nn.Linear4bit)]
    for module in layers:
        module.support_avx512bf16_for_cpu = False
    log.info("base model quantized to %s: %d linear layers in 4 bits, %.1f MiB in all (bitsandbytes %s)",
             quantize, len(layers), base.model.get_memory_footprint() / 2**20, bnb.__version__)
    return BaseModel(base.model, base.tokenizer, f"{quantize}:{base.fingerprint}")


TINY_INIT_STD = 0.1


def tiny_llama_config(tiny: TinyLlamaConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """The Llama architecture at `tiny`'s size, for the byte vocabulary.

    Weights are drawn with std `TINY_INIT_STD` (0.1), not Llama's 0.02: at this
    width a 0.02 random base keeps its logits near uniform (the final norm and
    the small frozen `lm_head` cap them), so LoRA adapters could barely move the
    loss and a demo run would show nothing learning.
    """
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads,
        num_key_value_heads=tiny.num_kv_heads,
        intermediate_size=tiny.intermediate_size,
        max_position_embeddings=tiny.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        use_cache=False,
        initializer_range=TINY_INIT_STD,
    )


def _build_tiny_llama(tiny: TinyLlamaConfig, dtype: torch.dtype) -> BaseModel:
    tokenizer = build_byte_tokenizer()
    torch.manual_seed(tiny.seed)
    model = LlamaForCausalLM(tiny_llama_config(tiny, tokenizer))
    # Fingerprint the fp32 weights as built, so it names the base model whatever dtype trains it.
    fingerprint = tiny_llama_fingerprint(tiny, model)
    return BaseModel(model.to(dtype), tokenizer, fingerprint)


def tiny_llama_fingerprint(tiny: TinyLlamaConfig, model: nn.Module) -> str:
    """sha256 over the canonical JSON of `tiny` and every weight (name, dtype, shape, bytes) in name order."""
    digest = hashlib.sha256(b"tiny-llama\0")
    digest.update(json.dumps(tiny.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"\0{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return "sha256:" + digest.hexdigest()


def _load_pretrained(config: ModelConfig) -> BaseModel:
    # Imported here: the resolver belongs to another module (downloads, GGUF conversion, cache)
    # that only pretrained sources need.
    from fedhpc.worker.pretrained import fingerprint_model_dir, resolve_pretrained

    path: Path = resolve_pretrained(config.source, config.cache_dir, config.revision)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype_from_name(config.dtype), **_quantization(config))
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the model in {path} (from model.source {config.source!r}): {e}") from e
    if tokenizer.eos_token_id is None:
        raise ModelError(f"the tokenizer in {path} has no EOS token; completions could not be terminated")
    base = BaseModel(model, tokenizer, fingerprint_model_dir(path))
    return base if config.quantize == "none" else _quantized(base, config.quantize)


def add_trainable(model: PreTrainedModel, config: ModelConfig) -> nn.Module:
    """LoRA adapters (`peft: lora`) or every parameter trainable (`peft: none`).

    The LoRA init is seeded with `tiny.seed`, so an `init` job at any facility
    writes the same round-0 global; B starts at zero, so the adapted model equals
    the base until trained.
    """
    if config.peft == "none":
        if config.full.activation_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        return model.requires_grad_(True)
    lora = PeftLoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(config.tiny.seed)
    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5; noise in every job log
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, lora)
    except ValueError as e:
        raise ModelError(
            f"model.lora.target_modules {config.lora.target_modules} do not fit {type(model).__name__}: {e}"
        ) from e


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The live trainable tensors under their exchange names (they share storage with the model)."""
    if isinstance(model, PeftModel):
        return get_peft_model_state_dict(model, save_embedding_layers=False)
    return dict(model.named_parameters())


def extract_trainable(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The trainable state as CPU tensors of `dtype`, ready for `write_state_dict`.

    A tensor already on the CPU in `dtype` is not copied: write it before training further.
    """
    return {name: tensor.detach().to("cpu", dtype) for name, tensor in trainable_tensors(model).items()}


def check_global_names(live: set[str], source: ExchangeDir) -> None:
    """The global must hold exactly the model's trainable tensors.

    A tensor missing on either side means the global was written for another
    model or adapter layout, and training on a half-applied global would
    silently diverge.
    """
    offered = set(source.names())
    missing = sorted(live - offered)
    extra = sorted(offered - live)
    if missing or extra:
        raise ModelError(
            f"global {source.path} does not fit this model: {len(missing)} trainable tensor(s) missing "
            f"(e.g. {missing[:1]}), {len(extra)} unexpected (e.g. {extra[:1]}); check that model.source, "
            "model.peft and model.lora are the ones the global was written with"
        )


def apply_global(model: nn.Module, source: ExchangeDir) -> None:
    """Overwrite the trainable tensors with the global's, cast to each parameter's dtype (names must match)."""
    live = trainable_tensors(model)
    check_global_names(set(live), source)
    with torch.no_grad():
        for name, target in live.items():
            value = source.get(name)
            if value.shape != target.shape:
                raise ModelError(
                    f"global {source.path}: {name!r} has shape {list(value.shape)}, the model {list(target.shape)}"
                )
            target.copy_(value)
