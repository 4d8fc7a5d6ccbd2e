"""Molecule captioning's text metrics, computed as LlaSMol's `calculate_text_metrics` computes them.

LlaSMol (`utils/metrics.py`) scores each answered caption against one gold caption:

- BLEU-2 and BLEU-4: NLTK's `corpus_bleu` (no smoothing) over SciBERT WordPiece
  tokens (`allenai/scibert_scivocab_uncased`, the first 512 tokens, without
  `[PAD]`, `[CLS]`, `[SEP]`);
- METEOR: the mean of NLTK's `meteor_score([gold_tokens], answer_tokens)` over
  the same tokens (WordNet synonyms, Porter stems);
- ROUGE-1, ROUGE-2, ROUGE-L: the mean F-measure of Google's `rouge-score`
  (`RougeScorer(["rouge1", "rouge2", "rougeL"])`, no stemming) on the raw texts.

Empty answers are left out of every mean (LlaSMol counts them as "no answer").

Everything costly happens once per caption in `caption_columns`; corpus BLEU over
any selection of captions is then a sum of their n-gram counts (`corpus_bleu`),
which is what bootstrap resampling needs.

Two resources are not Python packages. The SciBERT tokenizer is read from the
Hugging Face cache only (never downloaded at scoring time, since compute nodes
are usually offline): download it once with
`huggingface-cli download allenai/scibert_scivocab_uncased`, or set
`FEDHPC_CAPTION_TOKENIZER` to a local directory holding its `vocab.txt`.
WordNet comes from `fedhpc.chem.wordnet`. When one is missing, the metrics that
need it are NaN and `caption_columns` says why.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedhpc.chem.wordnet import load_wordnet

logger = logging.getLogger(__name__)

CAPTION_TOKENIZER = "allenai/scibert_scivocab_uncased"
TOKENIZER_ENV = "FEDHPC_CAPTION_TOKENIZER"
MAX_TOKENS = 512
SPECIAL_TOKENS = frozenset({"[PAD]", "[CLS]", "[SEP]"})
BLEU_ORDER = 4
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def tokenizer_name() -> str:
    """The caption tokenizer to load: `$FEDHPC_CAPTION_TOKENIZER`, else SciBERT's hub id."""
    return os.environ.get(TOKENIZER_ENV) or CAPTION_TOKENIZER


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str) -> tuple[Any | None, str | None]:
    """(tokenizer, None), or (None, why not and how to fix it); never touches the network.

    `name` is a directory holding a `vocab.txt`, or a hub id found in the local
    Hugging Face cache. The vocabulary is checked, because `from_pretrained` can
    return a tokenizer with nothing but its special tokens when files are missing.
    """
    from transformers import BertTokenizerFast

    fix = (
        f"download it once with `huggingface-cli download {CAPTION_TOKENIZER}` or set {TOKENIZER_ENV} "
        "to a local directory with its vocab.txt"
    )
    directory = _vocabulary_dir(name)
    if directory is None:
        return None, f"the caption tokenizer {name!r} has no vocab.txt on this machine; {fix}"
    try:
        tokenizer = BertTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as e:
        return None, f"the caption tokenizer in {directory} does not load ({e}); {fix}"
    if len(tokenizer.get_vocab()) <= len(tokenizer.all_special_tokens):
        return None, f"the caption tokenizer in {directory} has an empty vocabulary; {fix}"
    return tokenizer, None


def _vocabulary_dir(name: str) -> Path | None:
    """The directory with `name`'s vocab.txt: `name` itself, or its snapshot in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    path = Path(name).expanduser()
    if path.is_dir():
        return path if (path / "vocab.txt").is_file() else None
    try:
        cached = try_to_load_from_cache(name, "vocab.txt")
    except ValueError:  # not a valid hub id either
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def wordpieces(tokenizer: Any, text: str) -> list[str]:
    """LlaSMol's tokens of a caption: the first 512 WordPieces, less padding and [CLS]/[SEP] markers."""
    return [t for t in tokenizer.tokenize(text)[:MAX_TOKENS] if t not in SPECIAL_TOKENS]


