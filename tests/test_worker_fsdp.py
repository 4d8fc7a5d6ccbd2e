"""Full fine-tuning with FSDP2 under real torchrun processes (gloo on CPU), against a 1-rank run.

What a user relies on: sharding is an implementation detail of the facility's
job, so a 2-rank FSDP round must send the same update as one process training
the same examples; the update each rank writes holds only its own rows; and the
server reads and aggregates such a sharded update like any other.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedhpc.aggregate.fedavg import FedAvg
from fedhpc.aggregate.base import Update
from fedhpc.config import FullFinetuneConfig, ModelConfig, TinyLlamaConfig
from fedhpc.exchange import ExchangeDir, TrainSettings
from fedhpc.exchange.delta import DeltaUpdateDir
from fedhpc.worker.model import add_trainable, build_base_model, extract_trainable
from tests.test_worker_run import init_global, torchrun, train_task, write_dataset

# Wider than the default tiny model, with row counts that do not split evenly over 2 ranks
# (vocab 260 + 3 specials, kv 2·6=12 rows), so uneven and empty-free shards are both exercised.
FULL = ModelConfig(
    peft="none",
    tiny=TinyLlamaConfig(hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96),
    full=FullFinetuneConfig(activation_checkpointing=True),
)
STEPS = 3


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fsdp")
    write_dataset(root / "data.jsonl", count=24)
    init_global(root / "global", FULL)
    return root


def train(workspace: Path, name: str, nprocs: int, batch_size: int, **changes: object) -> ExchangeDir:
    settings = {"model": FULL, "train": TrainSettings(local_steps=STEPS, lr=1e-3, batch_size=batch_size, seed=0)}
    task = train_task(workspace, workspace / "global" / "r0000", name, **{**settings, **changes})
    result = torchrun(task, nprocs)
    assert result.returncode == 0, result.stderr[-3000:]
    return ExchangeDir(workspace / name / "update")


@pytest.fixture(scope="module")
def single(workspace: Path) -> ExchangeDir:
    """One process, 8 examples a step: the reference."""
    return train(workspace, "single", 1, batch_size=8)


@pytest.fixture(scope="module")
def sharded(workspace: Path) -> ExchangeDir:
    """Two FSDP ranks, 4 examples each a step: the same 8 examples (strided shards of one shuffle)."""
    return train(workspace, "sharded", 2, batch_size=4)


def test_two_fsdp_ranks_send_the_update_one_process_sends(single: ExchangeDir, sharded: ExchangeDir) -> None:
    sharded.verify()
    assert sharded.manifest.metrics["sharded"] is True and single.manifest.metrics["sharded"] is False
    assert sharded.names() == single.names()
    base = ExchangeDir(single.path.parent.parent / "global" / "r0000")
    for name in single.names():
        expected, actual = single.get(name), sharded.get(name)
        moved = (expected - base.get(name)).abs().max()
        assert moved > 0, f"{name} did not train"
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5, msg=lambda m: f"{name}: {m}")
    losses_single, losses_sharded = single.manifest.metrics["loss"], sharded.manifest.metrics["loss"]
    assert losses_sharded == pytest.approx(losses_single, abs=1e-5)


def test_each_rank_writes_only_its_own_rows(sharded: ExchangeDir) -> None:
    manifest = sharded.manifest
    assert manifest.format_version == 3
    assert sorted(manifest.files) == ["rank-00000-of-00002.safetensors", "rank-00001-of-00002.safetensors"]
    total = sum(entry.shape[0] * _row_bytes(entry.shape) for entry in manifest.tensors.values())
    largest = max(entry.shape[0] * _row_bytes(entry.shape) for entry in manifest.tensors.values())
    save = manifest.metrics["save"]
    for rank_bytes, peak in zip(save["bytes"], save["peak_tensor_bytes"], strict=True):
        # each rank wrote about half of the model (the header aside) and held at most half a tensor at once
        assert rank_bytes < 0.55 * total + 16_384
        assert peak <= -(-largest // 2) + 4 * 1024
    for name, entry in manifest.tensors.items():
        assert entry.parts is not None and len(entry.parts) == 2, name
        assert [part.file for part in entry.parts] == sorted(manifest.files)


def _row_bytes(shape: list[int]) -> int:
    count = 4  # float32
    for dim in shape[1:]:
        count *= dim
    return count


def test_the_server_aggregates_a_sharded_update_like_a_whole_one(
    workspace: Path, single: ExchangeDir, sharded: ExchangeDir
) -> None:
    global_ = ExchangeDir(workspace / "global" / "r0000")
    updates = [
        Update("a", sharded, num_samples=24, local_steps=STEPS, based_on_round=0),
        Update("b", single, num_samples=24, local_steps=STEPS, based_on_round=0),
    ]
    for name, tensor in FedAvg(weighting="samples").aggregate(global_, updates, {}):
        expected = (single.get(name) + sharded.get(name)) / 2
        torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-6)


def test_rows_of_a_sharded_update_read_only_their_part(sharded: ExchangeDir) -> None:
    name = "model.embed_tokens.weight"
    whole = sharded.get(name)
    split = sharded.manifest.tensors[name].parts[0].rows[1]
    assert torch.equal(sharded.get_rows(name, split - 3, split + 5), whole[split - 3 : split + 5])


def test_a_bf16_delta_from_fsdp_ranks_restores_the_weights(workspace: Path, sharded: ExchangeDir) -> None:
    delta = train(workspace, "delta", 2, batch_size=4, update_form="delta", update_dtype="bfloat16")
    assert delta.manifest.update_form == "delta"
    assert {entry.dtype for entry in delta.manifest.tensors.values()} == {"bfloat16"}
    base = ExchangeDir(workspace / "global" / "r0000")
    weights = DeltaUpdateDir(delta.path, base)
    for name in sharded.names():
        change = sharded.get(name) - base.get(name)
        # bf16 keeps ~3 significant digits of the change itself, not of the weight
        torch.testing.assert_close(weights.get(name), sharded.get(name), rtol=0,
                                   atol=float(change.abs().max()) / 64 + 1e-7)


def save_hf_model(directory: Path) -> Path:
    """A Hugging Face model directory (bf16 safetensors, tied embeddings, like SmolLM2's) to load from."""
    from transformers import LlamaForCausalLM

    from fedhpc.worker.model import tiny_llama_config
    from fedhpc.worker.tokenizer import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    config = tiny_llama_config(FULL.tiny, tokenizer)
    config.tie_word_embeddings = True
    torch.manual_seed(3)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_fsdp_ranks_load_their_rows_of_a_pretrained_checkpoint(tmp_path: Path) -> None:
    """Sharded loading reads rows from the checkpoint files; the result trains as the whole model does."""
    model = FULL.model_copy(update={"source": str(save_hf_model(tmp_path / "hf"))})
    write_dataset(tmp_path / "data.jsonl", count=16)
    init_global(tmp_path / "global", model)
    streamed = ExchangeDir(tmp_path / "global" / "r0000")
    assert streamed.manifest.metrics["streamed"] is True  # the server never built the model
    assert "lm_head.weight" not in streamed.names()  # tied to the embedding
    built = extract_trainable(add_trainable(build_base_model(model).model, model), torch.float32)
    assert streamed.names() == list(built)
    assert all(torch.equal(streamed.get(name), tensor) for name, tensor in built.items())
    updates = [train(tmp_path, f"ranks{n}", n, batch_size=8 // n, model=model) for n in (1, 2)]
    assert updates[1].manifest.format_version == 3
    for name in updates[0].names():
        torch.testing.assert_close(updates[1].get(name), updates[0].get(name), rtol=0, atol=1e-5)


def test_cpu_offload_on_a_cpu_job_says_what_to_change() -> None:
    from fedhpc.errors import ModelError
    from fedhpc.worker.distributed import RankEnv
    from fedhpc.worker.fsdp import build_sharded_model

    offloaded = FULL.model_copy(update={"full": FullFinetuneConfig(cpu_offload=True)})
    with pytest.raises(ModelError, match="model.full.cpu_offload.*device: cuda"):
        build_sharded_model(offloaded, RankEnv(0, 2, 0), torch.device("cpu"))


def test_fedprox_under_fsdp_pulls_as_it_does_in_one_process(workspace: Path, sharded: ExchangeDir) -> None:
    """The proximal term's gradient reaches each rank's own rows, undivided by the reduce-scatter."""
    def fedprox(batch_size: int) -> TrainSettings:
        return TrainSettings(local_steps=STEPS, lr=1e-3, batch_size=batch_size, seed=0, proximal_mu=50.0)

    one = train(workspace, "prox1", 1, batch_size=8, train=fedprox(8))
    two = train(workspace, "prox2", 2, batch_size=4, train=fedprox(4))
    base = ExchangeDir(workspace / "global" / "r0000")
    pulled = 0
    for name in one.names():
        torch.testing.assert_close(two.get(name), one.get(name), rtol=0, atol=1e-5, msg=lambda m: f"{name}: {m}")
        pulled += int((one.get(name) - base.get(name)).abs().sum() < (sharded.get(name) - base.get(name)).abs().sum())
    assert pulled > len(one.names()) // 2, "μ=50 should keep most tensors closer to the global"
