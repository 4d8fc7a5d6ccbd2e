"""The memory plan: parameter counts against transformers and peft, the per-GPU bytes as the formulas say.

Models are built on the meta device, so a 70B count costs no memory; the
plans are pure arithmetic and are checked to the byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from conftest import QUICKSTART
from fedhpc.cli import app
from fedhpc.config import ModelConfig, TinyLlamaConfig
from fedhpc.errors import ConfigError, ModelError
from fedhpc.memory_plan import describe_plan, format_bytes, plan_memory
from fedhpc.model_shape import REFERENCE_SHAPES, ModelShape, model_shape, parse_param_count, shape_for_params

GIB = 1024**3
LLAMA2_7B = 6_738_415_616


def llama_config(shape: ModelShape) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, intermediate_size=shape.intermediate,
        tie_word_embeddings=shape.tied_embeddings,
    )  # fmt: skip


def meta_count(config: LlamaConfig) -> int:
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return sum(p.numel() for p in model.parameters())  # tied weights are one parameter


def full_7b(**changes) -> dict:
    settings = dict(
        ranks=8, sharding="fsdp", param_dtype="float32", compute_dtype="bfloat16", seq_len=512, micro_batch=6,
        activation_checkpointing=True, gpu_memory=40 * GIB,
    )
    return {**settings, **changes}


# --- shapes ------------------------------------------------------------------------------------


def test_tiny_llama_count_equals_the_model_the_worker_builds():
    from fedhpc.worker.model import tiny_llama_config
    from fedhpc.worker.tokenizer import build_byte_tokenizer

    tiny = TinyLlamaConfig(hidden_size=96, num_layers=3, num_heads=6, num_kv_heads=2, intermediate_size=160)
    shape = model_shape(ModelConfig(source="tiny-llama", tiny=tiny))
    assert shape.num_params == meta_count(tiny_llama_config(tiny, build_byte_tokenizer()))


@pytest.mark.parametrize("shape", [s for _, s in REFERENCE_SHAPES], ids=lambda s: s.name)
def test_reference_shapes_count_exactly_like_transformers(shape: ModelShape):
    assert shape.num_params == meta_count(llama_config(shape))


def test_what_if_sizes_get_the_real_llama_shapes():
    assert shape_for_params(7e9).name == "Llama-2-7B" and shape_for_params(7e9).num_params == LLAMA2_7B
    assert shape_for_params(13e9).num_params == 13_015_864_320
    one = shape_for_params(1e9)
    assert (one.name, one.hidden, one.layers, one.tied_embeddings) == ("Llama-3.2-1B", 2048, 16, True)
    odd = shape_for_params(30e9)  # between references: the nearest one's width, layers to match
    assert "like" in odd.name and abs(odd.num_params - 30e9) < odd.layer_params


@pytest.mark.parametrize(("text", "count"), [("7e9", 7_000_000_000), ("13B", 13_000_000_000), ("1.3b", 1_300_000_000),
                                              ("135M", 135_000_000), ("1000", 1000)])
def test_param_counts_parse(text: str, count: int):
    assert parse_param_count(text) == count


@pytest.mark.parametrize("text", ["seven", "7 GB", "-1e9", "0", "1e400", "2e15"])
def test_bad_param_counts_say_the_accepted_forms(text: str):
    with pytest.raises(ConfigError, match="7e9"):
        parse_param_count(text)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_lora_count_equals_peft_trainable_parameters():
    from peft import LoraConfig, get_peft_model

    shape = REFERENCE_SHAPES[0][1]  # SmolLM2-135M: grouped-query attention, tied embeddings
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    with torch.device("meta"):
        model = get_peft_model(LlamaForCausalLM(llama_config(shape)), LoraConfig(r=16, target_modules=targets))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert shape.lora_params(16, targets) == trainable
    assert shape_for_params(7e9).lora_params(16, ["q_proj", "k_proj", "v_proj", "o_proj"]) == 32 * 4 * 16 * 8192


@pytest.mark.parametrize("head_dim", [None, 48], ids=["hidden/heads", "own head_dim"])
def test_shape_from_a_hugging_face_directory(tmp_path: Path, head_dim: int | None):
    config = llama_config(ModelShape(1000, 128, 3, 4, 2, 352, tied_embeddings=True))
    if head_dim is not None:
        config.head_dim = head_dim
    config.save_pretrained(tmp_path)
    read = model_shape(ModelConfig(source=str(tmp_path)))
    assert read.num_params == meta_count(config) and read.tied_embeddings and read.head_dim == head_dim


def test_shape_of_a_gguf_comes_from_its_converted_cache_entry(tmp_path: Path):
    from fedhpc.worker import pretrained

    gguf = tmp_path / "My Model.Q4_1.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    cache = tmp_path / "cache"
    source = ModelConfig(source=str(gguf), cache_dir=cache)
    assert model_shape(source) is None, "not converted yet: unknown offline"
    identity = pretrained._gguf_identity(gguf)  # the entry named as the converter names it
    entry = cache / f"My_Model.Q4_1-{identity['sampled_sha256'][:12]}"
    entry.mkdir(parents=True)
    llama_config(ModelShape(300, 64, 2, 4, 2, 128)).save_pretrained(entry)
    (entry / pretrained.MARKER_NAME).write_text(json.dumps({"source": identity}))
    assert model_shape(source) == ModelShape(300, 64, 2, 4, 2, 128, name="llama")


def test_unknown_and_unreadable_shapes(tmp_path: Path):
    assert model_shape(ModelConfig(source="meta-llama/Llama-2-7b-hf")) is None
    assert model_shape(ModelConfig(source="smollm2-135m-instruct")).num_params == 134_515_008
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    with pytest.raises(ModelError, match="--params"):
        model_shape(ModelConfig(source=str(tmp_path)))


# --- plans -------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
@pytest.mark.parametrize("peft", ["lora", "none"])
def test_parameter_bytes_are_those_of_the_model_the_worker_trains(peft: str):
    """A bfloat16 tiny Llama as the worker builds it: frozen base in bfloat16, peft's adapters in float32."""
    from fedhpc.worker.model import add_trainable, build_base_model

    config = ModelConfig(dtype="bfloat16", peft=peft)
    model = add_trainable(build_base_model(config).model, config)
    plan = plan_memory(
        model_shape(config), ranks=1, sharding="auto", param_dtype="bfloat16", compute_dtype="bfloat16", peft=peft,
        lora_r=config.lora.r, lora_targets=config.lora.target_modules, seq_len=8, micro_batch=1,
        activation_checkpointing=False,
    )  # fmt: skip
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert plan.params == sum(p.numel() * p.element_size() for p in model.parameters())
    assert plan.trainable == sum(p.numel() for p in trainable)
    assert plan.grads == sum(p.numel() * p.element_size() for p in trainable) == plan.optimizer // 2


