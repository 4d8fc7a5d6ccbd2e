"""One real `fedhpc run` with MLflow (a server on 127.0.0.1), TensorBoard and W&B offline all on, resumed once.

The quickstart's facility alpha (one rank, 2 local steps) for 1 round, then the same command with `algorithm.rounds=2` (a resume): each backend
must hold one tracked run with rounds 1 and 2 once each, the config as parameters and the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import QUICKSTART, run_fedhpc
from fedhpc.run.ledger import Ledger
from tracking_readers import start_mlflow_server, stop, tensorboard_scalars, wandb_history, wandb_records

pytest.importorskip("mlflow")


@pytest.fixture
def mlflow_server(tmp_path: Path):
    root = tmp_path / "mlflow"
    root.mkdir()
    process, uri = start_mlflow_server(root)
    yield uri
    stop(process)


def test_a_resumed_run_continues_the_same_tracked_run_in_each_backend(tmp_path: Path, mlflow_server: str) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    tracking = {"mlflow": {"tracking_uri": mlflow_server, "experiment": "fedhpc-e2e"}, "tensorboard": {},
                "wandb": {"project": "fedhpc-e2e"}}
    alpha = [{"name": "alpha", "data": str(QUICKSTART.parent / "data" / "alpha.jsonl")}]
    common = ["--set", f"run_dir={run_dir}", "--set", "algorithm.local_steps=2", "--set",
              f"facilities={json.dumps(alpha)}", "--set", f"tracking={json.dumps(tracking)}"]
    first = run_fedhpc("run", str(QUICKSTART), *common, "--set", "algorithm.rounds=1")
    assert first.returncode == 0, first.stdout + first.stderr
    second = run_fedhpc("run", str(QUICKSTART), *common, "--set", "algorithm.rounds=2")
    assert second.returncode == 0, second.stdout + second.stderr

    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1, 2]
    assert ledger.events("tracking_failed") == []
    mlflow_id = ledger.get_meta("tracking.mlflow.run_id")
    wandb_id = ledger.get_meta("tracking.wandb.run_id")
    losses = {e.round: e.detail["mean_loss"] for e in ledger.events("round_complete")}
    ledger.close()

    client = MlflowClient(tracking_uri=mlflow_server)
    (experiment,) = [e for e in client.search_experiments() if e.name == "fedhpc-e2e"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == mlflow_id and run.info.status == "FINISHED"
    history = client.get_metric_history(mlflow_id, "round/mean_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, pytest.approx(losses[1])), (2, pytest.approx(losses[2]))]
    assert sorted(m.step for m in client.get_metric_history(mlflow_id, "facility/alpha/loss")) == [1, 2]
    assert sorted(m.step for m in client.get_metric_history(mlflow_id, "facility/alpha/pull_bytes")) == [1, 2]
    assert run.data.params["algorithm.rounds"] == "1"  # as the tracked run was started
    assert run.data.params["facilities.alpha.launcher.nprocs"] == "1"
    assert "report.html" in [f.path for f in client.list_artifacts(mlflow_id)]

    scalars = tensorboard_scalars(run_dir / "tensorboard")
    assert [step for step, _ in scalars["round/mean_loss"]] == [1, 2]
    assert [step for step, _ in scalars["facility/alpha/num_samples"]] == [1, 2]
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per server start

    runs = wandb_history(run_dir / "wandb")
    assert list(runs) == [wandb_id]  # both server starts wrote the one W&B run
    rows = runs[wandb_id]
    assert sorted(row["round"] for row in rows if "round/mean_loss" in row) == [1, 2]
    assert sorted(row["round"] for row in rows if "facility/alpha/loss" in row) == [1, 2]
    folders = sorted((run_dir / "wandb").glob(f"offline-run-*-{wandb_id}"))
    assert len(folders) == 2 and (folders[-1] / "files" / "report.html").is_file()
    configs = [r for r in wandb_records(folders[0] / f"run-{wandb_id}.wandb") if r.WhichOneof("record_type") == "config"]
    assert any(item.key == "model.source" for record in configs for item in record.config.update)
