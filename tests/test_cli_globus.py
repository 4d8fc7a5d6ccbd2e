"""`fedhpc login` / `logout` / `whoami` and `fedhpc validate --online`, through the real command line.

Globus answers at its HTTP edge (globus_fakes); the only stand-in on our side
is `stdin_is_terminal`, since the test runner's stdin is never a terminal.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import responses
from globus_sdk.testing import RegisteredResponse, get_response_set, load_response
from typer.testing import CliRunner

from fedhpc.cli import app
from fedhpc.globus import login as globus_login
from fedhpc.globus.auth import identity_from_env
from fedhpc.globus.storage import open_token_storage, token_file
from globus_fakes import (  # noqa: F401  (fixtures)
    IDENTITY_ID,
    MAPPED_COLLECTION,
    SERVER_COLLECTION,
    compute_version,
    fake_auth,
    globus_home,
    oauth_requests,
    store_tokens,
    transfer_ls,
    transfer_mkdir,
)
from conftest import fedhpc_command

ENDPOINT = get_response_set("compute.v2.get_endpoint_status").metadata["endpoint_id"]
TOKEN_SERVERS = {"auth.globus.org", "transfer.api.globus.org", "funcx_service"}


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """One facility on a Globus Compute endpoint, staging through a mapped GCS collection and the server's GCP."""
    server_dir = tmp_path / "server-staging"
    server_dir.mkdir()
    path = tmp_path / "experiment.yaml"
    path.write_text(f"""
name: globus-check
facilities:
  - name: polaris
    data: /lus/eagle/projects/chem/train.jsonl
    launcher: {{kind: globus-compute, endpoint_id: {ENDPOINT}, nodes: 2, ranks_per_node: 4}}
    mover:
      kind: globus-transfer
      facility_collection: {MAPPED_COLLECTION}
      facility_path: /projects/chem/fedhpc
      facility_dir: /lus/eagle/projects/chem/fedhpc
      facility_data_access: true
      server_collection: {SERVER_COLLECTION}
      server_dir: {server_dir}
""")
    return path


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def stored_tokens() -> dict:
    storage = open_token_storage(identity_from_env().namespace)
    try:
        return storage.get_token_data_by_resource_server()
    finally:
        storage.close()


