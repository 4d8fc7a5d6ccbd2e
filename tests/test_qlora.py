"""QLoRA (`model.quantize: nf4`): a 4-bit base under LoRA, on the CPU with bitsandbytes, end to end.

bitsandbytes (the `qlora` extra) is installed by `make setup`, so nothing here is
skipped for want of it. The only stand-ins are what this machine cannot be: a
Python without bitsandbytes and a CPU without AVX2, given to the code at the
edge where it asks (``importlib.util.find_spec``, ``/proc/cpuinfo``).
"""

from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import QUICKSTART, ROOT, processes_mentioning, run_fedhpc
from fedhpc.config import ModelConfig, load_experiment
from fedhpc.config import model as config_model
from fedhpc.config.model import NF4_BYTES_PER_PARAMETER
from fedhpc.errors import ConfigError, ExchangeError, ModelError
from fedhpc.exchange import ExchangeDir
from fedhpc.memory_plan import plan_memory
from fedhpc.model_shape import model_shape
from fedhpc.run.ledger import Ledger
from fedhpc.worker import model as worker_model
from fedhpc.worker.model import add_trainable, build_base_model, extract_trainable

NF4 = ModelConfig(quantize="nf4")
GLOBUS = ROOT / "examples" / "globus" / "experiment.yaml"


