"""`fedhpc export`: what it writes loads with PEFT and transformers and computes what fedhpc's own loader does.

The reference is `fedhpc.evaluation.generation.load_model`, which `fedhpc eval`
builds a global's model with (base + adapters applied, merged). Logits on a
fixed prompt are compared with `torch.testing.assert_close`: fp32 exports at
rtol 1e-5, atol 1e-5 (PEFT's unmerged LoRA against merged weights differs
only by float rounding), the full fine-tune exactly (the same weights, the same
code). The runs are `export_runs`' (shared with test_best_checkpoint.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
import torch
from huggingface_hub.utils._http import default_client_factory
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from export_runs import full_run, lora_run
from fedhpc.cli import app
from fedhpc.config import load_experiment
from fedhpc.errors import ConfigError
from fedhpc.evaluation.generation import load_model
from fedhpc.exchange import ExchangeDir
from fedhpc.export import export
from fedhpc.export.hub import push_to_hub
from fedhpc.worker.model import build_base_model

PROMPT = "What is the formula of <SMILES> CCO </SMILES> ?"
CLOSE = {"rtol": 1e-5, "atol": 1e-5}
HUB = "https://huggingface.co"


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return lora_run(tmp_path_factory.getbasetemp() / "export-lora")


def cli(*args: str):  # type: ignore[no-untyped-def]
    """The real `fedhpc` command, in this process (a subprocess would import torch again)."""
    return CliRunner().invoke(app, list(args))


def logits(model: torch.nn.Module, tokenizer) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(**tokenizer(PROMPT, return_tensors="pt")).logits


def reference(experiment_path: Path, global_dir: Path) -> tuple[torch.Tensor, object]:
    config = load_experiment(experiment_path, []).model
    model, tokenizer = load_model(config, global_dir, torch.device("cpu"))
    return logits(model, tokenizer), tokenizer


def test_a_lora_round_exports_as_a_peft_adapter_and_as_a_merged_model(lora, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    expected, tokenizer = reference(lora.path, lora.run_dir / "global" / "r0003")
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    result = cli("export", str(lora.run_dir), "--out", str(adapter))
    assert result.exit_code == 0, result.output
    assert "exported round 3" in result.output
    assert sorted(p.name for p in adapter.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (4, 8, ["q_proj", "v_proj"])
    assert config["base_model_name_or_path"] == "tiny-llama"

    base_dir = tmp_path / "base"  # tiny-llama has no published base: save the one fedhpc builds
    build_base_model(load_experiment(lora.path, []).model).model.save_pretrained(base_dir)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter).eval()
    exported_tokenizer = AutoTokenizer.from_pretrained(adapter)
    assert exported_tokenizer(PROMPT)["input_ids"] == tokenizer(PROMPT)["input_ids"]  # type: ignore[operator]
    torch.testing.assert_close(logits(peft_model, exported_tokenizer), expected, **CLOSE)

    assert "Round 3 was not evaluated by the run." in (adapter / "README.md").read_text()

    done = export(f"{lora.run_dir}:2", merged, merge=True, shard_bytes=40_000)
    assert done.form == "merged" and done.dtype == "float32"
    index = json.loads((merged / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1, "a 40 kB shard limit splits the tiny model"
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    expected, _ = reference(lora.path, lora.run_dir / "global" / "r0002")
    torch.testing.assert_close(logits(model, AutoTokenizer.from_pretrained(merged)), expected, **CLOSE)
    card = (merged / "README.md").read_text()
    assert "round 2" in card and "| facilities | 2: alpha, beta |" in card and "fedavg" in card
    assert "| rounds | round 2 exported; 3 of 4 completed |" in card
    assert "| property_prediction-esol | rmse ↓ |" in card  # round 2 was evaluated: its scores, with n


def test_best_exports_the_ranked_round_in_bf16(lora, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "best"
    done = export(f"{lora.run_dir}:best", out, dtype="bf16")
    assert done.selected.round == 2 and done.selected.how.startswith("the best round by")
    exported = ExchangeDir(lora.run_dir / "global" / "r0002")
    tensors = load_file(out / "adapter_model.safetensors")
    assert tensors.keys() == set(exported.names())
    for name, tensor in tensors.items():
        assert tensor.dtype == torch.bfloat16
        torch.testing.assert_close(tensor, exported.get(name).to(torch.bfloat16), rtol=0, atol=0)


def test_a_full_fine_tune_exports_as_a_sharded_transformers_model(tmp_path_factory: pytest.TempPathFactory) -> None:
    run_dir = full_run(tmp_path_factory.getbasetemp() / "export-full")
    out = tmp_path_factory.mktemp("full") / "model"
    result = cli("export", f"{run_dir}:1", "--out", str(out), "--max-shard-size", "60kB")
    assert result.exit_code == 0, result.output
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and all((out / name).is_file() for name in files)
    assert set(index["weight_map"]) == set(ExchangeDir(run_dir / "global" / "r0001").names())
    expected, _ = reference(run_dir.parent / "experiment.yaml", run_dir / "global" / "r0001")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(model, AutoTokenizer.from_pretrained(out)), expected, rtol=0, atol=0)
    assert "every weight of the model (full fine-tuning)" in (out / "README.md").read_text()
    assert "Round 1 was not evaluated" in (out / "README.md").read_text()


def test_bad_targets_and_outputs_are_refused_and_nothing_is_written(lora, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    cases = [
        (f"{lora.run_dir}:9", "round 9 of", "is not a complete round; the globals on disk are rounds 0, 2, 3"),
        (f"{lora.run_dir}:1", "round 1 of", "was pruned (checkpoint.keep_last)"),
        (str(tmp_path), str(tmp_path), "is not a run directory"),
    ]
    for target, *messages in cases:
        with pytest.raises(ConfigError) as raised:
            export(target, out)
        assert all(m in str(raised.value) for m in messages), raised.value
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    result = cli("export", str(lora.run_dir), "--out", str(taken))
    assert result.exit_code == 2 and "exists and is not empty" in result.output
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"], "no output or partial directory was left"


def test_best_needs_a_key_metric(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    run_dir = full_run(tmp_path_factory.getbasetemp() / "export-full")
    result = cli("export", f"{run_dir}:best", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "RUN:best needs evaluation.key_metric in the run's experiment" in result.output
    assert "on disk: 0, 1" in result.output and not (tmp_path / "out").exists()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The Hub's HTTP API answered on this machine: huggingface_hub 2 speaks httpx2, which `responses` (a `requests`
    mock) cannot see, so its client gets httpx2's own mock transport; every request it makes is kept."""
    seen: list[httpx2.Request] = []
    answers = {
        "/api/repos/create": {"url": f"{HUB}/someone/tiny"},
        "/api/models/someone/tiny/commit/main": {"commitUrl": f"{HUB}/someone/tiny/commit/abc", "commitOid": "a" * 40},
        "/api/validate-yaml": {"errors": [], "warnings": []},  # the model card's front matter, checked before upload
    }

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        if request.url.path == "/api/models/someone/tiny/preupload/main":  # every file small: sent in the commit
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if request.url.path in answers:
            return httpx2.Response(200, json=answers[request.url.path])
        return httpx2.Response(404, json={"error": f"not expected: {request.method} {request.url}"})

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(answer)))
    yield seen
    huggingface_hub.set_client_factory(default_client_factory)


def test_push_to_hub_creates_the_repo_and_commits_every_file(lora, tmp_path: Path, hub) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "adapter"
    export(str(lora.run_dir), out)
    url = push_to_hub(out, "someone/tiny", "fedhpc export of round 3")
    assert url == f"{HUB}/someone/tiny/commit/abc"
    sent = {request.url.path: request for request in hub}
    create, card, commit = (sent[f"/api/{path}"] for path in ("repos/create", "validate-yaml",
                                                                "models/someone/tiny/commit/main"))
    assert hub.index(create) < hub.index(commit), "the repository is created before the commit"
    assert json.loads(create.content) == {"name": "tiny", "organization": "someone", "visibility": "public",
                                          "type": "model"}
    assert create.headers["authorization"] == "Bearer hf_test_token"
    assert "library_name: peft" in json.loads(card.content)["content"]  # the model card's front matter
    lines = [json.loads(line) for line in commit.content.decode().splitlines()]
    assert lines[0]["value"]["summary"] == "fedhpc export of round 3"
    committed = {line["value"]["path"] for line in lines if line["key"] == "file"}
    assert committed == {p.name for p in out.iterdir()}
