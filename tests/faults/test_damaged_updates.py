"""Every kind of damaged update, fed through the server's own gate: the mover's pull, then `Intake.verified`.

A facility publishes an update with the real writer into its staging area; the
test damages it the way a broken or hostile facility could; the server pulls
it into the run directory and verifies it, as `Intake.collect` does. Each case
checks the reason the ledger would record, that nothing hung, and that the
server neither opened nor changed any file outside the update: an audit hook
sees every `open` the process makes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fedhpc.config import FacilityConfig, load_experiment
from fedhpc.errors import TransferError, UpdateRejected
from fedhpc.exchange import MANIFEST_NAME, ExchangeDir, ExchangeMeta, write_state_dict
from fedhpc.exchange.safetensors_stream import digest_of_file
from fedhpc.facility.movers.filesystem import FilesystemMover
from fedhpc.run.context import RunContext
from fedhpc.run.intake import Intake
from fedhpc.run.launches import Facility
from fedhpc.run.rundir import RunDir

FINGERPRINT = "sha256:" + "ab" * 32
RECORDS = 5  # training examples in the facility's data: the default cap on its num_samples
GLOBAL = {"a.weight": torch.zeros(3, 4), "b.bias": torch.zeros(4)}
GLOBAL_SHARD = "model-00001-of-00001.safetensors"
HANG_SECONDS = 10.0

_opened: list[str] | None = None


def _record_opens(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.path.abspath(os.fsdecode(args[0])))


sys.addaudithook(_record_opens)  # audit hooks cannot be removed; this one records only inside `opens_during`


@dataclass
class Server:
    root: Path
    run_dir: RunDir
    intake: Intake
    mover: FilesystemMover
    global_: ExchangeDir
    data: Path

    @property
    def staged(self) -> Path:
        return self.mover.staging_dir / "updates" / "r0001-a0"

    @property
    def pulled(self) -> Path:
        return self.run_dir.update_dir(1, "alpha")


def make_server(tmp_path: Path, **facility: object) -> Server:
    data = tmp_path / "alpha.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(RECORDS)))
    experiment_file = tmp_path / "experiment.yaml"
    entry = {"name": "alpha", "data": "alpha.jsonl", "launcher": {"kind": "local"}, **facility}
    experiment_file.write_text(json.dumps({"name": "damaged", "facilities": [entry]}))
    experiment = load_experiment(experiment_file)
    run_dir = RunDir(tmp_path / "run")
    write_state_dict(run_dir.global_dir(0), GLOBAL, ExchangeMeta(kind="global", round=0, base_fingerprint=FINGERPRINT))
    config: FacilityConfig = experiment.facilities[0]
    mover = FilesystemMover(config.mover, run_dir.default_staging("alpha"))
    # Verification needs no launcher, event log, progress view or clock: none is started here.
    facilities = {"alpha": Facility(config, None, mover, experiment.recipe_for(config))}  # type: ignore[arg-type]
    context = RunContext(run_dir, None, None, None, None)  # type: ignore[arg-type]
    intake = Intake(context, facilities, FINGERPRINT, experiment.algorithm.max_update_norm)
    return Server(tmp_path, run_dir, intake, mover, ExchangeDir(run_dir.global_dir(0)), data)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    made = make_server(tmp_path)
    yield made
    made.global_.close()


def good_state() -> dict[str, torch.Tensor]:
    return {"a.weight": torch.full((3, 4), 0.25), "b.bias": torch.full((4,), -0.5)}


def publish(server: Server, state: dict[str, torch.Tensor] | None = None, **meta: object) -> Path:
    """The update a facility's worker writes for round 1, with the real writer."""
    fields: dict[str, object] = dict(
        kind="update", round=1, facility="alpha", based_on_round=0, num_samples=RECORDS, local_steps=2,
        base_fingerprint=FINGERPRINT, metrics={"loss": [1.5, 1.25], "tokens": 40, "train_seconds": 0.5,
                                               "load_seconds": 0.1, "world_size": 1, "device": "cpu"},
    )
    fields.update(meta)
    write_state_dict(server.staged, state or good_state(), ExchangeMeta(**fields))
    return server.staged


