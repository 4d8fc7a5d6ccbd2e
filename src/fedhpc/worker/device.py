"""The one place that knows device types: which device a rank trains on and what that device supports.

Everything else in the worker asks this module instead of spelling ``cuda``, so
CUDA, ROCm and XPU differ here only (docs/devices.md):

- what torch reports (its accelerator build, how many devices this process sees,
  its collective backends, its fused optimizers, Triton's XPU backend) is read in
  one place, `probe_accelerator`, into an `AcceleratorProbe`. Every decision below
  takes the probe as an argument, so tests give it what torch would report on a
  ROCm or XPU node and the real logic runs;
- a ROCm build of PyTorch calls its devices ``cuda`` and its RCCL backend
  ``nccl``; only `describe` and the log lines tell it apart (``torch.version.hip``);
- the facility's binding variables have already been applied when torch counts
  devices, so the count is what this rank may use; the variables are read only to
  say which binding is in effect and whether it is per rank (`Binding`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.distributed as dist
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from fedhpc.config import Device
from fedhpc.errors import ConfigError

if TYPE_CHECKING:
    from fedhpc.worker.distributed import RankEnv

logger = logging.getLogger(__name__)
rank_logger = logging.getLogger(f"{__name__}.rank")
rank_logger.setLevel(logging.INFO)  # even on the ranks the worker quiets: a binding goes wrong on one rank only

Vendor = Literal["cuda", "rocm", "xpu", "cpu"]

# Batch lengths on accelerators are padded up to a multiple of this (never past data.seq_len): with a few
# distinct shapes instead of one per batch, attention plans, GEMM heuristics and compiled kernels are
# built once per shape and reused, rather than rebuilt for nearly every step.
ACCELERATOR_LENGTH_MULTIPLE = 64

VENDOR_NAMES: dict[Vendor, str] = {"cuda": "CUDA", "rocm": "ROCm", "xpu": "XPU", "cpu": "CPU"}

INSTALL: dict[Vendor, str] = {
    "cuda": "a CUDA build of PyTorch (pip install torch --index-url https://download.pytorch.org/whl/cu128, or the "
    "CUDA version the node's driver supports)",
    "rocm": "a ROCm build of PyTorch (pip install torch --index-url https://download.pytorch.org/whl/rocm6.4, or the "
    "ROCm version the node has)",
    "xpu": "a PyTorch XPU build, 2.8 or later (pip install torch --index-url https://download.pytorch.org/whl/xpu)",
    "cpu": "any PyTorch build",
}

# Who limits which devices a process sees, per vendor, outermost first: each later one indexes into what the
# earlier ones left (HIP applies HIP_VISIBLE_DEVICES, or CUDA_VISIBLE_DEVICES, on top of ROCR's list).
BINDING_VARIABLES: dict[Vendor, tuple[str, ...]] = {
    "cuda": ("CUDA_VISIBLE_DEVICES",),
    "rocm": ("ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"),
    "xpu": ("ZE_AFFINITY_MASK",),
    "cpu": (),
}
HIERARCHY_VARIABLE = "ZE_FLAT_DEVICE_HIERARCHY"
"""Level Zero: FLAT (the default) makes each tile of a GPU its own device; COMPOSITE one device per GPU."""

# Ranks on this node, as each launcher names them: torchrun, Open MPI, MPICH (Hydra), Cray PALS, Slurm.
LOCAL_SIZE_VARIABLES = (
    "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PALS_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE",
)  # fmt: skip

TORCHRUN_VARIABLE = "TORCHELASTIC_RUN_ID"
"""Set by torchrun in every rank it starts: its ranks inherit one environment, so a binding there is node-wide."""

_said: set[str] = set()


def _once(level: int, key: str, message: str, *args: object, to: logging.Logger = logger) -> None:
    """Log `message` the first time `key` comes up in this process (tasks repeat; the line need not)."""
    if key not in _said:
        _said.add(key)
        to.log(level, message, *args)


@dataclass(frozen=True)
class AcceleratorProbe:
    """What torch reports about this process's accelerators: the only input the decisions here read."""

    kind: str | None
    """The build's accelerator type: cuda (CUDA and ROCm builds) or xpu; None for a CPU-only build."""
    count: int = 0
    """Devices this process sees, after the runtime applied the binding variables."""
    hip: str | None = None
    """torch.version.hip: set on a ROCm build."""
    torch_version: str = ""
    nccl: bool = False
    xccl: bool = False
    fused_optimizer_devices: tuple[str, ...] = ()
    """Device types torch's fused AdamW kernels run on."""
    triton_xpu: bool = False
    """Whether Triton's Intel XPU backend is importable (inductor needs it on XPU)."""

    @property
    def build(self) -> str:
        """The build, as a person would say it (for error messages)."""
        if self.kind == "cuda":
            return f"a ROCm build (HIP {self.hip})" if self.hip else "a CUDA build"
        if self.kind == "xpu":
            return "an XPU build"
        return "a CPU-only build" if self.kind is None else f"a build for {self.kind}, which fedhpc does not train on"

    @property
    def vendor(self) -> Vendor | None:
        """The accelerator this build drives, None when it drives none fedhpc trains on."""
        if self.kind == "cuda":
            return "rocm" if self.hip else "cuda"
        return "xpu" if self.kind == "xpu" else None


