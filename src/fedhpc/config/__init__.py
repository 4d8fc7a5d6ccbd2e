"""The experiment file: pydantic models, validated once, at load time.

Every model is frozen and forbids unknown keys, so a typo fails when the file is
loaded rather than at round 7. One module per section (`model`, `data`,
`algorithm`, `launchers`, `movers`, `facility`, `experiment`; a facility's
effective training recipe in `recipe`), the shared
building blocks in `types`, the reading of a file in `loading`. The names the
rest of fedhpc uses are imported here.
"""

from fedhpc.config.algorithm import ASYNC_ALGORITHMS, AlgorithmConfig, CompassConfig, StalenessConfig
from fedhpc.config.data import DataConfig
from fedhpc.config.distributions import (
    Distribution,
    ExponentialDistribution,
    LognormalDistribution,
    UniformDistribution,
)
from fedhpc.config.experiment import CheckpointConfig, EvaluationConfig, ExchangeConfig, Experiment
from fedhpc.config.facility import FacilityConfig, PersistentConfig
from fedhpc.config.launchers import (
    LAUNCHER_CONFIGS,
    GlobusComputeLauncherConfig,
    LauncherConfig,
    LocalLauncherConfig,
    ParslLauncherConfig,
    SimulatedLauncherConfig,
)
from fedhpc.config.loading import load_experiment
from fedhpc.config.model import FullFinetuneConfig, LoraConfig, ModelConfig, TinyLlamaConfig
from fedhpc.config.movers import (
    MOVER_CONFIGS,
    FilesystemMoverConfig,
    GlobusStoreConfig,
    GlobusTransferMoverConfig,
    MoverConfig,
    ProxyStoreMoverConfig,
)
from fedhpc.config.ranks import Device, MpiConfig, Resources
from fedhpc.config.types import DType

__all__ = [
    "ASYNC_ALGORITHMS",
    "LAUNCHER_CONFIGS",
    "MOVER_CONFIGS",
    "AlgorithmConfig",
    "CheckpointConfig",
    "CompassConfig",
    "DataConfig",
    "Device",
    "Distribution",
    "DType",
    "EvaluationConfig",
    "ExchangeConfig",
    "Experiment",
    "ExponentialDistribution",
    "FacilityConfig",
    "FilesystemMoverConfig",
    "FullFinetuneConfig",
    "GlobusComputeLauncherConfig",
    "GlobusStoreConfig",
    "GlobusTransferMoverConfig",
    "LauncherConfig",
    "LocalLauncherConfig",
    "LognormalDistribution",
    "LoraConfig",
    "ModelConfig",
    "MoverConfig",
    "MpiConfig",
    "ParslLauncherConfig",
    "PersistentConfig",
    "ProxyStoreMoverConfig",
    "Resources",
    "SimulatedLauncherConfig",
    "StalenessConfig",
    "TinyLlamaConfig",
    "UniformDistribution",
    "load_experiment",
]
