"""The globus-transfer mover against Globus Transfer and Auth at their HTTP edge.

A real `globus_sdk.TransferClient` (and, for token refresh, a real
`RefreshTokenAuthorizer`) talks HTTP to `responses`: either globus-sdk's
recorded responses (`globus_sdk.testing`) or `globus_edge.TransferService`,
which answers like the service with local directories as collections. Nothing
else is replaced: exchange directories are fedhpc's own, verified as a run would.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import globus_sdk
import pytest
import responses
import torch
import yaml
from globus_sdk.testing import RegisteredResponse, get_response_set, load_response
from rich.console import Console

from conftest import ROOT
from fedhpc.config import GlobusTransferMoverConfig, load_experiment
from fedhpc.errors import AuthError, ConfigError, TransferError
from fedhpc.exchange import ExchangeDir, ExchangeMeta, write_state_dict
from fedhpc.facility.movers.globus_transfer import GlobusTransferMover
from fedhpc.report.progress import ProgressView
from fedhpc.run.ledger import Ledger
from fedhpc.run.orchestrator import Orchestrator
from globus_edge import TransferService, recorded, task_document

# The recorded stat responses (not_found, permission_denied) are for this collection: the facility's here.
FACILITY = get_response_set("transfer.operation_stat").metadata["endpoint_id"]
SERVER = str(uuid.UUID(int=0x5E12E2))
TASK_ID = get_response_set("transfer.submit_transfer").metadata["task_id"]
META = ExchangeMeta(kind="update", round=1, facility="alpha", based_on_round=0, num_samples=8,
                    base_fingerprint="sha256:" + "0" * 64)
QUICKSTART_DATA = ROOT / "examples" / "quickstart" / "data"


def write_update(path: Path, scale: float = 1.0) -> Path:
    state = {"a.lora_A.weight": torch.arange(12.0).reshape(3, 4) * scale, "a.lora_B.weight": torch.ones(4, 3) * scale}
    write_state_dict(path, state, META, shard_bytes=64)  # two shards
    return path


def tree_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


@pytest.fixture
def mock():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as requests_mock:
        yield requests_mock


@pytest.fixture
def sites(tmp_path: Path) -> dict[str, Path]:
    """The directories behind the two collections: the facility's file system, and the server's GCP root."""
    return {FACILITY: tmp_path / "facility-fs", SERVER: tmp_path / "gcp"}


def mover_config(sites: dict[str, Path], **changes: Any) -> GlobusTransferMoverConfig:
    """The facility's collection names its staging directory /project/fedhpc; the server's names server_dir /fedhpc."""
    return GlobusTransferMoverConfig(**{
        "facility_collection": FACILITY, "facility_path": "/project/fedhpc",
        "facility_dir": str(sites[FACILITY] / "project" / "fedhpc"),
        "server_collection": SERVER, "server_dir": sites[SERVER] / "fedhpc", "server_path": "/fedhpc",
        "poll_interval": 0.01, "deadline": 10, **changes,
    })


def make_mover(tmp_path: Path, sites: dict[str, Path], client: globus_sdk.TransferClient | None = None,
               **changes: Any) -> GlobusTransferMover:
    client = client or globus_sdk.TransferClient(authorizer=globus_sdk.AccessTokenAuthorizer("test-token"))
    return GlobusTransferMover(mover_config(sites, **changes), tmp_path / "quick.start" / "staging" / "alpha", client)


def requests_to(mock: responses.RequestsMock, fragment: str) -> list[Any]:
    return [call.request for call in mock.calls if fragment in call.request.url]


# --- the whole path through the service -----------------------------------------------------------


def test_push_publishes_by_rename_and_pull_verifies_the_manifest(tmp_path, mock, sites):
    service = TransferService(mock, sites, polls_until_done=2)
    mover = make_mover(tmp_path, sites)
    update = write_update(tmp_path / "elsewhere" / "r0001")  # outside server_dir: staged into it first

    assert not mover.exists("global/r0001")
    assert mover.push(update, "global/r0001") == tree_bytes(update)

    at_facility = Path(mover.facility_path("global/r0001"))
    assert at_facility == sites[FACILITY] / "project" / "fedhpc" / "global" / "r0001"
    ExchangeDir(at_facility).verify()
    assert mover.exists("global/r0001")
    (document,) = service.submitted
    assert document["source_endpoint"] == SERVER and document["destination_endpoint"] == FACILITY
    assert document["sync_level"] == 3 and document["verify_checksum"] is True  # 3: checksum
    assert document["label"] == "fedhpc quick-start alpha push global-r0001"
    (item,) = document["DATA"]
    assert item["recursive"] and item["source_path"].startswith("/fedhpc/.global-r0001.partial-")
    assert item["destination_path"] == "/project/fedhpc/global/.r0001.partial-globus/"
    assert service.renamed == [
        (FACILITY, "/project/fedhpc/global/.r0001.partial-globus", "/project/fedhpc/global/r0001")
    ]
    assert list((sites[SERVER] / "fedhpc").iterdir()) == []  # the staged copy is gone

    back = tmp_path / "server-run" / "updates" / "r0001" / "alpha"
    assert mover.pull("global/r0001", back) == tree_bytes(update)
    ExchangeDir(back).verify()
    assert (back / "manifest.json").read_bytes() == (update / "manifest.json").read_bytes()
    pulled = service.submitted[1]
    assert (pulled["source_endpoint"], pulled["DATA"][0]["source_path"]) == (FACILITY, "/project/fedhpc/global/r0001/")
    assert pulled["label"] == "fedhpc quick-start alpha pull global-r0001"
    assert list((sites[SERVER] / "fedhpc").iterdir()) == []  # nothing left behind on either side
    assert sorted(p.name for p in back.parent.iterdir()) == ["alpha"]
    assert mover.peek("global/r0001/manifest.json") is None


def test_a_directory_inside_server_dir_is_sent_as_it_is(tmp_path, mock, sites):
    service = TransferService(mock, sites)
    mover = make_mover(tmp_path, sites)
    staged = write_update(sites[SERVER] / "fedhpc" / "stage" / "r0000")

    mover.push(staged, "global/r0000")

    assert service.submitted[0]["DATA"][0]["source_path"] == "/fedhpc/stage/r0000/"
    assert sorted(p.name for p in (sites[SERVER] / "fedhpc").iterdir()) == ["stage"]


def test_a_retried_push_is_a_no_op_and_other_content_is_refused(tmp_path, mock, sites):
    service = TransferService(mock, sites)
    mover = make_mover(tmp_path, sites)
    update = write_update(tmp_path / "r0001")
    mover.push(update, "updates/r0001-a0")

    assert mover.push(update, "updates/r0001-a0") == 0
    fetched = service.submitted[-1]  # the destination's manifest.json, fetched to compare
    assert [i["recursive"] for i in fetched["DATA"]] == [False]
    assert fetched["DATA"][0]["source_path"] == "/project/fedhpc/updates/r0001-a0/manifest.json"

    with pytest.raises(TransferError, match="exists and does not hold the same manifest.json"):
        mover.push(write_update(tmp_path / "other", scale=2.0), "updates/r0001-a0")
    assert len([d for d in service.submitted if d["DATA"][0]["recursive"]]) == 1


def test_a_push_interrupted_before_the_rename_resumes_into_the_same_partial(tmp_path, mock, sites):
    service = TransferService(mock, sites)
    mover = make_mover(tmp_path, sites)
    update = write_update(tmp_path / "r0002")
    partial = sites[FACILITY] / "project" / "fedhpc" / "global" / ".r0002.partial-globus"
    partial.mkdir(parents=True)
    (partial / "leftover.tmp").write_text("from a push that died")

    mover.push(update, "global/r0002")

    published = Path(mover.facility_path("global/r0002"))
    assert sorted(p.name for p in published.iterdir()) == sorted(p.name for p in update.iterdir())
    assert service.submitted[0]["delete_destination_extra"] is True and not partial.exists()


def test_a_pulled_directory_that_does_not_match_its_manifest_is_refused(tmp_path, mock, sites):
    TransferService(mock, sites)
    mover = make_mover(tmp_path, sites)
    mover.push(write_update(tmp_path / "u"), "updates/r0001-a0")
    shard = Path(mover.facility_path("updates/r0001-a0")) / "model-00001-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))

    back = tmp_path / "back"
    with pytest.raises(TransferError, match=r"/project/fedhpc/updates/r0001-a0/model-00001-of-00002\.safetensors "
                                            r"does not match its blake3 digest"):
        mover.pull("updates/r0001-a0", back)
    assert not back.exists() and list((sites[SERVER] / "fedhpc").iterdir()) == []


def test_pulling_what_the_facility_never_published_says_so(tmp_path, mock, sites):
    service = TransferService(mock, sites)
    with pytest.raises(TransferError, match="has not published it"):
        make_mover(tmp_path, sites).pull("updates/r0001-a0", tmp_path / "back")
    assert service.submitted == []


# --- failures, from globus-sdk's recorded responses -----------------------------------------------


def submit_accepted(mock: responses.RequestsMock) -> None:
    """The destination is absent and the transfer is accepted as task TASK_ID."""
    load_response("transfer.operation_stat", case="not_found", requests_mock=mock)
    load_response("transfer.get_submission_id", requests_mock=mock)
    load_response("transfer.submit_transfer", requests_mock=mock)


def task_is(mock: responses.RequestsMock, **fields: Any) -> None:
    RegisteredResponse(service="transfer", path=f"/v0.10/task/{TASK_ID}", json=task_document(task_id=TASK_ID, **fields)
                       ).add(requests_mock=mock)


def test_a_failed_task_reports_its_fault_and_the_fix(tmp_path, mock, sites):
    submit_accepted(mock)
    task_is(mock, status="FAILED", nice_status="PERMISSION_DENIED",
            fatal_error={"code": "PERMISSION_DENIED", "description": "Permission denied"})
    event = {"DATA_TYPE": "event", "code": "PERMISSION_DENIED", "is_error": True, "description": "Permission denied",
             "details": "Error (transfer)\nFile: /project/fedhpc/global/r0000\n---\n"
                        "500 Command failed. : Path not allowed.",
             "time": "2026-11-25 07:58:00+00:00"}
    RegisteredResponse(service="transfer", path=f"/v0.10/task/{TASK_ID}/event_list",
                       json={"DATA": [event], "DATA_TYPE": "event_list", "length": 1, "limit": 10, "offset": 0,
                             "total": 1}).add(requests_mock=mock)

    with pytest.raises(TransferError) as info:
        make_mover(tmp_path, sites).push(write_update(tmp_path / "g"), "global/r0000")

    message = str(info.value)
    assert f"task {TASK_ID} failed: PERMISSION_DENIED: Permission denied" in message
    assert "Path not allowed." in message and "ask the collection's administrator" in message
    assert "is_error:1" in parse_qs(requests_to(mock, "event_list")[0].url.split("?", 1)[1])["filter"]


def test_permission_denied_by_the_collection_names_who_can_fix_it(tmp_path, mock, sites):
    load_response("transfer.operation_stat", case="permission_denied", requests_mock=mock)
    with pytest.raises(TransferError) as info:
        make_mover(tmp_path, sites).exists("global/r0000")
    message = str(info.value)
    assert "403 EndpointPermissionDenied" in message and "/project/fedhpc/global/r0000" in message
    assert "ask the collection's administrator" in message and "mover.facility_path" in message


def test_a_missing_consent_asks_for_fedhpc_login_with_data_access(tmp_path, mock, sites):
    scope = f"urn:globus:auth:scope:transfer.api.globus.org:all[*https://auth.globus.org/scopes/{FACILITY}/data_access]"
    load_response("transfer.operation_stat", case="not_found", requests_mock=mock)
    load_response("transfer.get_submission_id", requests_mock=mock)
    RegisteredResponse(service="transfer", method="POST", path="/v0.10/transfer", status=403, json={
        "code": "ConsentRequired", "message": "Missing required data_access consent", "request_id": "Cs8nq",
        "required_scopes": [scope], "resource": "/transfer",
        "authorization_parameters": {"session_message": "Missing required data_access consent",
                                     "required_scopes": [scope]},
    }).add(requests_mock=mock)

    with pytest.raises(AuthError) as info:
        make_mover(tmp_path, sites).push(write_update(tmp_path / "g"), "global/r0000")
    message = str(info.value)
    assert FACILITY in message and "set mover.facility_data_access: true" in message
    assert "run `fedhpc login`" in message


def test_an_expired_access_token_is_refreshed_and_the_call_carries_the_new_one(tmp_path, mock, sites):
    service = TransferService(mock, sites, tokens=("transfer_access_token",))  # the recorded refresh's token
    load_response("auth.oauth2_exchange_code_for_tokens", requests_mock=mock)
    authorizer = globus_sdk.RefreshTokenAuthorizer(
        "stored-refresh-token", globus_sdk.NativeAppAuthClient(client_id=str(uuid.uuid4())),
        access_token="expired-access-token", expires_at=int(time.time()) + 3600,  # looks valid; the service says not
    )
    mover = make_mover(tmp_path, sites, client=globus_sdk.TransferClient(authorizer=authorizer))

    mover.push(write_update(tmp_path / "g"), "global/r0000")

    (refresh,) = requests_to(mock, "auth.globus.org/v2/oauth2/token")
    grant = parse_qs(refresh.body)
    assert grant["grant_type"] == ["refresh_token"] and grant["refresh_token"] == ["stored-refresh-token"]
    assert service.authorizations[0] == "Bearer expired-access-token"
    assert set(service.authorizations[1:]) == {"Bearer transfer_access_token"}
    assert Path(mover.facility_path("global/r0000")).is_dir()


def test_a_revoked_refresh_token_asks_for_fedhpc_login(tmp_path, mock, sites):
    load_response("auth.oauth2_exchange_code_for_tokens", case="invalid_grant", requests_mock=mock)
    authorizer = globus_sdk.RefreshTokenAuthorizer(
        "revoked-refresh-token", globus_sdk.NativeAppAuthClient(client_id=str(uuid.uuid4())),
        access_token="expired-access-token", expires_at=int(time.time()) - 60,
    )
    mover = make_mover(tmp_path, sites, client=globus_sdk.TransferClient(authorizer=authorizer))
    with pytest.raises(AuthError, match=r"refresh token expired or was revoked.*run `fedhpc login`"):
        mover.exists("global/r0000")
    assert requests_to(mock, "transfer.api.globus.org") == []


def test_a_transfer_past_its_deadline_is_cancelled_after_backed_off_polls(tmp_path, mock, sites):
    submit_accepted(mock)
    task_is(mock, status="ACTIVE", nice_status="CONNECTION_FAILED",
            nice_status_short_description="Connection failed")
    RegisteredResponse(service="transfer", method="POST", path=f"/v0.10/task/{TASK_ID}/cancel",
                       json=recorded("transfer.cancel_task")).add(requests_mock=mock)

    with pytest.raises(TransferError) as info:
        make_mover(tmp_path, sites, deadline=0.4, poll_interval=0.02).push(write_update(tmp_path / "g"), "global/r0000")

    message = str(info.value)
    assert "did not finish within mover.deadline (0.4 s) and was cancelled" in message
    assert "it last reported Connection failed" in message and "Raise mover.deadline" in message
    assert len(requests_to(mock, f"/task/{TASK_ID}/cancel")) == 1
    polls = [r for r in requests_to(mock, f"/task/{TASK_ID}") if r.url.endswith(TASK_ID)]
    assert 3 <= len(polls) <= 8, len(polls)  # 0.02 s doubling: ~6 looks in 0.4 s, not 20


def test_a_task_stopped_for_credentials_is_cancelled_and_asks_for_login(tmp_path, mock, sites):
    submit_accepted(mock)
    task_is(mock, status="INACTIVE", nice_status="AUTH", nice_status_short_description="Credentials expired")
    RegisteredResponse(service="transfer", method="POST", path=f"/v0.10/task/{TASK_ID}/cancel",
                       json=recorded("transfer.cancel_task")).add(requests_mock=mock)
    with pytest.raises(AuthError, match=r"INACTIVE: Credentials expired.*Run `fedhpc login`"):
        make_mover(tmp_path, sites).push(write_update(tmp_path / "g"), "global/r0000")
    assert len(requests_to(mock, f"/task/{TASK_ID}/cancel")) == 1


# --- the experiment file --------------------------------------------------------------------------


def experiment_with(tmp_path: Path, mover: dict[str, Any], **facility: Any) -> Path:
    document = {
        "name": "globus-probe",
        "facilities": [{"name": "polaris", "data": "/lus/eagle/projects/chem/data.jsonl",
                        "launcher": {"kind": "local"}, "mover": mover, **facility}],
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


GOOD_MOVER = {"kind": "globus-transfer", "facility_collection": FACILITY.upper(), "facility_path": "/fedhpc/stage",
              "facility_dir": "/lus/eagle/projects/chem/fedhpc", "server_collection": SERVER, "server_dir": "server"}


def test_a_good_mover_section_loads_with_its_defaults(tmp_path):
    mover = load_experiment(experiment_with(tmp_path, GOOD_MOVER)).facilities[0].mover
    assert isinstance(mover, GlobusTransferMoverConfig)
    assert mover.facility_collection == FACILITY  # lower-cased, as Globus writes it
    assert mover.server_dir == tmp_path / "server" and mover.server_root == str(tmp_path / "server")
    assert (mover.sync_level, mover.verify_checksum, mover.facility_data_access) == ("checksum", True, False)


@pytest.mark.parametrize(("changes", "facility", "key", "fragment"), [
    ({"facility_collection": "polaris-dtn"}, {}, "mover.facility_collection", "must be a Globus collection UUID"),
    ({"server_collection": FACILITY[:-1]}, {}, "mover.server_collection", "must be a Globus collection UUID"),
    ({"facility_path": "fedhpc/stage"}, {}, "mover.facility_path", "must be an absolute path"),
    ({"facility_dir": "/lus/../x"}, {}, "mover.facility_dir", "without '..'"),
    ({"facility_path": "/~/fedhpc", "facility_dir": None}, {}, "mover.facility_dir", "collection's home (~)"),
    ({"facility_dir": "/lus/eagle/projects/chem"}, {}, "mover.facility_dir", "overlap"),
    ({"facility_dir": None, "facility_path": "/lus/eagle/projects/chem/data.jsonl/x"}, {}, "mover.facility_path",
     "overlap"),
    ({"poll_interval": 7200}, {}, "mover.poll_interval", "not below deadline"),
    ({}, {"mode": "persistent"}, "mode", "use mode: per-round with this mover"),
    ({}, {"data": "data.jsonl"}, "data", "give it as an absolute path there"),
])
def test_a_bad_mover_section_is_named_by_its_key(tmp_path, changes, facility, key, fragment):
    mover = {k: v for k, v in {**GOOD_MOVER, **changes}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        load_experiment(experiment_with(tmp_path, mover, **facility))
    assert info.value.key == f"facilities.0.{key}"
    assert fragment in str(info.value)


# --- a run ----------------------------------------------------------------------------------------


def test_a_run_with_one_facility_behind_globus_and_one_on_the_filesystem(tmp_path, mock, sites, monkeypatch):
    """The orchestrator drives the mover as built from the experiment file; Globus is the HTTP edge above.

    alpha's worker reads and writes its facility_dir directly, as a job at the facility would.
    """
    TransferService(mock, sites)
    asked: list[list[str]] = []

    def transfer_client(data_access_collections=()) -> globus_sdk.TransferClient:
        asked.append(list(data_access_collections))
        return globus_sdk.TransferClient(authorizer=globus_sdk.AccessTokenAuthorizer("test-token"))

    monkeypatch.setattr("fedhpc.globus.auth.transfer_client", transfer_client)
    config = mover_config(sites, facility_data_access=True)
    document = {
        "name": "globus-e2e",
        "run_dir": str(tmp_path / "run"),
        "model": {"source": "tiny-llama", "tiny": {"hidden_size": 32, "num_layers": 1, "intermediate_size": 64},
                  "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        "data": {"seq_len": 48},
        "algorithm": {"rounds": 2, "local_steps": 2, "batch_size": 2, "min_facilities": 2, "round_timeout": 300},
        "facilities": [
            {"name": "alpha", "data": str(QUICKSTART_DATA / "alpha.jsonl"), "launcher": {"kind": "local"},
             "mover": config.model_dump(mode="json")},
            {"name": "beta", "data": str(QUICKSTART_DATA / "beta.jsonl"), "launcher": {"kind": "local"}},
        ],
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(document))
    experiment = load_experiment(path)

    with ProgressView(experiment.name, 2, ["alpha", "beta"], console=Console(quiet=True)) as view:
        orchestrator = Orchestrator(experiment, view)
        try:
            summary = orchestrator.run()
        finally:
            orchestrator.close()

    assert summary.rounds_completed == [0, 1, 2]
    ledger = Ledger(tmp_path / "run" / "ledger.sqlite")
    for round in (1, 2):
        assert {e.facility for e in ledger.events("accepted", round=round)} == {"alpha", "beta"}
    pulled = [e for e in ledger.events("pulled") if e.facility == "alpha"]
    assert len(pulled) == 2 and all(e.detail["bytes"] > 0 for e in pulled)
    assert asked == [[FACILITY]]  # one client, with the facility's data_access consent
    staging = Path(config.facility_root)
    assert {p.name for p in (staging / "global").iterdir()} == {"r0000", "r0001"}
    assert json.loads((staging / "tasks" / "r0002-a0" / "task.json").read_text())["update_dir"] == str(
        staging / "updates" / "r0002-a0")
    assert not (tmp_path / "run" / "staging" / "alpha").exists()  # alpha's files went through Globus only
