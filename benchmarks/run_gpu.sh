#!/usr/bin/env bash
# GPU results for docs/deploy.md: the CUDA tests, then every CUDA form of GCNet-S at 1024x2048, batch 1 (the paper's
# setting: 193 FPS on an A100; our target is >= 3x that, i.e. <= 1.73 ms per frame, on an H100/H200).
#
#   bash benchmarks/run_gpu.sh [CHECKPOINT]
#
# Works with gcnet installed or with the source tree on PYTHONPATH (it calls `python -m gcnet.cli`).
# CHECKPOINT: optional trained checkpoint (speed does not depend on the weights; without one a
# random GCNet-S with re-estimated BatchNorm statistics is timed).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
DATE=$(date +%Y-%m-%d)
OUT=benchmarks/results
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv || true

# correctness first: the CUDA tests (runtimes vs CPU, CUDA graphs, compile, AMP training, eval, predict)
python -m pytest -q -m cuda tests/test_cuda.py

# every CUDA form: eager fp32 (train and deploy form), fp16/bf16 + channels_last, CUDA graphs,
# torch.compile(max-autotune); >= 200 timed runs and >= 2 s per form after 20 warm-up runs
python -m gcnet.cli bench gcnet-s ${1:+--checkpoint "$1"} --device cuda --size 1024x2048 --batch 1 \
  --warmup 20 --iters 200 --min-time 2 --json "$OUT/gpu_${DATE}.json"
python benchmarks/bench_table.py "$OUT/gpu_${DATE}.json" | tee "$OUT/gpu_${DATE}.md"
