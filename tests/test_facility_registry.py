"""Backends by `kind`: a dict lookup from the validated config."""

from __future__ import annotations

import pytest

from fedhpc.config import LAUNCHER_CONFIGS, MOVER_CONFIGS, FacilityConfig, FilesystemMoverConfig, LocalLauncherConfig
from fedhpc.errors import ConfigError
from fedhpc.facility.launchers.local import LocalLauncher
from fedhpc.facility.movers.filesystem import FilesystemMover
from fedhpc.facility.movers.globus_transfer import GlobusTransferMover
from fedhpc.facility.movers.proxystore import ProxyStoreMover
from fedhpc.facility.registry import LAUNCHERS, MOVERS, make_launcher, make_mover


def test_tables_name_every_kind_the_config_accepts():
    assert set(LAUNCHERS) == {"local", "parsl", "simulated", "globus-compute"}
    assert MOVERS == {"filesystem": FilesystemMover, "globus-transfer": GlobusTransferMover, "proxystore": ProxyStoreMover}


def test_every_kind_the_config_unions_accept_has_a_factory_and_no_other():
    """A launcher or mover kind added to `fedhpc.config` needs its line in the registry (the simulated kind's
    refuses: `fedhpc simulate` builds that launcher itself)."""
    assert set(LAUNCHERS) == set(LAUNCHER_CONFIGS)
    assert set(MOVERS) == set(MOVER_CONFIGS)


def test_make_builds_each_backend_from_its_own_sub_config(tmp_path):
    facility = FacilityConfig(name="alpha", data=tmp_path, launcher={"nprocs": 2}, mover={"hardlink": False})
    launcher = make_launcher(facility.launcher)
    assert isinstance(launcher, LocalLauncher) and launcher.config.nprocs == 2
    mover = make_mover(facility.mover, tmp_path / "staging" / "alpha")
    assert isinstance(mover, FilesystemMover)
    assert mover.staging_dir == tmp_path / "staging" / "alpha" and not mover.config.hardlink
    explicit = make_mover(FilesystemMoverConfig(staging_dir=tmp_path / "shared"), tmp_path / "unused")
    assert explicit.facility_path("global/r0000") == str(tmp_path / "shared" / "global" / "r0000")


def test_an_unknown_kind_is_a_config_error():
    known = "globus-compute, local, parsl, simulated"
    with pytest.raises(ConfigError, match=f"unknown launcher kind 'slurm'; known kinds: {known}"):
        make_launcher(LocalLauncherConfig.model_construct(kind="slurm"))
    with pytest.raises(ConfigError, match="unknown mover kind 's3'; known kinds: filesystem, globus-transfer, proxystore"):
        make_mover(FilesystemMoverConfig.model_construct(kind="s3"), "/tmp/x")
