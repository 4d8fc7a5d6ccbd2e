"""What Globus's errors and failed tasks mean to the person running fedhpc, and what to do about them.

The Globus Transfer mover turns every error of a Globus call into an `AuthError`
(a missing consent or an expired login: run ``fedhpc login``) or a
`TransferError` (a permission refused: ask the collection's administrator or
check the path), and a failed task into its fault, its last error event and a
hint. Apart from the mover so that the mover reads as transfers, this module as
messages.
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any

from fedhpc.config import GlobusTransferMoverConfig
from fedhpc.errors import AuthError, ConfigError, FedhpcError, TransferError

_DATA_ACCESS_SCOPE = re.compile(r"/scopes/([0-9a-fA-F-]{36})/data_access")
_FAULT_HINTS = {
    "PERMISSION_DENIED": "the identity you logged in with may not read or write that path: ask the collection's "
    "administrator for access, or check mover.facility_path and mover.server_path",
    "FILE_NOT_FOUND": "check mover.facility_path and mover.server_path",
    "QUOTA_EXCEEDED": "free space or raise the quota at the destination",
    "NO_SPACE_LEFT": "free space at the destination",
}


def sdk() -> ModuleType:
    """globus_sdk, imported when a transfer is made (an optional dependency); its absence says how to install it."""
    try:
        import globus_sdk
    except ImportError as e:
        raise ConfigError(
            "mover kind globus-transfer needs globus-sdk on the server; pip install 'fedhpc[globus]'"
        ) from e
    return globus_sdk


def describe(task: Any) -> str:
    return task.get("nice_status_short_description") or task.get("nice_status") or task.get("status") or "?"


def condensed(text: str, limit: int = 400) -> str:
    """Globus's multi-line messages on one line, short enough for the ledger and a terminal."""
    flat = " | ".join(line.strip() for line in text.replace("\\r\\n", "\n").splitlines() if line.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def task_failure(task_id: str, task: Any, what: str, events: list[Any]) -> str:
    """The failed task's fault and its last error event's details (`events`: newest first), with a hint where
    the code has one."""
    fault = task.get("fatal_error") or {}
    code = fault.get("code") or task.get("nice_status") or "UNKNOWN"
    message = f"{what}: Globus task {task_id} failed: {code}: {fault.get('description') or describe(task)}"
    if events:
        last = events[0]
        message += f" ({last.get('code')}: {condensed(last.get('details') or last.get('description') or '')})"
    hint = _FAULT_HINTS.get(code)
    return message + (f"; {hint}" if hint else "")


def explain(error: Exception, doing: str, config: GlobusTransferMoverConfig) -> FedhpcError:
    """A Globus error met while `doing`, as the fedhpc error that says what to do."""
    globus_sdk = sdk()
    from globus_sdk.token_storage import TokenValidationError

    if isinstance(error, TokenValidationError):
        return AuthError(f"no usable Globus login for {doing} ({error}); run `fedhpc login`")
    if not isinstance(error, globus_sdk.GlobusAPIError):
        if isinstance(error, globus_sdk.NetworkError):
            return TransferError(f"cannot reach Globus while {doing}: {error}; check this machine's network "
                                 "(a run stopped by this resumes where it stopped)")
        return TransferError(f"Globus failed while {doing}: {error}")
    said = f"{error.http_status} {error.code}: {condensed(error.message or error.text)}"
    if error.info.consent_required or error.code == "ConsentRequired":
        return AuthError(_consent_needed(error, doing, config))
    if isinstance(error, globus_sdk.AuthAPIError) and (error.raw_json or {}).get("error") == "invalid_grant":
        return AuthError(f"Globus no longer accepts the stored login (the refresh token expired or was revoked) "
                         f"while {doing}; run `fedhpc login`, then run the experiment again (it resumes)")
    if error.info.authorization_parameters or error.http_status == 401:
        return AuthError(f"Globus asks for a new login while {doing} ({said}); run `fedhpc login`, then run "
                         "the experiment again (it resumes)")
    if error.http_status == 403:
        return TransferError(
            f"Globus refused {doing} ({said}). The identity you logged in with lacks permission there: ask the "
            "collection's administrator for access to that path, or check mover.facility_path and "
            "mover.server_path (and mover.facility_collection, mover.server_collection)"
        )
    return TransferError(f"Globus Transfer refused {doing} ({said})")


def _consent_needed(error: Any, doing: str, config: GlobusTransferMoverConfig) -> str:
    collections = sorted({m.lower() for m in _DATA_ACCESS_SCOPE.findall(error.text)}) or [config.facility_collection]
    consents = {config.facility_collection: ("facility_data_access", config.facility_data_access),
                config.server_collection: ("server_data_access", config.server_data_access)}
    steps = []
    for collection in collections:
        key, given = consents.get(collection, (None, True))
        if not given:
            steps.append(f"set mover.{key}: true")
    todo = ", ".join(steps + ["run `fedhpc login` (it asks for that consent), then run the experiment again"])
    return (f"Globus needs your consent before fedhpc may use collection {', '.join(collections)} while "
            f"{doing}: a mapped Globus Connect Server collection asks for data_access consent per collection. "
            f"To give it: {todo}")
