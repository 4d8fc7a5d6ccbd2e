"""The Globus parts of an experiment: Compute endpoints, Transfer collections, data_access consents.

Read from the launcher and mover config classes (``endpoint_id``;
``facility_collection``, ``facility_root``, ...), without importing globus-sdk,
so ``fedhpc validate`` works where the ``globus`` extra is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedhpc.config import Experiment, FacilityConfig, GlobusComputeLauncherConfig, GlobusTransferMoverConfig


@dataclass(frozen=True)
class CollectionSide:
    """One end of a globus-transfer mover: a collection, its directory there, and how the other side sees it."""

    role: str  # "facility" or "server"
    collection: str
    path: str  # the directory as the collection names it
    local_dir: str  # the same directory as the facility's jobs (or the server) open it
    data_access: bool  # a GCS v5 mapped collection: needs its data_access consent


def compute_endpoint(facility: FacilityConfig) -> str | None:
    """The Globus Compute endpoint id of a facility whose launcher is globus-compute, else None."""
    launcher = facility.launcher
    return str(launcher.endpoint_id) if isinstance(launcher, GlobusComputeLauncherConfig) else None


def transfer_sides(facility: FacilityConfig) -> list[CollectionSide]:
    """Both ends of a facility's globus-transfer mover (facility first); empty for any other mover."""
    mover = facility.mover
    if not isinstance(mover, GlobusTransferMoverConfig):
        return []
    facility_path = str(mover.facility_path)
    server_dir = str(mover.server_dir)
    return [
        CollectionSide(
            "facility", str(mover.facility_collection), facility_path,
            mover.facility_root, bool(mover.facility_data_access),
        ),
        CollectionSide(
            "server", str(mover.server_collection), mover.server_root,
            server_dir, bool(mover.server_data_access),
        ),
    ]


def data_access_collections(experiment: Experiment) -> list[str]:
    """Every collection of the experiment that needs a data_access consent, each once, in file order."""
    found = [side.collection for f in experiment.facilities for side in transfer_sides(f) if side.data_access]
    return list(dict.fromkeys(found))


def uses_globus(experiment: Experiment) -> bool:
    return any(compute_endpoint(f) or transfer_sides(f) for f in experiment.facilities)


def describe(facility: FacilityConfig) -> list[str]:
    """What `fedhpc validate` shows of a facility's Globus set-up: the ids and paths a run will use."""
    lines = []
    endpoint = compute_endpoint(facility)
    if endpoint and isinstance(facility.launcher, GlobusComputeLauncherConfig):
        lines.append(f"globus-compute endpoint {endpoint} (function {facility.launcher.function})")
    for side in transfer_sides(facility):
        viewer = "the facility's jobs see" if side.role == "facility" else "the server sees"
        seen_as = "" if side.local_dir == side.path else f" ({viewer} {side.local_dir})"
        consent = ", data_access consent" if side.data_access else ""
        lines.append(f"globus-transfer {side.role} collection {side.collection} path {side.path}{seen_as}{consent}")
    return lines
