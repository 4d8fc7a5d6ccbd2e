"""`model.source` as a Hugging Face Hub id, resolved offline in a real cache layout built here.

The cache (``HF_HUB_CACHE``) is laid out as `huggingface_hub` writes it: content in
``blobs/``, ``snapshots/<commit>/`` of relative symlinks, ``refs/main`` naming the
commit; `huggingface_hub.scan_cache_dir` reading it back proves the layout. The
model in it is the tests' tiny Llama with a chat template. HF_ENDPOINT points at a
closed local port, so any attempt at the network would fail the test.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir
from typer.testing import CliRunner

from fedhpc.cli import app
from fedhpc.config import DataConfig, ModelConfig
from fedhpc.config.loading import load_experiment
from fedhpc.errors import ConfigError, ModelError
from fedhpc.exchange import ExchangeDir, TrainSettings, WorkerTask
from fedhpc.worker.main import run_task
from fedhpc.worker.model import build_base_model
from fedhpc.worker.pretrained import fingerprint_model_dir, resolve_pretrained

REPO = "fedhpc-tests/tiny-chat-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cache_model(cache: Path, repo_id: str, files: Path, commit: str = COMMIT, ref: str = "main") -> Path:
    """Put the model files of `files` into `cache` as `huggingface_hub` lays out a downloaded repo."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for file in sorted(files.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs" / ref).write_text(commit)
    return snapshot


def save_tiny_chat_model(directory: Path) -> Path:
    """The tiny Llama the tests train, saved as transformers saves any model, its tokenizer given a chat template."""
    built = build_base_model(ModelConfig())
    built.tokenizer.chat_template = CHAT_TEMPLATE
    built.model.save_pretrained(directory)
    built.tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    cache_model(root / "cache", REPO, save_tiny_chat_model(root / "saved"))
    return root / "cache"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, hub_cache: Path) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing answers
    return hub_cache


def test_the_cache_built_here_is_one_huggingface_hub_recognises(hub_cache: Path) -> None:
    info = scan_cache_dir(hub_cache)
    assert [(repo.repo_id, repo.repo_type) for repo in info.repos] == [(REPO, "model")]
    (revision,) = next(iter(info.repos)).revisions
    assert revision.commit_hash == COMMIT and revision.refs == frozenset({"main"})


def test_a_hub_id_resolves_to_its_cached_snapshot_and_loads(offline: Path) -> None:
    snapshot = offline / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert resolve_pretrained(REPO) == snapshot
    assert resolve_pretrained(REPO, revision=COMMIT) == snapshot
    loaded = build_base_model(ModelConfig(source=REPO))
    assert loaded.fingerprint == fingerprint_model_dir(snapshot)
    assert loaded.tokenizer.chat_template == CHAT_TEMPLATE
    tiny = build_base_model(ModelConfig())
    assert all(p.equal(q) for p, q in zip(loaded.model.parameters(), tiny.model.parameters(), strict=True))


def test_hf_home_chooses_the_cache_when_hf_hub_cache_is_unset(
    monkeypatch: pytest.MonkeyPatch, hub_cache: Path, tmp_path: Path
) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "hub").symlink_to(hub_cache)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert resolve_pretrained(REPO).parent.name == "snapshots"


def test_an_absent_id_or_revision_names_the_id_the_cache_and_the_fix(offline: Path) -> None:
    with pytest.raises(ModelError) as absent:
        resolve_pretrained("fedhpc-tests/not-downloaded")
    message = str(absent.value)
    assert "'fedhpc-tests/not-downloaded'" in message and str(offline) in message
    assert "hf download fedhpc-tests/not-downloaded" in message
    with pytest.raises(ModelError, match=f"at revision 'v2'.*{offline}"):
        resolve_pretrained(REPO, revision="v2")


def test_config_takes_a_hub_id_and_refuses_what_is_neither_path_nor_id(tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')

    def experiment(model: str) -> Path:
        path = tmp_path / "experiment.yaml"
        path.write_text(f"name: t\nmodel: {model}\nfacilities:\n  - name: alpha\n    data: data.jsonl\n")
        return path

    loaded = load_experiment(experiment(f"{{source: {REPO}, revision: main}}"))
    assert (loaded.model.source, loaded.model.revision) == (REPO, "main")
    with pytest.raises(ConfigError, match=r"model\.source.*'no such model' is no file or directory"):
        load_experiment(experiment("{source: no such model}"))
    with pytest.raises(ConfigError, match=r"model\.revision: applies to a Hub id"):
        load_experiment(experiment("{source: tiny-llama, revision: main}"))


def test_validate_checks_the_servers_cache(offline: Path, tmp_path: Path) -> None:
    """`fedhpc validate` says ok for a cached id and exits 2 naming the cache for an absent one."""
    (tmp_path / "data.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    path = tmp_path / "experiment.yaml"
    for source, code in ((REPO, 0), ("fedhpc-tests/absent", 2)):
        path.write_text(f"name: t\nmodel: {{source: {source}}}\nfacilities:\n  - name: alpha\n    data: data.jsonl\n")
        result = CliRunner().invoke(app, ["validate", str(path)])
        assert result.exit_code == code, result.output
        output = " ".join(result.output.split())
        if code == 0:
            assert "model ok: Hub id in this machine's Hugging Face cache" in output
            assert "memory plan: llama, " in output  # the shape read from the snapshot's config.json
        else:
            assert "'fedhpc-tests/absent' is not in the Hugging Face cache" in output and str(offline) in output


def test_a_worker_trains_the_hub_model_on_chats_saved_with_datasets(offline: Path, tmp_path: Path) -> None:
    """Round 0 and one training job of the real worker: model by Hub id, data a DatasetDict of chat records."""
    datasets = pytest.importorskip("datasets")
    chats = [[{"role": "user", "content": f"Colour {i % 3}?"}, {"role": "assistant", "content": colour * 2}]
             for i, colour in enumerate(["red ", "green ", "blue "] * 8)]  # fmt: skip
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"messages": chats}),
        "test": datasets.Dataset.from_dict({"messages": chats[:2]}),
    }).save_to_disk(tmp_path / "chats")
    model = ModelConfig(source=REPO, revision="main")
    WorkerTask(mode="init", round=0, facility="server", update_dir=tmp_path / "global", model=model,
               device="cpu").write(tmp_path / "init.json")  # fmt: skip
    run_task(tmp_path / "init.json")
    task = WorkerTask(
        mode="train", round=1, facility="alpha", global_dir=tmp_path / "global", update_dir=tmp_path / "update",
        data=tmp_path / "chats", model=model, data_config=DataConfig(seq_len=64), device="cpu",
        train=TrainSettings(local_steps=12, lr=2e-2, batch_size=4, seed=0),
    )  # fmt: skip
    task.write(tmp_path / "train.json")
    run_task(tmp_path / "train.json")
    global_ = ExchangeDir(tmp_path / "global")
    snapshot = resolve_pretrained(REPO)
    assert global_.manifest.base_fingerprint == fingerprint_model_dir(snapshot)
    update = ExchangeDir(tmp_path / "update")
    update.verify(expected_shapes={n: e.shape for n, e in global_.manifest.tensors.items()},
                  fingerprint=global_.manifest.base_fingerprint)  # fmt: skip
    assert update.manifest.num_samples == len(chats)
    losses = update.manifest.metrics["loss"]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
