"""`task.json`: what the server asks a facility's worker to do, as plain JSON.

The server writes one into the facility's staging area for each job; the
worker validates it with the same model. Paths are as the facility sees them.
Nothing else about the run crosses to the facility.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from fedhpc.atomic_files import atomic_write_text
from fedhpc.config import DataConfig, DType, ModelConfig


class TrainSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    local_steps: PositiveInt
    lr: float = Field(gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: PositiveInt
    seed: int = 0
    proximal_mu: float = Field(0.0, ge=0, description="FedProx: add μ/2·‖w − w_global‖² to the loss; 0: none")


class WorkerTask(BaseModel):
    """One job: `init` writes the round-0 global; `train` trains from `global_dir` into `update_dir`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["init", "train"] = "train"
    round: int = Field(ge=0)
    facility: str
    global_dir: Path | None = Field(None, description="train: the staged global to start from")
    update_dir: Path = Field(description="where the worker publishes its output (atomically)")
    progress_file: Path | None = Field(None, description="JSON the worker rewrites with its step and loss")
    data: Path | None = Field(None, description="train: the facility's dataset (file or directory)")
    model: ModelConfig
    data_config: DataConfig = DataConfig()
    train: TrainSettings | None = None
    update_dtype: DType = "float32"
    update_form: Literal["weights", "delta"] = "weights"
    shard_bytes: PositiveInt = 2 * 1024**3
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def write(self, path: Path) -> None:
        atomic_write_text(path, self.model_dump_json(indent=1), make_parents=True)

    @classmethod
    def read(cls, path: Path) -> WorkerTask:
        return cls.model_validate_json(Path(path).read_text())
