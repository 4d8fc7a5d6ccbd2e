"""Molecule captioning's BLEU, ROUGE and METEOR as LlaSMol computes them, and what happens without their resources.

The SciBERT vocabulary cannot be downloaded here, so the tests build a tiny
WordPiece vocabulary of whole words; the tokenizer then splits like SciBERT on
these sentences (lowercase words, "." apart), which keeps every count checkable by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("nltk")
pytest.importorskip("rouge_score")

import nltk  # noqa: E402

from fedhpc.chem import text_metrics, wordnet  # noqa: E402
from fedhpc.chem.metrics import aggregate, prepare, score_task  # noqa: E402

WORDS = ["the", "molecule", "is", "a", "an", "acid", "base", "it", "sofa", "couch", "."]
DEBIAN_WORDNET_READY = (wordnet.DEBIAN_WORDNET / "index.sense").is_file()


@pytest.fixture
def tokenizer_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "tokenizer"
    directory.mkdir()
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    monkeypatch.setenv(text_metrics.TOKENIZER_ENV, str(directory))
    return directory


@pytest.fixture(scope="module")
def wordnet_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fedhpc-cache")


@pytest.fixture(autouse=True)
def private_cache(wordnet_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever WordNet copy a test makes goes to a test cache, not the user's."""
    monkeypatch.setenv("FEDHPC_CACHE", str(wordnet_cache))
    wordnet.load_wordnet.cache_clear()
    yield
    wordnet.load_wordnet.cache_clear()


@pytest.fixture
def no_nltk_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NLTK searches one empty directory only, as where nobody ran `nltk.downloader`."""
    empty = tmp_path / "nltk_data"
    empty.mkdir()
    monkeypatch.setattr(nltk.data, "path", [str(empty)])
    monkeypatch.delenv("NLTK_DATA", raising=False)


@pytest.fixture
def debian_wordnet(no_nltk_data: None) -> None:
    """WordNet from Debian's packages only, as on CI."""
    if not DEBIAN_WORDNET_READY:
        pytest.skip("needs Debian's wordnet-base and wordnet-sense-index (.ci/run installs them)")


CAPTIONS = [
    ["The molecule is an acid."],  # identical to its gold
    ["It is an acid."],  # against "It is a base."
    [""],  # no answer
]
GOLDS = [["The molecule is an acid."], ["It is a base."], ["A sofa."]]


def test_bleu_and_rouge_by_hand(tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_metrics, "load_wordnet", lambda: (None, "no WordNet in this test"))
    result = score_task("molecule_captioning", CAPTIONS, GOLDS)
    # tokens: q0 6 of 6 matching at every order (6, 5, 4, 3 n-grams); q1 [it is an acid .] vs [it is a base .]:
    # unigrams 3/5, bigrams 1/4 (it is), trigrams 0/3, 4-grams 0/2; lengths 11 and 11, so no brevity penalty
    assert result["bleu2"] == pytest.approx(math.sqrt((9 / 11) * (6 / 9)))
    assert result["bleu4"] == pytest.approx(((9 / 11) * (6 / 9) * (4 / 7) * (3 / 5)) ** 0.25)
    # ROUGE F-measures on words: q0 1, 1, 1; q1 rouge1 2/4 both ways, rouge2 1/3, LCS "it is" 2/4
    assert result["rouge1"] == pytest.approx((1 + 0.5) / 2)
    assert result["rouge2"] == pytest.approx((1 + 1 / 3) / 2)
    assert result["rouge_l"] == pytest.approx((1 + 0.5) / 2)
    assert result["no_answer"] == pytest.approx(1 / 3)
    assert math.isnan(result["meteor"]) and result["meteor_unavailable"] == "no WordNet in this test"


