"""The tracking session on a real ledger and event log: what each event logs, resume after a kill, a dead server.

TensorBoard and MLflow's file store are the backends here (no server to start); the MLflow server and
W&B run in tests/test_tracking_e2e.py, on a real federated run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fedhpc.clock import RealClock
from fedhpc.config.loading import load_experiment
from fedhpc.config.tracking import PACKAGES, TrackingConfig
from fedhpc.errors import ConfigError
from fedhpc.report.metrics_log import MetricsLog
from fedhpc.run.events import EventLog
from fedhpc.run.ledger import Ledger
from fedhpc.tracking import start_tracking
from fedhpc.tracking.metrics import event_metrics, flat_params
from tracking_readers import free_port, tensorboard_scalars

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

EVAL_TASKS = {
    "name_conversion-s2f": {"n": 40, "primary": "exact_match", "higher_is_better": True,
                            "metrics": {"exact_match": {"value": 0.25, "ci95": [0.1, 0.4]}}},
    "property_prediction-esol": {"n": 12, "primary": "rmse", "higher_is_better": False,
                                 "metrics": {"rmse": {"value": 1.7, "ci95": [1.2, 2.3]}}},
}


def test_each_event_gives_the_metrics_a_user_looks_for() -> None:
    accepted = {"num_samples": 40, "local_steps": 3, "loss": [3.0, 2.0, 1.0], "tokens": 900, "train_seconds": 0.8,
                "load_seconds": None, "staleness": 0, "attempt": "r0002-a0", "path": "/x", "epsilon": 2.5}
    assert event_metrics("accepted", "beta", accepted) == {
        "facility/beta/num_samples": 40.0, "facility/beta/local_steps": 3.0, "facility/beta/loss": 2.0,
        "facility/beta/loss_last": 1.0, "facility/beta/tokens": 900.0, "facility/beta/train_seconds": 0.8,
        "facility/beta/staleness": 0.0, "facility/beta/epsilon": 2.5,  # a field privacy would add: logged as it is
    }
    assert event_metrics("round_complete", None, {"seconds": 7.5, "mean_loss": 1.5, "start": 1e9, "recovered": True}) \
        == {"round/seconds": 7.5, "round/mean_loss": 1.5}
    assert event_metrics("pulled", "alpha", {"bytes": 4096, "seconds": 0.1, "start": 1e9, "attempt": "r0001-a0"}) \
        == {"facility/alpha/pull_bytes": 4096.0, "facility/alpha/pull_seconds": 0.1}
    assert event_metrics("staged", "alpha", {"bytes": 10, "seconds": 0.2, "start": 1e9}) \
        == {"facility/alpha/stage_bytes": 10.0, "facility/alpha/stage_seconds": 0.2}
    assert event_metrics("eval", None, {"tasks": EVAL_TASKS, "lenient": False, "examples": 52, "seconds": 9.0}) == {
        "eval/name_conversion-s2f/exact_match": 0.25, "eval/name_conversion-s2f/n": 40.0,
        "eval/property_prediction-esol/rmse": 1.7, "eval/property_prediction-esol/n": 12.0, "eval/seconds": 9.0,
    }
    assert event_metrics("rejected", "gamma", {"reason": "checksum", "message": "..."}) == {"facility/gamma/rejected": 1.0}
    assert event_metrics("job_finished", "gamma", {"state": "failed", "returncode": 1}) == {"facility/gamma/failed": 1.0}
    assert event_metrics("job_finished", "gamma", {"state": "done", "returncode": 0}) == {}
    assert event_metrics("submitted", "alpha", {"job_id": "12", "local_steps": 3}) == {}


def test_the_config_becomes_parameters_named_as_set_takes_them() -> None:
    document = {"name": "q", "algorithm": {"rounds": 3, "lr": 0.005}, "evaluation": None,
                "facilities": [{"name": "alpha", "launcher": {"kind": "local", "nprocs": 1, "env": {}}},
                               {"name": "beta", "launcher": {"kind": "local", "nprocs": 2, "env": {}}}],
                "model": {"lora": {"target_modules": ["q_proj", "v_proj"]}}}
    assert flat_params(document) == {
        "name": "q", "algorithm.rounds": "3", "algorithm.lr": "0.005", "evaluation": "",
        "facilities.alpha.name": "alpha", "facilities.alpha.launcher.kind": "local",
        "facilities.alpha.launcher.nprocs": "1", "facilities.beta.name": "beta",
        "facilities.beta.launcher.kind": "local", "facilities.beta.launcher.nprocs": "2",
        "model.lora.target_modules": "['q_proj', 'v_proj']",
    }


class _Server:
    """One server process's view of the run directory: its own event log on the shared ledger."""

    def __init__(self, run_dir: Path):
        self.ledger = Ledger(run_dir / "ledger.sqlite")
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")
        self.events = EventLog(self.ledger, self.metrics, RealClock())

    def round(self, round: int, loss: float) -> None:
        self.events.record("accepted", round, "alpha", loss=[loss + 1, loss], num_samples=8, attempt=f"r{round:04d}-a0")
        self.ledger.complete_round(round, f"global/r{round:04d}", 1, facilities=["alpha"], seconds=0.5)
        self.events.record("round_complete", round, seconds=2.0, mean_loss=loss + 0.5, start=0.0)

    def close(self) -> None:
        self.ledger.close()
        self.metrics.close()


