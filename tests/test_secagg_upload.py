"""A masked update as the server receives it: accepted whole, or refused for any change made on the way."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedhpc.errors import SecAggRejected
from fedhpc.secagg.masking import MaskedRound
from fedhpc.secagg.upload import TENSORS_FILE, UPLOAD_FILE, read_masked_update, write_masked_update
from secagg_federation import SHAPES, facility_names, make_keys, make_roster, updates

EXPECTED = {name: list(shape) for name, shape in SHAPES.items()}


@pytest.fixture
def upload(tmp_path):
    keys = make_keys(tmp_path, 3)
    roster = make_roster(keys)
    plain = updates(facility_names(3))["site-a"]
    directory = tmp_path / "upload"
    directory.mkdir()
    record = {"num_samples": 40, "local_steps": 2, "metrics": {"loss": [2.5, 2.25]}}
    write_masked_update(directory, MaskedRound(keys["site-a"], roster), plain.items(), record)
    return keys, roster, directory


def test_an_intact_upload_is_read_with_its_counts_and_tensors(upload):
    _, roster, directory = upload
    read = read_masked_update(directory, roster, "site-a", EXPECTED)
    assert (read.num_samples, read.local_steps, read.metrics["loss"]) == (40, 2, [2.5, 2.25])
    assert read.get("head.bias").dtype == np.uint64 and read.get("head.bias").shape == (7,)


def test_a_changed_tensor_file_is_refused_by_its_signed_digest(upload):
    _, roster, directory = upload
    data = bytearray((directory / TENSORS_FILE).read_bytes())
    data[-1] ^= 1
    (directory / TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(SecAggRejected, match="does not match the digest"):
        read_masked_update(directory, roster, "site-a", EXPECTED)


def test_a_changed_count_breaks_the_signature(upload):
    _, roster, directory = upload
    message = json.loads((directory / UPLOAD_FILE).read_text())
    message["num_samples"] = 4000
    (directory / UPLOAD_FILE).write_text(json.dumps(message))
    with pytest.raises(SecAggRejected, match="secagg-upload from site-a: the signature does not match"):
        read_masked_update(directory, roster, "site-a", EXPECTED)


def test_an_upload_is_refused_as_another_facilitys_or_rounds_or_with_other_tensors(tmp_path, upload):
    keys, roster, directory = upload
    with pytest.raises(SecAggRejected, match="signature does not match"):
        read_masked_update(directory, roster, "site-b", EXPECTED)
    with pytest.raises(SecAggRejected, match="not site-a in round 2"):
        read_masked_update(directory, make_roster(keys, round=2), "site-a", EXPECTED)
    with pytest.raises(SecAggRejected, match="tensors and shapes are not the global's"):
        read_masked_update(directory, roster, "site-a", {**EXPECTED, "head.bias": [8]})
    (directory / TENSORS_FILE).unlink()
    (directory / TENSORS_FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SecAggRejected, match="not a regular file"):
        read_masked_update(directory, roster, "site-a", EXPECTED)
