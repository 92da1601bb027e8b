#!/usr/bin/env bash
# The precision tiers on this CPU, one prepared script for a host whose row of
# models/precision.py TABLE needs measuring again (AMX, AVX2-only, AVX512 without bf16):
# the accuracy guard on the candidate settings, the tiers end to end against bare fp32
# encode on 3000 distinct texts (issue 21's targets: default 2.0x with native bf16, 1.4x
# AVX2-only; fastest accurate 3.0x with VNNI or AMX, 2.0x AVX2-only), then live capacity
# in 300 s steps (target 0.8x). About 35 minutes on 2 cores, on a quiet host. CI never
# runs this.
#
#   benchmarks/tiers_check.sh [ARCHIVE]
#
# Results (JSON, PNG, the log) go to $OUT when it is set, else benchmarks/results/,
# labelled with the CPU's class (amx, avx512-bf16, avx512, avx2).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/check_steps.sh
ARCHIVE="${1:-../shared/data/wikiticker-2015-09-12-sampled.json.gz}"
UNITS=$("$PY" -c 'from models.precision import vector_units; print(vector_units())')
# Candidates: OpenVINO at the precision the CPU computes natively, with and without
# weight-only int8, and static int8 (the fastest int8, though it has failed the rule so far).
if [[ $UNITS == amx || $UNITS == avx512-bf16 ]]; then
  CANDIDATES=openvino-bf16,openvino-int8w-bf16,openvino-int8-bf16
else
  CANDIDATES=openvino,openvino-int8w,onnx,openvino-int8
fi
exec > >(tee -a "$RESULTS/tiers-check-$UNITS.log") 2>&1
grep -m1 'model name' /proc/cpuinfo
echo "CPU class: $UNITS; candidates: $CANDIDATES"
step 'accuracy guard' "$PY" -m benchmarks.accuracy --settings "$CANDIDATES" \
    --input "$ARCHIVE" --label "tiers-$UNITS" --results "$RESULTS"
step 'tiers end to end, 3000 distinct' "$PY" -m benchmarks.throughput --input "$ARCHIVE" \
    --precisions "fp32,auto,$CANDIDATES" --variants bare,pipeline --limit 3000 --distinct \
    --rounds 2 --e2e_only --skip_accuracy --label "tiers-$UNITS" --results "$RESULTS"
step 'live capacity, 300 s steps' "$PY" -m benchmarks.capacity --input "$ARCHIVE" \
    --precision auto --seconds 300 --warmup 10 --bare_texts 1000 --start 0.6 --step 1.33 \
    --most 1.1 --label "tiers-$UNITS" --results "$RESULTS"
exit $failed