def test_7b_full_fine_tuning_fsdp_over_8_gpus_of_40_gib():
    shape = shape_for_params(7e9)
    n, h, layers, s, b = LLAMA2_7B, 4096, 32, 512, 6
    plan = plan_memory(shape, **full_7b())
    assert plan.params == n * 4 // 8 and plan.grads == n * 4 // 8 and plan.optimizer == 2 * n * 4 // 8
    assert plan.working == 2 * (2 * shape.layer_params + shape.outer_params) + 4 * shape.outer_params
    assert plan.activations == s * b * h * 2 * layers + 34 * s * b * h + min(s * b, 1024) * 32000 * (2 + 4)
    assert plan.total == plan.params + plan.working + plan.grads + plan.optimizer + plan.activations
    assert plan.fits is (plan.total <= 0.9 * 40 * GIB) is True
    without = plan_memory(shape, **full_7b(activation_checkpointing=False))
    assert without.activations == layers * 34 * s * b * h + min(s * b, 1024) * 32000 * 6
    assert without.fits is (without.total <= 0.9 * 40 * GIB)


def test_7b_ddp_does_not_fit_and_the_advice_names_what_would():
    plan = plan_memory(shape_for_params(7e9), **full_7b(sharding="ddp"))
    n = LLAMA2_7B
    assert (plan.params, plan.grads, plan.optimizer) == (4 * n, 2 * 4 * n, 2 * 4 * n)  # grads + DDP buckets
    assert plan.working == 0, "DDP computes in the stored dtype: no cast copy"
    assert plan.activations == 512 * 6 * 4096 * 4 * 32 + 34 * 512 * 6 * 4096 * 2 + 1024 * 32000 * 8  # float32, one loss chunk
    assert plan.fits is False
    table = "\n".join(describe_plan(plan))
    assert "does not fit in 40 GiB" in table and "model.full.sharding: fsdp" in table


def test_cpu_offload_moves_optimizer_state_off_the_gpu():
    shape = shape_for_params(7e9)
    on_gpu = plan_memory(shape, **full_7b(ranks=2))
    offloaded = plan_memory(shape, **full_7b(ranks=2, cpu_offload=True))
    assert on_gpu.fits is False and offloaded.fits is True
    assert offloaded.optimizer == offloaded.grads == offloaded.params == 0
    assert offloaded.host == on_gpu.params + on_gpu.grads + on_gpu.optimizer
    assert offloaded.activations == on_gpu.activations and offloaded.working == on_gpu.working
    assert "model.full.cpu_offload: true" in " ".join(describe_plan(on_gpu))
    ddp = plan_memory(shape, **full_7b(sharding="ddp", cpu_offload=True))
    assert ddp.host == 0 and "needs FSDP" in describe_plan(ddp)[-1]


