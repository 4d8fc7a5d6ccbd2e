"""fedhpc.globus.auth: the Transfer and Compute clients the launcher and movers get, at Globus's HTTP edge.

Every Globus request is answered by `responses` (globus_fakes); `input` fails
the test if anything tries to prompt.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import responses
from globus_compute_sdk.sdk.auth.globus_app import DEFAULT_CLIENT_ID
from globus_sdk.scopes import ComputeScopes, TransferScopes
from globus_sdk.testing import get_last_request, load_response

from fedhpc.errors import AuthError
from fedhpc.globus.auth import compute_client, identity_from_env, transfer_client
from fedhpc.globus.storage import open_token_storage, token_file
from globus_fakes import (  # noqa: F401  (fixtures)
    IDENTITY_ID,
    MAPPED_COLLECTION,
    OTHER_COLLECTION,
    compute_version,
    globus_home,
    oauth_requests,
    refresh_response,
    store_tokens,
    transfer_ls,
)


@pytest.fixture(autouse=True)
def no_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> str:
        raise AssertionError("something prompted for input")

    monkeypatch.setattr("builtins.input", refuse)


def stored(resource_server: str):
    storage = open_token_storage(identity_from_env().namespace)
    try:
        return storage.get_token_data(resource_server)
    finally:
        storage.close()


def test_without_a_login_the_clients_raise_auth_error_naming_the_command(globus_home: Path) -> None:
    for make in (transfer_client, compute_client):
        with pytest.raises(AuthError, match="fedhpc login") as info:
            make()
        assert "not logged in" in str(info.value)
    assert len(responses.calls) == 0, "nothing may be asked of Globus before there is a login"


def test_an_expired_access_token_is_refreshed_and_stored(globus_home: Path) -> None:
    store_tokens(expires_in=-60)
    load_response(refresh_response(TransferScopes.resource_server, TransferScopes.all.scope_string, "fresh-token"))
    transfer_ls(MAPPED_COLLECTION)

    client = transfer_client()
    client.operation_ls(MAPPED_COLLECTION, path="/staging")

    [grant] = oauth_requests()
    assert grant["grant_type"] == "refresh_token" and grant["refresh_token"] == "transfer.api.globus.org-rt-stored"
    assert get_last_request().headers["Authorization"] == "Bearer fresh-token"
    token = stored(TransferScopes.resource_server)
    assert token.access_token == "fresh-token" and token.expires_at_seconds > time.time() + 3600
    assert token.refresh_token == "transfer.api.globus.org-rt-stored"
    assert token_file().stat().st_mode & 0o777 == 0o600


def test_a_revoked_refresh_token_is_an_auth_error_naming_the_command(globus_home: Path) -> None:
    store_tokens(expires_in=-60)
    load_response("auth.oauth2_exchange_code_for_tokens", case="invalid_grant")

    with pytest.raises(AuthError, match=r"no longer accepts the stored login.*fedhpc login"):
        transfer_client()


def test_a_refresh_refused_mid_run_is_an_auth_error_too(globus_home: Path) -> None:
    """Days into a run Transfer rejects the token; the SDK refreshes, Globus Auth refuses: the mover sees AuthError."""
    store_tokens()
    client = transfer_client()
    transfer_ls(MAPPED_COLLECTION, status=401, code="AuthenticationFailed", message="Token is not active")
    load_response("auth.oauth2_exchange_code_for_tokens", case="invalid_grant")

    with pytest.raises(AuthError, match="fedhpc login"):
        client.operation_ls(MAPPED_COLLECTION)
    assert oauth_requests()[0]["grant_type"] == "refresh_token"


def test_data_access_consents_are_checked_against_globus_auth(globus_home: Path) -> None:
    store_tokens()
    load_response("auth.get_consents")  # Transfer → data_access on MAPPED_COLLECTION, for IDENTITY_ID

    transfer_client([MAPPED_COLLECTION])
    with pytest.raises(AuthError, match=f"lacks a consent.*{OTHER_COLLECTION}.*fedhpc login"):
        transfer_client([MAPPED_COLLECTION, OTHER_COLLECTION])
    assert all(IDENTITY_ID in call.request.url for call in responses.calls)


def test_client_credentials_from_the_environment(globus_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDHPC_GLOBUS_CLIENT_ID", "7f2b3c4d-0000-4000-8000-00000000c11e")
    monkeypatch.setenv("FEDHPC_GLOBUS_CLIENT_SECRET", "s3cret")
    grant = load_response("auth.oauth2_client_credentials_tokens")
    transfer_ls(MAPPED_COLLECTION)

    transfer_client().operation_ls(MAPPED_COLLECTION)

    [token_request] = oauth_requests()
    assert token_request["grant_type"] == "client_credentials"
    assert TransferScopes.all.scope_string in token_request["scope"]
    assert responses.calls[0].request.headers["Authorization"].startswith("Basic ")
    assert get_last_request().headers["Authorization"] == f"Bearer {grant.metadata['access_token']}"


def test_which_identity_the_environment_selects(globus_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    person = identity_from_env()
    assert person.client_id == DEFAULT_CLIENT_ID and not person.is_service

    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_ID", "compute-id")
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_SECRET", "compute-secret")
    assert identity_from_env().client_id == "compute-id" and identity_from_env().is_service

    monkeypatch.setenv("FEDHPC_GLOBUS_CLIENT_ID", "fedhpc-native-app")
    mine = identity_from_env()
    assert mine.client_id == "fedhpc-native-app" and not mine.is_service, "fedhpc's variables win over Compute's"
    assert mine.namespace != person.namespace

    monkeypatch.delenv("FEDHPC_GLOBUS_CLIENT_ID")
    monkeypatch.setenv("FEDHPC_GLOBUS_CLIENT_SECRET", "orphan")
    with pytest.raises(AuthError, match="FEDHPC_GLOBUS_CLIENT_ID is not"):
        identity_from_env()


def test_compute_client_runs_on_fedhpc_tokens(globus_home: Path) -> None:
    store_tokens()
    compute_version()

    client = compute_client()

    assert get_last_request().headers["Authorization"] == "Bearer funcx_service-at-stored"
    assert client.app is not None and ComputeScopes.resource_server in client.app.scope_requirements


def test_a_consent_required_error_from_compute_raises_instead_of_prompting(globus_home: Path) -> None:
    store_tokens()
    compute_version()
    endpoint = load_response("compute.v2.get_endpoint_status").metadata["endpoint_id"]
    responses.replace(responses.GET, f"https://compute.api.globus.org/v2/endpoints/{endpoint}/status", status=403,
                      json={"code": "AuthorizationRequired", "reason": "a fresh MFA session is needed",
                            "authorization_parameters": {"session_required_mfa": True,
                                                         "required_scopes": [ComputeScopes.all.scope_string]}})

    with pytest.raises(AuthError, match=r"Globus wants a new login.*fedhpc login"):
        compute_client().get_endpoint_status(endpoint)


def test_token_file_and_directory_are_private(globus_home: Path) -> None:
    store_tokens()
    assert token_file().parent == globus_home
    assert globus_home.stat().st_mode & 0o777 == 0o700
    assert token_file().stat().st_mode & 0o777 == 0o600