def _tracking(tmp_path: Path, mlflow_uri: str) -> TrackingConfig:
    return TrackingConfig.model_validate({"mlflow": {"tracking_uri": mlflow_uri, "experiment": "unit"},
                                          "tensorboard": {"log_dir": str(tmp_path / "tb")}})


def test_a_killed_server_s_rounds_are_logged_by_the_next_once_each(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    config = _tracking(tmp_path, uri)
    first = _Server(tmp_path)
    session = start_tracking(config, first.events, {"name": "unit", "algorithm": {"rounds": 3}}, tmp_path, "unit")
    first.events.record("run_started", name="unit")
    first.round(1, 3.0)
    first.events = EventLog(first.ledger, first.metrics, RealClock())  # killed after recording round 2, untracked
    first.round(2, 2.0)
    first.close()

    second = _Server(tmp_path)
    session = start_tracking(config, second.events, {"name": "unit", "algorithm": {"rounds": 3}}, tmp_path, "unit")
    second.events.record("run_started", name="unit", resumed_from=2)
    second.round(3, 1.0)
    second.events.record("run_finished", rounds_completed=3)
    session.close()
    run_id = second.ledger.get_meta("tracking.mlflow.run_id")
    second.close()

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "round/mean_loss")] == \
        [(1, 3.5), (2, 2.5), (3, 1.5)]
    assert [m.step for m in client.get_metric_history(run_id, "aggregate/num_updates")] == [1, 2, 3]
    assert run.data.params["algorithm.rounds"] == "3"
    assert [f.path for f in client.list_artifacts(run_id)] == ["report.html"]
    scalars = tensorboard_scalars(tmp_path / "tb")
    assert scalars["round/mean_loss"] == [(1, 3.5), (2, 2.5), (3, 1.5)]
    assert [step for step, _ in scalars["facility/alpha/loss_last"]] == [1, 2, 3]
    assert (tmp_path / "tb" / "report.html").is_file()


def test_a_tracking_server_that_is_down_costs_a_warning_not_a_round(tmp_path: Path, caplog) -> None:
    config = _tracking(tmp_path, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    server = _Server(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fedhpc.tracking"):
        session = start_tracking(config, server.events, {"name": "unit"}, tmp_path, "unit")
        server.round(1, 3.0)
        server.round(2, 2.0)
        session.close()
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("fedhpc.tracking")]
    assert len(warnings) == 1 and "tracking to mlflow failed" in warnings[0], warnings
    (failed,) = server.ledger.events("tracking_failed")
    assert failed.detail["backend"] == "mlflow" and "127.0.0.1" in failed.detail["reason"]
    assert server.ledger.get_meta("tracking.mlflow.cursor") is None  # a resume logs every round it missed
    assert server.ledger.completed_rounds() == [1, 2]
    assert [step for step, _ in tensorboard_scalars(tmp_path / "tb")["round/mean_loss"]] == [1, 2]
    server.close()


def test_a_backend_whose_package_is_missing_is_refused_naming_the_extra(tmp_path: Path, monkeypatch) -> None:
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text("name: t\ntracking: {wandb: {project: p}}\nfacilities: [{name: a, data: d.jsonl}]\n")
    (tmp_path / "d.jsonl").write_text('{"input": "a", "output": "b"}\n')
    monkeypatch.setitem(PACKAGES, "wandb", ("fedhpc_test_absent_package", "wandb"))
    with pytest.raises(ConfigError) as error:
        load_experiment(experiment)
    assert "tracking.wandb" in str(error.value) and "pip install 'fedhpc[wandb]'" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "experiment.yaml"]


@pytest.mark.parametrize(("uri", "said"), [("https://me:hunter2@mlflow.lab", "MLFLOW_TRACKING_PASSWORD"),
                                          ("localhost:5000", "is not an MLflow tracking URI")])
def test_a_tracking_uri_with_a_password_or_no_scheme_is_refused_at_its_key(tmp_path: Path, uri: str, said: str) -> None:
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(f"name: t\ntracking: {{mlflow: {{tracking_uri: '{uri}'}}}}\n"
                          "facilities: [{name: a, data: d.jsonl}]\n")
    (tmp_path / "d.jsonl").write_text('{"input": "a", "output": "b"}\n')
    with pytest.raises(ConfigError) as error:
        load_experiment(experiment)
    assert "tracking.mlflow.tracking_uri" in str(error.value) and said in str(error.value)
    assert "hunter2" not in str(error.value).split(said)[-1]
