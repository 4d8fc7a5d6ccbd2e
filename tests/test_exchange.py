"""The exchange format: what a facility writes and the server reads, byte for byte.

Round trips go through the `safetensors` library as well as our own reader, so
our streaming writer stays a real safetensors producer. The golden files under
tests/golden/ pin the exact bytes of format version 1; `verify` must reject
every kind of damage with the reason code the ledger records, and never crash.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fedhpc.errors import ExchangeError, UpdateRejected
from fedhpc.exchange import MANIFEST_NAME, ExchangeDir, ExchangeMeta, TensorLayout, read_manifest, write_exchange
from fedhpc.exchange import write_state_dict
from fedhpc.exchange.safetensors_stream import digest_of_file
from fedhpc.run.intake import verify_update

GOLDEN = Path(__file__).resolve().parent / "golden" / "exchange_v3"
GOLDEN_V1 = Path(__file__).resolve().parent / "golden" / "exchange_v1"  # sha256, written before version 3
FINGERPRINT = "sha256:" + "ab" * 32


def meta(kind: str = "update", round: int = 1, **extra) -> ExchangeMeta:
    fields = dict(kind=kind, round=round, base_fingerprint=FINGERPRINT)
    if kind == "update":
        fields.update(facility="alpha", based_on_round=round - 1, num_samples=10, local_steps=2)
    fields.update(extra)
    return ExchangeMeta(**fields)


def mixed_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "w32": torch.randn(3, 5, generator=generator),
        "w16": torch.randn(4, 2, generator=generator).to(torch.bfloat16),
        "h16": torch.randn(7, generator=generator).to(torch.float16),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "transposed": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),  # not contiguous
    }


def shard_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(actual) == list(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert actual[name].shape == tensor.shape, name
        assert torch.equal(actual[name], tensor), name


# --- round trip and sharding -----------------------------------------------------------------


def test_round_trip_all_dtypes(tmp_path: Path):
    state = mixed_state()
    manifest = write_state_dict(tmp_path / "u", state, meta())

    exchange = ExchangeDir(tmp_path / "u")
    assert_same({name: exchange.get(name) for name in exchange.names()}, state)
    assert exchange.manifest == manifest
    assert manifest.tensors["w16"].dtype == "bfloat16" and manifest.tensors["scalar"].shape == []
    exchange.verify(expected_shapes={k: v.shape for k, v in state.items()}, fingerprint=FINGERPRINT)

    # The safetensors library reads the same files.
    (shard,) = shard_files(tmp_path / "u")
    assert_same(load_file(shard), state)
    assert manifest.files[shard.name].blake3 == digest_of_file(shard, "blake3")
    assert manifest.files[shard.name].sha256 is None and manifest.format_version == 3
    assert manifest.files[shard.name].bytes == shard.stat().st_size


def test_sharding_at_a_small_size(tmp_path: Path):
    state = {f"layer.{i}": torch.full((100,), float(i)) for i in range(5)}  # 400 bytes each
    state["big"] = torch.arange(600, dtype=torch.float32)  # 2400 bytes: more than a shard
    state["tail"] = torch.ones(10)
    shard_bytes = 1000

    manifest = write_state_dict(tmp_path / "u", state, meta(), shard_bytes=shard_bytes)

    files = shard_files(tmp_path / "u")
    assert [f.name for f in files] == [f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)]
    assert sorted(manifest.files) == [f.name for f in files]
    everything: dict[str, torch.Tensor] = {}
    for file in files:
        tensors = load_file(file)
        payload = sum(t.numel() * t.element_size() for t in tensors.values())
        # The limit is on tensor bytes (the header of a few hundred bytes comes on top),
        # except that one tensor larger than the limit gets a file of its own.
        assert payload <= shard_bytes or len(tensors) == 1, (file.name, payload)
        assert all(manifest.tensors[name].file == file.name for name in tensors)
        everything.update(tensors)
    assert load_file(files[3]).keys() == {"big"}
    assert_same({name: everything[name] for name in state}, state)
    exchange = ExchangeDir(tmp_path / "u")
    assert exchange.names() == list(state)
    exchange.verify()


def test_streaming_generator_is_consumed_in_order(tmp_path: Path):
    layout = [TensorLayout(f"t{i}", torch.float32, (4,)) for i in range(3)]
    produced: list[str] = []

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for item in layout:
            produced.append(item.name)
            yield item.name, torch.full((4,), float(len(produced)))

    write_exchange(tmp_path / "g", layout, tensors(), meta(kind="global"), shard_bytes=16)
    assert produced == ["t0", "t1", "t2"]
    assert torch.equal(ExchangeDir(tmp_path / "g").get("t2"), torch.full((4,), 3.0))


# --- golden files ----------------------------------------------------------------------------


def golden_state() -> dict[str, torch.Tensor]:
    return {
        "base_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.arange(8, dtype=torch.float32).reshape(2, 4) / 8,
        "base_model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.tensor(
            [[0.5, -1.25], [3.0, 0.0], [-0.0, 1e-3], [65504.0, -2.0]], dtype=torch.bfloat16
        ),
        "model.norm.weight": torch.tensor([1.0, 0.5, -0.25], dtype=torch.float16),
        "scale": torch.tensor(0.125),
        "empty": torch.zeros(0, 2),
    }


def golden_meta() -> ExchangeMeta:
    return ExchangeMeta(
        kind="update",
        round=3,
        facility="alpha",
        based_on_round=2,
        num_samples=240,
        local_steps=12,
        base_fingerprint="sha256:" + "0123456789abcdef" * 4,
        metrics={"loss": [2.5, 2.25], "tokens": 4096, "samples_seen": 96, "world_size": 2, "device": "cpu"},
    )


def test_golden_files(tmp_path: Path):
    """The bytes of format version 3 (what the writer produces) are pinned.

    If this fails after an *intentional* change to the exchange format (bump
    FORMAT_VERSION in exchange/manifest.py and say so in docs/contracts.md), regenerate:

        FEDHPC_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/test_exchange.py -k golden

    and commit the new files under tests/golden/. An unintentional failure means
    deployed facilities and servers would no longer understand each other.
    """
    written = tmp_path / "u"
    write_state_dict(written, golden_state(), golden_meta(), shard_bytes=32)  # two files: pins the shard naming too
    names = sorted(p.name for p in written.iterdir())
    if os.environ.get("FEDHPC_REGENERATE_GOLDEN"):
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for old in GOLDEN.iterdir():
            old.unlink()
        for name in names:
            (GOLDEN / name).write_bytes((written / name).read_bytes())

    assert names == sorted(p.name for p in GOLDEN.iterdir())
    assert names == [MANIFEST_NAME, *(f"model-0000{i}-of-00002.safetensors" for i in (1, 2))]
    for name in names:
        assert (written / name).read_bytes() == (GOLDEN / name).read_bytes(), f"{name} differs from tests/golden"


@pytest.mark.parametrize(("golden", "version", "digest"), [(GOLDEN_V1, 1, "sha256"), (GOLDEN, 3, "blake3")])
def test_golden_files_still_read(golden: Path, version: int, digest: str):
    """What versions 1 (sha256) and 3 (BLAKE3) wrote stays readable: each verifies and yields the same tensors.

    Version 1 is what run directories from before version 3 hold; a resumed run reads its globals.
    """
    exchange = ExchangeDir(golden)
    exchange.verify(expected_shapes={k: v.shape for k, v in golden_state().items()}, fingerprint=golden_meta().base_fingerprint)
    assert_same({name: exchange.get(name) for name in exchange.names()}, golden_state())
    manifest = json.loads((golden / MANIFEST_NAME).read_text())
    assert manifest["format"] == "fedhpc-exchange" and manifest["format_version"] == version
    assert manifest["metrics"]["loss"] == [2.5, 2.25]
    assert all(set(entry) == {digest, "bytes"} for entry in manifest["files"].values())
    assert exchange.manifest.to_json() == (golden / MANIFEST_NAME).read_text(), "re-serialising keeps the bytes"


def test_a_damaged_version_1_file_is_still_caught_by_its_sha256(tmp_path: Path):
    shutil.copytree(GOLDEN_V1, tmp_path / "u")
    shard = tmp_path / "u" / "model-00002-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(UpdateRejected, match="does not match its sha256 digest") as info:
        ExchangeDir(tmp_path / "u").verify()
    assert info.value.reason == "checksum"


@pytest.mark.parametrize(("version", "field"), [(1, "blake3"), (3, "sha256")])
def test_a_digest_the_manifest_version_does_not_use_is_refused(tmp_path: Path, version: int, field: str):
    """Version 1 and 2 files carry sha256, version 3 files BLAKE3: a mix is a malformed manifest, not a pass."""
    write_update(tmp_path / "u")
    path = tmp_path / "u" / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["format_version"] = version
    manifest["files"] = {
        name: {field: digest_of_file(tmp_path / "u" / name, field), "bytes": entry["bytes"]}
        for name, entry in manifest["files"].items()
    }
    path.write_text(json.dumps(manifest))
    with pytest.raises(UpdateRejected, match=f"format_version {version} files carry") as info:
        ExchangeDir(tmp_path / "u")
    assert info.value.reason == "bad_manifest"


# --- atomicity -------------------------------------------------------------------------------


def test_failing_tensor_source_leaves_nothing(tmp_path: Path):
    layout = [TensorLayout(f"t{i}", torch.float32, (256,)) for i in range(6)]

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for item in layout[:4]:
            yield item.name, torch.ones(256)
        raise RuntimeError("facility ran out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        write_exchange(tmp_path / "out" / "u", layout, tensors(), meta(), shard_bytes=2048)  # 2 shards done by then

    assert list((tmp_path / "out").iterdir()) == []  # no destination, no hidden .partial directory


@pytest.mark.parametrize(
    ("produce", "message"),
    [
        (lambda: [("a", torch.ones(2))], "ended before 'b'"),
        (lambda: [("a", torch.ones(2)), ("b", torch.ones(2)), ("c", torch.ones(2))], "not declared"),
        (lambda: [("b", torch.ones(2)), ("a", torch.ones(2))], "expected tensor 'a'"),
        (lambda: [("a", torch.ones(2, dtype=torch.float64)), ("b", torch.ones(2))], "expected tensor 'a'"),
        (lambda: [("a", torch.ones(3)), ("b", torch.ones(2))], "expected tensor 'a'"),
    ],
    ids=["too_few", "too_many", "wrong_order", "wrong_dtype", "wrong_shape"],
)
def test_tensors_that_do_not_match_the_layout_leave_nothing(tmp_path: Path, produce, message: str):
    layout = [TensorLayout("a", torch.float32, (2,)), TensorLayout("b", torch.float32, (2,))]
    with pytest.raises(ExchangeError, match=message):
        write_exchange(tmp_path / "out" / "u", layout, produce(), meta())
    assert list((tmp_path / "out").iterdir()) == []


def test_existing_destination_is_refused(tmp_path: Path):
    write_state_dict(tmp_path / "u", {"a": torch.ones(2)}, meta())
    before = (tmp_path / "u" / MANIFEST_NAME).read_bytes()
    with pytest.raises(ExchangeError, match="already exists"):
        write_state_dict(tmp_path / "u", {"a": torch.zeros(2)}, meta())
    assert (tmp_path / "u" / MANIFEST_NAME).read_bytes() == before
    assert torch.equal(ExchangeDir(tmp_path / "u").get("a"), torch.ones(2))


# --- verification ----------------------------------------------------------------------------


GLOBAL_STATE = {"a.weight": torch.zeros(3, 4), "b.weight": torch.zeros(4), "c.bias": torch.zeros(2)}
SHAPES = {name: tuple(t.shape) for name, t in GLOBAL_STATE.items()}


def good_update() -> dict[str, torch.Tensor]:
    return {name: torch.full_like(t, 0.5) for name, t in GLOBAL_STATE.items()}


def write_update(path: Path, state: dict[str, torch.Tensor] | None = None, **meta_fields) -> ExchangeDir:
    write_state_dict(path, good_update() if state is None else state, meta(**meta_fields), shard_bytes=48)
    return ExchangeDir(path)


def rejection(action) -> str:
    with pytest.raises(UpdateRejected) as info:
        action()
    return info.value.reason


def test_a_good_update_passes(tmp_path: Path):
    write_update(tmp_path / "u").verify(expected_shapes=SHAPES, fingerprint=FINGERPRINT)
    assert len(shard_files(tmp_path / "u")) == 2  # the damage tests below touch a multi-file update


def test_corrupted_byte(tmp_path: Path):
    update = write_update(tmp_path / "u")
    shard = shard_files(tmp_path / "u")[-1]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01  # one bit of one tensor value; size and header intact
    shard.write_bytes(bytes(data))
    assert rejection(lambda: update.verify(expected_shapes=SHAPES)) == "checksum"


def test_missing_shard_file(tmp_path: Path):
    update = write_update(tmp_path / "u")
    shard_files(tmp_path / "u")[0].unlink()
    assert rejection(lambda: update.verify(expected_shapes=SHAPES)) == "checksum"


def test_truncated_shard_file(tmp_path: Path):
    update = write_update(tmp_path / "u")
    shard = shard_files(tmp_path / "u")[0]
    shard.write_bytes(shard.read_bytes()[:-4])
    assert rejection(lambda: update.verify(expected_shapes=SHAPES)) == "checksum"


def test_missing_tensor(tmp_path: Path):
    state = good_update()
    del state["b.weight"]
    assert rejection(lambda: write_update(tmp_path / "u", state).verify(expected_shapes=SHAPES)) == "missing_tensor"


def test_unexpected_tensor(tmp_path: Path):
    state = {**good_update(), "d.weight": torch.ones(2)}
    assert rejection(lambda: write_update(tmp_path / "u", state).verify(expected_shapes=SHAPES)) == "unexpected_tensor"


def test_wrong_shape(tmp_path: Path):
    state = {**good_update(), "a.weight": torch.zeros(4, 3)}
    assert rejection(lambda: write_update(tmp_path / "u", state).verify(expected_shapes=SHAPES)) == "shape"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite(tmp_path: Path, bad: float, dtype: torch.dtype):
    state = {name: t.to(dtype) for name, t in good_update().items()}
    state["a.weight"][2, 1] = bad
    update = write_update(tmp_path / "u", state)
    assert rejection(lambda: update.verify(expected_shapes=SHAPES)) == "non_finite"
    update.verify(expected_shapes=SHAPES, check_finite=False)  # everything else about it is fine


def test_wrong_fingerprint(tmp_path: Path):
    update = write_update(tmp_path / "u", base_fingerprint="sha256:" + "cd" * 32)
    assert rejection(lambda: update.verify(expected_shapes=SHAPES, fingerprint=FINGERPRINT)) == "fingerprint"


def test_missing_manifest(tmp_path: Path):
    write_update(tmp_path / "u")
    (tmp_path / "u" / MANIFEST_NAME).unlink()
    assert rejection(lambda: ExchangeDir(tmp_path / "u")) == "missing_manifest"
    assert rejection(lambda: ExchangeDir(tmp_path / "never-written")) == "missing_manifest"


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe\x00garbage", b"{not json", b"[]", b'{"format": "fedhpc-exchange"}', b""],
    ids=["binary", "broken_json", "list", "missing_fields", "empty"],
)
def test_garbage_manifest(tmp_path: Path, content: bytes):
    write_update(tmp_path / "u")
    (tmp_path / "u" / MANIFEST_NAME).write_bytes(content)
    assert rejection(lambda: ExchangeDir(tmp_path / "u")) == "bad_manifest"


def test_manifest_with_unknown_field_or_version(tmp_path: Path):
    write_update(tmp_path / "u")
    manifest = json.loads((tmp_path / "u" / MANIFEST_NAME).read_text())
    for key, value in (("format_version", 4), ("surprise", 1)):
        (tmp_path / "u" / MANIFEST_NAME).write_text(json.dumps({**manifest, key: value}))
        assert rejection(lambda: read_manifest(tmp_path / "u")) == "bad_manifest"


def test_manifest_that_hides_a_tensor(tmp_path: Path):
    """Files intact (hashes match) but the manifest omits a tensor they hold."""
    write_update(tmp_path / "u")
    path = tmp_path / "u" / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    del manifest["tensors"]["c.bias"]
    path.write_text(json.dumps(manifest))
    assert rejection(lambda: ExchangeDir(tmp_path / "u").verify()) == "unexpected_tensor"


def test_manifest_that_lies_about_a_dtype(tmp_path: Path):
    write_update(tmp_path / "u")
    path = tmp_path / "u" / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["tensors"]["a.weight"]["dtype"] = "bfloat16"
    path.write_text(json.dumps(manifest))
    assert rejection(lambda: ExchangeDir(tmp_path / "u").verify()) == "dtype"


def _forge_shard(directory: Path, header: object, data: bytes = b"") -> None:
    """Replace the update's tensors with one hand-made file whose hash the manifest vouches for.

    This is what a buggy or hostile facility can send: the checksums match
    because the same party wrote the file and the manifest.
    """
    for shard in shard_files(directory):
        shard.unlink()
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    shard = directory / "model-00001-of-00001.safetensors"
    shard.write_bytes(struct.pack("<Q", len(body)) + body + data)
    path = directory / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["files"] = {shard.name: {"blake3": digest_of_file(shard), "bytes": shard.stat().st_size}}
    manifest["tensors"] = {"a.weight": {"shape": [3, 4], "dtype": "float32", "file": shard.name}}
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("header", "data"),
    [
        (["not", "a", "mapping"], b""),
        ({"a.weight": {"shape": [3, 4], "data_offsets": [0, 48]}}, bytes(48)),  # no dtype
        ({"a.weight": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 8]}}, bytes(8)),  # too few bytes
        ({"a.weight": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}, bytes(20)),  # file too short
        ({"a.weight": {"dtype": "F32", "shape": "3x4", "data_offsets": [0, 48]}}, bytes(48)),
        ({"a.weight": {"dtype": "F32", "shape": [3, 4], "data_offsets": [48, 0]}}, bytes(48)),
        ({"a.weight": "F32"}, bytes(48)),
    ],
    ids=["header_not_mapping", "no_dtype", "offsets_short", "data_short", "shape_not_list", "offsets_reversed", "entry_not_mapping"],
)
def test_forged_shard_is_rejected_not_a_crash(tmp_path: Path, header: object, data: bytes):
    write_update(tmp_path / "u", {"a.weight": torch.zeros(3, 4)})
    _forge_shard(tmp_path / "u", header, data)
    update = ExchangeDir(tmp_path / "u")
    with pytest.raises(UpdateRejected):
        update.verify(expected_shapes={"a.weight": (3, 4)})


def test_forged_shard_control(tmp_path: Path):
    """The forging helper itself produces a valid file when given a valid header (so the cases above test the reader)."""
    write_update(tmp_path / "u", {"a.weight": torch.zeros(3, 4)})
    values = torch.arange(12, dtype=torch.float32)
    _forge_shard(
        tmp_path / "u",
        {"a.weight": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}},
        values.numpy().tobytes(),
    )
    update = ExchangeDir(tmp_path / "u")
    update.verify(expected_shapes={"a.weight": (3, 4)})
    assert torch.equal(update.get("a.weight"), values.reshape(3, 4))


def test_file_written_by_safetensors_library_reads(tmp_path: Path):
    """A facility may save with `safetensors.torch.save_file` and hand-write the manifest."""
    write_update(tmp_path / "u", {"a.weight": torch.zeros(3, 4)})
    values = torch.linspace(-1, 1, 12).reshape(3, 4)
    for shard in shard_files(tmp_path / "u"):
        shard.unlink()
    shard = tmp_path / "u" / "model-00001-of-00001.safetensors"
    save_file({"a.weight": values}, shard)
    path = tmp_path / "u" / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["files"] = {shard.name: {"blake3": digest_of_file(shard), "bytes": shard.stat().st_size}}
    manifest["tensors"] = {"a.weight": {"shape": [3, 4], "dtype": "float32", "file": shard.name}}
    path.write_text(json.dumps(manifest))
    update = ExchangeDir(tmp_path / "u")
    update.verify(expected_shapes={"a.weight": (3, 4)})
    assert torch.equal(update.get("a.weight"), values)
    with safe_open(str(shard), framework="pt") as handle:
        assert list(handle.keys()) == ["a.weight"]


# --- verify_update: the server's gate --------------------------------------------------------


@pytest.fixture
def global_dir(tmp_path: Path) -> ExchangeDir:
    write_state_dict(tmp_path / "global", GLOBAL_STATE, meta(kind="global", round=0))
    return ExchangeDir(tmp_path / "global")


def test_verify_update_accepts(tmp_path: Path, global_dir: ExchangeDir):
    update = write_update(tmp_path / "u", round=1)
    verify_update(update, global_dir, expected_round=1, fingerprint=FINGERPRINT, max_norm=100.0)


def test_verify_update_wrong_round(tmp_path: Path, global_dir: ExchangeDir):
    update = write_update(tmp_path / "u", round=2)
    assert rejection(lambda: verify_update(update, global_dir, expected_round=3, fingerprint=FINGERPRINT)) == "round"


def test_verify_update_refuses_a_global(tmp_path: Path, global_dir: ExchangeDir):
    update = write_update(tmp_path / "u", kind="global", round=1)
    assert rejection(lambda: verify_update(update, global_dir, expected_round=1, fingerprint=FINGERPRINT)) == "bad_manifest"


def test_verify_update_checks_format_against_the_global(tmp_path: Path, global_dir: ExchangeDir):
    state = {**good_update(), "b.weight": torch.zeros(5)}
    update = write_update(tmp_path / "u", state, round=1)
    assert rejection(lambda: verify_update(update, global_dir, expected_round=1, fingerprint=FINGERPRINT)) == "shape"


def test_verify_update_max_norm(tmp_path: Path, global_dir: ExchangeDir):
    # Distance from the all-zero global: sqrt(3² + 4²) = 5, spread over two tensors in two files.
    state = {name: torch.zeros_like(t) for name, t in GLOBAL_STATE.items()}
    state["a.weight"][1, 2] = 3.0
    state["c.bias"][0] = -4.0
    update = write_update(tmp_path / "u", state, round=1)

    verify_update(update, global_dir, expected_round=1, fingerprint=FINGERPRINT, max_norm=5.001)
    with pytest.raises(UpdateRejected) as info:
        verify_update(update, global_dir, expected_round=1, fingerprint=FINGERPRINT, max_norm=4.99)
    assert info.value.reason == "norm"
    assert "5" in str(info.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_all_finite_finds_one_bad_value_anywhere(dtype: torch.dtype, bad: float) -> None:
    from fedhpc.exchange.reader import all_finite

    values = torch.randn(3, 1001).to(dtype)
    assert all_finite(values) and all_finite(values[:0]) and all_finite(torch.tensor(1.0, dtype=dtype))
    for index in (0, 1500, 3002):
        damaged = values.clone()
        damaged.view(-1)[index] = bad
        assert not all_finite(damaged), (index, bad)


@pytest.mark.parametrize("where", [0, 5, 11])
def test_verify_finds_a_nan_in_any_piece_of_its_single_pass(tmp_path: Path, monkeypatch, where: int):
    """verify reads each file once in pieces (hash + finiteness per piece); pieces of 16 bytes here put the
    NaN in the first, a middle or the last piece of the tensor, and a good tensor after it still verifies."""
    monkeypatch.setattr("fedhpc.exchange.safetensors_stream._HASH_CHUNK", 16)
    state = {"a.weight": torch.linspace(-1, 1, 12).reshape(3, 4), "b.weight": torch.ones(3, 4, dtype=torch.bfloat16)}
    clean = write_update(tmp_path / "clean", state)
    clean.verify()
    state["a.weight"].view(-1)[where] = float("nan")
    update = write_update(tmp_path / "u", state)
    with pytest.raises(UpdateRejected, match="'a.weight' holds NaN") as info:
        update.verify()
    assert info.value.reason == "non_finite"
