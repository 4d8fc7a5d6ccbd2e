"""Secure aggregation's protocol end to end in one process: the server's sum is the facilities' sum.

Real keys on disk, real fp32 tensors, the real messages (signed JSON, encrypted shares); what the
server computes from the masked tensors is compared with the plain float64 sum, within the fixed-point
precision (2^-(f+1) per coordinate per facility, rounding to nearest).
"""

from __future__ import annotations

import numpy as np
import pytest

from fedhpc.errors import SecAggRejected, SecAggThresholdError
from fedhpc.secagg.fixed_point import FixedPoint
from fedhpc.secagg.unmask_reply import unmask_reply
from fedhpc.secagg.unmasking import Unmasker
from secagg_federation import SHAPES, facility_names, make_keys, make_roster, masked_uploads, secure_sum, updates


def _assert_sums(sums: dict[str, np.ndarray], plain: dict[str, dict[str, np.ndarray]], fixed: FixedPoint) -> None:
    bound = len(plain) * 2.0 ** -(fixed.fractional_bits + 1)
    for tensor in SHAPES:
        expected = np.sum([facility[tensor].astype(np.float64) for facility in plain.values()], axis=0)
        assert sums[tensor].shape == expected.shape
        assert np.max(np.abs(sums[tensor] - expected)) <= bound, tensor


@pytest.mark.parametrize("count", range(2, 9))
def test_the_unmasked_sum_is_the_plain_sum_within_the_fixed_point_precision(tmp_path, count):
    keys = make_keys(tmp_path, count)
    roster = make_roster(keys)
    plain = updates(facility_names(count), seed=count)
    _assert_sums(secure_sum(keys, roster, plain), plain, roster.fixed_point)


def test_fewer_fractional_bits_lose_what_the_stated_precision_says(tmp_path):
    """With f = 8 the error is visible (up to 2^-9 per facility) and still within the bound."""
    keys = make_keys(tmp_path, 3)
    fixed = FixedPoint(fractional_bits=8, value_range=1.0)
    roster = make_roster(keys, fixed=fixed)
    plain = updates(facility_names(3), scale=0.2)
    plain = {name: {t: np.clip(v, -1, 1) for t, v in tensors.items()} for name, tensors in plain.items()}
    sums = secure_sum(keys, roster, plain)
    _assert_sums(sums, plain, fixed)
    exact = np.sum([facility["head.bias"].astype(np.float64) for facility in plain.values()], axis=0)
    assert np.max(np.abs(sums["head.bias"] - exact)) > 0


def test_a_facility_silent_after_masking_is_recovered_while_threshold_answer(tmp_path):
    keys = make_keys(tmp_path, 5)
    roster = make_roster(keys)  # threshold 4 of 5
    plain = updates(facility_names(5))
    _assert_sums(secure_sum(keys, roster, plain, silent=("site-c",)), plain, roster.fixed_point)


def test_below_threshold_answers_fail_the_round_with_a_specific_error(tmp_path):
    keys = make_keys(tmp_path, 5)
    roster = make_roster(keys)
    with pytest.raises(SecAggThresholdError, match="3 of 5 survivors answered.*threshold 4"):
        secure_sum(keys, roster, updates(facility_names(5)), silent=("site-c", "site-d"))


def test_a_facility_dropping_before_masking_has_its_pair_masks_removed(tmp_path):
    keys = make_keys(tmp_path, 5)
    roster = make_roster(keys)
    plain = updates(facility_names(5))
    del plain["site-b"]
    _assert_sums(secure_sum(keys, roster, plain), plain, roster.fixed_point)


def test_too_few_masked_updates_fail_before_anything_is_asked(tmp_path):
    keys = make_keys(tmp_path, 5)
    roster = make_roster(keys)
    plain = {name: tensors for name, tensors in updates(facility_names(5)).items() if name in ("site-a", "site-b", "site-c")}
    with pytest.raises(SecAggThresholdError, match="3 masked updates arrived.*threshold 4"):
        secure_sum(keys, roster, plain)


def test_a_dropout_before_masking_and_a_silent_survivor_cannot_be_unmasked(tmp_path):
    """The silent survivor's pair seed with the dropped facility is the one thing nobody else can reveal."""
    keys = make_keys(tmp_path, 6)
    roster = make_roster(keys)  # threshold 4 of 6
    plain = updates(facility_names(6))
    del plain["site-f"]
    with pytest.raises(SecAggThresholdError, match=r"\['site-a'\] sent masked updates but did not answer"):
        secure_sum(keys, roster, plain, silent=("site-a",))


def test_a_facility_refuses_an_unmask_request_naming_fewer_survivors_than_the_threshold(tmp_path):
    keys = make_keys(tmp_path, 5)
    roster = make_roster(keys)
    uploads = masked_uploads(keys, roster, updates(facility_names(5)))
    shares = {name: message for name, (_, message) in uploads.items()}
    request = Unmasker(roster, shares).request()
    small = {**request, "survivors": ["site-a", "site-b", "site-c"], "dropped": ["site-d", "site-e"]}
    with pytest.raises(SecAggRejected, match="fewer than the threshold"):
        unmask_reply(keys["site-a"], roster, small, shares)
    overlapping = {**request, "dropped": ["site-e"]}
    with pytest.raises(SecAggRejected, match="disjoint"):
        unmask_reply(keys["site-a"], roster, overlapping, shares)


def test_a_round_roster_with_a_minority_threshold_or_a_wrapping_sum_is_refused(tmp_path):
    keys = make_keys(tmp_path, 4)
    with pytest.raises(SecAggRejected, match="over half of the 4 participants"):
        make_roster(keys, threshold=2)
    with pytest.raises(SecAggRejected, match="the sum could wrap"):
        make_roster(keys, fixed=FixedPoint(fractional_bits=60, value_range=4.0))
