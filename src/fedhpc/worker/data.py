"""A facility's instruction data: tokenising with loss masks, sharding over ranks, batching.

Which records are read, and how each becomes a (prompt, completion) pair or a
chat, is `fedhpc.train_examples` (JSONL, parquet, `datasets` folders, the
SMolInstruct release); `read_examples` is re-exported here for the worker's
entry point. A chat is rendered by the tokenizer's chat template and trained on
its assistant turns only (`encode_chat`).
The whole dataset is read (it gives `num_samples` and a rank-independent
shuffle), but only examples a rank actually reaches are tokenised.

Packing (`data.packing: true`) concatenates examples into rows of up to
``seq_len`` tokens with `position_ids` restarting at 0 for each example and
*no* attention mask. Given exactly that, transformers (masking_utils,
"packed sequence" detection) builds a block-diagonal causal mask, so with SDPA
an example does not attend to the one before it (a test pins this for Llama).
Passing an attention mask as well would silently switch that off. The trade-off:
no compute spent on padding and steadier tokens per step, but the number of
examples per step varies, and a model whose attention code ignores position
restarts would let examples see each other.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from fedhpc.config import DataConfig
from fedhpc.errors import DataError
from fedhpc.train_examples import Example
from fedhpc.train_examples import read_examples as read_examples  # re-exported: the worker's entry point reads here

IGNORE_INDEX = -100  # label value the Hugging Face causal-LM loss skips


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX over the prompt; the completion's ids (and EOS) elsewhere


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The prompt as the model sees it in training and at evaluation: a chat turn when it has a template."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_example(tokenizer: PreTrainedTokenizerBase, example: Example, seq_len: int) -> Tokenized | None:
    """Prompt then completion + EOS, truncated to `seq_len`; `None` if no completion token survives.

    A tokenizer with a chat template gets the prompt as a user turn with the
    generation prompt appended (what it will see at inference); otherwise the
    prompt is encoded with the tokenizer's own special tokens (BOS). A chat
    record goes to `encode_chat`.
    """
    if example.messages:
        return encode_chat(tokenizer, example.messages, seq_len)
    prompt_ids = encode_prompt(tokenizer, example.prompt)
    completion_ids = [*tokenizer(example.completion, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    return _truncated([*prompt_ids, *completion_ids], [*([IGNORE_INDEX] * len(prompt_ids)), *completion_ids], seq_len)


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[tuple[str, str]], seq_len: int
) -> Tokenized | None:
    """A chat through the tokenizer's template, with loss on each assistant turn only, truncated to `seq_len`.

    The template renders the conversation up to each assistant turn twice: with
    the generation prompt (what the model reads before it answers) and through
    the answer. Each rendering must extend the one before, as templates that
    replay history do; the text between the two is the answer with its end of
    turn (e.g. ``<|im_end|>``), the only span with labels. Turns after the last
    assistant one teach nothing and are left out.
    """
    if not tokenizer.chat_template:
        raise DataError("chat (messages) records need a tokenizer with a chat template, and this model's has none "
                        "(tiny-llama's byte tokenizer never has one); use prompt/completion records, or a model "
                        "whose tokenizer_config.json carries a chat_template")
    conversation = [{"role": role, "content": content} for role, content in messages]
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for end, (role, _) in enumerate(messages, start=1):
        if role != "assistant":
            continue
        head = tokenizer.apply_chat_template(conversation[: end - 1], tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(conversation[:end], tokenize=False)
        for text, learn in ((head, False), (whole, True)):
            if not text.startswith(rendered):
                raise DataError("the tokenizer's chat template does not render a conversation as a prefix of its "
                                "continuation (it rewrites earlier turns), so assistant turns cannot be told apart; "
                                "use prompt/completion records for this model")
            piece = tokenizer(text[len(rendered):], add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if learn else [IGNORE_INDEX] * len(piece)
            rendered = text
    return _truncated(ids, labels, seq_len)


def _truncated(ids: list[int], labels: list[int], seq_len: int) -> Tokenized | None:
    input_ids, labels = ids[:seq_len], labels[:seq_len]
    # The first token has nothing before it to predict it from; masking it also keeps a
    # packed row from training one example's first token on the previous example's end.
    labels[0] = IGNORE_INDEX
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return Tokenized(input_ids, labels)


def shard_indices(count: int, rank: int, world_size: int, seed: int) -> list[int]:
    """This rank's example indices: a seeded shuffle of all `count`, then every `world_size`-th.

    Shards are disjoint and cover everything. With fewer examples than ranks a
    rank borrows one example, so every rank can take the same number of steps.
    """
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order[rank::world_size] or [order[rank % count]]


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None  # padding mask; None when packed (see module docstring)
    position_ids: torch.Tensor | None  # restarting per example when packed; None otherwise
    num_examples: int

    @property
    def num_tokens(self) -> int:
        """Loss-bearing tokens in the batch."""
        return int((self.labels != IGNORE_INDEX).sum())

    @property
    def num_predicted_tokens(self) -> int:
        """Tokens the causal-LM loss averages over: labels after the shift by one (the first cannot be predicted)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def model_inputs(self, device: torch.device) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids, "labels": self.labels}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        return {key: value.to(device, non_blocking=True) for key, value in inputs.items()}


