"""``fedhpc login``, ``logout`` and ``whoami``: the only place fedhpc ever asks a person for anything.

The login flow (`TerminalLogin`) runs only when stdin is a terminal: a
browser on this machine when there is one (globus-sdk's local-server flow),
else, as over SSH, a URL to open anywhere and the code it shows pasted back,
as ``globus login --no-local-server`` does. One login asks for everything a run
will need -- Transfer (with the data_access consent of each mapped collection
the experiment names), Compute, and the identity -- so the run itself never
has to come back for a consent.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import globus_sdk
from globus_sdk.gare import GlobusAuthorizationParameters
from globus_sdk.login_flows import (
    CommandLineLoginFlowManager,
    LocalServerLoginFlowManager,
    LoginFlowManager,
)
from globus_sdk.login_flows.command_line_login_flow_manager import CommandLineLoginFlowEOFError
from globus_sdk.login_flows.local_server_login_flow_manager import LocalServerEnvironmentalLoginError
from globus_sdk.scopes import AuthScopes, TransferScopes
from globus_sdk.token_storage import SQLiteTokenStorage, TokenStorageData

from fedhpc.errors import AuthError
from fedhpc.globus.auth import Identity, build_app, identity_from_env, login_client
from fedhpc.globus.scopes import AUTH, data_access_collection, login_requirements
from fedhpc.globus.storage import open_token_storage, remove_token_file_if_empty, token_file

log = logging.getLogger(__name__)
NOT_A_TERMINAL = (
    "`fedhpc login` needs a terminal to show the Globus login URL and read back the code, and stdin is not one; "
    "run it in an interactive shell (over SSH too), or set FEDHPC_GLOBUS_CLIENT_ID and FEDHPC_GLOBUS_CLIENT_SECRET "
    "to act as a service identity"
)
CONSENTS_URL = "https://app.globus.org/account/consents"


def stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


class TerminalLogin(LoginFlowManager):
    """A browser here if possible, else copy and paste; refuses at once when stdin is not a terminal."""

    def __init__(self, client: globus_sdk.AuthLoginClient, *, local_server: bool):
        prefill = f"fedhpc on {socket.gethostname()}"
        super().__init__(client, request_refresh_tokens=True, native_prefill_named_grant=prefill)
        self.local_server = local_server and isinstance(client, globus_sdk.NativeAppAuthClient)

    def run_login_flow(self, auth_parameters: GlobusAuthorizationParameters) -> globus_sdk.OAuthTokenResponse:
        if not stdin_is_terminal():
            raise AuthError(NOT_A_TERMINAL)
        options: dict[str, Any] = {
            "request_refresh_tokens": True,
            "native_prefill_named_grant": self.native_prefill_named_grant,
        }
        if self.local_server:
            try:
                return LocalServerLoginFlowManager(self.login_client, **options).run_login_flow(auth_parameters)
            except LocalServerEnvironmentalLoginError as e:
                log.info("no browser on this machine (%s): showing a URL and asking for the code instead", e)
        try:
            return CommandLineLoginFlowManager(self.login_client, **options).run_login_flow(auth_parameters)
        except CommandLineLoginFlowEOFError as e:
            raise AuthError(f"stdin closed before the authorization code was entered; {NOT_A_TERMINAL}") from e


@dataclass(frozen=True)
class StoredToken:
    resource_server: str
    scopes: tuple[str, ...]
    expires_at: float
    renewable: bool  # has a refresh token (a person) or is re-granted by client credentials (a service)

    def line(self, now: float) -> str:
        left = self.expires_at - now
        when = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(self.expires_at))
        state = f"expires {when} (in {_hours(left)})" if left > 0 else f"expired {when} ({_hours(-left)} ago)"
        renew = ", renewed on next use" if self.renewable else ""
        return f"{self.resource_server}: {' '.join(self.scopes)}; access token {state}{renew}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def stored_tokens(storage: SQLiteTokenStorage, identity: Identity) -> list[StoredToken]:
    def token(data: TokenStorageData) -> StoredToken:
        renewable = data.refresh_token is not None or identity.is_service
        return StoredToken(data.resource_server, tuple(data.scope.split()), data.expires_at_seconds, renewable)

    return [token(d) for _, d in sorted(storage.get_token_data_by_resource_server().items())]


@dataclass(frozen=True)
class LoginResult:
    identity: Identity
    logged_in_now: bool  # False: the stored login already had every scope and consent
    data_access: tuple[str, ...]
    tokens: list[StoredToken]
    token_file: Path

    def lines(self) -> list[str]:
        now = time.time()
        head = "logged in to Globus" if self.logged_in_now else "already logged in to Globus with every consent needed"
        lines = [f"{head} as {self.identity.describe()}", f"tokens in {self.token_file} (mode 0600)"]
        lines += [f"  {t.line(now)}" for t in self.tokens]
        if self.data_access:
            lines.append(f"  data_access consent asked for collection {', '.join(self.data_access)}")
        return lines


def login(
    data_access_collections: Sequence[str] = (), *, local_server: bool = True, force: bool = False
) -> LoginResult:
    """Log in (or, for a service identity, get client-credentials tokens) for every scope fedhpc needs.

    Nothing happens when the stored login already meets every scope and
    consent, unless `force`.
    """
    identity = identity_from_env()
    storage = open_token_storage(identity.namespace)
    try:
        def flow(client: globus_sdk.AuthLoginClient) -> LoginFlowManager:
            return TerminalLogin(client, local_server=local_server)

        with build_app(identity, login_requirements(data_access_collections), storage, flow) as app:
            # a service's tokens come by client credentials whenever asked: its app never reports a login due
            needed = force or identity.is_service or app.login_required()
            if needed:
                try:
                    app.login(force=True)
                except globus_sdk.AuthAPIError as e:
                    raise AuthError(
                        f"Globus Auth refused the login ({e.code}: a code pasted incompletely or used twice?); "
                        "run `fedhpc login` again"
                    ) from e
        tokens = stored_tokens(storage, identity)
        return LoginResult(identity, needed, tuple(data_access_collections), tokens, token_file())
    finally:
        storage.close()


@dataclass(frozen=True)
class LogoutResult:
    identity: Identity
    removed: list[str]  # resource servers whose tokens were deleted here
    revoke_failures: list[str]
    file_removed: bool

    def lines(self) -> list[str]:
        if not self.removed:
            return [f"not logged in to Globus as {self.identity.describe()}; nothing to do"]
        lines = [f"logged out of Globus ({', '.join(self.removed)}); tokens revoked and deleted"]
        if self.file_removed:
            lines.append(f"removed {token_file()}")
        return lines


def logout() -> LogoutResult:
    """Revoke this identity's tokens at Globus Auth and delete them; delete the token file once it holds none.

    A token that cannot be revoked (Globus Auth unreachable) is deleted here
    all the same and reported, so a logout never leaves tokens on disk.
    """
    identity = identity_from_env()
    if not token_file().exists():
        return LogoutResult(identity, [], [], False)
    storage = open_token_storage(identity.namespace)
    client = login_client(identity)
    removed, failures = [], []
    for resource_server, data in sorted(storage.get_token_data_by_resource_server().items()):
        for kind, token in (("access", data.access_token), ("refresh", data.refresh_token)):
            if token is None:
                continue
            try:
                client.oauth2_revoke_token(token)
            except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as e:
                failures.append(f"{resource_server} {kind} token: {e}")
        storage.remove_token_data(resource_server)
        removed.append(resource_server)
    client.close()
    result = LogoutResult(identity, removed, failures, remove_token_file_if_empty(storage))
    if failures:
        raise AuthError(
            "deleted the stored Globus tokens but could not revoke "
            + "; ".join(failures)
            + f". They stay valid until they expire: revoke fedhpc's consent at {CONSENTS_URL}"
        )
    return result


@dataclass(frozen=True)
class WhoAmI:
    identity: Identity
    identity_id: str | None
    user: dict[str, str]  # preferred_username, name, email, as userinfo gave them
    tokens: list[StoredToken]
    data_access: list[str] | None  # collections with a data_access consent under this client's Transfer consent
    problem: str | None  # why Globus Auth could not be asked (offline, login revoked)

    def lines(self) -> list[str]:
        if self.identity.is_service:
            lines = [f"acting as {self.identity.describe()}"]
        else:
            who = self.user.get("preferred_username") or self.identity_id or "an unknown identity"
            extra = ", ".join(v for v in (self.user.get("name"), self.user.get("email")) if v)
            lines = [
                f"logged in to Globus as {who}{f' ({extra})' if extra else ''}",
                f"through {self.identity.describe()}",
            ]
            if self.identity_id:
                lines.append(f"identity id {self.identity_id}")
        now = time.time()
        lines += [f"  {t.line(now)}" for t in self.tokens]
        if self.data_access is not None:
            collections = ", ".join(self.data_access) if self.data_access else "none"
            lines.append(f"  data_access consents (mapped collections): {collections}")
        if self.problem:
            lines.append(f"could not ask Globus Auth: {self.problem}")
        return lines


def whoami() -> WhoAmI | None:
    """The stored login and, when Globus Auth answers, who it is and which collections it holds consents for.

    None when not logged in. Never prompts: an unusable login is reported in `problem`.
    """
    identity = identity_from_env()
    if not token_file().exists():
        return None
    storage = open_token_storage(identity.namespace)
    try:
        tokens = stored_tokens(storage, identity)
        if not tokens:
            return None
        stored = storage.get_token_data_by_resource_server().values()
        identity_id = next((d.identity_id for d in stored if d.identity_id), None)
        if identity.is_service:
            return WhoAmI(identity, identity_id, {}, tokens, None, None)
        user: dict[str, str] = {}
        data_access, problem = None, None
        try:
            with build_app(identity, {AUTH: [AuthScopes.openid]}, storage) as app:
                auth = globus_sdk.AuthClient(app=app)
                info = auth.userinfo()
                user = {k: str(info[k]) for k in ("preferred_username", "name", "email") if info.get(k)}
                identity_id = str(info.get("sub") or identity_id)
                data_access = consented_collections(auth.get_consents(identity_id).data.get("consents", []))
                tokens = stored_tokens(storage, identity)  # userinfo may have refreshed the auth token
        except (AuthError, globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as e:
            problem = str(e)
        return WhoAmI(identity, identity_id, user, tokens, data_access, problem)
    finally:
        storage.close()


def consented_collections(consents: list[dict[str, Any]]) -> list[str]:
    """Collections with an approved data_access consent under a Transfer consent.

    The consents are this client's only (``get_consents`` without ``all``);
    a data_access consent elsewhere in the tree would not serve Transfer.
    """
    by_id = {c["id"]: c for c in consents}
    found = []
    for consent in consents:
        collection = data_access_collection(consent.get("scope_name", ""))
        path = consent.get("dependency_path") or []
        parent = by_id.get(path[-2]) if len(path) >= 2 else None
        if (
            collection
            and parent is not None
            and parent.get("scope_name") == TransferScopes.all.scope_string
            and consent.get("status") == "approved"
        ):
            found.append(collection)
    return list(dict.fromkeys(found))