@functools.cache
def probe_accelerator() -> AcceleratorProbe:
    """Ask torch, once per process (the count is fixed once the runtime has read the binding variables)."""
    accelerator = torch.accelerator.current_accelerator(check_available=False)
    kind = accelerator.type if accelerator is not None else None
    return AcceleratorProbe(
        kind=kind,
        count=torch.accelerator.device_count() if kind is not None else 0,
        hip=torch.version.hip,
        torch_version=torch.__version__,
        nccl=dist.is_available() and dist.is_nccl_available(),
        xccl=dist.is_available() and dist.is_xccl_available(),
        fused_optimizer_devices=tuple(_get_fused_kernels_supported_devices()),
        triton_xpu=kind == "xpu" and _triton_has_xpu_backend(),
    )


def _triton_has_xpu_backend() -> bool:
    """Triton with its Intel backend (the pytorch-triton-xpu package that XPU builds of PyTorch pull in)."""
    if importlib.util.find_spec("triton") is None:
        return False
    import triton.backends

    return "intel" in triton.backends.backends


@dataclass(frozen=True)
class Binding:
    """The binding variables in effect for one vendor, as the launcher left them in this rank's environment."""

    vendor: Vendor
    variables: tuple[tuple[str, str], ...]
    """(name, value) of each one set, outermost first."""
    hierarchy: str | None = None
    """XPU: ZE_FLAT_DEVICE_HIERARCHY as set (None: unset, which means FLAT)."""

    def expected_count(self) -> int | None:
        """How many devices the innermost variable leaves visible (None: no variable set)."""
        if not self.variables:
            return None
        entries = [entry.strip() for entry in self.variables[-1][1].split(",") if entry.strip()]
        if self.vendor == "xpu" and (self.hierarchy or "FLAT").upper() == "COMPOSITE":
            return len({entry.split(".")[0] for entry in entries})  # card.tile entries of one card: one device
        return len(entries)

    def __str__(self) -> str:
        named = ", ".join(f"{name}={value}" for name, value in self.variables)
        if self.vendor == "xpu":
            hierarchy = f"{HIERARCHY_VARIABLE}={self.hierarchy}" if self.hierarchy else "hierarchy FLAT (default)"
            return f"{named or 'no ZE_AFFINITY_MASK'}, {hierarchy}"
        return named or "no binding variable"


def read_binding(vendor: Vendor, environ: Mapping[str, str] = os.environ) -> Binding:
    """The binding variables of `vendor` set in `environ`."""
    variables = tuple((name, environ[name]) for name in BINDING_VARIABLES[vendor] if name in environ)
    return Binding(vendor, variables, environ.get(HIERARCHY_VARIABLE) if vendor == "xpu" else None)


def ranks_on_this_node(environ: Mapping[str, str] = os.environ) -> int | None:
    """How many of the job's ranks share this node, when the launcher says (None when it does not)."""
    for key in LOCAL_SIZE_VARIABLES:
        value = environ.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


@dataclass(frozen=True)
class DeviceChoice:
    """The device a rank trains on, its vendor, and the binding it was chosen under."""

    device: torch.device
    vendor: Vendor
    visible: int = 0
    binding: Binding | None = None
    per_rank: bool = False
    """The binding left this rank one device of its own (srun --gpu-bind, a per-rank mask)."""

    def __str__(self) -> str:
        if self.binding is None:
            return f"device {self.device}"
        scope = ", bound per rank" if self.per_rank else ""
        return (f"{VENDOR_NAMES[self.vendor]} device {self.device} (index {self.device.index} of {self.visible} "
                f"visible; {self.binding}{scope})")


