#!/usr/bin/env bash
# Reproduce the CPU results in docs/deploy.md (run on an otherwise idle machine: other processes on
# the same cores distort the timings; the JSON records the load average before and after).
#
#   bash benchmarks/run_cpu.sh [CHECKPOINT CAMVID_ROOT [CHECKPOINT_BF16]]
#
# CHECKPOINT: a trained GCNet-S CamVid checkpoint (for the accuracy columns; docs/deploy.md used the fp32
# run's best.pth); CAMVID_ROOT: CamVid in the SegNet layout; CHECKPOINT_BF16: optionally a second one (the
# bf16 run's best.pth) for the int8-settings comparison. Without them only the speed benchmarks
# (random weights) run.
set -euo pipefail
cd "$(dirname "$0")/.."
DATE=$(date +%Y-%m-%d)
OUT=benchmarks/results
mkdir -p "$OUT"

# 1. the machine's fp32 peak: FMA microbenchmark, clock, sgemm (OpenVINO/oneDNN and PyTorch/MKL)
python benchmarks/fp32_peak.py --json "$OUT/peak_fp32_${DATE}.json"

# 2. every CPU form at 1024x2048, batch 1 (random weights; speed does not depend on weights)
gcnet bench gcnet-s --size 1024x2048 --batch 1 --warmup 3 --iters 20 --json "$OUT/cpu_${DATE}.json"

# 3. GCNet-M and GCNet-L, speed only
for v in gcnet-m gcnet-l; do
  gcnet bench "$v" --size 1024x2048 --forms torch-train-fp32 torch-fp32 openvino-fp32 openvino-bf16 openvino-int8 \
    --warmup 2 --iters 5 --json "$OUT/cpu_${v}_${DATE}.json"
done

# 4. torch.compile (inductor) against eager: opt-in, about half a minute to compile
gcnet bench gcnet-s --size 1024x2048 --forms torch-fp32 torch-fp32-compile --warmup 3 --iters 10 \
  --json "$OUT/cpu_compile_${DATE}.json"

# 5. the trained CamVid model: speed at 1024x2048 and mIoU on CamVid val (whole 360x480 frames) of
#    every form; int8 calibrated on 32 CamVid train frames; then the accuracy of the fp16 model that
#    the CUDA forms run (evaluated here on the CPU)
if [[ $# -ge 2 ]]; then
  gcnet bench --checkpoint "$1" --size 1024x2048 --warmup 3 --iters 10 \
    --calib-dataset camvid --calib-root "$2" --num-calib 32 \
    --eval-dataset camvid --eval-root "$2" --json "$OUT/cpu_camvid_${DATE}.json"
  gcnet bench --checkpoint "$1" --forms torch-fp32 torch-fp16-cl torch-bf16-cl --size 360x480 \
    --warmup 1 --iters 3 --min-time 0 --eval-dataset camvid --eval-root "$2" \
    --json "$OUT/cpu_fp16_accuracy_${DATE}.json"
  python benchmarks/int8_settings.py "$1" "$2"
fi

# 6. the second (bf16-trained) model: every form with the default int8 settings, then int8 with
#    per-layer bias correction on 128 calibration frames
if [[ $# -ge 3 ]]; then
  gcnet bench --checkpoint "$3" --forms torch-train-fp32 torch-fp32 openvino-fp32 openvino-bf16 openvino-int8 \
    --size 1024x2048 --warmup 3 --iters 10 --calib-dataset camvid --calib-root "$2" --num-calib 32 \
    --eval-dataset camvid --eval-root "$2" --json "$OUT/cpu_camvid_bf16cl_${DATE}.json"
  gcnet bench --checkpoint "$3" --forms torch-fp32 openvino-fp32 openvino-int8 --size 1024x2048 --warmup 3 \
    --iters 10 --calib-dataset camvid --calib-root "$2" --num-calib 128 --full-bias-correction \
    --eval-dataset camvid --eval-root "$2" --json "$OUT/cpu_camvid_bf16cl_int8_fullbc_${DATE}.json"
  python benchmarks/int8_settings.py "$3" "$2"
  python benchmarks/int8_accuracy_control.py "$3" "$2"
fi
