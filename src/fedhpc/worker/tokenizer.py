"""The byte-level tokenizer of the tiny Llama: built in code, so no facility downloads anything.

Token id = byte value for ids 0..255, then ``<s>`` (256), ``</s>`` (257) and
``<pad>`` (258). Any text encodes (no unknown token) and the vocabulary is the
same everywhere, which the seeded tiny model relies on: its embedding rows are
indexed by these ids. Byte-level BPE with no merges gives exactly that mapping,
and wrapping it in `PreTrainedTokenizerFast` lets the data code treat it like
any pretrained model's tokenizer (BOS added by `add_special_tokens=True`).
"""

from __future__ import annotations

from functools import cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
BYTE_VOCAB_SIZE = 256


@cache
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (what `pre_tokenizers.ByteLevel` emits)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh byte-level tokenizer; two calls (in any process) give identical encodings."""
    vocab = {char: byte for byte, char in _byte_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([BOS, EOS, PAD])
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    # split_special_tokens: a literal "<s>" inside a dataset is text (bytes), not a control token.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, split_special_tokens=True
    )