def select_device(
    requested: Device, env: RankEnv, environ: Mapping[str, str] = os.environ, probe: AcceleratorProbe | None = None
) -> DeviceChoice:
    """The device for `requested` on this rank; see resolve_device. Only reads: nothing is set."""
    probe = probe or probe_accelerator()
    if requested == "cpu":
        return DeviceChoice(torch.device("cpu"), "cpu")
    if requested == "auto":
        if probe.vendor is None or probe.count == 0:
            _once(logging.WARNING, "auto-cpu", "device: auto: torch (%s, %s) sees no GPU here; training on the CPU",
                  probe.torch_version, probe.build)
            return DeviceChoice(torch.device("cpu"), "cpu")
        vendor = probe.vendor
    else:
        vendor = _explicit_vendor(requested, probe)
    binding = read_binding(vendor, environ)
    visible = probe.count
    if visible == 0:
        raise ConfigError(
            f"device is {requested!r} but torch ({probe.torch_version}, {probe.build}) sees no "
            f"{VENDOR_NAMES[vendor]} device on this node ({binding}); check that the job's allocation has GPUs "
            "(gpus_per_rank) and what its binding leaves visible, or use device: auto or cpu"
        )
    expected = binding.expected_count()
    if expected is not None and expected != visible:
        _once(logging.DEBUG, f"mask-{binding}", "%s leaves %d device(s) but torch sees %d; going by torch's count",
              binding, expected, visible)
    per_rank = visible == 1 and bool(binding.variables) and TORCHRUN_VARIABLE not in environ
    local = ranks_on_this_node(environ)
    if local is not None and local > visible and not per_rank:
        if requested == "auto":
            _once(logging.WARNING, "auto-shared", "%d ranks on this node but %d GPU(s) visible (%s): training on "
                  "the CPU (device: auto)", local, visible, binding)
            return DeviceChoice(torch.device("cpu"), "cpu")
        raise ConfigError(
            f"device is {requested!r} with {local} ranks on this node but {visible} GPU(s) visible ({binding}); "
            f"{backend_name(vendor)} needs a device per rank: lower the facility's ranks per node (nprocs) to the "
            "device count, bind one device per rank (srun --gpus-per-task 1, a per-rank mask), or use device: "
            "auto or cpu"
        )
    assert probe.kind is not None
    return DeviceChoice(torch.device(probe.kind, env.local_rank % visible), vendor, visible, binding, per_rank)


def _explicit_vendor(requested: Device, probe: AcceleratorProbe) -> Vendor:
    """The vendor `requested` names, when this build drives it; a ConfigError saying what to install otherwise."""
    if requested == "cuda" and probe.kind == "cuda":
        return probe.vendor or "cuda"  # a ROCm build answers to cuda too, and is reported as ROCm
    if requested == "rocm" and probe.vendor == "rocm":
        return "rocm"
    if requested == "xpu" and probe.kind == "xpu":
        return "xpu"
    wanted: Vendor = "rocm" if requested == "rocm" else "xpu" if requested == "xpu" else "cuda"
    raise ConfigError(
        f"device is {requested!r} but this PyTorch ({probe.torch_version}) is {probe.build}; install "
        f"{INSTALL[wanted]} in the facility's environment, or use device: auto or cpu"
    )


def resolve_device(
    requested: Device, env: RankEnv, environ: Mapping[str, str] = os.environ, probe: AcceleratorProbe | None = None
) -> torch.device:
    """The device this rank trains on, made torch's current device.

    `auto` is the node's accelerator when it has one for each of this node's
    ranks, else the CPU (with one warning line). `cuda`, `rocm` and `xpu` are
    that device or a ConfigError saying what torch sees and what to change; a
    ROCm build answers to `cuda` too. The index is `local_rank % visible`: a
    launcher that left the node's devices visible gives rank i device i, and a
    binding that left one device per rank (srun --gpu-bind, a per-rank
    CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES or ZE_AFFINITY_MASK) gives
    index 0. NCCL, RCCL and oneCCL refuse two ranks on one device, so more
    ranks on the node than visible devices (unless the binding is per rank)
    is an error, or the CPU under `auto`; every rank reads the same count, so
    they all choose alike.
    """
    choice = select_device(requested, env, environ, probe)
    if choice.vendor != "cpu":
        torch.accelerator.set_device_index(choice.device.index)
    _once(logging.INFO, f"device-{choice}", "rank %d: %s", env.rank, choice, to=rank_logger)
    return choice.device


