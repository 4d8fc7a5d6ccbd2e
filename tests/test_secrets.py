"""Secrets stay secret: a launcher's env and secret-named keys never reach the run directory, which is private.

The jobs still get the real values (read from the user's file at every run and resume), and rotating a
token between a run and its resume is not a different experiment.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from conftest import QUICKSTART, run_fedhpc
from fedhpc.config import load_experiment
from fedhpc.redaction import REDACTED, is_secret_name, redact
from fedhpc.report.html import write_report
from fedhpc.run.ledger import Ledger
from fedhpc.run.rundir import RunDir

TOKEN = "hf_first_0123456789abcdefSECRET"
ROTATED = "hf_second_9876543210fedcbaSECRET"

# Writes the token each job sees into a file outside the run directory: proof the real value launched it.
HOOK = """\
import os
with open(os.environ["SEEN_TOKENS"], "a") as f:
    f.write(os.environ.get("HF_TOKEN", "") + "\\n")
"""


def _experiment(tmp_path: Path, token: str) -> Path:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    env = {"HF_TOKEN": token, "PYTHONPATH": str(hook), "SEEN_TOKENS": str(tmp_path / "seen.txt")}
    document = {
        "name": "secrets",
        "run_dir": str(tmp_path / "run"),
        "data": {"seq_len": 96},
        "algorithm": {"rounds": 1, "local_steps": 1, "batch_size": 2},
        "facilities": [{"name": "alpha", "data": str(QUICKSTART.parent / "data" / "alpha.jsonl"),
                        "launcher": {"kind": "local", "env": env}}],
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _files_holding(root: Path, secret: str) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_run_records_no_token_is_private_and_resumes_after_the_token_rotates(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = run_fedhpc("run", str(_experiment(tmp_path, TOKEN)))
    assert first.returncode == 0, first.stdout + first.stderr
    write_report(run_dir)

    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    for name in ("experiment.yaml", "ledger.sqlite", "report.html", "metrics.jsonl"):
        assert TOKEN.encode() not in (run_dir / name).read_bytes(), name
    assert _files_holding(run_dir, TOKEN) == []
    recorded = yaml.safe_load((run_dir / "experiment.yaml").read_text())
    assert recorded["facilities"][0]["launcher"]["env"]["HF_TOKEN"] == REDACTED
    assert "HF_TOKEN: &lt;redacted&gt;" in (run_dir / "report.html").read_text()  # the report shows it was set

    assert TOKEN in (tmp_path / "seen.txt").read_text().split()  # the job was launched with the real value

    # The run is complete, so resuming it trains nothing: it checks that the experiment is the same one.
    second = run_fedhpc("run", str(_experiment(tmp_path, ROTATED)))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming" in second.stdout + second.stderr
    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1]
    ledger.close()
    assert _files_holding(run_dir, ROTATED) == []


def test_keys_named_like_secrets_are_redacted_anywhere_and_counts_are_not() -> None:
    document = {
        "launcher": {"env": {"OMP_NUM_THREADS": "2"}, "user_endpoint_config": {"api_token": "abc", "queue": "debug",
                                                                                 "clientSecret": {"x": 1}},
                     "worker_init": "module load x; export HF_TOKEN=abc123 WANDB_API_KEY='k e y'; echo ok",
                     "scheduler_options": ["#SBATCH --export=ALL,DB_PASSWORD=pw"]},
        "evaluation": {"max_new_tokens": 64, "batch_size": 16},
    }
    assert redact(document) == {
        "launcher": {"env": {"OMP_NUM_THREADS": REDACTED},
                     "user_endpoint_config": {"api_token": REDACTED, "queue": "debug", "clientSecret": REDACTED},
                     "worker_init": f"module load x; export HF_TOKEN={REDACTED} WANDB_API_KEY={REDACTED}; echo ok",
                     "scheduler_options": [f"#SBATCH --export=ALL,DB_PASSWORD={REDACTED}"]},
        "evaluation": {"max_new_tokens": 64, "batch_size": 16},
    }
    assert redact(redact(document)) == redact(document)
    assert [is_secret_name(n) for n in ("HF_TOKEN", "api_key", "apiKey", "GLOBUS_CLIENT_SECRET", "db_password",
                                        "max_new_tokens", "token_budget_tokens", "keep_last", "monkey")] == [
        True, True, True, True, True, False, True, False, False]


def test_a_run_directory_is_made_private_or_follows_the_umask_when_asked(tmp_path: Path) -> None:
    private = load_experiment(QUICKSTART, [f"run_dir={tmp_path / 'private'}"])
    RunDir(tmp_path / "private").create(private)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700

    (tmp_path / "made-by-hand").mkdir(mode=0o755)
    RunDir(tmp_path / "made-by-hand").create(load_experiment(QUICKSTART, [f"run_dir={tmp_path / 'made-by-hand'}"]))
    assert stat.S_IMODE((tmp_path / "made-by-hand").stat().st_mode) == 0o700

    shared = load_experiment(QUICKSTART, [f"run_dir={tmp_path / 'shared'}", "run_dir_mode=umask"])
    RunDir(tmp_path / "shared").create(shared)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o777 & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
