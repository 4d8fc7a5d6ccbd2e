"""The update format: sharded safetensors + manifest.json, written atomically, verified on read."""

from fedhpc.exchange.manifest import MANIFEST_NAME, ExchangeMeta, Manifest, read_manifest
from fedhpc.exchange.reader import ExchangeDir
from fedhpc.exchange.safetensors_stream import TensorLayout, dtype_from_name
from fedhpc.exchange.task import LrSchedule, TrainSettings, WorkerTask
from fedhpc.exchange.writer import write_exchange, write_state_dict

__all__ = [
    "MANIFEST_NAME",
    "ExchangeDir",
    "ExchangeMeta",
    "LrSchedule",
    "Manifest",
    "TensorLayout",
    "TrainSettings",
    "WorkerTask",
    "dtype_from_name",
    "read_manifest",
    "write_exchange",
    "write_state_dict",
]
