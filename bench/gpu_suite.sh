#!/usr/bin/env bash
# Everything this project measures and checks on a GPU machine, most important first, in one go:
#   bash bench/gpu_suite.sh OUT_DIR        (PYTHON=... to pick the interpreter; default python3)
# Writes OUT_DIR/throughput.jsonl (one gpu_throughput.py line per run), bench.log, pytest.log,
# quickstart.log and gpu.txt. Each step has its own time limit, so a slow one leaves the rest standing.
# Sized to fit in about 7 minutes on one H100/H200, compile time included.
set -u
out=${1:?usage: bash bench/gpu_suite.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$out/gpu.txt" 2>&1
"$py" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" >>"$out/gpu.txt" 2>&1

throughput() {  # LIMIT LOOP CASES...
    local limit=$1 loop=$2
    shift 2
    echo "== $loop $*" >>"$out/bench.log"
    timeout "$limit" "$py" bench/gpu_throughput.py --loop "$loop" --warmup 4 --cases "$@" --profile \
        >>"$out/throughput.jsonl" 2>>"$out/bench.log" || echo "== $loop $* exited $?" >>"$out/bench.log"
}

# 1. The headline: 7B LoRA, seq 512, micro-batch 6, plain transformers + peft against the worker.
throughput 100 plain lora-7b lora-7b-ckpt
throughput 160 fedhpc lora-7b lora-7b-ckpt
throughput 70 fedhpc-eager lora-7b
# 2. Instruction-like lengths (padding against packing) and full fine-tuning of a 1B.
throughput 90 plain lora-7b-var full-1b full-1b-ckpt
throughput 150 fedhpc lora-7b-var full-1b full-1b-ckpt
# 3. The GPU twins of the CPU tests, then the quickstart end to end on this machine's GPU.
timeout 150 "$py" -m pytest -q -m gpu -p no:cacheprovider tests/test_worker_compiled.py >"$out/pytest.log" 2>&1 \
    || echo "pytest exited $?" >>"$out/pytest.log"
timeout 150 "$py" -m fedhpc run examples/quickstart/experiment.yaml --set run_dir=/tmp/fedhpc-gpu-quickstart \
    --set algorithm.rounds=2 >"$out/quickstart.log" 2>&1 || echo "quickstart exited $?" >>"$out/quickstart.log"
grep -rhE "device cuda|device cpu|compiled|GPU" /tmp/fedhpc-gpu-quickstart | sort | uniq -c | head -20 \
    >>"$out/quickstart.log" 2>/dev/null
exit 0