def edit_manifest(directory: Path, edit: Callable[[dict], None]) -> None:
    path = directory / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def shard(directory: Path) -> Path:
    (only,) = sorted(directory.glob("*.safetensors"))
    return only


def point_shard_at(directory: Path, name: str, target: Path) -> None:
    """The manifest names `name` for every tensor, with the digest and size of the server's `target`."""
    shard(directory).unlink()
    entry = {"blake3": digest_of_file(target), "bytes": target.stat().st_size}

    def edit(manifest: dict) -> None:
        manifest["files"] = {name: entry}
        for tensor in manifest["tensors"].values():
            tensor["file"] = name

    edit_manifest(directory, edit)


def global_shard(server: Server) -> Path:
    return server.run_dir.global_dir(0) / GLOBAL_SHARD


# --- the damage ----------------------------------------------------------------------------------


def flip_a_byte(server: Server) -> None:
    path = shard(publish(server))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def values(value: float) -> Callable[[Server], None]:
    def damage(server: Server) -> None:
        state = good_state()
        state["a.weight"][1, 2] = value
        publish(server, state)

    return damage


def wrong_shape(server: Server) -> None:
    publish(server, {**good_state(), "b.bias": torch.zeros(5)})


def integer_dtype(server: Server) -> None:
    publish(server, {**good_state(), "b.bias": torch.zeros(4, dtype=torch.int32)})


def float64_overflowing_fp32(server: Server) -> None:
    publish(server, {**good_state(), "a.weight": torch.full((3, 4), 1e300, dtype=torch.float64)})


def missing_manifest(server: Server) -> None:
    (publish(server) / MANIFEST_NAME).unlink()


def truncated_manifest(server: Server) -> None:
    path = publish(server) / MANIFEST_NAME
    path.write_bytes(path.read_bytes()[:100])


def unknown_tensor(server: Server) -> None:
    publish(server, {**good_state(), "c.extra": torch.zeros(2)})


def name_climbing_out(server: Server) -> None:
    # From the server's copy, run/updates/r0001/alpha, three levels up is the run directory.
    point_shard_at(publish(server), f"../../../global/r0000/{GLOBAL_SHARD}", global_shard(server))


def absolute_name(server: Server) -> None:
    point_shard_at(publish(server), str(global_shard(server)), global_shard(server))


def symlinked_shard(server: Server) -> None:
    path = shard(publish(server))
    point_shard_at(server.staged, path.name, global_shard(server))
    path.symlink_to(global_shard(server))


def fifo_shard(server: Server) -> None:
    path = shard(publish(server))
    path.unlink()
    os.mkfifo(path)


def junk_file(server: Server) -> None:
    (publish(server) / "notes.txt").write_text("not part of the update")


def subdirectory(server: Server) -> None:
    (publish(server) / "extra").mkdir()
    (server.staged / "extra" / "x.bin").write_bytes(b"x")


def huge_header(server: Server) -> None:
    path = shard(publish(server))
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    edit_manifest(server.staged, lambda m: m["files"].update(
        {path.name: {"blake3": digest_of_file(path), "bytes": path.stat().st_size}}))


def metrics(**changed: object) -> Callable[[Server], None]:
    def damage(server: Server) -> None:
        base = {"loss": [1.5, 1.25], "tokens": 40, "train_seconds": 0.5, "world_size": 1}
        publish(server, metrics={**base, **changed})

    return damage


