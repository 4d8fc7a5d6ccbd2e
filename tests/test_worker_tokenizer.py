"""The tiny model's byte-level tokenizer: fixed ids, identical in every build."""

from __future__ import annotations

from fedhpc.worker.tokenizer import build_byte_tokenizer

TEXTS = ["hello world", "héllo wörld 🙂\n\tx", "", "C1=CC=CC=C1 -> benzene", "a" * 300]


def test_ids_are_byte_values_then_three_specials() -> None:
    tokenizer = build_byte_tokenizer()
    assert len(tokenizer) == 259
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (256, 257, 258)
    assert tokenizer("hé")["input_ids"] == [256, 104, 195, 169]
    assert tokenizer("hé", add_special_tokens=False)["input_ids"] == list("hé".encode())


def test_two_builds_encode_and_serialise_identically() -> None:
    first, second = build_byte_tokenizer(), build_byte_tokenizer()
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    for text in TEXTS:
        assert first(text)["input_ids"] == second(text)["input_ids"]


def test_decode_round_trips_any_text() -> None:
    tokenizer = build_byte_tokenizer()
    for text in TEXTS:
        assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_special_token_text_in_data_stays_bytes() -> None:
    tokenizer = build_byte_tokenizer()
    assert tokenizer("a</s>b", add_special_tokens=False)["input_ids"] == list(b"a</s>b")
