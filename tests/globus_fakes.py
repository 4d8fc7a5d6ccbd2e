"""Globus Auth, Transfer and Compute at their HTTP edge, for tests: no network, no prompt, no credentials.

Requests are answered by the `responses` library, with globus-sdk's recorded
responses (`globus_sdk.testing`) where one fits and otherwise bodies shaped
like them. An unanswered request fails the test (responses refuses it), so a
test also proves which calls were *not* made. ID tokens are real JWTs signed
with a key made here and published as Globus Auth's JWKS, so globus-sdk
verifies them exactly as it verifies Globus Auth's.
"""

from __future__ import annotations

import functools
import json
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import responses
from cryptography.hazmat.primitives.asymmetric import rsa
from globus_sdk.scopes import ComputeScopes, TransferScopes
from globus_sdk.testing import RegisteredResponse, get_response_set, load_response
from globus_sdk.token_storage import TokenStorageData

from fedhpc.globus.auth import identity_from_env
from fedhpc.globus.storage import open_token_storage

# The identity and the mapped collection of globus-sdk's recorded get_consents response:
# the consent tree there is Transfer → data_access on that collection.
CONSENTS = get_response_set("auth.get_consents").lookup("default")
IDENTITY_ID = CONSENTS.metadata["identity_id"]
MAPPED_COLLECTION = "542a86fc-1766-450d-841f-065488a2ec01"
OTHER_COLLECTION = "0b3c1a9e-5f7d-4c2b-9e8a-1d2f3a4b5c6d"
SERVER_COLLECTION = "c9d8e7f6-a5b4-4c3d-8e2f-112233445566"
ENV_VARS = (
    "FEDHPC_GLOBUS_CLIENT_ID", "FEDHPC_GLOBUS_CLIENT_SECRET", "GLOBUS_COMPUTE_CLIENT_ID",
    "GLOBUS_COMPUTE_CLIENT_SECRET", "GLOBUS_SDK_ENVIRONMENT",
)
AUTH_SCOPES = "openid profile email"


@pytest.fixture
def globus_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """FEDHPC_HOME in tmp_path, no Globus variables from the caller's shell, and every HTTP request mocked."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "fedhpc-home"
    monkeypatch.setenv("FEDHPC_HOME", str(home))
    responses.start()
    try:
        yield home
    finally:
        responses.stop()
        responses.reset()


@dataclass
class FakeGlobusAuth:
    """Globus Auth's signing key, published at the well-known addresses globus-sdk fetches it from."""

    key: rsa.RSAPrivateKey

    def publish(self) -> None:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        load_response(RegisteredResponse(service="auth", path="/.well-known/openid-configuration", json={
            "issuer": "https://auth.globus.org",
            "jwks_uri": "https://auth.globus.org/jwk.json",
            "id_token_signing_alg_values_supported": ["RS512"],
        }))
        load_response(RegisteredResponse(service="auth", path="/jwk.json", json={"keys": [jwk]}))

    def id_token(self, audience: str, subject: str = IDENTITY_ID) -> str:
        now = int(time.time())
        claims = {"sub": subject, "aud": audience, "iss": "https://auth.globus.org", "iat": now, "exp": now + 172800,
                  "preferred_username": "ada@example.org", "name": "Ada Lovelace", "email": "ada@example.org"}
        return jwt.encode(claims, self.key, algorithm="RS512")

    def code_exchange_response(self, audience: str, tag: str = "1") -> RegisteredResponse:
        """Globus Auth's answer to a code exchange: the auth token (with id_token), then Transfer's and Compute's."""
        def token(resource_server: str, scope: str) -> dict:
            return {"access_token": f"{resource_server}-at-{tag}", "refresh_token": f"{resource_server}-rt-{tag}",
                    "scope": scope, "resource_server": resource_server, "expires_in": 172800, "token_type": "Bearer"}

        body = {**token("auth.globus.org", AUTH_SCOPES), "id_token": self.id_token(audience), "state": "_default",
                "other_tokens": [token(TransferScopes.resource_server, TransferScopes.all.scope_string),
                                 token(ComputeScopes.resource_server, ComputeScopes.all.scope_string)]}
        return RegisteredResponse(service="auth", path="/v2/oauth2/token", method="POST", json=body)


