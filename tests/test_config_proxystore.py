"""`mover: {kind: proxystore}`: a facility reached through a ProxyStore connector, and its mistakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedhpc.config import ProxyStoreMoverConfig, load_experiment
from fedhpc.errors import ConfigError
from test_config import good_config, write_config

REDIS = {
    "kind": "proxystore", "connector": "redis", "redis": {"host": "redis.site.org"}, "facility_dir": "/scratch/fed"
}
COLLECTION_A = "9f2c4e1a-8d7b-4c3e-a2f1-0b6e5d4c3a21"
COLLECTION_B = "1b3d5f7a-2c4e-4f6a-8b0d-1e3f5a7c9e2b"
ENDPOINT = {"endpoint_path": "/~/fedhpc-store", "local_path": "/home/me/fedhpc-store", "host_regex": "login.*"}


def _with_alpha(project: Path, **alpha: Any) -> Path:
    raw = good_config(project)
    raw["facilities"][0].update({"data": "/lus/alpha/train.jsonl", **alpha})
    return write_config(project / "exp.yaml", raw)


def _error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert str(path) in str(info.value)
    return info.value


def test_a_redis_facility_loads_and_is_remote(project: Path) -> None:
    alpha = load_experiment(_with_alpha(project, mover=REDIS)).facilities[0]
    assert isinstance(alpha.mover, ProxyStoreMoverConfig)
    store = alpha.mover
    assert (store.redis.host, store.redis.port, store.chunk_size) == ("redis.site.org", 6379, 64 << 20)
    assert alpha.remote and alpha.data == Path("/lus/alpha/train.jsonl")  # a path at the facility, not checked here


def test_a_file_store_dir_resolves_against_the_experiment_file(project: Path) -> None:
    mover = {"kind": "proxystore", "connector": "file", "file": {"store_dir": "shared/store"}, "facility_dir": "/x"}
    alpha = load_experiment(_with_alpha(project, mover=mover)).facilities[0]
    assert alpha.mover.file.store_dir == project / "shared" / "store"


def test_a_globus_store_loads(project: Path) -> None:
    globus = {"endpoints": {COLLECTION_A: ENDPOINT, COLLECTION_B: {**ENDPOINT, "host_regex": r"nid\d+"}}}
    mover = {"kind": "proxystore", "connector": "globus", "globus": globus, "facility_dir": "/x"}
    store = load_experiment(_with_alpha(project, mover=mover)).facilities[0].mover.globus
    assert [str(uuid) for uuid in store.endpoints] == [COLLECTION_A, COLLECTION_B]
    assert (store.timeout, store.polling_interval) == (600, 1)


@pytest.mark.parametrize(
    ("mover", "key", "message"),
    [
        ({**REDIS, "redis": None}, "mover.redis", "connector redis needs its settings: redis: {host"),
        ({**REDIS, "file": {"store_dir": "/s"}}, "mover.file", "only applies with connector file, not redis"),
        ({**REDIS, "connector": "s3"}, "mover.connector", "'redis', 'file' or 'globus'"),
        ({k: v for k, v in REDIS.items() if k != "connector"}, "mover.connector", "required key is missing"),
        ({**REDIS, "facility_dir": "scratch/fed"}, "mover.facility_dir", "give it as an absolute path there"),
        ({**REDIS, "chunk_size": "1GiB"}, "mover.chunk_size", "at most 512MiB"),
        ({**REDIS, "redis": {"host": "h", "port": 70000}}, "mover.redis.port", "less than or equal to 65535"),
        ({**REDIS, "redis": {"host": "h", "prot": 1}}, "mover.redis.prot", "unknown key"),
        ({**REDIS, "connector": "globus", "redis": None, "globus": {"endpoints": {COLLECTION_A: ENDPOINT}}},
         "mover.globus.endpoints", "at least 2 items"),
        ({**REDIS, "connector": "globus", "redis": None,
          "globus": {"endpoints": {COLLECTION_A: ENDPOINT, COLLECTION_B: {**ENDPOINT, "host_regex": "nid("}}}},
         f"mover.globus.endpoints.{COLLECTION_B}.host_regex", "is not a regular expression"),
        ({**REDIS, "connector": "globus", "redis": None,
          "globus": {"endpoints": {COLLECTION_A: ENDPOINT, COLLECTION_B: {**ENDPOINT, "endpoint_path": "store"}}}},
         f"mover.globus.endpoints.{COLLECTION_B}.endpoint_path", "must be an absolute path"),
        ({**REDIS, "connector": "globus", "redis": None, "globus": {"endpoints": {"not-a-uuid": ENDPOINT}}},
         "mover.globus.endpoints.not-a-uuid", "valid UUID"),
    ],
)
def test_mistakes_name_their_key(project: Path, mover: dict[str, Any], key: str, message: str) -> None:
    error = _error(_with_alpha(project, mover=mover))
    assert error.key.startswith(f"facilities.0.{key}"), error.key
    assert message in str(error)


def test_a_facility_on_proxystore_names_its_data_as_an_absolute_path_there(project: Path) -> None:
    error = _error(_with_alpha(project, mover=REDIS, data="data/alpha.jsonl"))
    assert error.key == "facilities.0.data" and "absolute path there" in str(error)


def test_persistent_mode_is_refused_at_mode(project: Path) -> None:
    error = _error(_with_alpha(project, mover=REDIS, mode="persistent"))
    assert error.key == "facilities.0.mode"
    assert "not available with mover kind 'proxystore'" in str(error) and "mode: per-round" in str(error)


def test_the_simulated_launcher_is_refused_at_the_mover_kind(project: Path) -> None:
    error = _error(_with_alpha(project, mover=REDIS, launcher={"kind": "simulated"}))
    assert error.key == "facilities.0.mover.kind"
    assert "use the filesystem mover with launcher kind simulated" in str(error)


def test_the_facility_dir_must_not_hold_the_data(project: Path) -> None:
    """fedhpc unpacks and overwrites files in facility_dir; training data inside it could be clobbered."""
    error = _error(_with_alpha(project, mover={**REDIS, "facility_dir": "/lus/alpha"}))
    assert error.key == "facilities.0.mover.facility_dir" and "overlap" in str(error)
