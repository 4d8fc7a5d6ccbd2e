"""A Hugging Face Hub id as `model.source`: the snapshot this machine's Hugging Face cache already holds.

Compute nodes are often offline, so nothing is downloaded: the id is looked up
with `huggingface_hub.snapshot_download(..., local_files_only=True)`, which reads
``<cache>/models--ORG--NAME/refs/<revision>`` and returns ``snapshots/<commit>/``.
The cache is the one `huggingface_hub` itself uses: ``$HF_HUB_CACHE``, else
``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``
(``~/.cache/huggingface/hub``). It is read from the environment at each call, not
from `huggingface_hub.constants` (fixed when that module is first imported), so a
job's environment decides. Each facility resolves the id in its own cache; the
server resolves it in its own for round 0, `fedhpc validate` and the memory plan.
Standard library and `huggingface_hub` only (no torch), so `validate` can ask.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedhpc.errors import ModelError


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache this process would use, by `huggingface_hub`'s own precedence."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot directory of model `repo_id` at `revision` (None: the cache's ``main``), if present."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=hub_cache_dir(), local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        return None
    return Path(folder)


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """`cached_snapshot`, or a `ModelError` naming the id, the revision and the cache searched, and how to fill it."""
    path = cached_snapshot(repo_id, revision)
    if path is None:
        cache = hub_cache_dir()
        at = f" at revision {revision!r}" if revision else ""
        raise ModelError(
            f"model.source {repo_id!r}{at} is not in the Hugging Face cache {cache} (HF_HUB_CACHE or HF_HOME "
            "choose it; nothing is downloaded). Fill it where there is internet access with "
            f"`hf download {repo_id}{' --revision ' + revision if revision else ''}` (older: huggingface-cli "
            "download) under the same HF_HOME, or copy that cache's models--"
            f"{repo_id.replace('/', '--')} folder here"
        )
    if not (path / "config.json").is_file():
        raise ModelError(f"model.source {repo_id!r}: the cached snapshot {path} has no config.json; "
                         "it is not a complete transformers model (download it again)")
    return path
