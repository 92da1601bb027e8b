#!/usr/bin/env bash
# The bf16 CPU check, one prepared script for a host with AMX or AVX512-BF16 (the
# development VM lands on one only some days): the forward-pass table's rows at fp32
# and bf16, then the pipeline at bf16 against bare bf16 encode on 3000 distinct texts
# (the target: 0.90x or more, end to end) and the default pipeline against bare fp32
# on the first 10,000 events. About 25 minutes on 2 cores. CI never runs this.
#
#   benchmarks/bf16_cpu_check.sh [ARCHIVE]
#
# Refuses to run (exit 2) on a CPU without native bf16: torch emulates it there, so
# the figures would say nothing. Results (JSON, PNG, the log) go to $OUT when it is
# set, else benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/check_steps.sh
ARCHIVE="${1:-../shared/data/wikiticker-2015-09-12-sampled.json.gz}"
if ! grep -qwE 'amx_bf16|avx512_bf16' /proc/cpuinfo; then
  echo "this CPU has neither AMX nor AVX512-BF16: bf16 is emulated here, nothing to measure" >&2
  exit 2
fi
exec > >(tee -a "$RESULTS/bf16-cpu-check.log") 2>&1
grep -m1 'model name' /proc/cpuinfo
step 'forward passes, fp32 and bf16' "$PY" -m benchmarks.forward_batch --input "$ARCHIVE" \
    --limit 3000 --rounds 2 --batches 32 --budgets 1024,2048,3072,4096 \
    --precisions fp32,bf16 --label bf16-host --results "$RESULTS"
step 'pipeline bf16 against bare bf16, 3000 distinct' "$PY" -m benchmarks.throughput \
    --input "$ARCHIVE" --precisions fp32,bf16 --variants bare,pipeline --limit 3000 --distinct \
    --rounds 2 --e2e_only --skip_accuracy --label bf16-host-distinct --results "$RESULTS"
# The default is --precision auto (docs/precision.md): pipeline@auto is what a user gets.
step 'default pipeline against bare fp32, first 10,000' "$PY" -m benchmarks.throughput \
    --input "$ARCHIVE" --precisions fp32,auto --variants bare,pipeline --limit 10000 --rounds 2 \
    --e2e_only --skip_accuracy --label bf16-host-10k --results "$RESULTS"
echo "== done $(date -u +%H:%M:%S), results in $RESULTS"
exit $failed