@pytest.mark.filterwarnings("ignore:\\nThe hypothesis contains 0 counts:UserWarning")
def test_bleu_from_counts_equals_nltk_corpus_bleu(tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nltk.translate.bleu_score import corpus_bleu

    monkeypatch.setattr(text_metrics, "load_wordnet", lambda: (None, "not needed here"))
    answers = ["The molecule is an acid.", "It is an acid.", "A base.", "It is a base."]
    golds = ["The molecule is a base.", "It is an acid.", "The base is an acid.", "A sofa."]
    prepared = prepare("molecule_captioning", [[a] for a in answers], [[g] for g in golds])
    tokenizer, _ = text_metrics.load_tokenizer(str(tokenizer_dir))
    refs = [[text_metrics.wordpieces(tokenizer, g)] for g in golds]
    hyps = [text_metrics.wordpieces(tokenizer, a) for a in answers]
    for indices in ([0, 1, 2, 3], [2, 2, 3], [3]):
        result = aggregate(prepared, indices)
        picked_refs, picked_hyps = [refs[i] for i in indices], [hyps[i] for i in indices]
        assert result["bleu2"] == pytest.approx(corpus_bleu(picked_refs, picked_hyps, weights=(0.5, 0.5)))
        assert result["bleu4"] == pytest.approx(corpus_bleu(picked_refs, picked_hyps))


def test_long_captions_are_cut_at_512_tokens(tokenizer_dir: Path) -> None:
    tokenizer, why = text_metrics.load_tokenizer(str(tokenizer_dir))
    assert why is None
    assert len(text_metrics.wordpieces(tokenizer, "the acid " * 400)) == 512
    assert text_metrics.wordpieces(tokenizer, "An acid [SEP] base.") == ["an", "acid", "base", "."]


def test_meteor_with_debian_wordnet_by_hand(tokenizer_dir: Path, debian_wordnet: None) -> None:
    answers = CAPTIONS + [["A couch."]]
    result = score_task("molecule_captioning", answers, GOLDS + [["A sofa."]])
    assert "meteor_unavailable" not in result
    # METEOR = Fmean * (1 - 0.5 * (chunks / matches)^3), Fmean = P R / (0.9 P + 0.1 R)
    identical = 1 - 0.5 * (1 / 6) ** 3  # q0: 6 matches in one chunk
    partial = 0.6 * (1 - 0.5 * (2 / 3) ** 3)  # q1: it, is, "." match (P = R = 3/5) in two chunks
    synonym = 1 - 0.5 * (1 / 3) ** 3  # q3: "couch" matches "sofa" through WordNet: 3 matches, one chunk
    assert result["meteor"] == pytest.approx((identical + partial + synonym) / 3)
    copied = wordnet.cache_root() / "corpora" / "wordnet"
    assert len((copied / "lexnames").read_text().splitlines()) == 45


def test_missing_tokenizer_makes_bleu_and_meteor_nan_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(text_metrics.TOKENIZER_ENV, str(tmp_path / "no-such-tokenizer"))
    with caplog.at_level("WARNING", logger="fedhpc.chem.text_metrics"):
        prepared = prepare("molecule_captioning", CAPTIONS, GOLDS)
        result = score_task("molecule_captioning", CAPTIONS, GOLDS)
    assert math.isnan(result["bleu2"]) and math.isnan(result["bleu4"]) and math.isnan(result["meteor"])
    assert result["rouge1"] == pytest.approx(0.75)  # ROUGE needs no tokenizer
    for metric in ("bleu2", "bleu4", "meteor"):
        assert "no vocab.txt" in prepared.notes[f"{metric}_unavailable"]
        assert "huggingface-cli download allenai/scibert_scivocab_uncased" in result[f"{metric}_unavailable"]
    assert caplog.text.count("bleu2, bleu4, meteor set to NaN") == 1  # once, however often captions are scored


def test_an_empty_vocabulary_is_refused(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    tokenizer, why = text_metrics.load_tokenizer(str(tmp_path))
    assert tokenizer is None and "empty vocabulary" in str(why)


def test_missing_wordnet_says_how_to_install_it(tmp_path: Path, no_nltk_data: None) -> None:
    reader, why = wordnet.load_wordnet.__wrapped__(tmp_path / "no-wordnet")
    assert reader is None
    assert "apt-get install wordnet-base wordnet-sense-index" in str(why)
