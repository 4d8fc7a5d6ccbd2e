"""Error feedback at the facility, and the `compression:` keys (docs/compression.md).

The worker's write path is exercised for real (`write_compressed_update`, the
function `LoadedWhole.write_update` calls): real update directories, real residual
files, no model. What a user checks: the server's running sum of decoded deltas
tracks the true sum within one residual; a run resumed mid-way (a new process
reading the residual file) writes the same bytes as one never interrupted; the
residual stays in the facility's area; a configuration that cannot work is refused
naming the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedhpc.config import load_experiment
from fedhpc.config.compression import CompressionConfig
from fedhpc.errors import ConfigError, ExchangeError
from fedhpc.exchange import ExchangeDir, ExchangeMeta, WorkerTask
from fedhpc.exchange.codecs import codec_for
from fedhpc.worker.error_feedback import ResidualStore, write_compressed_update
from fedhpc.config import ModelConfig
from fedhpc.memory_plan import describe_memory, format_bytes

SHAPES = {"lora_A": (16, 40), "lora_B": (40, 16), "bias": (7,)}


def true_delta(round: int) -> dict[str, torch.Tensor]:
    """A round's delta: a steady direction plus noise, as successive local trainings look."""
    g = torch.Generator().manual_seed(100 + round)
    return {n: torch.full(s, 1e-3) + torch.randn(s, generator=g) * 1e-3 for n, s in SHAPES.items()}


def task(tmp_path: Path, round: int, compression: CompressionConfig, attempt: str = "a0") -> WorkerTask:
    return WorkerTask(
        round=round, facility="alpha", global_dir=tmp_path / "global", update_dir=tmp_path / f"updates/r{round}-{attempt}",
        model=ModelConfig(source="tiny-llama"), update_form="delta", compression=compression,
        residual_dir=tmp_path / "error_feedback" / "alpha",
    )  # fmt: skip


def meta(round: int) -> ExchangeMeta:
    return ExchangeMeta(kind="update", round=round, facility="alpha", based_on_round=round - 1,
                        base_fingerprint="sha256:" + "0" * 64, update_form="delta")


def rounds(tmp_path: Path, compression: CompressionConfig, first: int, last: int) -> dict[str, torch.Tensor]:
    """Write rounds first..last as the worker would; return the sum of what the server decodes."""
    received = {n: torch.zeros(s) for n, s in SHAPES.items()}
    for r in range(first, last + 1):
        write_compressed_update(task(tmp_path, r, compression), true_delta(r), meta(r))
        update = ExchangeDir(tmp_path / f"updates/r{r}-a0")
        update.verify()
        for name in SHAPES:
            received[name] += update.get(name)
    return received


@pytest.mark.parametrize("config", [
    CompressionConfig(codec="topk", fraction=0.05), CompressionConfig(codec="nf4", block_size=64),
    CompressionConfig(codec="int8", block_size=256),
], ids=lambda c: c.codec)  # fmt: skip
def test_error_feedback_keeps_the_sum_of_decoded_deltas_within_one_residual_of_the_true_sum(tmp_path: Path, config):
    rounds_ = 12
    with_ef = rounds(tmp_path / "ef", config, 1, rounds_)
    without = rounds(tmp_path / "plain", config.model_copy(update={"error_feedback": False}), 1, rounds_)
    truth = {n: sum(true_delta(r)[n] for r in range(1, rounds_ + 1)) for n in SHAPES}
    residual = ResidualStore(tmp_path / "ef" / "error_feedback" / "alpha").load(rounds_, SHAPES)
    for name in SHAPES:
        # the identity EF maintains: what arrived + what is still held = what was trained
        assert torch.allclose(with_ef[name] + residual[name], truth[name], atol=1e-6), name
        gap_ef = float((with_ef[name] - truth[name]).norm())
        assert gap_ef <= float(residual[name].norm()) + 1e-5
        assert gap_ef < float((without[name] - truth[name]).norm()), name
    assert not (tmp_path / "plain" / "error_feedback").exists()  # error_feedback: false keeps nothing
    # only the last two rounds' residuals are kept (a relaunch of round 12 reads round 11's)
    assert sorted(p.name for p in (tmp_path / "ef" / "error_feedback" / "alpha").iterdir()) == [
        "r0011.safetensors", "r0012.safetensors"]


def test_a_resumed_run_writes_the_same_bytes_as_an_uninterrupted_one(tmp_path: Path):
    """A round's job is a fresh process: all it carries over is the residual file, so stopping after round 3 and
    continuing (a relaunched round-4 attempt too) changes nothing, bit for bit."""
    config = CompressionConfig(codec="topk", fraction=0.1)
    rounds(tmp_path / "straight", config, 1, 6)
    resumed = tmp_path / "resumed"
    rounds(resumed, config, 1, 3)
    # an attempt of round 4 that died after publishing, before keeping its residual, then a relaunch
    write_compressed_update(task(resumed, 4, config, attempt="dead"), {n: t * 5 for n, t in true_delta(4).items()},
                            meta(4))  # fmt: skip
    (resumed / "error_feedback" / "alpha" / "r0004.safetensors").unlink()
    rounds(resumed, config, 4, 6)
    for r in range(1, 7):
        for file in (tmp_path / "straight" / f"updates/r{r}-a0").iterdir():
            assert file.read_bytes() == (resumed / f"updates/r{r}-a0" / file.name).read_bytes(), (r, file.name)