def backend_name(vendor: Vendor) -> str:
    """The collective library behind each vendor's backend, for messages."""
    return {"cuda": "NCCL", "rocm": "RCCL", "xpu": "oneCCL", "cpu": "gloo"}[vendor]


def backend_for(device: torch.device, probe: AcceleratorProbe | None = None) -> str:
    """torch.distributed's default backend for `device` (gloo, nccl, xccl), when this build has it."""
    probe = probe or probe_accelerator()
    backend = dist.Backend.default_device_backend_map.get(device.type)
    available = {"gloo": True, "nccl": probe.nccl, "xccl": probe.xccl}
    if backend in available and available[backend]:
        return backend
    if device.type == "xpu":
        raise ConfigError(
            f"device xpu needs torch.distributed's xccl backend, which this PyTorch ({probe.torch_version}) lacks; "
            f"install {INSTALL['xpu']}. intel-extension-for-pytorch's oneCCL bindings (backend ccl) are not "
            "supported"
        )
    vendor = describe(device, probe)
    raise ConfigError(
        f"device {device.type} needs torch.distributed's {backend or 'default'} backend ({backend_name(vendor)}), "
        f"which this PyTorch ({probe.torch_version}, {probe.build}) lacks; install {INSTALL[vendor]}"
    )


def describe(device: torch.device, probe: AcceleratorProbe | None = None) -> Vendor:
    """The vendor of `device`: cuda, rocm (a HIP build's cuda), xpu or cpu (what metrics and the memory plan name)."""
    if device.type == "cuda":
        return "rocm" if (probe or probe_accelerator()).hip else "cuda"
    return "xpu" if device.type == "xpu" else "cpu"


def is_accelerator(device: torch.device) -> bool:
    """True for a GPU of any vendor (CUDA, ROCm, which torch calls cuda, or XPU)."""
    return device.type in ("cuda", "xpu")


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """bf16 autocast on an accelerator (CUDA, ROCm, XPU) when `dtype` is bfloat16; nothing otherwise."""
    if is_accelerator(device) and dtype == torch.bfloat16:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def fused_adamw(device: torch.device, probe: AcceleratorProbe | None = None) -> bool | None:
    """AdamW's `fused` argument: True on an accelerator torch has the fused kernel for, None (torch's default) else.

    The CPU keeps torch's default, which every CPU result so far was measured with.
    """
    if not is_accelerator(device):
        return None
    probe = probe or probe_accelerator()
    if device.type in probe.fused_optimizer_devices:
        return True
    _once(logging.INFO, f"fused-{device.type}", "fused AdamW: this PyTorch (%s) has no fused kernel for %s; using "
          "its default implementation", probe.torch_version, describe(device, probe))
    return None


def compiles(device: torch.device, requested: bool, probe: AcceleratorProbe | None = None) -> bool:
    """Whether to torch.compile on `device` when `model.compile` asks (`requested`): inductor must generate for it.

    CUDA and ROCm builds ship Triton with their backend; on XPU inductor needs
    Triton's Intel backend, without which the first forward would fail: run
    eagerly instead, with one line saying why.
    """
    if not requested or device.type != "xpu":
        return requested
    probe = probe or probe_accelerator()
    if probe.triton_xpu:
        return True
    _once(logging.WARNING, "compile-xpu", "model.compile: not compiling on XPU: inductor needs Triton's XPU backend "
          "(the pytorch-triton-xpu package that PyTorch's XPU wheels install), which is not importable here")
    return False


def length_multiple(device: torch.device) -> int:
    """What batch lengths are padded to a multiple of on this device (1: no padding beyond the longest row)."""
    return ACCELERATOR_LENGTH_MULTIPLE if is_accelerator(device) else 1


def ddp_device_ids(device: torch.device) -> list[int] | None:
    """DistributedDataParallel's `device_ids`: the rank's one accelerator, None on the CPU."""
    return [device.index] if is_accelerator(device) and device.index is not None else None


def empty_cache(device: torch.device) -> None:
    """Give the caching allocator's free blocks back, so the next task (or another process) can use them."""
    if is_accelerator(device):
        torch.accelerator.empty_cache()
