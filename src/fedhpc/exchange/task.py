"""`task.json`: what the server asks a facility's worker to do, as plain JSON.

The server writes one into the facility's staging area for each job; the
worker validates it with the same model. Paths are as the facility sees them.
Nothing else about the run crosses to the facility.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from fedhpc.atomic_files import atomic_write_text
from fedhpc.config import DataConfig, Device, DType, ModelConfig
from fedhpc.config.compression import CompressionConfig
from fedhpc.config.example_privacy import ExamplePrivacyJob


class LrSchedule(BaseModel):
    """The federation's learning-rate curve, in federation steps (`algorithm.local_steps` per round).

    Every task carries the whole curve and where on it the task starts (`TrainSettings.schedule_start`)
    and how much of it the task covers (`schedule_span`), so a facility that trains more or fewer local
    steps, joins late, or runs in a persistent worker or after a resume continues on the same curve.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: float = Field(
        0.0, ge=0, description="federation steps of linear warm-up to `lr`, from lr/(warmup_steps + 1) at step 0"
    )
    total_steps: float = Field(gt=0, description="federation steps of the whole run: rounds × algorithm.local_steps")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="the decay ends at this fraction of `lr`")


class TrainSettings(BaseModel):
    """One job's training recipe: `algorithm`'s keys with the facility's own overrides applied by the server."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    local_steps: PositiveInt = Field(
        description="optimizer steps; with `local_epochs`, the most the worker may take (the server's bound)"
    )
    local_epochs: float | None = Field(
        None, gt=0, description="train ⌈epochs × examples / (batch_size × grad_accum_steps × ranks)⌉ steps instead"
    )
    lr: float = Field(gt=0, description="the peak learning rate (the schedule's top)")
    weight_decay: float = Field(0.0, ge=0)
    batch_size: PositiveInt = Field(description="micro-batch per rank")
    grad_accum_steps: PositiveInt = Field(1, description="micro-batches per rank summed into one optimizer step")
    max_grad_norm: float | None = Field(None, gt=0, description="clip the whole gradient's global L2 norm; None: off")
    seed: int = 0
    proximal_mu: float = Field(0.0, ge=0, description="FedProx: add μ/2·‖w − w_global‖² to the loss; 0: none")
    schedule: LrSchedule | None = Field(None, description="None: a constant `lr`")
    schedule_start: float = Field(0.0, ge=0, description="the federation step at this task's first local step")
    schedule_span: float | None = Field(
        None, gt=0, description="federation steps this task's local steps cover; None: one per local step"
    )


class WorkerTask(BaseModel):
    """One job: `init` writes the round-0 global; `train` trains from `global_dir` into `update_dir`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["init", "train", "secagg-keys", "secagg-unmask"] = Field(
        "train", description="secagg-*: a short secure-aggregation job (fedhpc.worker.secure_jobs), no training"
    )
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
    compression: CompressionConfig = Field(CompressionConfig(), description="how the delta update is encoded")
    residual_dir: Path | None = Field(
        None, description="error feedback: the facility's own directory of residuals (never staged back)"
    )
    secure_aggregation: dict[str, Any] | None = Field(
        None, description="secure aggregation's part of the job (fedhpc.secagg.job_task): keys directory, roster, ..."
    )
    shard_bytes: PositiveInt = 2 * 1024**3
    device: Device = "auto"
    example_privacy: ExamplePrivacyJob | None = Field(
        None, description="example-level DP (DP-SGD): its settings and the facility's own accountant file; None: off"
    )

    def write(self, path: Path) -> None:
        atomic_write_text(path, self.model_dump_json(indent=1), make_parents=True)

    @classmethod
    def read(cls, path: Path) -> WorkerTask:
        return cls.model_validate_json(Path(path).read_text())