@functools.cache
def signing_key() -> rsa.RSAPrivateKey:
    """One key for the whole session: making an RSA key takes a noticeable fraction of a second."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def fake_auth(globus_home: Path) -> FakeGlobusAuth:
    auth = FakeGlobusAuth(signing_key())
    auth.publish()
    return auth


def store_tokens(*, expires_in: float = 172800, refresh: bool = True, tag: str = "stored",
                 resource_servers: tuple[str, ...] = ("auth.globus.org", "transfer.api.globus.org", "funcx_service"),
                 ) -> None:
    """Tokens as `fedhpc login` leaves them, for the identity the environment selects."""
    scopes = {"auth.globus.org": AUTH_SCOPES, TransferScopes.resource_server: TransferScopes.all.scope_string,
              ComputeScopes.resource_server: ComputeScopes.all.scope_string}
    identity = identity_from_env()
    storage = open_token_storage(identity.namespace)
    storage.store_token_data_by_resource_server({
        rs: TokenStorageData(
            resource_server=rs, identity_id=None if identity.is_service else IDENTITY_ID, scope=scopes[rs],
            access_token=f"{rs}-at-{tag}", refresh_token=f"{rs}-rt-{tag}" if refresh else None,
            expires_at_seconds=int(time.time() + expires_in), token_type="Bearer",
        )
        for rs in resource_servers
    })
    storage.close()


def refresh_response(resource_server: str, scope: str, access_token: str) -> RegisteredResponse:
    """Globus Auth's answer to a refresh grant: a new access token, the same refresh token."""
    return RegisteredResponse(service="auth", path="/v2/oauth2/token", method="POST", json={
        "access_token": access_token, "refresh_token": f"{resource_server}-rt-stored", "scope": scope,
        "resource_server": resource_server, "expires_in": 172800, "token_type": "Bearer", "other_tokens": [],
    })


def form(request: responses.PreparedRequest) -> dict[str, str]:
    """A form-encoded request body (an OAuth2 token request) as a dict."""
    body = request.body.decode() if isinstance(request.body, bytes) else request.body or ""
    return dict(urllib.parse.parse_qsl(body))


def oauth_requests(path: str = "/v2/oauth2/token") -> list[dict[str, str]]:
    return [form(call.request) for call in responses.calls if urllib.parse.urlparse(call.request.url).path == path]


def transfer_ls(collection: str, *, status: int = 200, code: str = "", message: str = "") -> None:
    """Transfer's directory listing of `collection` (an empty directory), or its error document."""
    path = f"/v0.10/operation/endpoint/{collection}/ls"
    if status == 200:
        body = {"DATA_TYPE": "file_list", "DATA": [], "path": "/", "endpoint": collection, "length": 0,
                "total": 0, "limit": 1, "offset": 0, "has_next_page": False}
    else:
        body = {"code": code, "message": message, "request_id": "abc", "resource": path}
    load_response(RegisteredResponse(service="transfer", path=path, status=status, json=body))


def transfer_mkdir(collection: str, *, status: int = 202, code: str = "DirectoryCreated", message: str = "") -> None:
    path = f"/v0.10/operation/endpoint/{collection}/mkdir"
    body = {"DATA_TYPE": "mkdir_result", "code": code, "message": message or "The directory was created successfully",
            "request_id": "abc", "resource": path}
    load_response(RegisteredResponse(service="transfer", path=path, method="POST", status=status, json=body))


def compute_version() -> None:
    """The Compute service's version document, which `globus_compute_sdk.Client` checks when it is made.

    globus-sdk's recording of it (compute.v2.get_version, case all) names the field
    ``min_endpoint_version``; the Compute SDK reads ``min_ep_version``, as the service sends it.
    """
    load_response(RegisteredResponse(service="compute", path="/v2/version", json={
        "api": "1.23.0", "min_sdk_version": "1.0.0", "min_ep_version": "1.0.0"}))
