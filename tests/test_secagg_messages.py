"""What secure aggregation refuses, and what the server sees: keys, tampered messages, ranges, masked bytes."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

from fedhpc.errors import SecAggError, SecAggRangeError, SecAggRejected
from fedhpc.secagg.fixed_point import FixedPoint
from fedhpc.secagg.keys import FacilityKeys, KeyPins
from fedhpc.secagg.masking import MaskedRound
from fedhpc.secagg.signed import b64, sign, unb64
from fedhpc.secagg.unmask_reply import unmask_reply
from fedhpc.secagg.unmasking import Unmasker
from secagg_federation import facility_names, make_keys, make_roster, masked_uploads, updates

# chi2.isf(1e-6, 255) (scipy): a uniform byte histogram exceeds it once in a million tries
CHI2_255_AT_1E6 = 377.08


def test_keys_are_created_once_private_to_the_facility_and_loaded_on_later_rounds(tmp_path):
    keys = FacilityKeys.load_or_create("site-a", tmp_path / "keys")
    again = FacilityKeys.load_or_create("site-a", tmp_path / "keys")
    assert again.public == keys.public
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert {path.stat().st_mode & 0o777 for path in (tmp_path / "keys").iterdir()} == {0o600}
    (tmp_path / "keys" / "identity.ed25519").chmod(0o644)
    with pytest.raises(SecAggError, match="identity.ed25519: a secure-aggregation key readable by others"):
        FacilityKeys.load_or_create("site-a", tmp_path / "keys")


def test_a_tampered_key_message_is_rejected_and_a_pinned_key_cannot_change(tmp_path):
    keys = make_keys(tmp_path, 2)
    pins = KeyPins()
    advert = keys["site-a"].advertisement()
    swapped = {**advert, "agreement_key": keys["site-b"].advertisement()["agreement_key"]}
    with pytest.raises(SecAggRejected, match="signature does not match"):
        pins.accept(swapped, facility="site-a")
    with pytest.raises(SecAggRejected, match="names facility 'site-a'"):
        pins.accept(advert, facility="site-b")
    pins.accept(advert, facility="site-a")
    impostor = FacilityKeys.load_or_create("site-a", tmp_path / "impostor")
    with pytest.raises(SecAggRejected, match="differ from the ones pinned on first sight"):
        pins.accept(impostor.advertisement(), facility="site-a")
    assert KeyPins.from_json(pins.to_json()).get("site-a") == keys["site-a"].public


def test_a_facility_refuses_a_roster_that_lists_other_keys_for_it(tmp_path):
    keys = make_keys(tmp_path, 3)
    roster = make_roster(keys)
    other = FacilityKeys.load_or_create("site-a", tmp_path / "other")
    with pytest.raises(SecAggRejected, match="lists other keys for site-a"):
        MaskedRound(other, roster)


def _round(tmp_path):
    keys = make_keys(tmp_path, 4)
    roster = make_roster(keys)
    uploads = masked_uploads(keys, roster, updates(facility_names(4)))
    return keys, roster, {name: message for name, (_, message) in uploads.items()}


def test_a_tampered_share_is_rejected_by_the_server_and_by_its_recipient(tmp_path):
    keys, roster, shares = _round(tmp_path)
    tampered = copy.deepcopy(shares)
    entry = tampered["site-a"]["shares"]["site-b"]
    ciphertext = bytearray(unb64(entry["ciphertext"], what="test"))
    ciphertext[0] ^= 1
    entry["ciphertext"] = b64(bytes(ciphertext))
    with pytest.raises(SecAggRejected, match="secagg-shares from site-a: the signature does not match"):
        Unmasker(roster, tampered)
    request = Unmasker(roster, shares).request()
    with pytest.raises(SecAggRejected, match="signature does not match"):
        unmask_reply(keys["site-b"], roster, request, tampered)


def test_a_share_encrypted_for_another_pair_does_not_decrypt_even_when_signed(tmp_path):
    """A sender's shares swapped between recipients (and re-signed) fail their AEAD: bound to the pair."""
    keys, roster, shares = _round(tmp_path)
    body = {key: value for key, value in shares["site-a"].items() if key != "signature"}
    body["shares"] = {**body["shares"], "site-b": body["shares"]["site-c"], "site-c": body["shares"]["site-b"]}
    swapped = {**shares, "site-a": sign(body, keys["site-a"].identity)}
    request = Unmasker(roster, swapped).request()
    with pytest.raises(SecAggRejected, match="share for site-b: does not decrypt"):
        unmask_reply(keys["site-b"], roster, request, swapped)


