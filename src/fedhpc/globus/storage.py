"""Where fedhpc keeps its Globus tokens: one SQLite file under ``~/.fedhpc`` (``$FEDHPC_HOME``), mode 0600.

globus-sdk's `SQLiteTokenStorage` rather than its JSON storage because a
running server (refreshing tokens from the Compute SDK's threads) and a
``fedhpc whoami`` in another shell may touch the file at once: SQLite locks,
the JSON storage rewrites the whole file. The storage is partitioned by
namespace, ``<environment>/<user|client>/<client id>``, since a refresh token
works only with the client that got it: switching `FEDHPC_GLOBUS_CLIENT_ID`
leaves the other identity's tokens alone instead of failing on them.
"""

from __future__ import annotations

import os
from pathlib import Path

from globus_sdk.token_storage import SQLiteTokenStorage

TOKEN_FILE_NAME = "globus-tokens.db"


def fedhpc_home() -> Path:
    """``$FEDHPC_HOME``, else ``~/.fedhpc`` (on a shared NFS home, point it at a local disk: SQLite locks there)."""
    return Path(os.environ.get("FEDHPC_HOME") or "~/.fedhpc").expanduser()


def token_file() -> Path:
    return fedhpc_home() / TOKEN_FILE_NAME


def open_token_storage(namespace: str) -> SQLiteTokenStorage:
    """Open (creating if needed) the token file for `namespace`: directory 0700 when made here, file 0600 always.

    globus-sdk creates the file under a user-only umask; the chmod also
    covers a file copied in with looser permissions. SQLite gives its
    journal the database file's permissions.
    """
    home = fedhpc_home()
    if not home.exists():
        home.mkdir(parents=True)
        home.chmod(0o700)
    storage = SQLiteTokenStorage(token_file(), namespace=namespace, connect_params={"check_same_thread": False})
    token_file().chmod(0o600)
    return storage


def remove_token_file_if_empty(storage: SQLiteTokenStorage) -> bool:
    """Close `storage` and delete its file when no namespace holds tokens any more; True if deleted."""
    empty = not list(storage.iter_namespaces())
    storage.close()
    if empty:
        Path(storage.filepath).unlink(missing_ok=True)
    return empty
