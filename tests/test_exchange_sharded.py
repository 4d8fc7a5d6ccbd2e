"""Exchange format version 2: tensors written in row parts by several ranks, and deltas.

The ranks here are played in turn by one process (the protocol's only
synchronisation is the order of its three steps); tests/test_worker_fsdp.py runs
it for real under torchrun.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from fedhpc.errors import ExchangeError, UpdateRejected
from fedhpc.exchange import MANIFEST_NAME, ExchangeDir, ExchangeMeta, write_state_dict
from fedhpc.exchange.delta import DeltaUpdateDir
from fedhpc.exchange.sharded import RowPart, prepare_sharded, publish_sharded, write_rank_part

FINGERPRINT = "sha256:" + "cd" * 32
STATE = {
    "embed": torch.arange(7 * 3, dtype=torch.float32).reshape(7, 3),
    "norm": torch.linspace(-1, 1, 5),
    "scale": torch.tensor(0.5),  # no rows to split: rank 0 writes it whole
}


def meta(**extra: object) -> ExchangeMeta:
    fields: dict = dict(kind="update", round=1, facility="beta", based_on_round=0, num_samples=4, local_steps=2,
                        base_fingerprint=FINGERPRINT)
    fields.update(extra)
    return ExchangeMeta(**fields)


def rank_parts(rank: int, world_size: int) -> list[RowPart]:
    parts = []
    for name, tensor in STATE.items():
        if tensor.dim() == 0:
            if rank == 0:
                parts.append(RowPart(name, (), None, tensor))
            continue
        chunk = -(-tensor.shape[0] // world_size)
        start = min(rank * chunk, tensor.shape[0])
        parts.append(RowPart(name, tuple(tensor.shape), start, tensor[start : start + chunk]))
    return parts


def write_sharded(dest: Path, world_size: int = 2, dtype: torch.dtype = torch.float32, **extra: object) -> ExchangeDir:
    prepare_sharded(dest)
    for rank in range(world_size):
        write_rank_part(dest, rank, world_size, rank_parts(rank, world_size), dtype)
    publish_sharded(dest, world_size, meta(**extra), dtype)
    return ExchangeDir(dest)


def test_parts_written_by_each_rank_read_back_whole_and_by_rows(tmp_path: Path) -> None:
    update = write_sharded(tmp_path / "u", world_size=3)
    update.verify()
    manifest = update.manifest
    assert manifest.format_version == 3 and all(entry.blake3 for entry in manifest.files.values())
    assert [part.rows for part in manifest.tensors["embed"].parts] == [(0, 3), (3, 6), (6, 7)]
    assert manifest.tensors["scale"].file == "rank-00000-of-00003.safetensors"
    for name, tensor in STATE.items():
        assert torch.equal(update.get(name), tensor)
    assert torch.equal(update.get_rows("embed", 2, 7), STATE["embed"][2:7])
    assert len(manifest.metrics["save"]["bytes"]) == 3
    assert not list(tmp_path.glob(".u.*")), "the staging directory was renamed away"


def test_rows_of_a_whole_tensor_read_just_those_rows(tmp_path: Path) -> None:
    write_state_dict(tmp_path / "g", STATE, meta(kind="global", facility=None, based_on_round=None))
    global_ = ExchangeDir(tmp_path / "g")
    assert torch.equal(global_.get_rows("embed", 4, 6), STATE["embed"][4:6])
    assert global_.get_rows("embed", 3, 3).shape == (0, 3)
    with pytest.raises(ExchangeError):
        global_.get_rows("embed", 5, 8)


def test_a_rank_that_wrote_nothing_is_named_and_nothing_is_published(tmp_path: Path) -> None:
    prepare_sharded(tmp_path / "u")
    write_rank_part(tmp_path / "u", 0, 2, rank_parts(0, 2), torch.float32)
    with pytest.raises(ExchangeError, match="rank 1 of 2"):
        publish_sharded(tmp_path / "u", 2, meta(), torch.float32)
    assert not (tmp_path / "u").exists()


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda m: m["tensors"]["embed"]["parts"].pop(), "bad_manifest"),  # rows 4..7 lost
        (lambda m: m["tensors"]["embed"]["parts"][1].update(rows=[3, 7]), "bad_manifest"),  # overlap
        (lambda m: m["tensors"]["embed"]["parts"][1].update(rows=[5, 7]), "bad_manifest"),  # gap
        (lambda m: m.update(format_version=1), "bad_manifest"),  # parts need version 2
        (lambda m: m["tensors"]["embed"].update(shape=[8, 3], parts=[{"file": "rank-00000-of-00002.safetensors",
                                                                      "rows": [0, 4]},
                                                                     {"file": "rank-00001-of-00002.safetensors",
                                                                      "rows": [4, 8]}]), "shape"),
    ],
)
def test_manifests_whose_parts_do_not_make_up_the_tensor_are_rejected(tmp_path: Path, damage, reason) -> None:
    write_sharded(tmp_path / "u")
    path = tmp_path / "u" / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    damage(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(UpdateRejected) as info:
        ExchangeDir(tmp_path / "u").verify()
    assert info.value.reason == reason


def test_a_delta_reads_as_the_base_plus_the_change_in_fp32(tmp_path: Path) -> None:
    base = {name: tensor + 1000 for name, tensor in STATE.items()}
    write_state_dict(tmp_path / "base", base, meta(kind="global", facility=None, based_on_round=None))
    delta = {name: (tensor / 1000).to(torch.bfloat16) for name, tensor in STATE.items()}
    write_state_dict(tmp_path / "d", delta, meta(update_form="delta"))
    weights = DeltaUpdateDir(tmp_path / "d", ExchangeDir(tmp_path / "base"))
    weights.verify()
    for name in STATE:
        expected = base[name] + delta[name].float()
        assert weights.get(name).dtype == torch.float32
        assert torch.equal(weights.get(name), expected)
    manifest = json.loads((tmp_path / "d" / MANIFEST_NAME).read_text())
    assert manifest["update_form"] == "delta" and manifest["format_version"] == 3


def test_a_delta_must_name_its_base() -> None:
    with pytest.raises(ValueError, match="based_on_round"):
        meta(update_form="delta", based_on_round=None)


GOLDEN_V2 = Path(__file__).resolve().parent / "golden" / "exchange_v2"  # sha256, written before version 3
GOLDEN_V3 = Path(__file__).resolve().parent / "golden" / "exchange_v3_sharded"


def test_sharded_bytes_are_pinned_by_golden_files(tmp_path: Path) -> None:
    """Two ranks' files byte for byte, and the manifest but for the ranks' write timings.

    Regenerate (after a deliberate format change) with FEDHPC_REGENERATE_GOLDEN=1.
    """
    written = write_sharded(tmp_path / "u", world_size=2).path
    manifest = json.loads((written / MANIFEST_NAME).read_text())
    manifest["metrics"]["save"]["seconds"] = [0.0, 0.0]
    (written / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    names = sorted(p.name for p in written.iterdir())
    if os.environ.get("FEDHPC_REGENERATE_GOLDEN"):
        GOLDEN_V3.mkdir(parents=True, exist_ok=True)
        for name in names:
            (GOLDEN_V3 / name).write_bytes((written / name).read_bytes())
    assert names == sorted(p.name for p in GOLDEN_V3.iterdir())
    for name in names:
        assert (written / name).read_bytes() == (GOLDEN_V3 / name).read_bytes(), f"{name} differs from tests/golden"


@pytest.mark.parametrize(("golden", "version"), [(GOLDEN_V2, 2), (GOLDEN_V3, 3)])
def test_sharded_golden_files_still_read(golden: Path, version: int) -> None:
    """Version 2 (sha256) is what sharded run directories from before version 3 hold."""
    update = ExchangeDir(golden)
    assert update.manifest.format_version == version
    update.verify(expected_shapes={name: tensor.shape for name, tensor in STATE.items()}, fingerprint=FINGERPRINT)
    for name, tensor in STATE.items():
        assert torch.equal(update.get(name), tensor)
