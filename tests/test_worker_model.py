"""Base model identity, adapters, and the trainable state that crosses the boundary."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from fedhpc.config import LoraConfig, ModelConfig, TinyLlamaConfig
from fedhpc.errors import ModelError
from fedhpc.exchange import ExchangeDir, ExchangeMeta, write_state_dict
from fedhpc.worker.model import (
    add_trainable,
    apply_global,
    build_base_model,
    extract_trainable,
    tiny_llama_config,
    trainable_tensors,
)
from fedhpc.worker.tokenizer import build_byte_tokenizer

SMALL = ModelConfig(
    tiny=TinyLlamaConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
)
FINGERPRINT_SCRIPT = (
    "from fedhpc.config import ModelConfig; from fedhpc.worker.model import build_base_model; "
    "print(build_base_model(ModelConfig()).fingerprint)"
)


def publish(path: Path, state: dict[str, torch.Tensor]) -> ExchangeDir:
    write_state_dict(path, state, ExchangeMeta(kind="global", round=0, base_fingerprint="sha256:" + "0" * 64))
    return ExchangeDir(path)


def test_tiny_llama_fingerprint_is_identical_in_fresh_processes() -> None:
    command = [sys.executable, "-c", FINGERPRINT_SCRIPT]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    printed = [run.communicate(timeout=120)[0].strip() for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert printed[0] == printed[1] == build_base_model(ModelConfig()).fingerprint
    assert printed[0].startswith("sha256:") and len(printed[0]) == 7 + 64


def test_fingerprint_follows_the_seed_and_the_config_but_not_the_dtype() -> None:
    def with_tiny(**changes: object) -> ModelConfig:
        return SMALL.model_copy(update={"tiny": SMALL.tiny.model_copy(update=changes)})

    base = build_base_model(SMALL).fingerprint
    assert build_base_model(with_tiny(seed=1)).fingerprint != base
    assert build_base_model(with_tiny(num_layers=2)).fingerprint != base
    bf16 = build_base_model(SMALL.model_copy(update={"dtype": "bfloat16"}))
    assert bf16.fingerprint == base and next(bf16.model.parameters()).dtype == torch.bfloat16


def test_tiny_llama_vocabulary_is_the_byte_tokenizer() -> None:
    built = build_base_model(SMALL)
    assert built.model.config.vocab_size == len(build_byte_tokenizer()) == 259
    assert tiny_llama_config(SMALL.tiny, built.tokenizer).eos_token_id == built.tokenizer.eos_token_id


def test_lora_state_uses_adapter_names_without_the_adapter_and_starts_identical() -> None:
    config = SMALL.model_copy(update={"lora": LoraConfig(r=4, target_modules=["q_proj", "v_proj"])})
    first = extract_trainable(add_trainable(build_base_model(config).model, config), torch.float32)
    second = extract_trainable(add_trainable(build_base_model(config).model, config), torch.float32)
    assert sorted(first) == sorted(
        f"base_model.model.model.layers.0.self_attn.{m}.lora_{ab}.weight" for m in ("q_proj", "v_proj") for ab in "AB"
    )
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert all(not t.any() for name, t in first.items() if "lora_B" in name)


def test_full_fine_tuning_trains_every_named_parameter() -> None:
    config = SMALL.model_copy(update={"peft": "none"})
    model = add_trainable(build_base_model(config).model, config)
    assert list(trainable_tensors(model)) == [name for name, _ in model.named_parameters()]
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("peft", ["lora", "none"])
def test_apply_global_overwrites_every_trainable_tensor(tmp_path: Path, peft: str) -> None:
    config = SMALL.model_copy(update={"peft": peft, "dtype": "bfloat16"})
    model = add_trainable(build_base_model(config).model, config)
    wanted = {name: torch.randn(t.shape) for name, t in extract_trainable(model, torch.float32).items()}
    apply_global(model, publish(tmp_path / "g", wanted))
    for name, live in trainable_tensors(model).items():
        assert torch.equal(live, wanted[name].to(live.dtype))


def test_apply_global_rejects_missing_and_extra_tensors(tmp_path: Path) -> None:
    model = add_trainable(build_base_model(SMALL).model, SMALL)
    state = extract_trainable(model, torch.float32)
    first = next(iter(state))
    with pytest.raises(ModelError, match=r"1 trainable tensor\(s\) missing"):
        apply_global(model, publish(tmp_path / "missing", {k: v for k, v in state.items() if k != first}))
    with pytest.raises(ModelError, match=r"1 unexpected \(e\.g\. \['stray'\]\)"):
        apply_global(model, publish(tmp_path / "extra", {**state, "stray": torch.zeros(2)}))
    with pytest.raises(ModelError, match="has shape"):
        apply_global(model, publish(tmp_path / "shape", {**state, first: torch.zeros(3, 3)}))


def test_bad_lora_targets_are_a_model_error() -> None:
    config = SMALL.model_copy(update={"lora": LoraConfig(target_modules=["no_such_proj"])})
    with pytest.raises(ModelError, match="target_modules"):
        add_trainable(build_base_model(config).model, config)


def test_pretrained_source_goes_through_the_resolver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any source but tiny-llama is a local directory from fedhpc.worker.pretrained (faked here)."""
    built = build_base_model(SMALL)
    built.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    built.model.save_pretrained(tmp_path / "hf")
    built.tokenizer.save_pretrained(tmp_path / "hf")
    calls: list[tuple[str, Path | None]] = []
    fake = types.ModuleType("fedhpc.worker.pretrained")
    fake.resolve_pretrained = lambda source, cache_dir, revision: calls.append((source, cache_dir)) or tmp_path / "hf"
    fake.fingerprint_model_dir = lambda path: "sha256:" + "ab" * 32
    monkeypatch.setitem(sys.modules, "fedhpc.worker.pretrained", fake)

    loaded = build_base_model(ModelConfig(source="some-org/some-model", dtype="bfloat16", cache_dir=tmp_path / "c"))
    assert calls == [("some-org/some-model", tmp_path / "c")]
    assert loaded.fingerprint == "sha256:" + "ab" * 32
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.tokenizer.chat_template and loaded.tokenizer.eos_token_id == 257
    expected = built.model.state_dict()
    assert all(torch.equal(t, expected[n].to(torch.bfloat16)) for n, t in loaded.model.state_dict().items())
