"""Finding WordNet for NLTK's METEOR: NLTK's own data, else Debian's `wordnet-base` package.

METEOR (as NLTK computes it, and LlaSMol calls it) matches synonyms through
WordNet 3.0, which NLTK does not ship: `python -m nltk.downloader wordnet`
fetches it from NLTK's own server, which a compute node often cannot reach.
Debian's `wordnet-base` and `wordnet-sense-index` packages
(`apt-get install wordnet-base wordnet-sense-index`) install the same WordNet 3.0
database under /usr/share/wordnet, but without the `lexnames` file NLTK's reader
opens, and NLTK refuses to read outside its data directories. So
the database is copied once into fedhpc's cache as an NLTK data directory
(`<cache>/nltk_data/corpora/wordnet`, with `lexnames` written from the WordNet
3.0 list), and that directory is added to `nltk.data.path`.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

logger = logging.getLogger(__name__)

DEBIAN_WORDNET = Path("/usr/share/wordnet")
#: WordNet 3.0's lexicographer files in number order (lexnames(5WN)), with their syntactic category.
LEXNAMES = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1), ("noun.animal", 1),
    ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1), ("noun.cognition", 1),
    ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1), ("noun.food", 1), ("noun.group", 1),
    ("noun.location", 1), ("noun.motive", 1), ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1),
    ("noun.plant", 1), ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1), ("verb.body", 2),
    ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2), ("verb.competition", 2),
    ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2), ("verb.emotion", 2), ("verb.motion", 2),
    ("verb.perception", 2), ("verb.possession", 2), ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2),
    ("adj.ppl", 3),
)
#: What NLTK's reader needs of a WordNet database, besides `lexnames`.
REQUIRED_FILES = ("data.noun", "index.noun", "index.sense")
MISSING = (
    "WordNet is not installed: install Debian's packages (apt-get install wordnet-base wordnet-sense-index) "
    "or NLTK's copy (python -m nltk.downloader wordnet)"
)


def cache_root() -> Path:
    """Where the NLTK data directory is kept: `$FEDHPC_CACHE/nltk_data`, else ~/.cache/fedhpc/nltk_data."""
    base = os.environ.get("FEDHPC_CACHE")
    return (Path(base) if base else Path("~/.cache/fedhpc")).expanduser() / "nltk_data"


@functools.lru_cache(maxsize=4)
def load_wordnet(debian_dir: Path = DEBIAN_WORDNET) -> tuple[WordNetCorpusReader | None, str | None]:
    """(reader, None) when WordNet can be read, else (None, why not and how to fix it)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        pass
    else:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return wordnet, None
    if not all((debian_dir / name).is_file() for name in REQUIRED_FILES):
        return None, MISSING
    root = cache_root()
    target = root / "corpora" / "wordnet"
    try:
        if not all((target / name).is_file() for name in ("lexnames", *REQUIRED_FILES)):
            _copy_database(debian_dir, target)
        if str(root) not in nltk.data.path:
            nltk.data.path.append(str(root))
        with warnings.catch_warnings():  # "multilingual functions are not available": METEOR needs none
            warnings.simplefilter("ignore", UserWarning)
            return WordNetCorpusReader(str(target), None), None
    except (OSError, ValueError) as e:  # NLTK reports a path it refuses as PermissionError or ValueError
        return None, f"WordNet from {debian_dir} could not be prepared in {target}: {e}"


def _copy_database(source: Path, target: Path) -> None:
    """Copy the database files and write `lexnames`; the directory appears whole or not at all.

    Two processes may copy at once: the one that renames second keeps the first one's copy.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    try:
        for path in source.iterdir():
            if path.is_file():
                shutil.copyfile(path, staging / path.name)
        lines = (f"{number:02d}\t{name}\t{category}\n" for number, (name, category) in enumerate(LEXNAMES))
        (staging / "lexnames").write_text("".join(lines))
        if target.exists():  # an older, incomplete copy
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:  # another process renamed its copy first
            if not (target / "index.sense").is_file():
                raise
        logger.info("copied WordNet from %s to %s for NLTK", source, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
