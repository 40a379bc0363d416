#!/usr/bin/env bash
# The GPU measurements of issue #14, for a machine with torch + torchvision and the device image's
# packages (wheels for the rest: benchmarks/device_wheels.sh; this script installs .whl/ if present).
#
#   bash benchmarks/gpu.sh                     # every part, in the order below
#   bash benchmarks/gpu.sh grid seeds          # only these parts, in this order
#   GPU_DEADLINE=560 bash benchmarks/gpu.sh    # start no part that cannot end by then (seconds)
#
# Parts (ViT-B/16, 224 px, batch 32, random weights, bf16 autocast; logs and JSON to
# ${OUT:-benchmarks/results}):
#   grid        the paper grid end to end through tfreeze (benchmarks/gpu_grid.py): all 50 cells
#               side by side, two processes per mode of 5 seeds each (10 training.fit processes took
#               7.9 min on an H200 before this phase), then one seed of every mode cell by cell (the
#               commands dvc repro runs) and in one process
#   seeds       seeds side by side, the two candidates in one run: 1, 2 and 4 processes
#               (tfreeze train --jobs N) and 2 and 4 seeds as one torch.func ensemble in one
#               process (benchmarks/ensemble.py), for freeze_none and freeze_patch_0_5
#   fit         the training core end to end: fit, rerun, SIGKILL + resume (gpu_fit_check.py)
#   throughput  img/s per ViT mode, plain vs optimised, MFU against a measured bf16 matmul peak,
#               and the projection of the paper profile from them (a floor, not a measurement)
#   compile     the same with torch.compile on the full fine-tune
# One device call is at most 10 minutes and a task's device time 15: with a fresh lease, run
#   bash benchmarks/gpu.sh grid   (GPU_DEADLINE=540), and the other parts in a later lease.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
DEADLINE="${GPU_DEADLINE:-100000}"
OUT="${OUT:-benchmarks/results}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export OUT
PARTS=(grid seeds fit throughput compile)
parts=("$@")
((${#parts[@]})) || parts=("${PARTS[@]}")
for part in "${parts[@]}"; do
  [[ " ${PARTS[*]} " == *" $part "* ]] || {
    echo "gpu.sh: unknown part '$part'; choose from ${PARTS[*]}" >&2
    exit 2
  }
done
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || { echo "installing .whl/ failed"; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
"$PY" - <<'EOF' || exit 1
import torch, torchvision
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, cuda {torch.version.cuda}, "
      f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE'}")
assert torch.cuda.is_available(), "no CUDA device visible"
EOF

# step CAP LOG CMD...: run CMD for at most CAP seconds and no later than the deadline; tee to LOG.
step() {
  local cap=$1 log=$2
  shift 2
  local left=$((DEADLINE - (SECONDS - START)))
  ((left < cap)) && cap=$left
  if ((cap < 30)); then
    echo "SKIPPED (deadline): $*" | tee -a "$OUT/gpu_skipped.log"
    return 0
  fi
  echo "== $* (at most ${cap} s)"
  timeout "$cap" "$@" 2>&1 | tee "$OUT/$log"
  local rc=${PIPESTATUS[0]}
  ((rc == 0)) || echo "FAILED or over ${cap} s (rc $rc): $*" | tee -a "$OUT/gpu_failed.log"
}

grid() {
  step 540 gpu_grid_side_by_side.log "$PY" benchmarks/gpu_grid.py --routes side-by-side --procs-per-mode 2 \
    --device cuda
  step 420 gpu_grid_per_cell.log "$PY" benchmarks/gpu_grid.py --routes per-cell one-process --seeds 1 \
    --device cuda
}

seeds() {
  for mode in freeze_none freeze_patch_0_5; do
    step 200 "gpu_concurrent_seeds_$mode.log" "$PY" benchmarks/concurrent_seeds.py --model vit_b_16 \
      --mode "$mode" --image-size 224 --batch-size 32 --steps 20 --epochs 5 --procs 1 2 4 --ensemble 2 4 \
      --device cuda --out "$OUT"
  done
}

fit() {
  (cd benchmarks && step 200 gpu_fit_check.log "$PY" gpu_fit_check.py --model vit_b_16 --image-size 224 \
    --epochs 2 --device cuda)
}

throughput() {
  # 20 batches x 3 rounds: at 10 x 2, epochs of ~0.4 s on this launch-bound step gave per-mode
  # ratios from 0.83x to 1.35x in two runs on one H100.
  step 300 gpu_train_throughput.log "$PY" benchmarks/train_throughput.py --model vit_b_16 --image-size 224 \
    --batch-size 32 --steps 20 --rounds 3 --device cuda --mfu-model vit_b_16 --mfu-image-size 224 \
    --mfu-batch-size 32 --mfu-steps 10 --out "$OUT"
}

compile() {
  step 120 gpu_train_throughput_compile.log "$PY" benchmarks/train_throughput.py --model vit_b_16 \
    --image-size 224 --batch-size 32 --steps 10 --rounds 2 --device cuda --modes freeze_none --compile \
    --no-stem-probe --mfu-model "" --out "$OUT"
}

for part in "${parts[@]}"; do
  "$part"
done
echo "gpu.sh: done in $((SECONDS - START)) s"
