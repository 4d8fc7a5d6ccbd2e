"""Globus clients for fedhpc's server process, from the tokens ``fedhpc login`` stored; never a prompt.

Who fedhpc acts as (`identity_from_env`):

- a service identity, when ``FEDHPC_GLOBUS_CLIENT_ID`` and ``FEDHPC_GLOBUS_CLIENT_SECRET`` are set
  (or Globus Compute's own ``GLOBUS_COMPUTE_CLIENT_ID`` / ``GLOBUS_COMPUTE_CLIENT_SECRET``, so a
  machine already set up for Compute needs nothing new): a confidential client that gets its
  tokens by the client-credentials grant, with no person involved;
- otherwise a person, through a native app. fedhpc has no registered client of its own yet, so
  the default is the Globus Compute SDK's public native client (the consent page says "Globus
  Compute"); ``FEDHPC_GLOBUS_CLIENT_ID`` alone names your own native app instead.

`transfer_client` and `compute_client` are what the launcher and movers call. A person's tokens
come only from ``fedhpc login``: here every path that globus-sdk would answer with a login flow
(no tokens, a missing consent, a consent-required error from a service, a refresh token Globus
Auth no longer accepts) raises `AuthError` naming the command to run instead, so a server in a
batch job or under nohup never waits on a prompt no one sees.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import globus_sdk
from globus_sdk.authorizers import GlobusAuthorizer
from globus_sdk.config import get_environment_name
from globus_sdk.gare import GlobusAuthorizationParameters
from globus_sdk.login_flows import LoginFlowManager
from globus_sdk.scopes import ComputeScopes, Scope
from globus_sdk.token_storage import TokenStorage, TokenValidationError
from globus_sdk.token_storage.validating_token_storage import (
    IdentityMismatchError,
    MissingTokenError,
    UnmetScopeRequirementsError,
)

from fedhpc.errors import AuthError
from fedhpc.globus.scopes import COMPUTE, TRANSFER, data_access_collection, transfer_scope
from fedhpc.globus.storage import open_token_storage

if TYPE_CHECKING:
    import globus_compute_sdk

APP_NAME = "fedhpc"
LOGIN_HINT = (
    "run `fedhpc login EXPERIMENT.yaml` in a terminal (with your experiment file, so the consents its collections "
    "need are asked for too), or set FEDHPC_GLOBUS_CLIENT_ID and FEDHPC_GLOBUS_CLIENT_SECRET to act as a service "
    "identity"
)
ENV_PREFIXES = ("FEDHPC_GLOBUS", "GLOBUS_COMPUTE")


def _default_native_client_id() -> str:
    """The Globus Compute SDK's public native client: imported, not copied, so it follows the SDK."""
    from globus_compute_sdk.sdk.auth.globus_app import DEFAULT_CLIENT_ID

    return DEFAULT_CLIENT_ID


@dataclass(frozen=True)
class Identity:
    """The Globus client fedhpc logs in through, and where its id came from (for messages)."""

    client_id: str
    client_secret: str | None
    source: str

    @property
    def is_service(self) -> bool:
        return self.client_secret is not None

    @property
    def namespace(self) -> str:
        """Its tokens' namespace in the token file: a refresh token only works with the client that got it."""
        return f"{get_environment_name()}/{'client' if self.is_service else 'user'}/{self.client_id}"

    def describe(self) -> str:
        kind = "service identity (client credentials)" if self.is_service else "native app"
        return f"{kind} {self.client_id}, from {self.source}"


def identity_from_env() -> Identity:
    """The fedhpc variables win over Globus Compute's; a secret without its id is a mistake, not a person."""
    for prefix in ENV_PREFIXES:
        client_id = os.environ.get(f"{prefix}_CLIENT_ID") or None
        secret = os.environ.get(f"{prefix}_CLIENT_SECRET") or None
        if secret and not client_id:
            raise AuthError(
                f"{prefix}_CLIENT_SECRET is set but {prefix}_CLIENT_ID is not: set both to act as a service "
                "identity, or unset the secret to log in as yourself"
            )
        if client_id:
            return Identity(client_id, secret, f"{prefix}_CLIENT_ID")
    return Identity(_default_native_client_id(), None, "the Globus Compute SDK's public native client (the default)")


def login_client(identity: Identity) -> globus_sdk.NativeAppAuthClient | globus_sdk.ConfidentialAppAuthClient:
    environment = get_environment_name()
    if identity.client_secret is not None:
        return globus_sdk.ConfidentialAppAuthClient(
            identity.client_id, identity.client_secret, app_name=APP_NAME, environment=environment
        )
    return globus_sdk.NativeAppAuthClient(identity.client_id, app_name=APP_NAME, environment=environment)


class NoPromptLogin(LoginFlowManager):
    """Stands where globus-sdk would start a login flow (a consent-required error, `GlobusApp.login`): fails instead."""

    def run_login_flow(self, auth_parameters: GlobusAuthorizationParameters) -> globus_sdk.OAuthTokenResponse:
        wanted = ", ".join(auth_parameters.required_scopes or [])
        raise AuthError(f"Globus wants a new login{f' (for {wanted})' if wanted else ''}; {LOGIN_HINT}")


def _no_prompt(client: globus_sdk.AuthLoginClient) -> LoginFlowManager:
    return NoPromptLogin(client, request_refresh_tokens=True)


