"""Device choice, backend and capabilities per device type (CPU, CUDA, ROCm, XPU), at the edge where torch reports.

No GPU of any vendor is on this machine: each test gives `fedhpc.worker.device` the
`AcceleratorProbe` torch would report on that node (its build, how many devices
the binding left visible, its backends), and the real selection logic runs on it.
The CPU path is also run for real, with this machine's own probe.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from typer.testing import CliRunner

from fedhpc.cli import app
from fedhpc.config import FullFinetuneConfig
from fedhpc.errors import ConfigError
from fedhpc.worker import device as devices
from fedhpc.worker.compiled import wants_compile
from fedhpc.worker.device import (
    AcceleratorProbe,
    autocast,
    backend_for,
    compiles,
    ddp_device_ids,
    describe,
    fused_adamw,
    length_multiple,
    probe_accelerator,
    read_binding,
    resolve_device,
    select_device,
)
from fedhpc.worker.distributed import RankEnv
from fedhpc.worker.fsdp import compute_dtype

FUSED = ("mps", "cuda", "xpu", "hpu", "cpu")
CPU_ONLY = AcceleratorProbe(None, 0, None, "2.8.0+cpu", fused_optimizer_devices=FUSED)
CUDA = AcceleratorProbe("cuda", 4, None, "2.8.0+cu128", nccl=True, fused_optimizer_devices=FUSED)  # Polaris
ROCM = AcceleratorProbe("cuda", 8, "6.4.43482", "2.8.0+rocm6.4", nccl=True, fused_optimizer_devices=FUSED)  # Frontier
XPU = AcceleratorProbe("xpu", 12, None, "2.8.0+xpu", xccl=True, fused_optimizer_devices=FUSED, triton_xpu=True)
"""Aurora: six Max 1550 GPUs of two tiles each, FLAT hierarchy (the default): twelve devices."""


def seen(probe: AcceleratorProbe, count: int) -> AcceleratorProbe:
    """`probe` with `count` devices visible: what torch reports once a binding variable left that many."""
    return dataclasses.replace(probe, count=count)


@pytest.fixture(autouse=True)
def fresh_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new process would: no once-per-process line said yet."""
    monkeypatch.setattr(devices, "_said", set())


# --- which device: every `device` value on every build ------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "probe", "expected", "vendor"),
    [
        ("cpu", CUDA, "cpu", "cpu"),
        ("cpu", XPU, "cpu", "cpu"),
        ("auto", CPU_ONLY, "cpu", "cpu"),
        ("auto", seen(CUDA, 0), "cpu", "cpu"),  # a CUDA build on a node without GPUs
        ("auto", CUDA, "cuda:1", "cuda"),
        ("auto", ROCM, "cuda:1", "rocm"),
        ("auto", XPU, "xpu:1", "xpu"),
        ("cuda", CUDA, "cuda:1", "cuda"),
        ("cuda", ROCM, "cuda:1", "rocm"),  # a HIP build answers to cuda, and is reported as ROCm
        ("rocm", ROCM, "cuda:1", "rocm"),
        ("xpu", XPU, "xpu:1", "xpu"),
    ],
)
def test_each_device_value_on_each_build(requested: str, probe: AcceleratorProbe, expected: str, vendor: str) -> None:
    choice = select_device(requested, RankEnv(1, 2, 1), {"LOCAL_WORLD_SIZE": "2"}, probe)  # type: ignore[arg-type]
    assert choice.device == torch.device(expected)
    assert choice.vendor == vendor
    assert describe(choice.device, probe) == vendor


