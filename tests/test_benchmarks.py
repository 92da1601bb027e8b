"""The throughput benchmark on a few texts: it runs, and its result says what ran on what.

Its figures are not checked here: timings belong to benchmark runs, not tests.
"""
import json
import subprocess
import sys

from tests.conftest import ROOT, SHARED_DATA

ARCHIVE = SHARED_DATA / 'wikiticker-2015-09-12-sampled.json.gz'


def test_throughput_benchmark_writes_ratios_and_the_machine(tmp_path):
  done = subprocess.run(
      [sys.executable, '-m', 'benchmarks.throughput', '--input', str(ARCHIVE), '--limit', '80',
       '--rounds', '1', '--variants', 'bare,bare-tuned,pipeline', '--label', 'smoke',
       '--results', str(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  record = json.loads((tmp_path / 'throughput-cpu-fp32-smoke.json').read_text())
  assert record['texts'] == 80 and (tmp_path / 'throughput-cpu-fp32-smoke.png').exists()
  results = record['results']
  assert set(results) == {'bare@fp32', 'bare-tuned@fp32', 'pipeline@fp32'}
  assert results['bare@fp32']['e2e_ratio'] == 1.0
  assert all(r['e2e_events_per_s'] > 0 and 'steady_ratio' in r for r in results.values())
  assert 'cores' in record['machine'] and record['machine'].count(',') >= 3  # CPU and its units
