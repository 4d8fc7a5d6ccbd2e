"""Compressed updates (docs/compression.md): each codec's error bound, the format version 4 files, the verifier.

A compressed update is untrusted input like any other: everything a facility could
forge while keeping its files' digests right (a NaN scale, a repeated top-k index,
params that do not fit the stored parts, an unknown codec) is rejected with the
reason ``codec`` and a message naming the tensor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from fedhpc.aggregate.base import Update
from fedhpc.aggregate.fedavg import FedAvg
from fedhpc.config.compression import CompressionConfig
from fedhpc.errors import UpdateRejected
from fedhpc.exchange import MANIFEST_NAME, ExchangeDir, ExchangeMeta, write_state_dict
from fedhpc.exchange.codecs import DECODERS, Encoded, codec_for
from fedhpc.exchange.codecs.int8 import Int8Codec
from fedhpc.exchange.codecs.nf4 import MAX_HALF_GAP, NF4_LEVELS, Nf4Codec
from fedhpc.exchange.codecs.topk import TopKCodec
from fedhpc.exchange.codecs.write import write_compressed
from fedhpc.exchange.delta import DeltaUpdateDir

GOLDEN = Path(__file__).resolve().parent / "golden"
FINGERPRINT = "sha256:" + "cd" * 32


def update_meta(round: int = 1) -> ExchangeMeta:
    return ExchangeMeta(kind="update", round=round, facility="alpha", based_on_round=round - 1, num_samples=10,
                        local_steps=2, base_fingerprint=FINGERPRINT, update_form="delta")


def deltas(seed: int = 0) -> dict[str, torch.Tensor]:
    """Shapes that exercise partial blocks, an odd count (nf4's half byte), a 0-d and an empty tensor."""
    g = torch.Generator().manual_seed(seed)
    return {
        "layers.0.lora_A.weight": torch.randn(8, 37, generator=g) * 1e-3,
        "layers.0.lora_B.weight": torch.randn(37, 8, generator=g) * 1e-2,
        "norm.weight": torch.randn(129, generator=g),
        "scalar": torch.tensor(0.25),
        "empty": torch.zeros(0, 3),
    }


def write(dest: Path, codec, state: dict[str, torch.Tensor] | None = None) -> ExchangeDir:
    state = deltas() if state is None else state
    write_compressed(dest, {n: tuple(t.shape) for n, t in state.items()}, state.items(), update_meta(), codec)
    return ExchangeDir(dest)


# --- error bounds ----------------------------------------------------------------------------


def per_block(values: torch.Tensor, block_size: int) -> torch.Tensor:
    flat = values.reshape(-1)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % block_size)])
    return flat.view(-1, block_size)


@pytest.mark.parametrize("block_size", [4, 64, 256])
def test_int8_error_is_at_most_half_a_step_per_block(block_size: int):
    codec = Int8Codec(block_size)
    for name, delta in deltas().items():
        encoded = codec.encode(delta)
        decoded = codec.decode(encoded.parts, encoded.params, tuple(delta.shape))
        assert decoded.shape == delta.shape and decoded.dtype == torch.float32, name
        if not delta.numel():
            continue
        err = per_block((decoded - delta).abs(), block_size)
        step = encoded.parts["scale"]
        assert torch.allclose(step, per_block(delta.abs(), block_size).amax(dim=1) / 127)
        assert bool((err <= step[:, None] / 2 * (1 + 1e-5) + 1e-12).all()), name


@pytest.mark.parametrize("block_size", [3, 64])
def test_nf4_decodes_to_the_nearest_level_within_the_widest_half_gap(block_size: int):
    codec = Nf4Codec(block_size)
    delta = deltas()["norm.weight"]
    encoded = codec.encode(delta)
    assert encoded.parts["codes"].dtype == torch.uint8 and encoded.parts["codes"].numel() == 65  # 129 codes, 2 a byte
    decoded = codec.decode(encoded.parts, encoded.params, (129,))
    absmax = per_block(delta.abs(), block_size).amax(dim=1)
    err = per_block((decoded - delta).abs(), block_size)
    assert bool((err <= MAX_HALF_GAP * absmax[:, None] * (1 + 1e-5)).all())
    # every value is a level times its block's absmax, and the block's largest entry is exact
    levels = per_block(decoded, block_size) / absmax[:, None]
    assert bool(torch.isclose(levels[..., None], NF4_LEVELS).any(-1).all())
    assert torch.equal(per_block(decoded.abs(), block_size).amax(dim=1), absmax)