def batches(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    config: DataConfig,
    batch_size: int,
    length_multiple: int = 1,
) -> Iterator[Batch]:
    """Endless micro-batches of `batch_size` rows, cycling over `examples` in order."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    source = pack_rows(_cycle_tokenized(examples, tokenizer, config.seq_len), config.seq_len, config.packing)
    while True:
        rows = [next(source) for _ in range(batch_size)]
        yield collate(rows, pad_id, packed=config.packing, length_multiple=length_multiple, max_length=config.seq_len)


def _cycle_tokenized(
    examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, seq_len: int
) -> Iterator[Tokenized]:
    encoded: dict[int, Tokenized | None] = {}  # each example is tokenised at most once
    while True:
        usable = 0
        for index, example in enumerate(examples):
            if index not in encoded:
                encoded[index] = encode_example(tokenizer, example, seq_len)
            if (item := encoded[index]) is not None:
                usable += 1
                yield item
        if not usable:
            raise DataError(
                f"none of this rank's {len(examples)} examples keeps a completion token within "
                f"data.seq_len={seq_len}; raise seq_len or shorten the prompts"
            )


def pack_rows(items: Iterator[Tokenized], seq_len: int, packing: bool) -> Iterator[list[Tokenized]]:
    """Rows of one example each, or packed: consecutive examples while they fit in `seq_len` tokens."""
    if not packing:
        for item in items:
            yield [item]
    row: list[Tokenized] = []
    used = 0
    for item in items:
        if row and used + len(item.input_ids) > seq_len:
            yield row
            row, used = [], 0
        row.append(item)
        used += len(item.input_ids)


def collate(
    rows: list[list[Tokenized]], pad_id: int, packed: bool, length_multiple: int = 1, max_length: int | None = None
) -> Batch:
    """Right-pad rows to the longest, rounded up to `length_multiple` but not past `max_length`.

    Padding is pad id, label IGNORE_INDEX, attention mask 0. Padding in a packed
    row gets positions restarting at 0, i.e. a block of its own that no real
    token attends to.
    """
    longest = max(sum(len(item.input_ids) for item in row) for row in rows)
    rounded = -(-longest // length_multiple) * length_multiple
    length = max(longest, min(rounded, max_length if max_length is not None else rounded))
    ids, labels, positions, masks = [], [], [], []
    for row in rows:
        row_ids = [token for item in row for token in item.input_ids]
        pad = length - len(row_ids)
        ids.append(row_ids + [pad_id] * pad)
        labels.append([label for item in row for label in item.labels] + [IGNORE_INDEX] * pad)
        positions.append([p for item in row for p in range(len(item.input_ids))] + list(range(pad)))
        masks.append([1] * len(row_ids) + [0] * pad)
    return Batch(
        input_ids=torch.tensor(ids, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        attention_mask=None if packed else torch.tensor(masks, dtype=torch.long),
        position_ids=torch.tensor(positions, dtype=torch.long) if packed else None,
        num_examples=sum(len(row) for row in rows),
    )