@pytest.mark.parametrize(
    ("requested", "probe", "message"),
    [
        ("cuda", CPU_ONLY, r"'cuda' but this PyTorch \(2.8.0\+cpu\) is a CPU-only build; install a CUDA build"),
        ("rocm", CUDA, r"'rocm' but this PyTorch \(2.8.0\+cu128\) is a CUDA build; install a ROCm build"),
        ("rocm", CPU_ONLY, "is a CPU-only build; install a ROCm build.*whl/rocm"),
        ("xpu", CUDA, "is a CUDA build; install a PyTorch XPU build, 2.8 or later.*whl/xpu"),
        ("cuda", XPU, r"is an XPU build; install a CUDA build"),
        ("xpu", ROCM, r"is a ROCm build \(HIP 6.4.43482\); install a PyTorch XPU build"),
        ("cuda", seen(CUDA, 0), "torch .* sees no CUDA device on this node .no binding variable.*gpus_per_rank"),
        ("rocm", seen(ROCM, 0), "sees no ROCm device"),
        ("xpu", seen(XPU, 0), "sees no XPU device on this node .no ZE_AFFINITY_MASK, hierarchy FLAT"),
    ],
)
def test_an_explicit_device_torch_cannot_give_says_what_torch_sees_and_what_to_do(
    requested: str, probe: AcceleratorProbe, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        select_device(requested, RankEnv(), {}, probe)  # type: ignore[arg-type]


def test_auto_without_an_accelerator_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fedhpc.worker.device")
    for _ in range(3):  # a persistent worker resolves the device for every task
        assert select_device("auto", RankEnv(), {}, CPU_ONLY).device == torch.device("cpu")
    lines = [r.getMessage() for r in caplog.records if "training on the CPU" in r.getMessage()]
    assert lines == ["device: auto: torch (2.8.0+cpu, a CPU-only build) sees no GPU here; training on the CPU"]


# --- which index: the binding variables of each machine ------------------------------------------------------


@pytest.mark.parametrize(
    ("probe", "environ", "expected"),
    [
        # Polaris, mpiexec (PALS) with no affinity script: each rank sees the node's four A100s
        (CUDA, {"PALS_LOCAL_SIZE": "4"}, [0, 1, 2, 3]),
        # Polaris with set_affinity_gpu_polaris.sh: CUDA_VISIBLE_DEVICES names one GPU per rank
        (seen(CUDA, 1), {"PALS_LOCAL_SIZE": "4", "CUDA_VISIBLE_DEVICES": "2"}, [0, 0, 0, 0]),
        # Perlmutter, srun --gpus-per-task 1 --gpu-bind ...: Slurm sets CUDA_VISIBLE_DEVICES per task
        (seen(CUDA, 1), {"SLURM_NTASKS_PER_NODE": "4", "CUDA_VISIBLE_DEVICES": "3"}, [0, 0, 0, 0]),
        # a node-wide mask of two GPUs for two ranks
        (seen(CUDA, 2), {"OMPI_COMM_WORLD_LOCAL_SIZE": "2", "CUDA_VISIBLE_DEVICES": "4,5"}, [0, 1]),
        # Frontier, srun --gpus-per-task 1 --gpu-bind=closest: one GCD per rank through ROCR_VISIBLE_DEVICES
        (seen(ROCM, 1), {"SLURM_NTASKS_PER_NODE": "8", "ROCR_VISIBLE_DEVICES": "5"}, [0] * 8),
        # Frontier without a binding: eight GCDs visible to eight ranks
        (ROCM, {"SLURM_NTASKS_PER_NODE": "8"}, list(range(8))),
        # HIP_VISIBLE_DEVICES picks two of what ROCR_VISIBLE_DEVICES left
        (seen(ROCM, 2), {"MPI_LOCALNRANKS": "2", "ROCR_VISIBLE_DEVICES": "0,1,2,3", "HIP_VISIBLE_DEVICES": "2,3"},
         [0, 1]),
        # Aurora, FLAT (the default): twelve tiles are twelve devices, one per rank
        (XPU, {"PALS_LOCAL_SIZE": "12"}, list(range(12))),
        (XPU, {"PALS_LOCAL_SIZE": "12", "ZE_FLAT_DEVICE_HIERARCHY": "FLAT"}, list(range(12))),
        # Aurora with gpu_tile_compact.sh: ZE_AFFINITY_MASK=gpu.tile leaves each rank its own tile
        (seen(XPU, 1), {"PALS_LOCAL_SIZE": "12", "ZE_AFFINITY_MASK": "3.1"}, [0] * 12),
        # Aurora, COMPOSITE: one device per GPU (both tiles), six ranks
        (seen(XPU, 6), {"PALS_LOCAL_SIZE": "6", "ZE_FLAT_DEVICE_HIERARCHY": "COMPOSITE"}, list(range(6))),
        # one process without a launcher: device 0
        (CUDA, {}, [0]),
    ],
)
def test_the_index_follows_the_binding(probe: AcceleratorProbe, environ: dict[str, str], expected: list[int]) -> None:
    kind = probe.kind
    indices = []
    for local_rank in range(len(expected)):
        choice = select_device("auto", RankEnv(local_rank, len(expected), local_rank), environ, probe)
        assert choice.device.type == kind
        indices.append(choice.device.index)
    assert indices == expected


@pytest.mark.parametrize(
    ("probe", "environ", "ranks", "visible"),
    [
        (seen(CUDA, 1), {"LOCAL_WORLD_SIZE": "2"}, 2, 1),  # the quickstart's 2-rank facility on a 1-GPU workstation
        # torchrun's ranks inherit one environment: its mask is the node's, not a per-rank binding
        (seen(CUDA, 1), {"LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x", "CUDA_VISIBLE_DEVICES": "0"}, 2, 1),
        (seen(XPU, 6), {"PALS_LOCAL_SIZE": "12", "ZE_FLAT_DEVICE_HIERARCHY": "COMPOSITE"}, 12, 6),
        (seen(ROCM, 4), {"SLURM_NTASKS_PER_NODE": "8", "ROCR_VISIBLE_DEVICES": "0,1,2,3"}, 8, 4),
    ],
)
def test_more_ranks_on_the_node_than_visible_devices(
    probe: AcceleratorProbe, environ: dict[str, str], ranks: int, visible: int
) -> None:
    """NCCL, RCCL and oneCCL refuse two ranks on one device: auto trains on the CPU, an explicit device says why."""
    for local_rank in range(ranks):
        assert select_device("auto", RankEnv(local_rank, ranks, local_rank), environ, probe).device.type == "cpu"
    requested = describe(torch.device(probe.kind or "cpu"), probe)
    with pytest.raises(ConfigError, match=f"{ranks} ranks on this node but {visible} GPU.*nprocs.*per rank"):
        select_device(requested, RankEnv(0, ranks, 0), environ, probe)  # type: ignore[arg-type]


def test_torchs_count_wins_over_the_mask(caplog: pytest.LogCaptureFixture) -> None:
    """The runtime applied the mask before torch counted (an invalid entry ends CUDA's list): trust the count."""
    caplog.set_level(logging.DEBUG, logger="fedhpc.worker.device")
    environ = {"CUDA_VISIBLE_DEVICES": "0,1,bogus,3", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"}
    for local_rank in (0, 1):
        choice = select_device("cuda", RankEnv(local_rank, 2, local_rank), environ, seen(CUDA, 2))
        assert choice.device == torch.device("cuda", local_rank)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert debug == ["CUDA_VISIBLE_DEVICES=0,1,bogus,3 leaves 4 device(s) but torch sees 2; going by torch's count"]


@pytest.mark.parametrize(
    ("vendor", "environ", "expected"),
    [
        ("cuda", {"CUDA_VISIBLE_DEVICES": "GPU-5e1f,GPU-77aa"}, 2),
        ("cuda", {"ROCR_VISIBLE_DEVICES": "1"}, None),  # not CUDA's variable
        ("rocm", {"ROCR_VISIBLE_DEVICES": "0,1,2,3", "HIP_VISIBLE_DEVICES": "1"}, 1),
        ("rocm", {"ROCR_VISIBLE_DEVICES": "4,5"}, 2),
        ("xpu", {"ZE_AFFINITY_MASK": "0,1,2,3"}, 4),
        ("xpu", {"ZE_AFFINITY_MASK": "0.0,0.1,1.0"}, 3),  # FLAT: each tile its own device
        ("xpu", {"ZE_AFFINITY_MASK": "0.0,0.1,1.0", "ZE_FLAT_DEVICE_HIERARCHY": "COMPOSITE"}, 2),  # per GPU
        ("xpu", {"CUDA_VISIBLE_DEVICES": "0"}, None),
    ],
)
def test_what_a_binding_variable_leaves_visible(vendor: str, environ: dict[str, str], expected: int | None) -> None:
    assert read_binding(vendor, environ).expected_count() == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("requested", "probe", "environ", "local_rank", "line"),
    [
        ("rocm", seen(ROCM, 1), {"SLURM_NTASKS_PER_NODE": "8", "ROCR_VISIBLE_DEVICES": "5"}, 5,
         "ROCm device cuda:0 (index 0 of 1 visible; ROCR_VISIBLE_DEVICES=5, bound per rank)"),
        ("xpu", XPU, {"PALS_LOCAL_SIZE": "12"}, 7,
         "XPU device xpu:7 (index 7 of 12 visible; no ZE_AFFINITY_MASK, hierarchy FLAT (default))"),
        ("xpu", seen(XPU, 1), {"ZE_AFFINITY_MASK": "5.0", "ZE_FLAT_DEVICE_HIERARCHY": "COMPOSITE"}, 10,
         "XPU device xpu:0 (index 0 of 1 visible; ZE_AFFINITY_MASK=5.0, ZE_FLAT_DEVICE_HIERARCHY=COMPOSITE, "
         "bound per rank)"),
        ("cuda", CUDA, {"LOCAL_WORLD_SIZE": "4"}, 2, "CUDA device cuda:2 (index 2 of 4 visible; no binding variable)"),
    ],
)
def test_the_line_each_rank_logs_names_device_vendor_and_binding(
    requested: str, probe: AcceleratorProbe, environ: dict[str, str], local_rank: int, line: str
) -> None:
    choice = select_device(requested, RankEnv(local_rank, 12, local_rank), environ, probe)  # type: ignore[arg-type]
    assert str(choice) == line


def test_the_real_cpu_path(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's own torch: a CPU build (or a GPU one where the suite runs on a GPU node)."""
    monkeypatch.setattr(logging.getLogger("fedhpc"), "level", logging.ERROR)  # what the worker does on rank > 0
    probe = probe_accelerator()
    assert probe.torch_version == torch.__version__
    assert resolve_device("cpu", RankEnv(1, 2, 1)) == torch.device("cpu")
    resolve_device("cpu", RankEnv(1, 2, 1))
    assert [r.getMessage() for r in caplog.records] == ["rank 1: device cpu"]  # every rank's, once per process
    if probe.kind is None:
        assert resolve_device("auto", RankEnv()) == torch.device("cpu")
        with pytest.raises(ConfigError, match="CPU-only build; install a ROCm build"):
            resolve_device("rocm", RankEnv())


# --- backends -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "probe", "backend"),
    [("cpu", CPU_ONLY, "gloo"), ("cpu", XPU, "gloo"), ("cuda:0", CUDA, "nccl"), ("cuda:3", ROCM, "nccl"),
     ("xpu:11", XPU, "xccl")],
)  # fmt: skip
def test_the_backend_of_each_device(device: str, probe: AcceleratorProbe, backend: str) -> None:
    assert backend_for(torch.device(device), probe) == backend


def test_xpu_without_xccl_names_what_to_install() -> None:
    old = dataclasses.replace(XPU, xccl=False, torch_version="2.7.1+xpu")
    with pytest.raises(ConfigError, match=r"xccl backend, which this PyTorch \(2.7.1\+xpu\) lacks; install a PyTorch "
                       r"XPU build, 2.8 or later .*whl/xpu.*backend ccl\) are not supported"):
        backend_for(torch.device("xpu", 0), old)


def test_a_gpu_build_without_nccl_says_so() -> None:
    with pytest.raises(ConfigError, match=r"nccl backend \(RCCL\), which this PyTorch .* lacks; install a ROCm build"):
        backend_for(torch.device("cuda", 0), dataclasses.replace(ROCM, nccl=False))


def test_this_machines_backend_is_real() -> None:
    assert backend_for(torch.device("cpu")) == "gloo"


# --- what each device supports --------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda:0", "xpu:3"])  # ROCm's devices are cuda too
def test_bf16_autocast_on_accelerators(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No accelerator here to autocast on: record what torch.autocast is asked for."""
    asked: list[tuple[str, torch.dtype]] = []

    class Recorded:
        def __init__(self, device_type: str, dtype: torch.dtype):
            asked.append((device_type, dtype))

        def __enter__(self) -> None: ...

        def __exit__(self, *exc: object) -> None: ...

    monkeypatch.setattr(torch, "autocast", Recorded)
    with autocast(torch.device(device), torch.bfloat16):
        pass
    with autocast(torch.device(device), torch.float32):  # fp32 training: no autocast
        pass
    assert asked == [(torch.device(device).type, torch.bfloat16)]


def test_no_autocast_on_the_cpu() -> None:
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert not torch.is_autocast_enabled("cpu")
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


def test_fused_adamw_per_device(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fedhpc.worker.device")
    assert fused_adamw(torch.device("cuda", 0), CUDA) is True
    assert fused_adamw(torch.device("cuda", 0), ROCM) is True
    assert fused_adamw(torch.device("xpu", 0), XPU) is True
    assert fused_adamw(torch.device("cpu"), XPU) is None  # the CPU keeps torch's default
    without = dataclasses.replace(XPU, fused_optimizer_devices=("cuda",), torch_version="2.4.0+xpu")
    assert fused_adamw(torch.device("xpu", 0), without) is None
    assert fused_adamw(torch.device("xpu", 0), without) is None
    assert [r.getMessage() for r in caplog.records] == [
        "fused AdamW: this PyTorch (2.4.0+xpu) has no fused kernel for xpu; using its default implementation"
    ]
    params = [torch.nn.Parameter(torch.ones(3))]
    torch.optim.AdamW(params, fused=fused_adamw(torch.device("cpu"))).step()  # real: what the CPU worker builds


def test_compile_per_device(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fedhpc.worker.device")
    assert compiles(torch.device("cuda", 0), True, CUDA) and compiles(torch.device("cuda", 0), True, ROCM)
    assert compiles(torch.device("xpu", 0), True, XPU)
    no_triton = dataclasses.replace(XPU, triton_xpu=False)
    assert not compiles(torch.device("xpu", 0), True, no_triton)
    assert not compiles(torch.device("xpu", 0), True, no_triton)
    assert not compiles(torch.device("xpu", 0), False, XPU)
    assert [r.getMessage() for r in caplog.records] == [
        "model.compile: not compiling on XPU: inductor needs Triton's XPU backend (the pytorch-triton-xpu package "
        "that PyTorch's XPU wheels install), which is not importable here"
    ]
    assert wants_compile("auto", torch.device("cuda", 0)) and not wants_compile("auto", torch.device("cpu"))
    assert wants_compile(True, torch.device("cpu")) and not wants_compile(False, torch.device("cuda", 0))


@pytest.mark.parametrize("device", ["cuda:0", "xpu:0"])
def test_what_accelerators_share(device: str) -> None:
    accelerator = torch.device(device)
    assert compute_dtype(FullFinetuneConfig(), accelerator) == torch.bfloat16  # FSDP2's compute dtype
    assert length_multiple(accelerator) == 64
    assert ddp_device_ids(accelerator) == [0]
    cpu = torch.device("cpu")
    assert (compute_dtype(FullFinetuneConfig(), cpu), length_multiple(cpu), ddp_device_ids(cpu)) == (
        torch.float32, 1, None)  # fmt: skip


# --- what the commands take -----------------------------------------------------------------------------------


def test_the_worker_command_takes_every_device_and_names_them() -> None:
    result = CliRunner().invoke(app, ["worker", "--persistent", "--inbox", "x", "--device", "cuda12"])
    assert result.exit_code == 2
    assert "--device must be one of auto, cpu, cuda, rocm, xpu, not 'cuda12'" in result.output


def test_eval_refuses_an_unknown_device_before_loading_anything() -> None:
    result = CliRunner().invoke(app, ["eval", "--model", "no/such/run", "--device", "gpu"])
    assert result.exit_code == 2
    assert "--device: must be one of cpu, cuda, rocm, xpu, not 'gpu'" in result.output