def test_topk_keeps_exactly_the_largest_entries_and_zeroes_the_rest():
    codec = TopKCodec(0.1)
    delta = deltas()["layers.0.lora_B.weight"]
    encoded = codec.encode(delta)
    k = encoded.params["k"]
    assert k == 30 and encoded.parts["indices"].dtype == torch.int32
    decoded = codec.decode(encoded.parts, encoded.params, tuple(delta.shape))
    kept = decoded != 0
    assert int(kept.sum()) == k
    assert torch.equal(decoded[kept], delta[kept])  # exact on the kept entries
    assert float(delta[~kept].abs().max()) <= float(delta[kept].abs().min())


# --- the files -------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    CompressionConfig(codec="int8", block_size=64), CompressionConfig(codec="nf4", block_size=64),
    CompressionConfig(codec="topk", fraction=0.05),
], ids=lambda c: c.codec)  # fmt: skip
def test_a_compressed_update_verifies_and_reads_back_as_its_decoded_tensors(tmp_path: Path, config):
    codec = codec_for(config)
    state = {**deltas(), "big": torch.randn(64, 64)}
    update = write(tmp_path / "u", codec, state)
    update.verify(expected_shapes={n: t.shape for n, t in state.items()}, fingerprint=FINGERPRINT)
    manifest = json.loads((tmp_path / "u" / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 4 and manifest["update_form"] == "delta"
    assert manifest["tensors"]["norm.weight"]["codec"]["name"] == config.codec
    for name, delta in state.items():
        encoded = codec.encode(delta)
        assert torch.equal(update.get(name), codec.decode(encoded.parts, encoded.params, tuple(delta.shape)))
    stored = sum(f.stat().st_size for f in (tmp_path / "u").glob("*.safetensors"))
    raw = sum(t.numel() * 4 for t in state.values())
    assert stored < raw / {"int8": 3, "nf4": 5, "topk": 5}[config.codec]  # headers included


@pytest.mark.parametrize("codec_name", sorted(DECODERS))
def test_golden_files(tmp_path: Path, codec_name: str):
    """The bytes of each codec's format-4 update are pinned (regenerate with FEDHPC_REGENERATE_GOLDEN=1,
    only for an intentional format change, and bump COMPRESSED_FORMAT_VERSION)."""
    golden = GOLDEN / f"exchange_v4_{codec_name}"
    config = CompressionConfig(codec=codec_name, block_size=16, fraction=0.25)
    written = tmp_path / "u"
    write(written, codec_for(config))
    names = sorted(p.name for p in written.iterdir())
    if os.environ.get("FEDHPC_REGENERATE_GOLDEN"):
        golden.mkdir(parents=True, exist_ok=True)
        for old in golden.iterdir():
            old.unlink()
        for name in names:
            (golden / name).write_bytes((written / name).read_bytes())
    assert names == sorted(p.name for p in golden.iterdir())
    for name in names:
        assert (written / name).read_bytes() == (golden / name).read_bytes(), f"{name} differs from {golden}"
    committed = ExchangeDir(golden)
    committed.verify(expected_shapes={n: t.shape for n, t in deltas().items()})
    assert torch.equal(committed.get("norm.weight"), ExchangeDir(written).get("norm.weight"))


def test_compressed_fedavg_equals_decoding_then_averaging(tmp_path: Path):
    """The aggregator streams over compressed deltas unchanged: the same global, bit for bit, as FedAvg over the
    decoded deltas written uncompressed."""
    g = torch.Generator().manual_seed(7)
    global_state = {n: torch.randn(t.shape, generator=g) for n, t in deltas().items()}
    write_state_dict(tmp_path / "g", global_state, ExchangeMeta(kind="global", round=0, base_fingerprint=FINGERPRINT))
    codec = Nf4Codec(16)
    compressed, decoded = [], []
    for k, samples in enumerate((10, 30)):
        state = deltas(seed=k + 1)
        write(tmp_path / f"c{k}", codec, state)
        plain = {n: codec.decode(*_encoded(codec, t), tuple(t.shape)) for n, t in state.items()}
        write_state_dict(tmp_path / f"d{k}", plain, update_meta())
        for into, path in ((compressed, f"c{k}"), (decoded, f"d{k}")):
            source = DeltaUpdateDir(tmp_path / path, ExchangeDir(tmp_path / "g"))
            into.append(Update(f"f{k}", source, num_samples=samples, local_steps=2, based_on_round=0))
    global_ = ExchangeDir(tmp_path / "g")
    via_codec = dict(FedAvg("samples").aggregate(global_, compressed, {}))
    via_plain = dict(FedAvg("samples").aggregate(global_, decoded, {}))
    assert via_codec.keys() == global_state.keys()
    for name in global_state:
        assert via_codec[name].dtype == torch.float32 and torch.equal(via_codec[name], via_plain[name]), name


def _encoded(codec, tensor: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict]:
    encoded = codec.encode(tensor)
    return encoded.parts, encoded.params


# --- damage ----------------------------------------------------------------------------------


class ForgingInt8(Int8Codec):
    """An encoder a hostile facility could run: right layout, right digests, wrong values."""

    def __init__(self, forge):
        super().__init__(16)
        self.forge = forge

    def encode(self, tensor: torch.Tensor) -> Encoded:
        encoded = super().encode(tensor)
        return Encoded(parts=self.forge(dict(encoded.parts)), params=encoded.params)


class ForgingTopK(TopKCodec):
    def __init__(self, forge):
        super().__init__(0.25)
        self.forge = forge

    def encode(self, tensor: torch.Tensor) -> Encoded:
        encoded = super().encode(tensor)
        return Encoded(parts=self.forge(dict(encoded.parts)) if tensor.numel() > 20 else encoded.parts,
                       params=encoded.params)


def _set(parts: dict, key: str, index: int, value) -> dict:
    parts[key] = parts[key].clone()
    if parts[key].numel():
        parts[key][index] = value
    return parts


@pytest.mark.parametrize("codec, message", [
    (ForgingInt8(lambda p: _set(p, "scale", 0, float("nan"))), "scale is negative, NaN or infinite"),
    (ForgingInt8(lambda p: _set(p, "scale", 0, -1.0)), "scale is negative, NaN or infinite"),
    (ForgingInt8(lambda p: _set(p, "codes", 0, -128)), "-128"),
    (ForgingInt8(lambda p: _set(p, "scale", 0, 3e38)), "NaN or Inf"),  # finite scale, infinite decoded value
    (ForgingTopK(lambda p: _set(p, "indices", -1, 10**6)), "outside [0,"),
    (ForgingTopK(lambda p: _set(p, "indices", 1, int(p["indices"][0]))), "repeated"),
    (ForgingTopK(lambda p: _set(p, "values", 0, float("inf"))), "NaN or Inf"),
], ids=["nan-scale", "negative-scale", "int8-minus-128", "overflowing-scale", "index-out-of-range",
        "repeated-index", "infinite-value"])  # fmt: skip
def test_forged_parts_are_rejected_naming_the_tensor(tmp_path: Path, codec, message: str):
    state = {"big": torch.randn(300) * 100, **deltas()}
    update = write(tmp_path / "u", codec, state)
    with pytest.raises(UpdateRejected) as caught:
        update.verify(expected_shapes={n: t.shape for n, t in state.items()})
    assert caught.value.reason in ("codec", "non_finite") and message in str(caught.value)
    assert "'big'" in str(caught.value) or "'layers.0" in str(caught.value) or "'norm" in str(caught.value)


def _edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    edit(manifest["tensors"]["norm.weight"])
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit, reason, message", [
    (lambda e: e["codec"].update(name="zfp9"), "codec", "names codec 'zfp9'"),
    (lambda e: e["codec"]["params"].update(block_size=0), "codec", "'block_size' is 0"),
    (lambda e: e["codec"]["params"].update(block_size=32), "codec", "needs float32[5]"),
    (lambda e: e["codec"]["params"].update(block_size=16.0), "codec", "expected an integer"),
    (lambda e: e.update(shape=[130]), "codec", "needs int8[130]"),
    (lambda e: e["codec"]["stored"].pop("scale"), "codec", "stores parts ['codes']"),
    (lambda e: e["codec"]["stored"]["codes"].update(dtype="int16", shape=[129]), "codec", "part 'codes' is int16"),
    (lambda e: e.update(dtype="bfloat16"), "bad_manifest", "decodes to float32"),
], ids=["unknown-codec", "zero-block", "params-misfit", "float-param", "shape-misfit", "missing-part",
        "part-dtype", "decoded-dtype"])  # fmt: skip
def test_a_manifest_that_misdescribes_its_parts_is_rejected(tmp_path: Path, edit, reason: str, message: str):
    path = tmp_path / "u"
    write(path, Int8Codec(16))
    _edit_manifest(path, edit)
    with pytest.raises(UpdateRejected) as caught:
        ExchangeDir(path).verify()
    assert caught.value.reason == reason and message in str(caught.value), str(caught.value)
    if reason == "codec":
        assert "'norm.weight'" in str(caught.value)


def test_compressed_tensors_need_format_version_4(tmp_path: Path):
    path = tmp_path / "u"
    write(path, Int8Codec(16))
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest["format_version"] = 3
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(UpdateRejected, match="format_version 4 is exactly the compressed updates"):
        ExchangeDir(path)


def test_rows_of_a_compressed_tensor_are_its_decoded_rows(tmp_path: Path):
    update = write(tmp_path / "u", Int8Codec(16))
    whole = update.get("layers.0.lora_B.weight")
    assert torch.equal(update.get_rows("layers.0.lora_B.weight", 3, 9), whole[3:9])
