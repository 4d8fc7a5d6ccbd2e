"""``fedhpc validate --online``: will the Globus endpoints and collections of an experiment work right now?

Per globus-compute facility, the endpoint must report ``online``. Per
globus-transfer facility, on both the facility's and the server's
collection, the staging directory must list and take a write. The write
probe is a ``mkdir`` of a uniquely named hidden directory
(``.fedhpc-probe-<random>``) in that directory: the one write the Transfer
API does synchronously (a transfer would need a file to send and a task to
wait on), it proves the mapped account may create entries there, and a
unique name keeps two validations from colliding. Its removal is submitted
as a Globus delete task that validate does not wait for (its id is shown); if
that task fails, an empty hidden directory is left inside fedhpc's own
staging directory, where it harms nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import globus_sdk

from fedhpc.globus.auth import compute_client, transfer_client
from fedhpc.globus.facilities import CollectionSide, compute_endpoint, data_access_collections, transfer_sides

PROBE_PREFIX = ".fedhpc-probe-"


@dataclass(frozen=True)
class Check:
    facility: str
    subject: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAILED'}  {self.facility}: {self.subject}: {self.detail}"


def run_online_checks(experiment: Any) -> list[Check]:
    """Every online check of the experiment's Globus facilities, in file order (empty when it uses none).

    Raises `AuthError` (from `compute_client` / `transfer_client`) when the
    stored login cannot serve them; each check's own failure is a failed `Check`.
    """
    endpoints = [(f.name, e) for f in experiment.facilities if (e := compute_endpoint(f))]
    sides = [(f.name, side) for f in experiment.facilities for side in transfer_sides(f)]
    checks = []
    if endpoints:
        compute = compute_client()
        checks += [endpoint_check(compute, name, endpoint) for name, endpoint in endpoints]
    if sides:
        transfer = transfer_client(data_access_collections(experiment))
        for name, side in sides:
            checks += collection_checks(transfer, name, side)
    return checks


def endpoint_check(compute: Any, facility: str, endpoint_id: str) -> Check:
    subject = f"compute endpoint {endpoint_id}"
    try:
        status = compute.get_endpoint_status(endpoint_id)
    except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as e:
        return Check(facility, subject, False, _problem(e))
    state = status.get("status", "unknown")
    if state != "online":
        return Check(facility, subject, False, f"{state}; start it at the facility: globus-compute-endpoint start NAME")
    details = status.get("details") or {}
    workers = f" ({details['total_workers']} workers)" if "total_workers" in details else ""
    return Check(facility, subject, True, f"online{workers}")


def collection_checks(transfer: globus_sdk.TransferClient, facility: str, side: CollectionSide) -> list[Check]:
    """List the side's directory, then (only if that worked) probe it for writing."""
    subject = f"{side.role} collection {side.collection} {side.path}"
    try:
        transfer.operation_ls(side.collection, path=side.path, limit=1)
    except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as e:
        return [Check(facility, f"{subject} (list)", False, _transfer_problem(e, side))]
    return [Check(facility, f"{subject} (list)", True, "listed"), _write_probe(transfer, facility, subject, side)]


def _write_probe(transfer: globus_sdk.TransferClient, facility: str, subject: str, side: CollectionSide) -> Check:
    probe = f"{side.path.rstrip('/')}/{PROBE_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        transfer.operation_mkdir(side.collection, probe)
    except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as e:
        return Check(facility, f"{subject} (write)", False, f"not writable: {_transfer_problem(e, side)}")
    delete = globus_sdk.DeleteData(side.collection, recursive=True, label="fedhpc validate: write probe")
    delete.add_item(probe)
    try:
        task = transfer.submit_delete(delete)["task_id"]
    except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as e:
        left = f"writable; could not remove the probe {probe}: {_problem(e)}"
        return Check(facility, f"{subject} (write)", True, left)
    return Check(facility, f"{subject} (write)", True, f"writable (made {probe}; delete task {task} removes it)")


def _transfer_problem(error: Exception, side: CollectionSide) -> str:
    code = getattr(error, "code", None)
    if code == "ConsentRequired":
        return (
            f"the collection wants a data_access consent: set mover.{side.role}_data_access: true "
            "and run `fedhpc login EXPERIMENT.yaml`"
        )
    if code == "ClientError.NotFound":
        return f"{side.path} does not exist there: create it, or correct mover.{side.role}_path"
    if code in ("EndpointPermissionDenied", "PermissionDenied"):
        return f"permission denied to your identity on {side.path} ({_first_line(error)})"
    return _problem(error)


def _problem(error: Exception) -> str:
    if isinstance(error, globus_sdk.GlobusAPIError):
        return f"{error.http_status} {error.code}: {_first_line(error)}"
    return f"cannot reach Globus: {error}"


def _first_line(error: Exception) -> str:
    message = getattr(error, "message", None) or str(error)
    return str(message).strip().splitlines()[0] if str(message).strip() else type(error).__name__
