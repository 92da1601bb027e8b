#!/usr/bin/env bash
# The throughput benchmark on a CUDA machine: bare encode vs the pipeline, fp32 and fp16.
#
#   benchmarks/gpu_check.sh [ARCHIVE] [LIMIT]
#
# Needs a Python with the project's requirements and a CUDA build of torch
# (a GPU worker image, or: pip install torch && pip install -e .). Prints the
# card, then the benchmark's table (ratios to bare fp32 on the same card), and
# leaves JSON and PNG under benchmarks/results/. CI never runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[[ -x .venv/bin/python && -z "${PYTHON:-}" ]] && PY=.venv/bin/python
ARCHIVE="${1:-../shared/data/wikiticker-2015-09-12-sampled.json.gz}"
LIMIT="${2:-20000}"  # a GPU needs more texts than a CPU for steady state to dominate
export HF_HUB_OFFLINE=1
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), 'no CUDA device visible to torch'
print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__,
      '| CUDA', torch.version.cuda)
PY
exec "$PY" -m benchmarks.throughput --device cuda --precisions fp32,fp16 \
    --variants bare,pipeline --input "$ARCHIVE" --limit "$LIMIT" --rounds 2 --label gpu
