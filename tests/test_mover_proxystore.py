"""The proxystore mover: exchange directories through a real redis-server and ProxyStore's File connector.

What only this mover does (chunked objects under the run's namespace, damaged objects, Redis out of
memory or unreachable), the worker's side of the store, and a full `fedhpc run` in which one facility
gets every byte through Redis and the other through the filesystem. The round trips every mover makes
(atomic, idempotent, verified) are in tests/contracts/test_mover_contract.py.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import torch

from conftest import QUICKSTART, run_fedhpc
from fedhpc.config import ProxyStoreMoverConfig
from fedhpc.errors import AuthError, ConfigError, TransferError
from fedhpc.exchange import ExchangeDir, ExchangeMeta, write_state_dict
from fedhpc.exchange.proxystore_connectors import StoreSpec, flat_name
from fedhpc.facility.movers.proxystore import NAMESPACE_FILE, ProxyStoreMover
from fedhpc.run.ledger import Ledger
from fedhpc.worker.object_staging import FacilityStore
from redis_server import RedisServer, redis_server  # noqa: F401 - the fixture

META = ExchangeMeta(
    kind="update", round=1, facility="alpha", based_on_round=0, num_samples=8, base_fingerprint="sha256:" + "0" * 64
)
CHUNK = 100  # bytes per object: every shard of the test update spans several


def write_update(path: Path, scale: float = 1.0) -> Path:
    state = {
        "layers.0.lora_A.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4) * scale,
        "layers.0.lora_B.weight": torch.ones(4, 3) * scale,
        "layers.1.lora_A.weight": torch.full((3, 4), 0.5 * scale),
    }
    write_state_dict(path, state, META, shard_bytes=64)  # several shards
    return path


def tree_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


MakeMover = Callable[..., ProxyStoreMover]


@pytest.fixture(params=["redis", "file"])
def make_mover(request: pytest.FixtureRequest, tmp_path: Path) -> MakeMover:
    """A mover factory over a real redis-server or a File connector directory; `run` picks the run directory."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        store = {"connector": "redis", "redis": {"host": server.host, "port": server.port}}
    else:
        store = {"connector": "file", "file": {"store_dir": tmp_path / "store"}}

    def make(run: str = "run") -> ProxyStoreMover:
        config = ProxyStoreMoverConfig(**store, facility_dir=tmp_path / "facility", chunk_size=CHUNK)
        return ProxyStoreMover(config, tmp_path / run / "staging" / "alpha")

    return make


@pytest.fixture
def update(tmp_path: Path) -> Path:
    return write_update(tmp_path / "server" / "global" / "r0001")


def test_the_server_never_writes_the_facilitys_directory(tmp_path, make_mover, update):
    mover = make_mover()
    mover.push(update, "global/r0001")
    mover.pull("global/r0001", tmp_path / "server" / "updates" / "r0001" / "alpha")
    assert not (tmp_path / "facility").exists()  # only the facility's jobs do


