#!/usr/bin/env bash
# The GPU check, one prepared script under 9 minutes: the card, the accuracy guard's
# verdict on fp16 (near-exact? accurate? against fp32 on the same GPU), bare encode
# against the pipeline at fp32 and fp16, the pipeline at fp16 with one and several worker
# processes (one model copy on the GPU for all of them: --share_model auto), and the
# plumbing benchmark where the checkout has it. The first two fill the ('cuda', None)
# row of models/precision.py TABLE (--precision auto and fast; fp16 is the row expected).
# The CPU-only settings (onnx, openvino) have no GPU rows.
#
#   benchmarks/gpu_check.sh [ARCHIVE] [LIMIT] [WORKERS]
#
# Needs a Python with the project's requirements and a CUDA build of torch (a GPU
# worker image, or: pip install torch && pip install -e .). The archive defaults to the
# shared Wikipedia stream beside the checkout, or a copy under ./shared/data (a device
# machine gets only the checkout). Results (JSON, PNG, the log) go to $OUT when it is
# set, else benchmarks/results/. Each step has its own time limit, so that one slow step
# cannot take the others' time; the whole stays under 9 minutes. CI never runs this.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[[ -x .venv/bin/python && -z "${PYTHON:-}" ]] && PY=.venv/bin/python
ARCHIVE="${1:-../shared/data/wikiticker-2015-09-12-sampled.json.gz}"
[[ -e "$ARCHIVE" || -n "${1:-}" ]] || ARCHIVE=shared/data/wikiticker-2015-09-12-sampled.json.gz
LIMIT="${2:-20000}"  # a GPU needs more texts than a CPU for steady state to dominate
WORKERS="${3:-4}"
RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu-check.log"
export HF_HUB_OFFLINE=1
exec > >(tee -a "$LOG") 2>&1
failed=0

step() {  # step SECONDS NAME COMMAND...: runs it, bounded, and carries on whatever happens
  local limit=$1 name=$2
  shift 2
  echo "== $name (at most ${limit} s) $(date -u +%H:%M:%S)"
  timeout "$limit" "$@" || { echo "== $name FAILED or timed out (status $?)"; failed=1; }
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || failed=1
"$PY" - <<'PY' || exit 1
import torch
assert torch.cuda.is_available(), 'no CUDA device visible to torch'
print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__,
      '| CUDA', torch.version.cuda)
PY
# The tiers: fp16 (and bf16, where the card has it) against plain fp32 encode on the
# STS-B dev split and 2,000 archive texts; what auto and fast choose here.
step 60 'accuracy guard, fp16 and bf16' "$PY" -m benchmarks.accuracy --device cuda \
    --input "$ARCHIVE" --sts "$(dirname "$ARCHIVE")/sts-dev.csv" --settings fp16,bf16,auto,fast \
    --label gpu --results "$RESULTS"
BENCH=("$PY" -m benchmarks.throughput --device cuda --input "$ARCHIVE" --limit "$LIMIT"
       --results "$RESULTS")
# Bare encode and the pipeline (one worker) at fp32 and fp16, ratios to bare fp32.
step 200 'bare vs pipeline, fp32 and fp16' "${BENCH[@]}" --precisions fp32,fp16 \
    --variants bare,pipeline --rounds 2 --skip_accuracy --label gpu
# The pipeline at fp16 with several worker processes sharing one model on the GPU.
step 150 "pipeline fp16, $WORKERS workers" "${BENCH[@]}" --precisions fp16 \
    --variants pipeline --rounds 1 --label "gpu-${WORKERS}workers" -- \
    --direct_num_workers "$WORKERS" --direct_running_mode multi_processing
# The forward pass at fp16 and fp32 (for the table in models/loading.py): encode's
# own batches of 32 against the job's token budgets.
step 60 'forward batch' "$PY" -m benchmarks.forward_batch --device cuda --limit 4000 \
    --rounds 2 --batches 32,128 --budgets 4096,8192,16384,32768 --precisions fp32,fp16 \
    --label gpu
if [[ -f benchmarks/plumbing.py ]]; then
  step 60 'plumbing' "$PY" -m benchmarks.plumbing
  cp benchmarks/results/plumbing*.json "$RESULTS"/ 2>/dev/null
else
  echo '== plumbing: benchmarks/plumbing.py is not in this checkout, skipped'
fi
cp benchmarks/results/forward-batch-cuda-gpu.json "$RESULTS"/ 2>/dev/null
echo "== done $(date -u +%H:%M:%S), results in $RESULTS"
exit $failed
