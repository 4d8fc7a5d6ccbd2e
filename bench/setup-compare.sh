#!/usr/bin/env bash
# The environment the comparison benchmarks run APPFL and Flower in: bench/.venv-compare (gitignored).
#
#     bash bench/setup-compare.sh        # about 1.2 GB, a few minutes; then a no-op (delete the venv to redo)
#
# Never the project's own .venv: nothing in fedhpc may come to depend on either framework, and APPFL's
# full dependency tree (ray, wandb, globus-compute-endpoint, boto3, matplotlib, ...) is large and none
# of it is needed to call its aggregator. So: CPU torch 2.13 first and pinned through constraints.txt (a
# plain `torch` requirement would pull a multi-GB CUDA build), Flower with its own (light, pure-Python
# plus grpcio) dependencies, and APPFL with --no-deps plus exactly the modules that
# `from appfl.algorithm.aggregator import FedAvgAggregator` reaches: omegaconf (its config type), and
# opacus + scipy + opt-einsum (appfl.privacy, imported by the aggregator package, imports opacus).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=bench/.venv-compare
PIP="$VENV/bin/python -m pip"
STAMP="$VENV/.installed-appfl-1.12.0-flwr-1.42.0"

[ -f "$STAMP" ] && exit 0
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
$PIP install -q --upgrade pip
$PIP install -q torch==2.13.0
$PIP install -q -c constraints.txt flwr==1.42.0 numpy safetensors
$PIP install -q -c constraints.txt --no-deps appfl==1.12.0 omegaconf==2.4.0 opacus==1.6.0
$PIP install -q -c constraints.txt scipy opt-einsum
"$VENV/bin/python" - <<'PY'
from importlib.metadata import version

from appfl.algorithm.aggregator import FedAvgAggregator  # noqa: F401  (fails here, not mid-benchmark)
from flwr.server.strategy.aggregate import aggregate  # noqa: F401
import torch

assert "+cpu" in torch.__version__ or not torch.cuda.is_available(), torch.__version__
print(f"bench/.venv-compare: appfl {version('appfl')}, flwr {version('flwr')}, torch {torch.__version__}")
PY
touch "$STAMP"