def _explain(app: globus_sdk.GlobusApp, error: TokenValidationError) -> str:
    if isinstance(error, MissingTokenError):
        return f"not logged in to Globus (no {error.resource_server} tokens for this client)"
    if isinstance(error, UnmetScopeRequirementsError):
        wanted = [
            collection
            for scopes in app.scope_requirements.values()
            for scope in scopes
            for dependency in scope.dependencies
            if (collection := data_access_collection(dependency.scope_string))
        ]
        asked = f" (this asks for Transfer with data_access on collection {', '.join(wanted)})" if wanted else ""
        return f"the stored Globus login lacks a consent{asked}"
    if isinstance(error, IdentityMismatchError):
        return "the stored Globus tokens belong to another identity than the new login; run `fedhpc logout` first"
    return f"the stored Globus tokens are not usable: {error}"


def refuse_relogin(app: globus_sdk.GlobusApp, error: TokenValidationError) -> None:
    """globus-sdk's hook for unusable stored tokens, which by default starts a login flow: names the command."""
    raise AuthError(f"{_explain(app, error)}; {LOGIN_HINT}") from error


class _RenewalRefusedAsAuthError(GlobusAuthorizer):
    """Globus Auth refusing to renew a token (revoked or stale refresh token, wrong client secret) as an AuthError.

    Renewal happens inside any service call, days into a run; the mover or
    launcher then sees the one error type that says what to do.
    """

    def __init__(self, inner: GlobusAuthorizer, identity: Identity):
        self._inner = inner
        self._identity = identity

    def get_authorization_header(self) -> str | None:
        try:
            return self._inner.get_authorization_header()
        except globus_sdk.AuthAPIError as e:
            if e.http_status not in (400, 401, 403):
                raise
            if self._identity.is_service:
                variable = self._identity.source  # <PREFIX>_CLIENT_ID
                raise AuthError(
                    f"Globus Auth refused the client credentials ({e.code}): check {variable} and "
                    f"{variable.removesuffix('_ID')}_SECRET"
                ) from e
            raise AuthError(
                f"Globus Auth no longer accepts the stored login ({e.code}: revoked, or unused for six months); "
                f"{LOGIN_HINT}"
            ) from e

    def handle_missing_authorization(self) -> bool:
        return self._inner.handle_missing_authorization()


class _GuardedAuthorizers:
    """Mixin for a GlobusApp: every authorizer it hands out turns a refused renewal into AuthError."""

    identity: Identity

    def get_authorizer(self, resource_server: str) -> GlobusAuthorizer:
        return _RenewalRefusedAsAuthError(super().get_authorizer(resource_server), self.identity)  # type: ignore[misc]


class FedhpcUserApp(_GuardedAuthorizers, globus_sdk.UserApp):
    def __init__(self, identity: Identity, **kwargs: Any):
        self.identity = identity
        super().__init__(APP_NAME, **kwargs)


class FedhpcClientApp(_GuardedAuthorizers, globus_sdk.ClientApp):
    def __init__(self, identity: Identity, **kwargs: Any):
        self.identity = identity
        super().__init__(APP_NAME, **kwargs)


LoginFlowFactory = Callable[[globus_sdk.AuthLoginClient], LoginFlowManager]


def build_app(
    identity: Identity,
    requirements: Mapping[str, list[Scope]],
    storage: TokenStorage,
    login_flow: LoginFlowFactory | None = None,
) -> globus_sdk.GlobusApp:
    """A GlobusApp over `storage` that cannot prompt unless given an interactive `login_flow` (``fedhpc login``).

    A service identity's "login" is a client-credentials grant, never
    interactive, so its app keeps globus-sdk's re-login on unusable tokens.
    """
    client = login_client(identity)
    if identity.is_service:
        config = globus_sdk.GlobusAppConfig(token_storage=storage, environment=get_environment_name())
        return FedhpcClientApp(identity, login_client=client, scope_requirements=requirements, config=config)
    config = globus_sdk.GlobusAppConfig(
        token_storage=storage,
        request_refresh_tokens=True,
        login_flow_manager=(login_flow or _no_prompt)(client),
        token_validation_error_handler=refuse_relogin,
        environment=get_environment_name(),
    )
    return FedhpcUserApp(identity, login_client=client, scope_requirements=requirements, config=config)


def _usable_app(requirements: Mapping[str, list[Scope]], resource_server: str) -> globus_sdk.GlobusApp:
    """An app whose `resource_server` token is valid now (refreshed if it had expired): fail at start, not mid-run."""
    identity = identity_from_env()
    storage = open_token_storage(identity.namespace)
    try:
        app = build_app(identity, requirements, storage)
        app.get_authorizer(resource_server).get_authorization_header()
    except BaseException:
        storage.close()
        raise
    return app


def transfer_client(data_access_collections: Sequence[str] = ()) -> globus_sdk.TransferClient:
    """A TransferClient with consent for the data_access scope of each given (GCS v5 mapped) collection.

    Raises `AuthError` with the command to run when there is no login, the
    login lacks one of those consents, or Globus Auth refuses to renew it.
    """
    app = _usable_app({TRANSFER: [transfer_scope(data_access_collections)]}, TRANSFER)
    return globus_sdk.TransferClient(app=app)


def compute_client() -> globus_compute_sdk.Client:
    """A Globus Compute client on fedhpc's tokens, never on the Compute SDK's own login (which would prompt)."""
    from globus_compute_sdk import Client

    return Client(app=_usable_app({COMPUTE: [ComputeScopes.all]}, COMPUTE))
