# Sourced by the prepared CPU checks (bf16_cpu_check.sh, tiers_check.sh), from the
# project root: the Python to run ($PYTHON, else the project's .venv, else python3),
# where results go ($OUT when set, else benchmarks/results/), and `step`, which runs one
# benchmark and carries on whatever happens, so one failure leaves the others' figures.
PY="${PYTHON:-python3}"
[[ -x .venv/bin/python && -z "${PYTHON:-}" ]] && PY=.venv/bin/python
RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$RESULTS"
export HF_HUB_OFFLINE=1
failed=0
step() {  # step NAME COMMAND...
  local name=$1
  shift
  echo "== $name $(date -u +%H:%M:%S), load: $(cut -d' ' -f1-3 /proc/loadavg)"
  "$@" || { echo "== $name FAILED (status $?)"; failed=1; }
}