def caption_columns(
    answers: Sequence[str | None], golds: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per-caption scores and n-gram counts, and `{metric_unavailable: reason}` for what cannot be computed.

    `answers[i]` is None for no answer. Columns: `answered` (bool); `rouge1`,
    `rouge2`, `rouge_l`, `meteor` (float, NaN where not answered or unavailable);
    `bleu_matches`, `bleu_totals` (int, one column per n-gram order 1-4: clipped
    matches and n-grams of the answer); `answer_len`, `gold_len` (tokens).
    """
    from nltk.translate.bleu_score import modified_precision
    from nltk.translate.meteor_score import meteor_score
    from rouge_score import rouge_scorer

    n = len(answers)
    cols: dict[str, np.ndarray] = {
        "answered": np.array([a is not None for a in answers], dtype=bool),
        **{name: np.full(n, math.nan) for name in ("rouge1", "rouge2", "rouge_l", "meteor")},
        "bleu_matches": np.zeros((n, BLEU_ORDER), dtype=np.int64),
        "bleu_totals": np.zeros((n, BLEU_ORDER), dtype=np.int64),
        "answer_len": np.zeros(n, dtype=np.int64),
        "gold_len": np.zeros(n, dtype=np.int64),
    }
    notes: dict[str, str] = {}
    tokenizer, why = load_tokenizer(tokenizer_name())
    if why is not None:
        notes.update({f"{m}_unavailable": why for m in ("bleu2", "bleu4", "meteor")})
    wordnet, why_wordnet = load_wordnet() if tokenizer is not None else (None, None)
    if why_wordnet is not None:
        notes["meteor_unavailable"] = why_wordnet
    for reason in dict.fromkeys(notes.values()):
        names = ", ".join(key.removesuffix("_unavailable") for key, why in notes.items() if why == reason)
        _warn_unavailable(names, reason)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES))
    for i, (answer, gold) in enumerate(zip(answers, golds, strict=True)):
        if answer is None:
            continue
        rouge = scorer.score(answer, gold)  # LlaSMol's argument order; the F-measure is symmetric
        cols["rouge1"][i], cols["rouge2"][i], cols["rouge_l"][i] = (rouge[t].fmeasure for t in ROUGE_TYPES)
        if tokenizer is None:
            continue
        gold_tokens, answer_tokens = wordpieces(tokenizer, gold), wordpieces(tokenizer, answer)
        for order in range(1, BLEU_ORDER + 1):
            precision = modified_precision([gold_tokens], answer_tokens, order)
            cols["bleu_matches"][i, order - 1] = precision.numerator
            cols["bleu_totals"][i, order - 1] = precision.denominator
        cols["answer_len"][i], cols["gold_len"][i] = len(answer_tokens), len(gold_tokens)
        if wordnet is not None:
            cols["meteor"][i] = meteor_score([gold_tokens], answer_tokens, wordnet=wordnet)
    return cols, notes


@functools.lru_cache(maxsize=None)
def _warn_unavailable(names: str, reason: str) -> None:
    """Log a missing resource once per process: a task's answers and each baseline candidate are prepared
    separately, and the same warning three times over would bury the results."""
    logger.warning("captioning: %s set to NaN: %s", names, reason)


def corpus_bleu(matches: np.ndarray, totals: np.ndarray, answer_len: int, gold_len: int, order: int) -> float:
    """NLTK's `corpus_bleu` with uniform weights up to `order`, from summed counts (rows: captions).

    As NLTK without smoothing: 0 when no unigram matches; a zero count of a higher
    order counts as the smallest positive float (so the score is ~0); brevity
    penalty exp(1 - gold_len / answer_len) when the answers are shorter. NaN for no captions.
    """
    if len(matches) == 0:
        return math.nan
    hits, counts = matches[:, :order].sum(axis=0), totals[:, :order].sum(axis=0)
    if hits[0] == 0:
        return 0.0
    precisions = [h / c if h else sys.float_info.min for h, c in zip(hits.tolist(), counts.tolist(), strict=True)]
    if answer_len > gold_len:
        penalty = 1.0
    elif answer_len == 0:
        penalty = 0.0
    else:
        penalty = math.exp(1 - gold_len / answer_len)
    return penalty * math.exp(math.fsum(math.log(p) / order for p in precisions))


def caption_summary(cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, float]:
    """The text metrics over the answered captions among `idx`, and the no-answer share of all."""
    answered = idx[cols["answered"][idx]]
    matches, totals = cols["bleu_matches"][answered], cols["bleu_totals"][answered]
    answer_len, gold_len = int(cols["answer_len"][answered].sum()), int(cols["gold_len"][answered].sum())
    tokenized = bool(totals.any())  # every tokenised answer counts at least one n-gram slot per order

    def mean(name: str) -> float:
        return float(cols[name][answered].mean()) if len(answered) else math.nan

    return {
        "bleu2": corpus_bleu(matches, totals, answer_len, gold_len, 2) if tokenized else math.nan,
        "bleu4": corpus_bleu(matches, totals, answer_len, gold_len, 4) if tokenized else math.nan,
        "rouge1": mean("rouge1"),
        "rouge2": mean("rouge2"),
        "rouge_l": mean("rouge_l"),
        "meteor": mean("meteor"),
        "no_answer": 1.0 - float(cols["answered"][idx].mean()) if len(idx) else math.nan,
    }
