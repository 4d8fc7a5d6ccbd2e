"""The run's base model as an export needs it: its config, its tokenizer, its weights one tensor at a time.

A pretrained base is read straight from its safetensors files (`ShardReader`,
one tensor resident at a time; no model is constructed). ``tiny-llama`` has no
files: it is built in memory from its seed, exactly as the workers build it
(`fedhpc.worker.model`), and held whole, which at its size costs nothing.
A quantized run (`model.quantize: nf4`) exports against the full-precision
weights its 4-bit base was quantized from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from fedhpc.config import ModelConfig
from fedhpc.errors import ModelError
from fedhpc.exchange import TensorLayout, dtype_from_name
from fedhpc.exchange.safetensors_stream import ShardReader
from fedhpc.export.shards import INDEX_NAME
from fedhpc.worker.model import TINY_LLAMA, build_base_model, tiny_llama_config
from fedhpc.worker.pretrained import SMOLLM2_NAME, fingerprint_model_dir, resolve_pretrained
from fedhpc.worker.tokenizer import build_byte_tokenizer

def pretrained_dir(model: ModelConfig) -> Path | None:
    """The Hugging Face directory the run's base loads from; None for ``tiny-llama``."""
    return None if model.source == TINY_LLAMA else resolve_pretrained(model.source, model.cache_dir, model.revision)


def base_name(model: ModelConfig) -> str:
    """What `base_model_name_or_path` records: a Hub id or ``tiny-llama`` as given, a directory as an absolute
    path, and for a source that is converted (a GGUF file, the bundled SmolLM2) the directory converted to."""
    source = Path(model.source).expanduser()
    if model.source == TINY_LLAMA:
        return TINY_LLAMA
    if source.is_dir():
        return str(source.absolute())
    if source.suffix.lower() == ".gguf" or model.source == SMOLLM2_NAME:
        return str(pretrained_dir(model))
    return model.source


def write_config(model: ModelConfig, dtype: torch.dtype, out: Path) -> None:
    """config.json (and generation_config.json where the base has one) of a full model saved in `dtype`."""
    directory = pretrained_dir(model)
    if directory is None:
        config: PretrainedConfig = tiny_llama_config(model.tiny, build_byte_tokenizer())
        config.architectures = ["LlamaForCausalLM"]
        config.use_cache = True  # the workers train without a cache; generation wants one
    else:
        config = AutoConfig.from_pretrained(directory)
        if (directory / "generation_config.json").is_file():
            shutil.copyfile(directory / "generation_config.json", out / "generation_config.json")
    config.dtype = dtype
    config.save_pretrained(out)


def write_tokenizer(model: ModelConfig, out: Path) -> None:
    directory = pretrained_dir(model)
    tokenizer = build_byte_tokenizer() if directory is None else AutoTokenizer.from_pretrained(directory)
    tokenizer.save_pretrained(out)


class BaseWeights:
    """The base's weights by name, in file order, read one at a time; `fingerprint` names them as the run did."""

    def __init__(self, model: ModelConfig):
        directory = pretrained_dir(model)
        self._built: dict[str, torch.Tensor] | None = None
        self._readers: dict[str, ShardReader] = {}
        self._file_of: dict[str, str] = {}
        if directory is None:
            base = build_base_model(model.model_copy(update={"quantize": "none"}))
            self._built = dict(base.model.state_dict())
            self.fingerprint = base.fingerprint
            return
        self.fingerprint = fingerprint_model_dir(directory)
        index = directory / INDEX_NAME
        if index.is_file():
            self._file_of = dict(json.loads(index.read_text())["weight_map"])
        else:
            for path in sorted(directory.glob("*.safetensors")):
                self._file_of.update({name: path.name for name in self._reader(directory, path.name).keys()})
        self._directory = directory
        if not self._file_of:
            raise ModelError(f"{directory} holds no safetensors weights to export from")

    def _reader(self, directory: Path, file_name: str) -> ShardReader:
        if file_name not in self._readers:
            self._readers[file_name] = ShardReader(directory / file_name)
        return self._readers[file_name]

    def names(self) -> list[str]:
        return list(self._built) if self._built is not None else list(self._file_of)

    def layout(self, name: str) -> TensorLayout:
        if self._built is not None:
            tensor = self._built[name]
            return TensorLayout(name, tensor.dtype, tuple(tensor.shape))
        reader = self._reader(self._directory, self._file_of[name])
        return TensorLayout(name, dtype_from_name(reader.dtype_name(name)), tuple(reader.shape(name)))

    def get(self, name: str) -> torch.Tensor:
        if self._built is not None:
            return self._built[name]
        return self._reader(self._directory, self._file_of[name]).read(name)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