def test_one_rank_is_a_plain_process_whatever_the_sharding():
    """The worker shards only over more than one rank, so offload cannot help a single GPU; more ranks can."""
    plan = plan_memory(shape_for_params(7e9), **full_7b(ranks=1, sharding="fsdp", cpu_offload=True))
    assert (plan.inputs.sharding, plan.offloaded, plan.host, plan.params) == ("single", False, 0, 4 * LLAMA2_7B)
    table = describe_plan(plan)
    assert "needs FSDP" in table[-1]
    assert "cpu_offload: true" not in table[-2] and "at least" in table[-2] and "ranks under fsdp" in table[-2]


def test_lora_r16_on_7b_fits_one_40_gib_gpu():
    shape = shape_for_params(7e9)
    adapters = shape.lora_params(16, ["q_proj", "k_proj", "v_proj", "o_proj"])
    plan = plan_memory(
        shape, ranks=1, sharding="auto", param_dtype="bfloat16", compute_dtype="bfloat16", peft="lora", lora_r=16,
        seq_len=512, micro_batch=6, activation_checkpointing=False, gpu_memory=40 * GIB,
    )  # fmt: skip
    assert plan.params == 2 * LLAMA2_7B + 4 * adapters and plan.working == 0
    assert (plan.grads, plan.optimizer, plan.trainable) == (4 * adapters, 8 * adapters, adapters)
    assert plan.fits is True


def test_advice_counts_the_ranks_needed():
    plan = plan_memory(shape_for_params(13e9), **full_7b(ranks=2, activation_checkpointing=True))
    advice = " ".join(describe_plan(plan))
    least = next(r for r in range(3, 64) if plan_memory(shape_for_params(13e9), **full_7b(ranks=r)).fits)
    assert f"at least {least} ranks" in advice


def test_format_bytes():
    assert [format_bytes(x) for x in (0, 1023, 40 * GIB, 3.14 * GIB, 461 * 1024**2)] == [
        "0 B", "1023 B", "40 GiB", "3.14 GiB", "461 MiB"]  # fmt: skip


# --- fedhpc validate ---------------------------------------------------------------------------


def test_validate_prints_the_plan_of_a_7b_what_if():
    args = ["validate", str(QUICKSTART), "--set", "model.peft=none", "--params", "7e9", "--gpus", "8",
            "--gpu-memory", "40GiB"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "facility alpha: local x1" in out and "facility beta: local x2" in out  # the lines before stay
    assert "memory plan: Llama-2-7B (--params), 6.74B parameters" in out
    assert "facility alpha: 8 ranks (--gpus; the launcher starts 1: 1 node x 1), fsdp" in out
    shard = format_bytes(LLAMA2_7B * 4 / 8)
    assert f"parameters    {shard}  float32 shard 1/8" in out
    assert f"optimizer     {format_bytes(LLAMA2_7B * 8 / 8)}" in out
    assert out.count("fits in 40 GiB") == 2


def test_validate_exits_0_when_a_plan_does_not_fit_and_says_why():
    args = ["validate", str(QUICKSTART), "--set", "model.peft=none", "--set", "model.full.sharding=ddp",
            "--params", "7e9", "--gpus", "8", "--gpu-memory", "40GiB"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "does not fit in 40 GiB" in result.output and "try model.full.sharding: fsdp" in result.output


def test_validate_without_a_known_shape_suggests_params(tmp_path):
    result = CliRunner().invoke(app, ["validate", str(QUICKSTART), "--set", f"model.source={tmp_path}/new.gguf"])
    assert result.exit_code == 0, result.output
    assert "not known offline" in result.output and "--params 7e9" in result.output


@pytest.mark.parametrize("option", [["--params", "lots"], ["--gpu-memory", "forty"], ["--gpus", "0"]])
def test_validate_rejects_bad_what_ifs(option: list[str]):
    result = CliRunner().invoke(app, ["validate", str(QUICKSTART), *option])
    assert result.exit_code == 2


def test_the_plans_loss_chunk_is_the_workers() -> None:
    from fedhpc.memory_plan import LOSS_CHUNK_TOKENS
    from fedhpc.worker.loss import CHUNK_TOKENS

    assert LOSS_CHUNK_TOKENS == CHUNK_TOKENS