def test_a_relaunched_round_reads_the_previous_rounds_residual_not_its_failed_attempts(tmp_path: Path):
    config = CompressionConfig(codec="int8", block_size=64)
    rounds(tmp_path, config, 1, 2)
    write_compressed_update(task(tmp_path, 3, config, attempt="a1"), true_delta(3), meta(3))
    first = ExchangeDir(tmp_path / "updates/r3-a1").get("lora_A")
    write_compressed_update(task(tmp_path, 3, config, attempt="a2"), true_delta(3), meta(3))
    assert torch.equal(ExchangeDir(tmp_path / "updates/r3-a2").get("lora_A"), first)


def test_a_residual_from_another_model_is_refused_naming_its_file(tmp_path: Path):
    config = CompressionConfig(codec="int8")
    rounds(tmp_path, config, 1, 1)
    other = {"lora_A": torch.zeros(3)}
    with pytest.raises(ExchangeError, match=r"r0001\.safetensors: the error-feedback residual does not fit"):
        write_compressed_update(task(tmp_path, 2, config), other, meta(2))


def test_the_residual_is_what_the_encoding_dropped(tmp_path: Path):
    config = CompressionConfig(codec="nf4", block_size=32)
    rounds(tmp_path, config, 1, 1)
    codec = codec_for(config)
    residual = ResidualStore(tmp_path / "error_feedback" / "alpha").load(1, SHAPES)
    for name, delta in true_delta(1).items():
        encoded = codec.encode(delta)
        assert torch.equal(residual[name], delta - codec.decode(encoded.parts, encoded.params, SHAPES[name]))


# --- configuration ---------------------------------------------------------------------------


def experiment(project: Path, *overrides: str) -> list[str]:
    path = project / "experiment.yaml"
    path.write_text(
        "name: c\nmodel: {source: tiny-llama}\nalgorithm: {rounds: 1, local_steps: 1}\n"
        "facilities:\n  - {name: alpha, data: data/alpha.jsonl}\n  - {name: beta, data: data/beta.jsonl}\n"
    )
    return [str(path), *overrides]


def test_defaults_and_a_facility_override(project: Path):
    exp = load_experiment(*_args(experiment(project, "exchange.update_form=delta", "exchange.compression.codec=int8",
                                            "facilities.1.compression.codec=topk")))  # fmt: skip
    assert exp.exchange.compression.block_size == 256 and exp.exchange.compression.feedback
    assert exp.facilities[0].compression is None and exp.facilities[1].compression.codec == "topk"
    assert not CompressionConfig().feedback and not CompressionConfig(codec="int8", error_feedback=False).feedback


@pytest.mark.parametrize("overrides, key, message", [
    (["exchange.compression.codec=int8"], "exchange.compression.codec", "set exchange.update_form: delta"),
    (["facilities.1.compression.codec=nf4"], "facilities.1.compression.codec", "set exchange.update_form: delta"),
    (["exchange.update_form=delta", "exchange.compression.codec=zstd"], "exchange.compression.codec", "none"),
    (["exchange.compression.error_feedback=true"], "error_feedback", "nothing is dropped"),
    (["exchange.update_form=delta", "exchange.compression.codec=int8", "model.peft=none",
      "facilities.0.launcher.nprocs=2"], "exchange.compression.codec", "sharded by FSDP"),
    (["exchange.update_form=delta", "exchange.compression.codec=topk", "exchange.compression.fraction=0"],
     "exchange.compression.fraction", "greater than 0"),
], ids=["weights", "facility-weights", "unknown", "feedback-without-codec", "fsdp", "zero-fraction"])  # fmt: skip
def test_what_cannot_work_is_refused_naming_the_key(project: Path, overrides, key: str, message: str):
    with pytest.raises(ConfigError) as caught:
        load_experiment(*_args(experiment(project, *overrides)))
    assert key in str(caught.value) and message in str(caught.value), str(caught.value)


def _args(argv: list[str]) -> tuple[str, list[str]]:
    return argv[0], argv[1:]


def test_validate_states_the_compressed_size_of_an_update(project: Path):
    exp = load_experiment(*_args(experiment(project, "exchange.update_form=delta", "exchange.compression.codec=nf4",
                                            "model.lora.r=8")))  # fmt: skip
    line = describe_memory(exp)[0]
    trainable = int(line.split(" trainable")[0].rsplit(" ", 1)[1].replace(",", ""))
    assert f"about {format_bytes((trainable + 1) // 2 + 4 * -(-trainable // 256))} compressed by nf4" in line
    assert "compressed" not in describe_memory(load_experiment(*_args(experiment(project))))[0]