def test_objects_are_chunked_under_the_run_namespace(tmp_path, redis_server, update):
    config = ProxyStoreMoverConfig(connector="redis", redis={"host": redis_server.host, "port": redis_server.port},
                                   facility_dir=tmp_path / "facility", chunk_size=CHUNK)
    mover = ProxyStoreMover(config, tmp_path / "run" / "staging" / "alpha")
    mover.push(update, "global/r0001")
    namespace = (tmp_path / "run" / "staging" / "alpha" / NAMESPACE_FILE).read_text().strip()
    assert namespace.startswith("fedhpc/alpha/")
    keys = sorted(key.decode() for key in redis_server.client().keys())
    manifest_chunks = [key for key in keys if "/chunk/global/r0001/manifest.json/" in key]
    assert len(manifest_chunks) == -(-(update / "manifest.json").stat().st_size // CHUNK)
    assert f"{namespace}/index/global/r0001" in keys
    assert all(key.startswith(namespace + "/") for key in keys)
    assert max(len(redis_server.client().get(key)) for key in keys if "/chunk/" in key) == CHUNK


def test_two_runs_never_see_each_others_objects_and_a_resume_sees_its_own(make_mover, update):
    first = make_mover(run="first")
    first.push(update, "global/r0001")
    assert not make_mover(run="second").exists("global/r0001")
    assert make_mover(run="first").exists("global/r0001")  # the same run directory: a resumed server


@pytest.mark.parametrize("damage", ["corrupted", "missing"])
def test_a_damaged_object_fails_the_pull_and_is_named(tmp_path, make_mover, update, damage):
    mover = make_mover()
    mover.push(update, "updates/r0001-a0")
    key = f"{mover.spec.namespace}/chunk/updates/r0001-a0/model-00001-of-00003.safetensors/1"
    if damage == "corrupted":
        mover.objects.store.set(key, b"\0" * CHUNK)
    elif mover.config.connector == "redis":
        redis.Redis(host=mover.config.redis.host, port=mover.config.redis.port).delete(key)
    else:
        (tmp_path / "store" / flat_name(key)).unlink()
        (tmp_path / "store" / (flat_name(key) + ".ready")).unlink()
    expected = "does not match its sha256" if damage == "corrupted" else "is missing from"
    with pytest.raises(TransferError, match=expected) as info:
        mover.pull("updates/r0001-a0", tmp_path / "dest")
    assert key in str(info.value) and "publish updates/r0001-a0 again" in str(info.value)
    assert not (tmp_path / "dest").exists() and list(tmp_path.glob(".dest*")) == []


def test_a_publish_cut_short_by_redis_leaves_nothing_visible_and_a_retry_completes(
    tmp_path, redis_server, update
):
    """Redis out of memory half-way through: no index, so no directory; the retry after it has room publishes."""
    big = tmp_path / "big"
    big.mkdir()
    (big / "model-00001-of-00001.safetensors").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    (big / "manifest.json").write_text("{}")
    client = redis_server.client()
    config = ProxyStoreMoverConfig(connector="redis", redis={"host": redis_server.host, "port": redis_server.port},
                                   facility_dir=tmp_path / "facility", chunk_size=64 * 1024)
    mover = ProxyStoreMover(config, tmp_path / "run" / "staging" / "alpha")
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", client.info("memory")["used_memory"] + 256 * 1024)
    with pytest.raises(TransferError, match=r"cannot write .*/chunk/global/r0001/.* in Redis at .*maxmemory") as info:
        mover.push(big, "global/r0001")
    assert "the Redis server refused it" in str(info.value)
    assert client.dbsize() > 0  # it did get half-way
    assert not mover.exists("global/r0001")
    with pytest.raises(TransferError, match="holds no"):
        mover.pull("global/r0001", tmp_path / "dest")

    client.config_set("maxmemory", 0)
    assert mover.push(big, "global/r0001") == tree_bytes(big)
    assert mover.pull("global/r0001", tmp_path / "dest") == tree_bytes(big)


def test_unreachable_redis_is_a_transfer_error_saying_what_to_check(tmp_path):
    """After redis-py's own retries (a few seconds), not a hang and not a traceback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the probe is closed
    config = ProxyStoreMoverConfig(connector="redis", redis={"host": "127.0.0.1", "port": port},
                                   facility_dir=tmp_path / "facility")
    mover = ProxyStoreMover(config, tmp_path / "run" / "staging" / "alpha")
    with pytest.raises(TransferError, match=f"Redis at 127.0.0.1:{port}.*check that redis-server runs there"):
        mover.exists("global/r0000")


# --- the job's side ---------------------------------------------------------------------------


def test_the_worker_fetches_what_the_server_pushed_and_the_server_sees_what_it_publishes(tmp_path, make_mover, update):
    mover = make_mover()
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "task.json").write_text('{"round": 1}')
    mover.push(update, "global/r0001")
    mover.push(tmp_path / "task", "tasks/r0002-a0")
    assert mover.exists("tasks/r0002-a0/task.json")
    store_arg = mover.worker_args()
    assert store_arg[0] == "--store"
    facility = FacilityStore.from_json(store_arg[1])

    task_dir = Path(mover.facility_path("tasks/r0002-a0/task.json")).parent
    facility.fetch(task_dir)
    facility.fetch(task_dir)  # a second rank on the same node finds it in place
    assert (task_dir / "task.json").read_text() == '{"round": 1}'
    facility.fetch(Path(mover.facility_path("global/r0001")))
    ExchangeDir(Path(mover.facility_path("global/r0001"))).verify()

    progress = Path(mover.facility_path("progress/r0002-a0.json"))
    progress.parent.mkdir(parents=True)
    assert mover.peek("progress/r0002-a0.json") is None
    progress.write_text('{"step": 1, "phase": "training"}')
    facility.publish_progress(progress, "training")
    assert mover.peek("progress/r0002-a0.json") == b'{"step": 1, "phase": "training"}'
    progress.write_text('{"step": 2, "phase": "training"}')
    facility.publish_progress(progress, "training")  # within the interval: not sent
    assert mover.peek("progress/r0002-a0.json") == b'{"step": 1, "phase": "training"}'
    progress.write_text('{"step": 2, "phase": "saving"}')
    facility.publish_progress(progress, "saving")  # a new phase: sent at once
    assert json.loads(mover.peek("progress/r0002-a0.json"))["phase"] == "saving"

    update_dir = Path(mover.facility_path("updates/r0002-a0"))
    write_update(update_dir, scale=4.0)
    assert not mover.exists("updates/r0002-a0/manifest.json")
    facility.publish(update_dir)
    assert mover.exists("updates/r0002-a0/manifest.json")
    mover.pull("updates/r0002-a0", tmp_path / "pulled")
    ExchangeDir(tmp_path / "pulled").verify()

    with pytest.raises(ConfigError, match="is not under the mover's facility_dir"):
        facility.fetch(tmp_path / "elsewhere" / "global" / "r0001")


def test_progress_is_best_effort_but_the_update_is_not(tmp_path, caplog):
    """A store the job cannot write to: progress costs a warning, the update's publication fails the job."""
    config = ProxyStoreMoverConfig(connector="file", file={"store_dir": tmp_path / "store"},
                                   facility_dir=tmp_path / "facility")
    facility = FacilityStore(StoreSpec(namespace="fedhpc/alpha/x", mover=config))
    shutil.rmtree(tmp_path / "store")
    (tmp_path / "store").write_text("not a directory any more")
    progress = tmp_path / "facility" / "progress" / "r0001-a0.json"
    progress.parent.mkdir(parents=True)
    progress.write_text('{"step": 1}')
    with caplog.at_level(logging.WARNING, logger="fedhpc.worker.object_staging"):
        facility.publish_progress(progress, "training")
    assert "progress not sent" in caplog.text and str(tmp_path / "store") in caplog.text
    update_dir = write_update(tmp_path / "facility" / "updates" / "r0001-a0")
    with pytest.raises(TransferError, match="cannot write .* in the store directory .*mover.file.store_dir"):
        facility.publish(update_dir)


def test_a_bad_store_argument_fails_the_worker_with_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--store: not a store description"):
        FacilityStore.from_json('{"namespace": "x"}')
    result = subprocess.run(
        [sys.executable, "-m", "fedhpc", "worker", "--persistent", "--inbox", str(tmp_path), "--store", "{}"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "--store goes with --task" in result.stdout + result.stderr


def test_the_globus_connector_refuses_to_start_without_a_proxystore_login(tmp_path, monkeypatch):
    """No tokens: an AuthError naming the command, before ProxyStore could start an interactive login."""
    monkeypatch.setenv("PROXYSTORE_HOME", str(tmp_path / "proxystore-home"))
    monkeypatch.delenv("PROXYSTORE_GLOBUS_CLIENT_ID", raising=False)
    monkeypatch.delenv("PROXYSTORE_GLOBUS_CLIENT_SECRET", raising=False)
    endpoint = {"endpoint_path": "/~/fedhpc-store", "local_path": "/home/me/fedhpc-store", "host_regex": "server.*"}
    config = ProxyStoreMoverConfig(
        connector="globus", facility_dir="/scratch/me/fedhpc",
        globus={"endpoints": {"9f2c4e1a-8d7b-4c3e-a2f1-0b6e5d4c3a21": endpoint,
                              "1b3d5f7a-2c4e-4f6a-8b0d-1e3f5a7c9e2b": {**endpoint, "host_regex": "nid.*"}}},
    )
    with pytest.raises(AuthError, match="proxystore-globus-auth login"):
        ProxyStoreMover(config, tmp_path / "run" / "staging" / "alpha")
    spec = StoreSpec.model_validate_json(StoreSpec(namespace="fedhpc/alpha/x", mover=config).model_dump_json())
    assert spec.mover == config  # the job's --store argument carries the whole connector description


# --- a whole run ------------------------------------------------------------------------------


def test_a_run_with_one_facility_on_redis_and_one_on_the_filesystem(tmp_path, redis_server):
    """alpha's jobs (2 ranks) see only Redis and their own facility_dir; beta stages through the filesystem."""
    run_dir = tmp_path / "run"
    data = QUICKSTART.parent / "data"
    alpha_dir = tmp_path / "alpha-site"
    facilities = [
        {"name": "alpha", "data": str(data / "alpha.jsonl"), "launcher": {"kind": "local", "nprocs": 2},
         "mover": {"kind": "proxystore", "connector": "redis", "facility_dir": str(alpha_dir), "chunk_size": "8KiB",
                   "redis": {"host": redis_server.host, "port": redis_server.port}}},
        {"name": "beta", "data": str(data / "beta.jsonl"), "launcher": {"kind": "local", "nprocs": 1}},
    ]
    result = run_fedhpc(
        "run", str(QUICKSTART), "--set", f"run_dir={run_dir}", "--set", "algorithm.rounds=2",
        "--set", "algorithm.local_steps=2", "--set", f"facilities={json.dumps(facilities)}", timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1, 2]
    for round in (1, 2):
        (aggregated,) = ledger.events("aggregated", round=round)
        assert sorted(aggregated.detail["facilities"]) == ["alpha", "beta"]
        staged = {e.facility: e.detail["bytes"] for e in ledger.events("staged", round=round)}
        global_bytes = tree_bytes(run_dir / "global" / f"r{round - 1:04d}")
        assert staged == {"alpha": global_bytes, "beta": global_bytes}
        pulled = {e.facility: e.detail["bytes"] for e in ledger.events("pulled", round=round)}
        assert pulled["alpha"] == tree_bytes(run_dir / "updates" / f"r{round:04d}" / "alpha") > 0

    # alpha's bytes went through Redis: its facility_dir holds what its jobs fetched and wrote, the server's
    # staging area for it only the run's namespace, and every object in Redis is under that namespace
    assert sorted(p.name for p in (run_dir / "staging" / "alpha").iterdir()) == [NAMESPACE_FILE]
    assert {p.name for p in (alpha_dir / "global").iterdir()} == {"r0000", "r0001"}
    assert {p.name for p in (alpha_dir / "updates").iterdir()} == {"r0001-a0", "r0002-a0"}
    assert (run_dir / "staging" / "beta" / "global" / "r0001").is_dir() and not (alpha_dir / "staging").exists()
    namespace = (run_dir / "staging" / "alpha" / NAMESPACE_FILE).read_text().strip()
    keys = [key.decode() for key in redis_server.client().keys()]
    assert f"{namespace}/index/updates/r0002-a0" in keys and all(key.startswith(namespace) for key in keys)
    alpha_update = ExchangeDir(run_dir / "updates" / "r0002" / "alpha")
    assert alpha_update.manifest.metrics["world_size"] == 2
    progress = json.loads(redis_server.client().get(f"{namespace}/file/progress/r0002-a0.json"))
    assert progress["phase"] == "done" and progress["step"] == 2