@pytest.mark.parametrize("how", ["--no-local-server", "ssh-session"])
def test_login_pastes_a_code_and_keeps_refresh_tokens_private(
    how: str, experiment: Path, fake_auth, globus_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(globus_login, "stdin_is_terminal", lambda: True)
    if how == "ssh-session":  # no flag: the browser flow is tried and gives way, as it must over SSH
        monkeypatch.setenv("SSH_CONNECTION", "10.0.0.1 50000 10.0.0.2 22")
    load_response(fake_auth.code_exchange_response(identity_from_env().client_id))

    result = invoke("login", str(experiment), *([how] if how.startswith("--") else []), input="THE-CODE\n")

    assert result.exit_code == 0, result.output
    authorize_url = next(word for word in result.output.split() if "/v2/oauth2/authorize?" in word)
    scopes = urllib.parse.parse_qs(urllib.parse.urlparse(authorize_url).query)["scope"][0]
    assert f"[*https://auth.globus.org/scopes/{MAPPED_COLLECTION}/data_access]" in scopes
    assert "openid" in scopes and "facd7ccc-c5f4-42aa-916b-a0e270e2c2a9/all" in scopes
    assert SERVER_COLLECTION not in scopes, "the server's collection is not mapped: no data_access asked for it"
    [exchange] = oauth_requests()
    assert exchange["grant_type"] == "authorization_code" and exchange["code"] == "THE-CODE"
    tokens = stored_tokens()
    assert set(tokens) == TOKEN_SERVERS
    assert all(t.refresh_token and t.identity_id == IDENTITY_ID for t in tokens.values())
    assert token_file().stat().st_mode & 0o777 == 0o600 and globus_home.stat().st_mode & 0o777 == 0o700
    assert "logged in to Globus" in result.output and MAPPED_COLLECTION in result.output


def test_login_with_every_consent_in_place_does_not_log_in_again(experiment: Path, globus_home: Path) -> None:
    store_tokens()
    load_response("auth.get_consents")  # Transfer → data_access on MAPPED_COLLECTION

    result = invoke("login", str(experiment))

    assert result.exit_code == 0, result.output
    assert "already logged in" in result.output
    assert not oauth_requests(), "no login flow, no token request"


def test_login_without_a_terminal_fails_at_once_with_what_to_run(experiment: Path, globus_home: Path) -> None:
    result = invoke("login", str(experiment))

    assert result.exit_code == 1
    assert "needs a terminal" in result.output and "FEDHPC_GLOBUS_CLIENT_ID" in result.output
    assert "oauth2/authorize" not in result.output, "no login URL shown where no one can answer"
    assert len(responses.calls) == 0 and not stored_tokens()


def test_login_in_a_process_whose_stdin_is_not_a_terminal_never_waits(tmp_path: Path) -> None:
    completed = subprocess.run(
        fedhpc_command("login"), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FEDHPC_HOME": str(tmp_path / "fedhpc")},
    )
    assert completed.returncode == 1, completed.stderr
    assert "needs a terminal" in completed.stderr and "Authorization Code" not in completed.stdout


def test_a_service_identity_logs_in_without_a_terminal(globus_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDHPC_GLOBUS_CLIENT_ID", "7f2b3c4d-0000-4000-8000-00000000c11e")
    monkeypatch.setenv("FEDHPC_GLOBUS_CLIENT_SECRET", "s3cret")
    load_response("auth.oauth2_client_credentials_tokens")

    result = invoke("login")

    assert result.exit_code == 0, result.output
    assert oauth_requests()[0]["grant_type"] == "client_credentials"
    assert "service identity" in result.output and "transfer.api.globus.org" in stored_tokens()


def test_logout_revokes_every_token_and_deletes_the_file(globus_home: Path) -> None:
    store_tokens()
    load_response("auth.oauth2_revoke_token")

    result = invoke("logout")

    assert result.exit_code == 0, result.output
    revoked = {r["token"] for r in oauth_requests("/v2/oauth2/token/revoke")}
    assert revoked == {f"{rs}-{kind}-stored" for rs in TOKEN_SERVERS for kind in ("at", "rt")}
    assert not token_file().exists()
    assert invoke("whoami").exit_code == 1


def test_logout_that_cannot_revoke_still_deletes_and_says_so(globus_home: Path) -> None:
    store_tokens(resource_servers=("transfer.api.globus.org",))
    load_response(RegisteredResponse(service="auth", path="/v2/oauth2/token/revoke", method="POST", status=400,
                                     json={"error": "invalid_request"}))

    result = invoke("logout")

    assert result.exit_code == 1
    assert "could not revoke" in result.output and "app.globus.org/account/consents" in result.output
    assert not token_file().exists()


def test_whoami_shows_identity_tokens_and_consents(globus_home: Path) -> None:
    store_tokens()
    load_response(RegisteredResponse(service="auth", path="/v2/oauth2/userinfo", json={
        "sub": IDENTITY_ID, "preferred_username": "ada@example.org", "name": "Ada Lovelace",
        "email": "ada@example.org"}))
    load_response("auth.get_consents")

    result = invoke("whoami")

    assert result.exit_code == 0, result.output
    assert "ada@example.org" in result.output and "Ada Lovelace" in result.output and IDENTITY_ID in result.output
    assert all(f"{rs}:" in result.output for rs in TOKEN_SERVERS) and "expires" in result.output
    assert f"data_access consents (mapped collections): {MAPPED_COLLECTION}" in result.output


def test_whoami_when_globus_auth_refuses_still_shows_the_stored_login(globus_home: Path) -> None:
    """The login was revoked: userinfo answers 401, the refresh that follows is refused; whoami reports, not prompts."""
    store_tokens()
    load_response("auth.userinfo", case="unauthorized")
    load_response("auth.oauth2_exchange_code_for_tokens", case="invalid_grant")

    result = invoke("whoami")

    assert result.exit_code == 0, result.output
    assert "could not ask Globus Auth: Globus Auth no longer accepts the stored login" in result.output
    assert "fedhpc login" in result.output and "transfer.api.globus.org:" in result.output


def test_whoami_not_logged_in(globus_home: Path) -> None:
    result = invoke("whoami")
    assert result.exit_code == 1 and "not logged in" in result.output


def test_validate_shows_the_endpoint_and_collections_a_run_will_use(experiment: Path) -> None:
    result = invoke("validate", str(experiment))

    assert result.exit_code == 0, result.output
    assert f"globus-compute endpoint {ENDPOINT}" in result.output
    assert f"facility collection {MAPPED_COLLECTION} path /projects/chem/fedhpc" in result.output
    assert "the facility's jobs see /lus/eagle/projects/chem/fedhpc" in result.output
    assert f"server collection {SERVER_COLLECTION}" in result.output


def online_responses() -> None:
    compute_version()
    load_response("transfer.get_submission_id")
    load_response("transfer.submit_delete")


def test_validate_online_all_reachable_and_writable(experiment: Path, globus_home: Path) -> None:
    store_tokens()
    load_response("auth.get_consents")
    online_responses()
    load_response("compute.v2.get_endpoint_status")
    for collection in (MAPPED_COLLECTION, SERVER_COLLECTION):
        transfer_ls(collection)
        transfer_mkdir(collection)

    result = invoke("validate", str(experiment), "--online")

    assert result.exit_code == 0, result.output
    assert f"ok  polaris: compute endpoint {ENDPOINT}: online" in result.output
    assert result.output.count("(write): writable") == 2 and "FAILED" not in result.output
    probes = [c.request for c in responses.calls if c.request.url.endswith("/mkdir")]
    deletes = [c.request.body for c in responses.calls if c.request.url.endswith("/delete")]
    assert len(probes) == 2 and len(deletes) == 2
    for probe, delete in zip(probes, deletes):
        probe_path = json.loads(probe.body)["path"]
        assert "/.fedhpc-probe-" in probe_path and probe_path.encode() in delete, "each probe is removed again"


def test_validate_online_reports_an_offline_endpoint_and_an_unwritable_collection(
    experiment: Path, globus_home: Path
) -> None:
    store_tokens()
    load_response("auth.get_consents")
    online_responses()
    load_response(RegisteredResponse(service="compute", path=f"/v2/endpoints/{ENDPOINT}/status",
                                     json={"status": "offline", "details": {}}))
    transfer_ls(MAPPED_COLLECTION)
    transfer_mkdir(MAPPED_COLLECTION, status=403, code="EndpointPermissionDenied",
                   message="Denied by endpoint: /projects/chem/fedhpc is read-only for this identity")
    transfer_ls(SERVER_COLLECTION, status=403, code="ConsentRequired", message="Missing required data_access consent")

    result = invoke("validate", str(experiment), "--online")

    assert result.exit_code == 1, result.output
    assert f"FAILED  polaris: compute endpoint {ENDPOINT}: offline" in result.output
    assert "not writable: permission denied" in result.output
    assert "set mover.server_data_access: true" in result.output


def test_validate_online_without_a_login_names_the_command(experiment: Path, globus_home: Path) -> None:
    result = invoke("validate", str(experiment), "--online")

    assert result.exit_code == 1
    assert "fedhpc login" in result.output and len(responses.calls) == 0