def without_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """This Python as one without bitsandbytes installed, as `find_spec` would report it."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *rest: None if name == "bitsandbytes" else real(name, *rest)
    )


def test_quantize_defaults_to_none_and_names_the_key_for_a_bad_value(tmp_path: Path) -> None:
    assert ModelConfig().quantize == "none"
    with pytest.raises(ConfigError, match=r"model\.quantize") as info:
        load_experiment(QUICKSTART, [f"run_dir={tmp_path}", "model.quantize=int3"])
    assert "'none' or 'nf4'" in str(info.value)


def test_full_finetuning_on_a_quantized_base_is_refused_at_model_quantize(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.quantize: nf4 freezes the base in 4 bits.*model\.peft: lora"):
        load_experiment(QUICKSTART, [f"run_dir={tmp_path}", "model.quantize=nf4", "model.peft=none"])


def test_validate_accepts_nf4_for_local_facilities_here(tmp_path: Path) -> None:
    result = run_fedhpc("validate", str(QUICKSTART), "--set", f"run_dir={tmp_path}", "--set", "model.quantize=nf4")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_local_facility_without_bitsandbytes_is_refused_naming_it_and_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_bitsandbytes(monkeypatch)
    with pytest.raises(ConfigError) as info:
        load_experiment(QUICKSTART, [f"run_dir={tmp_path}", "model.quantize=nf4"])
    message = str(info.value)
    assert "model.quantize" in message and "facility 'alpha' (facilities.0)" in message
    assert "lacks bitsandbytes: pip install 'fedhpc[qlora]'" in message
    load_experiment(QUICKSTART, [f"run_dir={tmp_path}"])  # without quantize, nothing is asked of bitsandbytes


def test_a_remote_facility_is_not_refused_for_what_only_its_own_python_can_tell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_bitsandbytes(monkeypatch)  # the server's Python is not the one the Globus Compute jobs run
    experiment = load_experiment(GLOBUS, [f"run_dir={tmp_path}", "model.quantize=nf4"])
    assert experiment.model.quantize == "nf4"


@pytest.mark.skipif(platform.machine() != "x86_64", reason="AVX2 is what bitsandbytes needs on x86-64 CPUs")
def test_a_local_cpu_facility_on_a_cpu_without_avx2_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = config_model.CPUINFO.read_text()
    old_cpu = tmp_path / "cpuinfo"
    old_cpu.write_text("\n".join(
        " ".join(w for w in line.split() if w != "avx2") if line.startswith("flags") else line
        for line in real.splitlines()
    ))  # fmt: skip
    monkeypatch.setattr(config_model, "CPUINFO", old_cpu)
    cpu = [f"run_dir={tmp_path / 'run'}", "model.quantize=nf4", "facilities.1.launcher.device=cpu"]
    with pytest.raises(ConfigError, match=r"facility 'beta' \(facilities\.1\): it trains on this machine's CPU, "
                       r"which lacks AVX2") as info:
        load_experiment(QUICKSTART, cpu)
    assert "model.quantize" in str(info.value)
    load_experiment(QUICKSTART, [f"run_dir={tmp_path / 'run'}", "model.quantize=nf4"])  # device auto: maybe a GPU


def test_the_base_is_held_in_4_bits_and_the_adapters_travel_as_without() -> None:
    import bitsandbytes as bnb

    full, quantized = build_base_model(ModelConfig()), build_base_model(NF4)
    layers = dict(quantized.model.named_modules())
    assert isinstance(layers["model.layers.0.self_attn.q_proj"], bnb.nn.Linear4bit)
    assert isinstance(layers["model.layers.1.mlp.down_proj"], bnb.nn.Linear4bit)
    assert type(layers["lm_head"]) is torch.nn.Linear and type(layers["model.embed_tokens"]) is torch.nn.Embedding
    assert quantized.fingerprint == "nf4:" + full.fingerprint

    linear = sum(
        m.weight.numel() for n, m in full.model.named_modules() if type(m) is torch.nn.Linear and n != "lm_head"
    )
    saved = full.model.get_memory_footprint() - quantized.model.get_memory_footprint()
    assert saved == pytest.approx(linear * (4 - NF4_BYTES_PER_PARAMETER), rel=0.02)
    # The memory plan counts the same frozen base as the loaded model holds (adapters apart: none yet).
    shape = model_shape(NF4)
    planned = plan_memory(shape, ranks=1, sharding="auto", param_dtype="float32", compute_dtype="float32",
                          peft="lora", seq_len=64, micro_batch=1, activation_checkpointing=False, quantized=True)
    adapters = shape.lora_params(NF4.lora.r, NF4.lora.target_modules) * 4
    assert planned.params - adapters == pytest.approx(quantized.model.get_memory_footprint(), rel=0.02)

    ours = extract_trainable(add_trainable(quantized.model, NF4), torch.float32)
    theirs = extract_trainable(add_trainable(full.model, ModelConfig()), torch.float32)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)  # the same seeded round-0 adapters


def adapter_gradients(eval_pass_first: bool) -> dict[str, torch.Tensor]:
    model = add_trainable(build_base_model(NF4).model, NF4)
    batch = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for tensor in [p for p in model.parameters() if p.requires_grad]:
            tensor.normal_(0, 0.05)  # B is zero at init: give every adapter a path for gradients
        if eval_pass_first:
            model.eval()
            model(input_ids=batch)  # what scoring a held-out batch between tasks would do
    model.train()
    model(input_ids=batch, labels=batch).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def test_an_inference_pass_does_not_cut_the_gradients_of_later_training() -> None:
    """bitsandbytes repacks 4-bit weights for an inference-only kernel on AVX512-BF16 CPUs (this one has it)."""
    before, after = adapter_gradients(False), adapter_gradients(True)
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-4, atol=1e-6, msg=name)
    assert before["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"].abs().sum() > 0


def test_a_worker_without_bitsandbytes_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    without_bitsandbytes(monkeypatch)
    with pytest.raises(ModelError, match=r"model\.quantize 'nf4' needs bitsandbytes.*pip install 'fedhpc\[qlora\]'"):
        worker_model.build_base_model(NF4)


def test_a_job_that_does_not_quantize_never_imports_bitsandbytes(tmp_path: Path) -> None:
    """peft would import it wherever it is installed (about 1.5 s of CPU at every rank's start).

    The nf4 jobs of the quickstart test below still load it: they would fail without it.
    """
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"model": {"source": "tiny-llama", "quantize": "none"}}))
    code = ("import sys; from pathlib import Path; from fedhpc.cli.worker import hide_bitsandbytes_unless_quantized; "
            "hide_bitsandbytes_unless_quantized(Path(sys.argv[1])); import fedhpc.worker.main; "
            "print(sys.modules.get('bitsandbytes') is not None)")
    result = subprocess.run([sys.executable, "-c", code, str(task)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stdout + result.stderr


def test_quickstart_in_4_bits_trains_and_the_server_accepts_only_quantized_updates(tmp_path: Path) -> None:
    """alpha trains alone, beta on two ranks under DDP over the 4-bit base; the server verifies and averages."""
    run_dir = tmp_path / "run"
    result = run_fedhpc(
        "run", str(QUICKSTART), "--set", f"run_dir={run_dir}", "--set", "model.quantize=nf4",
        "--set", "algorithm.rounds=2", "--set", "algorithm.local_steps=3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1, 2]
    for round in (1, 2):
        assert sorted(e.facility for e in ledger.events("accepted", round=round)) == ["alpha", "beta"]

    unquantized = build_base_model(ModelConfig()).fingerprint
    assert ledger.get_meta("base_fingerprint") == "nf4:" + unquantized
    update = ExchangeDir(run_dir / "updates" / "r0002" / "beta")
    assert update.manifest.base_fingerprint == "nf4:" + unquantized
    lora = extract_trainable(add_trainable(build_base_model(ModelConfig()).model, ModelConfig()), torch.float32)
    assert set(update.names()) == set(lora)  # the update format is LoRA's, unchanged
    with pytest.raises(ExchangeError, match="trained on base model nf4:sha256"):
        update.verify(fingerprint=unquantized)  # what a full-precision run's server does with it

    first, last = ExchangeDir(run_dir / "global" / "r0000"), ExchangeDir(run_dir / "global" / "r0002")
    assert max(float((last.get(n) - first.get(n)).abs().max()) for n in first.names()) > 1e-4  # it trained
    job_log = (run_dir / "logs" / "r0001" / "alpha-r0001-a0.err").read_text()
    assert "base model quantized to nf4: 14 linear layers in 4 bits" in job_log
    assert processes_mentioning(str(run_dir)) == [], "a worker outlived the run"


@pytest.mark.slow
def test_smollm2_loads_in_4_bits_and_trains() -> None:
    """The real pretrained path (`from_pretrained` with bitsandbytes) on SmolLM2-135M-Instruct."""
    config = ModelConfig(source="smollm2-135m-instruct", quantize="nf4", dtype="bfloat16")
    quantized = build_base_model(config)
    full = build_base_model(ModelConfig(source="smollm2-135m-instruct", dtype="bfloat16"))
    assert quantized.model.get_memory_footprint() < 0.45 * full.model.get_memory_footprint()
    assert quantized.fingerprint == "nf4:" + full.fingerprint
    model = add_trainable(quantized.model, config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = quantized.tokenizer(["CCO is ethanol, C1=CC=CC=C1 is benzene."] * 2, return_tensors="pt").input_ids
    losses = []
    for _ in range(3):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