CASES: dict[str, tuple[Callable[[Server], None], str, str]] = {
    # name: (damage, reason after the pull, reason verifying the facility's directory where it lies)
    "intact": (publish, "accepted", "accepted"),
    "flipped byte": (flip_a_byte, "checksum", "checksum"),
    "nan": (values(float("nan")), "non_finite", "non_finite"),
    "inf": (values(float("inf")), "non_finite", "non_finite"),
    "wrong shape": (wrong_shape, "shape", "shape"),
    "wrong dtype": (integer_dtype, "dtype", "dtype"),
    "float64": (float64_overflowing_fp32, "dtype", "dtype"),
    "missing manifest": (missing_manifest, "missing_manifest", "missing_manifest"),
    "truncated manifest": (truncated_manifest, "bad_manifest", "bad_manifest"),
    "unknown tensor": (unknown_tensor, "unexpected_tensor", "unexpected_tensor"),
    "../ file name": (name_climbing_out, "bad_manifest", "bad_manifest"),
    "absolute file name": (absolute_name, "bad_manifest", "bad_manifest"),
    "symlinked shard": (symlinked_shard, "transfer", "unexpected_file"),
    "fifo shard": (fifo_shard, "transfer", "unexpected_file"),
    "junk file": (junk_file, "unexpected_file", "unexpected_file"),
    "subdirectory": (subdirectory, "unexpected_file", "unexpected_file"),
    "huge header": (huge_header, "checksum", "checksum"),
    "wrong base fingerprint": (lambda s: publish(s, base_fingerprint="sha256:" + "cd" * 32), "fingerprint",
                               "fingerprint"),
    "replayed round": (lambda s: publish(s, round=0), "round", "round"),
    "num_samples over the data size": (lambda s: publish(s, num_samples=10**15), "num_samples", "num_samples"),
    "loss not a list": (metrics(loss="oops"), "bad_metrics", "bad_metrics"),
    "loss not finite": (metrics(loss=[1.0, float("inf")]), "bad_metrics", "bad_metrics"),
    "loss longer than the steps": (metrics(loss=[1.0] * 3), "bad_metrics", "bad_metrics"),
    "negative tokens": (metrics(tokens=-1), "bad_metrics", "bad_metrics"),
    "seconds as text": (metrics(train_seconds="fast"), "bad_metrics", "bad_metrics"),
    "world_size zero": (metrics(world_size=0), "bad_metrics", "bad_metrics"),
    "huge unknown metric": (metrics(blob="x" * 70_000), "bad_metrics", "bad_metrics"),
}


# --- the server's side -----------------------------------------------------------------------------


def snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, str]:
    """sha256 of every regular file under `root` outside `skip`: what must not change."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and not any(path.is_relative_to(s) for s in skip):
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def without_hanging(run: Callable[[], str], fifos: list[Path]) -> str:
    """`run()`; a server stuck opening one of `fifos` is released after `HANG_SECONDS` and fails the test."""
    hung = threading.Event()

    def release() -> None:
        hung.set()
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a blocked reader's open returns
            except OSError:
                pass

    timer = threading.Timer(HANG_SECONDS, release)
    timer.start()
    try:
        outcome = run()
    finally:
        timer.cancel()
    assert not hung.is_set(), f"the server blocked on a FIFO for {HANG_SECONDS} s"
    return outcome


def verdict(server: Server, path: Path) -> str:
    """What `Intake.collect` records for the update at `path`: "accepted" or the rejection reason."""
    try:
        update = server.intake.verified(path, "alpha", 1, server.global_)
    except UpdateRejected as e:
        return e.reason
    update.source.close()
    return "accepted"


def pulled_verdict(server: Server) -> str:
    try:
        server.mover.pull("updates/r0001-a0", server.pulled)
    except TransferError:
        return "transfer"
    return verdict(server, server.pulled)


def opens_during(run: Callable[[], str]) -> tuple[str, list[str]]:
    global _opened
    _opened = []
    try:
        return run(), _opened
    finally:
        _opened = None


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_update_is_rejected_with_its_reason_touching_nothing_else(server: Server, case: str):
    damage, after_pull, in_place = CASES[case]
    damage(server)
    fifos = [p for p in server.staged.iterdir() if p.is_fifo()] if server.staged.exists() else []
    before = snapshot(server.root, skip=(server.staged, server.pulled))
    update_dirs = (server.staged, server.pulled, server.pulled.parent)

    outcome, opened = opens_during(lambda: without_hanging(lambda: verdict(server, server.staged), fifos))
    assert outcome == in_place, f"{case}: verifying the facility's directory in place"
    pulled, opened_too = opens_during(lambda: without_hanging(lambda: pulled_verdict(server), fifos))
    assert pulled == after_pull, f"{case}: after the pull"

    allowed = (*update_dirs, server.data)
    outside = [path for path in opened + opened_too
               if Path(path).is_relative_to(server.root) and not any(Path(path).is_relative_to(a) for a in allowed)
               and not Path(path).name.startswith(".alpha.partial-")]
    assert outside == [], f"{case}: the server opened files outside the update"
    assert snapshot(server.root, skip=(server.staged, server.pulled)) == before, f"{case}: something else changed"


def test_a_configured_max_samples_bounds_the_claim_and_names_the_key(tmp_path: Path):
    server = make_server(tmp_path, max_samples=3)
    publish(server, num_samples=4)
    with pytest.raises(UpdateRejected) as info:
        server.intake.verified(server.staged, "alpha", 1, server.global_)
    assert info.value.reason == "num_samples"
    assert "num_samples 4" in str(info.value) and "cap of 3" in str(info.value)
    assert "facilities[alpha].max_samples" in str(info.value)


def test_more_local_steps_than_the_task_asked_for_is_rejected(server: Server):
    """With `weighting: steps` the self-reported step count is a facility's weight: it is held to the task's."""
    publish(server, local_steps=12)
    accepted = server.intake.verified(server.staged, "alpha", 1, server.global_, asked_steps=12)
    accepted.source.close()
    assert accepted.local_steps == 12
    with pytest.raises(UpdateRejected) as info:
        server.intake.verified(server.staged, "alpha", 1, server.global_, asked_steps=4)
    assert info.value.reason == "local_steps"
    assert "claims 12 local steps" in str(info.value) and "asked for 4" in str(info.value)


def test_the_data_size_cap_names_the_data_and_the_key(server: Server):
    publish(server, num_samples=RECORDS + 1)
    with pytest.raises(UpdateRejected) as info:
        server.intake.verified(server.staged, "alpha", 1, server.global_)
    assert f"num_samples {RECORDS + 1}" in str(info.value) and str(server.data) in str(info.value)
    assert "facilities[alpha].max_samples" in str(info.value)


def test_zero_samples_is_accepted_and_weighs_nothing(server: Server):
    from fedhpc.aggregate.base import aggregation_weights

    publish(server, num_samples=0)
    update = server.intake.verified(server.staged, "alpha", 1, server.global_)
    try:
        assert aggregation_weights([update], "samples") == [1.0]  # alone: equal weights, nothing divides by 0
    finally:
        update.source.close()


def test_a_remote_facility_without_max_samples_is_unbounded(tmp_path: Path):
    server = make_server(tmp_path, launcher={"kind": "parsl", "provider": "local"})
    publish(server, num_samples=10**9)
    server.intake.verified(server.staged, "alpha", 1, server.global_).source.close()


def test_an_oversized_manifest_is_refused_before_parsing(server: Server):
    from fedhpc.exchange.manifest import MAX_MANIFEST_BYTES

    path = publish(server) / MANIFEST_NAME
    with open(path, "ab") as handle:
        handle.truncate(MAX_MANIFEST_BYTES + 1)
    with pytest.raises(UpdateRejected, match="more than the") as info:
        server.intake.verified(server.staged, "alpha", 1, server.global_)
    assert info.value.reason == "bad_manifest"