def test_a_wrong_revealed_share_is_caught_by_the_seed_commitment(tmp_path):
    keys, roster, shares = _round(tmp_path)
    unmasker = Unmasker(roster, shares)
    request = unmasker.request()
    for name in ("site-a", "site-b", "site-c"):
        reply = unmask_reply(keys[name], roster, request, shares)
        if name == "site-a":
            body = {key: value for key, value in reply.items() if key != "signature"}
            entry = body["self_mask_shares"]["site-d"]
            body["self_mask_shares"]["site-d"] = {**entry, "halves": [b64(os.urandom(16)), entry["halves"][1]]}
            reply = sign(body, keys["site-a"].identity)
        unmasker.accept(name, reply)
    with pytest.raises(SecAggRejected, match="self-mask seed of site-d.*does not match its signed commitment"):
        unmasker.unmask("head.bias", np.zeros(7, dtype=np.uint64))


def test_an_unmask_answer_altered_on_the_way_is_rejected(tmp_path):
    keys, roster, shares = _round(tmp_path)
    unmasker = Unmasker(roster, shares)
    reply = unmask_reply(keys["site-a"], roster, unmasker.request(), shares)
    reply["self_mask_shares"]["site-b"]["index"] = 2
    with pytest.raises(SecAggRejected, match="secagg-unmask from site-a: the signature does not match"):
        unmasker.accept("site-a", reply)


@pytest.mark.parametrize("bad", [64.5, -1e9, float("nan"), float("inf")])
def test_a_value_outside_the_range_is_refused_at_the_facility_naming_the_tensor(tmp_path, bad):
    keys = make_keys(tmp_path, 3)
    roster = make_roster(keys, fixed=FixedPoint(fractional_bits=24, value_range=64.0))
    values = np.zeros(5, dtype=np.float32)
    values[3] = bad
    with pytest.raises(SecAggRangeError, match="tensor 'head.bias': a value of magnitude .* outside"):
        MaskedRound(keys["site-a"], roster).mask("head.bias", values)
    assert MaskedRound(keys["site-a"], roster).mask("head.bias", np.full(5, 64.0)).dtype == np.uint64


def _chi_square_of_bytes(ring: np.ndarray) -> float:
    counts = np.bincount(ring.view(np.uint8).reshape(-1), minlength=256).astype(np.float64)
    expected = counts.sum() / 256
    return float(np.sum((counts - expected) ** 2 / expected))


def test_one_masked_update_looks_uniformly_random_to_the_server(tmp_path):
    """The server's view of one facility's masked update carries no trace of the plaintext.

    The plaintext is as structured as an update gets (a smooth ramp, most bytes of its fixed-point
    encoding 0x00 or 0xff). Two checks on the 2^17 masked uint64 values (1 MiB):
    - the byte histogram is uniform: Pearson's chi-square over 256 byte values stays under the
      one-in-a-million critical value (377.1 for 255 degrees of freedom), where the unmasked encoding's
      histogram is off the scale (the check can fail, and does on the plaintext);
    - the masked values do not correlate with the plaintext: |Pearson r| between the masked words (as
      fractions of 2^64) and the plaintext is under 5 standard errors (5 / sqrt(n)).
    A single masked update is the plaintext plus a ChaCha20 keystream mod 2^64, so both hold for any
    plaintext; this guards the code against a mask that is missing, reused or cancelled by mistake.
    """
    keys = make_keys(tmp_path, 3)
    roster = make_roster(keys)
    plain = np.linspace(-1.0, 1.0, 2 ** 17, dtype=np.float32)
    masked = MaskedRound(keys["site-a"], roster).mask("layers.0.lora_A", plain)
    encoded = roster.fixed_point.encode("layers.0.lora_A", plain)
    assert _chi_square_of_bytes(encoded) > 100 * CHI2_255_AT_1E6
    assert _chi_square_of_bytes(masked) < CHI2_255_AT_1E6
    as_fraction = masked.astype(np.float64) / 2.0 ** 64
    correlation = np.corrcoef(as_fraction, plain.astype(np.float64))[0, 1]
    assert abs(correlation) < 5 / np.sqrt(plain.size)
    assert abs(np.corrcoef(encoded.view(np.int64).astype(np.float64), plain)[0, 1]) > 0.99
