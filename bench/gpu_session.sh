#!/usr/bin/env bash
# The GPU figures of the README in one run (a lent GPU machine has minutes, not hours): each part under
# its own time limit, in order of importance, skipped when the session's remaining time cannot hold it.
# Logs go to $OUT (default ./gpu-out), one per part, plus summary.txt.
#   bash bench/gpu_session.sh [TOTAL_SECONDS]
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
TOTAL=${1:-560}
START=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
WORK=${WORK:-/tmp/prunescope-gpu}
mkdir -p "$WORK"

part() {  # part NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local left=$((TOTAL - ($(date +%s) - START)))
  if ((left < limit / 2)); then
    echo "$name: skipped ($left s left, needs up to $limit)" | tee -a "$OUT/summary.txt"
    return
  fi
  ((limit > left)) && limit=$left
  local t0=$(date +%s)
  timeout -k 5 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc in $(($(date +%s) - t0)) s (limit $limit)" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.log"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
} | tee "$OUT/summary.txt"

part kd_step 170 python3 bench/distributed_distill_bench.py --device cuda --steps 6
part importance_8b 220 python3 bench/importance_streamed_bench.py --device cuda --config llama-3.1-8b \
  --samples 64 --seq-len 4096 --batch-size 8 --workdir "$WORK"
part memplan_real 150 python3 bench/memory_planner_bench.py --device cuda --real --json "$OUT/memplan_real.json"
part engine_cuda 80 python3 bench/engine_cuda_check.py
part streamed_cuda 90 python3 bench/importance_streamed_cuda_check.py
part importance_70b_slice 200 python3 bench/importance_streamed_bench.py --device cuda \
  --config llama-3.1-70b-slice10 --streamed-only --samples 32 --seq-len 4096 --batch-size 4 --workdir "$WORK"
echo "total $(($(date +%s) - START)) s" | tee -a "$OUT/summary.txt"
