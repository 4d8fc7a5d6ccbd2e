"""The parsl launcher: its config, the job script, the outcome of ended jobs, and real jobs on Parsl's LocalProvider.

The Slurm cases are in test_facility_parsl_slurm.py (marked slurm). What every launcher promises (a failing
job's reason, cancel on every rank, reattach, foreign handles) is asked of this one in
tests/contracts/test_launcher_contract.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import QUICKSTART, fedhpc_command, processes_mentioning, wait_finished
from fedhpc.config import ParslLauncherConfig, load_experiment
from fedhpc.errors import ConfigError, SubmitError
from fedhpc.exchange import ExchangeDir
from fedhpc.facility.base import JobSpec, JobState, JobStatus
from fedhpc.facility.launchers.batch_job import job_outcome, job_script, walltime_for
from fedhpc.facility.launchers.parsl import ParslLauncher, make_provider, provider_arguments
from fedhpc.run.ledger import Ledger

PY = sys.executable
RANKS_PROBE = (  # one file per rank: lines two ranks print to one stdout can interleave
    "import os; from fedhpc.worker.distributed import rank_env; r = rank_env(); e = os.environ; "
    "open(os.path.join(e['PROBE_OUT'], f'rank{r.rank}'), 'w').write(' '.join(map(str, "
    "[r.rank, r.world_size, r.local_rank, e['MASTER_ADDR'], e['MASTER_PORT'], e['FEDHPC_DEVICE'], e['X']])))"
)


def local_config(**overrides) -> ParslLauncherConfig:
    return ParslLauncherConfig(
        **{"provider": "local", "master_addr": "127.0.0.1", "device": "cpu", "status_interval": 0.2, **overrides}
    )


def no_processes_mentioning(text: str, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


# ---- config --------------------------------------------------------------------------------------


def _load_with_launcher(launcher: dict) -> None:
    load_experiment(QUICKSTART, [f"facilities.1.launcher={json.dumps(launcher)}"])


@pytest.mark.parametrize(
    ("launcher", "key", "fragment"),
    [
        ({"kind": "parsl"}, "facilities.1.launcher.provider", "required key is missing"),
        ({"kind": "parsl", "provider": "sge"}, "facilities.1.launcher.provider", "'local', 'slurm', 'pbspro'"),
        ({"kind": "parsl", "provider": "local", "partition": "debug"}, "facilities.1.launcher.partition",
         "the local provider has no use for it (it applies to provider slurm)"),
        ({"kind": "parsl", "provider": "pbspro", "qos": "high"}, "facilities.1.launcher.qos", "provider slurm"),
        ({"kind": "parsl", "provider": "slurm", "queue": "prod"}, "facilities.1.launcher.queue",
         "applies to provider pbspro or lsf"),
        ({"kind": "parsl", "provider": "lsf", "account": "chem"}, "facilities.1.launcher.account",
         "the lsf provider has no use for it"),
        ({"kind": "parsl", "provider": "local", "walltime": "01:00:00"}, "facilities.1.launcher.walltime",
         "the local provider has no use for it"),
        ({"kind": "parsl", "provider": "slurm", "walltime": "90"}, "facilities.1.launcher.walltime", "HH:MM:SS"),
        ({"kind": "parsl", "provider": "slurm", "walltime": "00:00:30"}, "facilities.1.launcher.walltime",
         "at least 00:01:00"),
        ({"kind": "parsl", "provider": "local", "nodes": 2, "mpi": {"launcher": "mpiexec"}},
         "facilities.1.launcher.nodes", "one node"),
        ({"kind": "parsl", "provider": "slurm", "ranks_per_node": 4}, "facilities.1.launcher.mpi.launcher",
         "none starts one process, but nodes × ranks_per_node is 4"),
        ({"kind": "parsl", "provider": "pbspro", "mpi": {"launcher": "srun"}}, "facilities.1.launcher.mpi.launcher",
         "srun needs a Slurm allocation"),
        ({"kind": "parsl", "provider": "local", "mpi": {"launcher": "aprun"}}, "facilities.1.launcher.mpi.launcher",
         "aprun needs a Cray ALPS allocation"),
        ({"kind": "parsl", "provider": "slurm", "mpi": {"launcher": "srun", "flavour": "pals"}},
         "facilities.1.launcher.mpi.flavour", "only applies to mpi.launcher mpiexec"),
        ({"kind": "parsl", "provider": "slurm", "mpi": {"extra_args": ["-v"]}},
         "facilities.1.launcher.mpi.extra_args", "no launcher to pass them to"),
        ({"kind": "parsl", "provider": "slurm", "mpi": {"launcher": "mpirun"}}, "facilities.1.launcher.mpi.launcher",
         "'mpiexec', 'srun'"),
        ({"kind": "parsl", "provider": "slurm", "gpus_per_rank": 1, "device": "cpu"},
         "facilities.1.launcher.gpus_per_rank", "device is cpu"),
        ({"kind": "parsl", "provider": "local", "env": {"BAD-NAME": "1"}}, "facilities.1.launcher.env",
         "cannot be an environment variable name"),
        ({"kind": "parsl", "provider": "slurm", "scheduler_options": ["--gres=gpu:4"]},
         "facilities.1.launcher.scheduler_options", "one directive line"),
        ({"kind": "parsl", "provider": "slurm", "partitoin": "debug"}, "facilities.1.launcher.partitoin",
         "unknown key"),
    ],
)
def test_config_errors_name_the_key(launcher, key, fragment):
    with pytest.raises(ConfigError) as info:
        _load_with_launcher(launcher)
    assert info.value.key == key
    assert f"{key}: " in str(info.value) and fragment in str(info.value)


def test_every_mistake_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        _load_with_launcher({"kind": "parsl", "provider": "local", "qos": "x", "nodes": 2})
    message = str(info.value)
    assert "facilities.1.launcher.qos: " in message
    assert "facilities.1.launcher.nodes: " in message
    assert "facilities.1.launcher.mpi.launcher: none starts one process, but nodes × ranks_per_node is 2" in message


def test_a_good_config_loads_and_counts_its_ranks():
    experiment = load_experiment(QUICKSTART, [
        'facilities.1.launcher={"kind": "parsl", "provider": "slurm", "partition": "debug", "walltime": "00:30:00", '
        '"nodes": 2, "ranks_per_node": 4, "mpi": {"launcher": "srun"}, "exclusive": false}'
    ])  # fmt: skip
    launcher = experiment.facilities[1].launcher
    assert isinstance(launcher, ParslLauncherConfig)
    assert launcher.nprocs == 8 and launcher.mpi.launcher == "srun" and launcher.exclusive is False


def test_walltime_takes_hhmmss_even_unquoted_in_yaml_or_seconds(project):
    """YAML 1.1 reads an unquoted 12:00:00 as the base-60 integer 43200; it still means twelve hours."""
    path = project / "exp.yaml"
    path.write_text(
        "name: probe\nfacilities:\n"
        "  - {name: alpha, data: data/alpha.jsonl, launcher: {kind: parsl, provider: slurm, walltime: 12:00:00}}\n"
        "  - {name: beta, data: data/beta.jsonl, launcher: {kind: parsl, provider: pbspro, walltime: 90}}\n"
    )
    assert [f.launcher.walltime for f in load_experiment(path).facilities] == ["12:00:00", "00:02:00"]


# ---- pure pieces ---------------------------------------------------------------------------------


def test_walltime_rounds_up_to_whole_minutes():
    assert walltime_for(600) == "00:10:00"
    assert walltime_for(601) == "00:11:00"
    assert walltime_for(1) == "00:01:00"
    assert walltime_for(5 * 3600 + 30) == "05:01:00"
    assert walltime_for(None) == "01:00:00"


def test_provider_arguments_map_each_key_onto_the_providers_own():
    slurm = ParslLauncherConfig(
        provider="slurm", partition="gpu", account="chem", qos="high", constraint="a100", cores_per_node=64,
        mem_per_node=256, exclusive=False, ranks_per_node=4, gpus_per_rank=1, mpi={"launcher": "srun"},
        scheduler_options=["#SBATCH --reservation=fl", "#SBATCH --signal=USR1@60"], worker_init="module load x",
    )  # fmt: skip
    assert provider_arguments(slurm) == {
        "nodes_per_block": 1, "init_blocks": 0, "min_blocks": 0, "max_blocks": 1, "worker_init": "module load x",
        "partition": "gpu", "account": "chem", "qos": "high", "constraint": "a100", "cores_per_node": 64,
        "mem_per_node": 256, "gpus_per_node": 4, "exclusive": False,
        "scheduler_options": "#SBATCH --reservation=fl\n#SBATCH --signal=USR1@60",
    }  # fmt: skip
    pbs = ParslLauncherConfig(provider="pbspro", account="fl", queue="debug", nodes=2, ranks_per_node=4,
                              gpus_per_rank=1, mpi={"launcher": "mpiexec", "flavour": "pals"})
    assert provider_arguments(pbs) == {
        "nodes_per_block": 2, "init_blocks": 0, "min_blocks": 0, "max_blocks": 1, "worker_init": "",
        "account": "fl", "queue": "debug", "scheduler_options": "", "cpus_per_node": 4,
        "select_options": "mpiprocs=4:ngpus=4",
    }  # fmt: skip
    lsf = ParslLauncherConfig(provider="lsf", project="CHM1", queue="batch")
    assert provider_arguments(lsf)["project"] == "CHM1" and "account" not in provider_arguments(lsf)
    # and Parsl accepts them (SlurmProvider is left out here: building it runs `sacct`)
    for config in (pbs, lsf, local_config()):
        assert make_provider(config).launcher.__class__.__name__ == "SimpleLauncher"


def test_job_script_exports_then_launches_then_records_the_exit_status(tmp_path):
    config = local_config(env={"X": "config", "HF_HOME": "/cache"}, mpi={"launcher": "mpiexec"}, ranks_per_node=2)
    script = job_script(config, [PY, "-m", "fedhpc", "worker"], {"X": "job"}, tmp_path / "j.rc", tmp_path / "j.started")
    assert script.splitlines()[1:] == [
        f"date +%s.%N > {tmp_path}/j.started",
        f'export PATH={os.path.dirname(PY)}:"$PATH"',
        "export FEDHPC_DEVICE=cpu",
        "export GLOO_SOCKET_IFNAME=lo",
        "export X=job",
        "export HF_HOME=/cache",
        "export MASTER_ADDR=127.0.0.1",
        f"export MASTER_PORT=\"$({PY} -c 'import socket; s = socket.socket(); s.bind((\"\", 0)); "
        "print(s.getsockname()[1])')\"",
        f"mpiexec -n 2 -ppn 2 {PY} -m fedhpc worker </dev/null",
        "rc=$?",
        f"printf '%s\\n' \"$rc\" > {tmp_path}/j.rc.tmp && mv -f {tmp_path}/j.rc.tmp {tmp_path}/j.rc",
        'exit "$rc"',
    ]
    site = job_script(ParslLauncherConfig(provider="slurm", worker_init="module load cray-python"), [PY], {},
                      tmp_path / "j.rc", tmp_path / "j.started")  # fmt: skip
    assert "export PATH" not in site  # worker_init owns PATH: the venv's mpiexec must not shadow the site's
    assert 'export MASTER_ADDR="$(hostname)"' in site and "GLOO_SOCKET_IFNAME" not in site


def test_job_script_runs_and_leaves_the_exit_status(tmp_path):
    program = "import os, sys; print(os.environ['X'], os.environ['MASTER_PORT'].isdigit()); sys.exit(7)"
    script = job_script(local_config(env={"X": "a b'c"}), [PY, "-c", program], {}, tmp_path / "j.rc",
                        tmp_path / "j.started")  # fmt: skip
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 7, done.stderr
    assert done.stdout == "a b'c True\n"
    assert (tmp_path / "j.rc").read_text() == "7\n" and not (tmp_path / "j.rc.tmp").exists()
    assert float((tmp_path / "j.started").read_text()) == pytest.approx(time.time(), abs=60)


SLURM_BANNER = "slurmstepd-vm: error: *** JOB 12 ON vm CANCELLED AT 2026-11-25T10:00:00 ***\n"


@pytest.mark.parametrize(
    ("rc", "stderr", "state", "expected"),
    [
        ("0\n", "", "", JobStatus(JobState.DONE, 0)),
        ("3\n", "Traceback ...\nValueError: empty shard\n", "COMPLETED",
         JobStatus(JobState.FAILED, 3, "exited with code 3; stderr tail:\nTraceback ...\nValueError: empty shard")),
        ("137\n", "", "", JobStatus(JobState.FAILED, 137, "exited with code 137; nothing on stderr")),
        ("garbage", "", "", JobStatus(JobState.FAILED, None, "unreadable exit status 'garbage'")),
        (None, "loading...\n" + SLURM_BANNER, "COMPLETED",
         JobStatus(JobState.FAILED, None, "cancelled by the scheduler (scancel)")),
        (None, SLURM_BANNER.replace(" ***", " DUE TO TIME LIMIT ***"), "COMPLETED",
         JobStatus(JobState.FAILED, None, "walltime exceeded (00:10:00)")),
        (None, SLURM_BANNER.replace(" ***", " DUE TO PREEMPTION ***"), "", JobStatus(JobState.FAILED, None,
         "preempted by the scheduler")),
        (None, "=>> PBS: job killed: walltime 660 exceeded limit 600\n", "COMPLETED",
         JobStatus(JobState.FAILED, None, "walltime exceeded (00:10:00)")),
        (None, "", "TIMEOUT", JobStatus(JobState.FAILED, None, "walltime exceeded (00:10:00)")),
        (None, "", "CANCELLED", JobStatus(JobState.FAILED, None, "cancelled by the scheduler")),
        (None, "", "OUT_OF_MEMORY", JobStatus(JobState.FAILED, None, "out of memory (the scheduler killed the job)")),
        (None, "", "COMPLETED", JobStatus(JobState.FAILED, None,
         "the job ended without an exit status (scheduler state COMPLETED); nothing on stderr")),
        (None, "module: command not found\n", "", JobStatus(JobState.FAILED, None,
         "the job ended without an exit status (scheduler state unknown); stderr tail:\nmodule: command not found")),
    ],
)
def test_job_outcome_from_exit_status_banner_or_scheduler_state(rc, stderr, state, expected):
    assert job_outcome(rc, stderr, walltime="00:10:00", scheduler_state=state) == expected


# ---- real jobs on Parsl's LocalProvider ----------------------------------------------------------


def test_two_mpich_ranks_run_to_done_with_their_rank_environment(tmp_path):
    config = local_config(ranks_per_node=2, mpi={"launcher": "mpiexec", "flavour": "mpich"}, env={"X": "config"})
    launcher = ParslLauncher(config)
    probe_out = tmp_path / "ranks"
    probe_out.mkdir()
    env = {"X": "job", "PROBE_OUT": str(probe_out)}
    handle = launcher.submit(JobSpec("alpha-r0001-a0", [PY, "-c", RANKS_PROBE], tmp_path / "logs", env=env))
    assert handle.job_id.startswith("local-") and handle.job_id[6:].isdigit()
    assert wait_finished(launcher, handle) == JobStatus(JobState.DONE, 0)
    parsl_dir = tmp_path / "logs" / "parsl"
    assert list(parsl_dir.glob("alpha-r0001-a0.*.sh.out"))  # Parsl's LocalProvider names: <job>.<time>.sh.out/.err
    lines = [(probe_out / f"rank{rank}").read_text() for rank in (0, 1)]
    port = lines[0].split()[4]
    assert lines == [f"0 2 0 127.0.0.1 {port} cpu job", f"1 2 1 127.0.0.1 {port} cpu job"]
    assert (parsl_dir / "alpha-r0001-a0.rc").read_text() == "0\n"
    assert launcher.poll(handle) == JobStatus(JobState.DONE, 0)


def test_status_queries_are_cached_for_the_status_interval(tmp_path):
    launcher = ParslLauncher(local_config(status_interval=30))
    handle = launcher.submit(JobSpec("slow", [PY, "-c", "import time; time.sleep(1.5)"], tmp_path))
    queries = []
    original = launcher.provider.status
    launcher.provider.status = lambda ids: queries.append(ids) or original(ids)  # counts, then asks Parsl
    try:
        status = wait_finished(launcher, handle)  # ~30 polls; the exit status file ends it, not a query
    finally:
        launcher.provider.status = original
    assert status == JobStatus(JobState.DONE, 0)
    assert len(queries) == 1


def test_a_job_name_or_directory_the_providers_cannot_take_is_refused(tmp_path):
    launcher = ParslLauncher(local_config())
    with pytest.raises(SubmitError, match="plain file name"):
        launcher.submit(JobSpec("../escape", [PY], tmp_path))
    with pytest.raises(SubmitError, match="characters Parsl's providers do not quote"):
        launcher.submit(JobSpec("alpha", [PY], tmp_path / "my logs"))


def test_pbspro_and_lsf_submit_scripts_carry_the_request(tmp_path, monkeypatch):
    """No PBS or LSF here: stand-in qsub/bsub keep the script Parsl's real provider wrote and print a job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command, answer in (("qsub", "4242.pbs01"), ("bsub", "Job <77> is submitted to queue <debug>.")):
        keep = f'echo "$*" > {tmp_path}/{command}.args; cp "${{@: -1}}" {tmp_path}/{command}.script'
        (bin_dir / command).write_text(f'#!/bin/bash\n{keep}\necho "{answer}"\n')
        (bin_dir / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    spec = JobSpec("alpha-r0001-a0", [PY, "-m", "fedhpc", "worker"], tmp_path / "logs", walltime_s=600)

    pbs = ParslLauncher(ParslLauncherConfig(
        provider="pbspro", account="MyProject", queue="debug", nodes=2, ranks_per_node=4, gpus_per_rank=1,
        device="cuda", mpi={"launcher": "mpiexec", "flavour": "pals", "extra_args": ["--cpu-bind", "depth"]},
        scheduler_options=["#PBS -l filesystems=home:eagle"], worker_init="module load conda",
    ))  # fmt: skip
    handle = pbs.submit(spec)
    assert handle.job_id == "pbspro-4242.pbs01"
    assert (tmp_path / "qsub.args").read_text().startswith("-q debug -A MyProject ")
    script = (tmp_path / "qsub.script").read_text()
    for line in ("#PBS -l walltime=00:10:00", "#PBS -l select=2:ncpus=4:mpiprocs=4:ngpus=4",
                 "#PBS -l filesystems=home:eagle", "module load conda", 'export MASTER_ADDR="$(hostname)"',
                 f"mpiexec -n 8 --ppn 4 --cpu-bind depth {PY} -m fedhpc worker </dev/null"):  # fmt: skip
        assert line in script.splitlines(), line
    assert "export PATH=" not in script  # worker_init owns PATH
    assert handle.native.stderr == Path(f"{next((tmp_path / 'logs' / 'parsl').glob('alpha-r0001-a0.*[0-9]'))}.stderr")

    lsf = ParslLauncher(ParslLauncherConfig(provider="lsf", project="CHM1", queue="debug", walltime="01:30:00"))
    handle = lsf.submit(spec)
    assert handle.job_id == "lsf-77"
    script = (tmp_path / "bsub.script").read_text().splitlines()
    assert {"#BSUB -W 90", "#BSUB -P CHM1", "#BSUB -q debug", "#BSUB -nnodes 1"} <= set(script)
    assert handle.native.stderr.name.startswith("alpha-r0001-a0.") and handle.native.stderr.name.endswith(
        ".submit.stderr"
    )


# ---- a whole run ---------------------------------------------------------------------------------


def test_quickstart_through_parsl_local_provider_with_two_mpich_ranks(tmp_path):
    run_dir = tmp_path / "run"
    facility = {
        "name": "alpha",
        "data": str(QUICKSTART.parent / "data" / "alpha.jsonl"),
        "launcher": {
            "kind": "parsl", "provider": "local", "master_addr": "127.0.0.1", "device": "cpu",
            "ranks_per_node": 2, "mpi": {"launcher": "mpiexec", "flavour": "mpich"},
            "status_interval": 0.5, "env": {"OMP_NUM_THREADS": "1"},
        },
    }  # fmt: skip
    overrides = [
        f"run_dir={run_dir}", "algorithm.rounds=2", "algorithm.local_steps=2", f"facilities={json.dumps([facility])}"
    ]  # fmt: skip
    result = subprocess.run(
        fedhpc_command("run", str(QUICKSTART), *[arg for o in overrides for arg in ("--set", o)]),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1, 2]
    for round in (1, 2):
        (finished,) = ledger.events("job_finished", round=round)
        assert finished.detail["state"] == "done"
        assert {e.facility for e in ledger.events("accepted", round=round)} == {"alpha"}
        assert ExchangeDir(run_dir / "updates" / f"r{round:04d}" / "alpha").manifest.metrics["world_size"] == 2
    job_ids = [e.detail["job_id"] for e in ledger.events("submitted")]
    assert len(job_ids) == 2 and all(job_id.startswith("local-") for job_id in job_ids)
    assert no_processes_mentioning(str(run_dir)) == []
