"""The live capacity benchmark: its verdict rules, and one short step against a real Redis.

Its figures are not checked here: timings belong to benchmark runs, not tests.
"""
import json
import subprocess
import sys

import pytest

from benchmarks import capacity
from tests.conftest import ROOT, SHARED_DATA


def test_backlog_growth_is_the_fitted_rise_in_seconds_of_events():
  steady = [(t, 50 + (10 if t % 5 == 0 else 0)) for t in range(30)]  # windows fill and empty
  assert abs(capacity.backlog_growth(steady, rate=100)) < 0.2
  growing = [(t, 20.0 * t) for t in range(31)]  # 20 events/s more than the job writes
  assert capacity.backlog_growth(growing, rate=100) == pytest.approx(6.0)
  assert capacity.backlog_growth([(0, 5), (1, 9)], rate=100) == 0.0  # too few samples


def test_a_step_is_sustained_within_latency_and_backlog_bounds():
  assert capacity.sustained(p99_s=7.9, growth_s=0.5, window_s=5, out_of_order_s=1)
  assert not capacity.sustained(p99_s=8.1, growth_s=0.5, window_s=5, out_of_order_s=1)
  assert not capacity.sustained(p99_s=7.0, growth_s=2.0, window_s=5, out_of_order_s=1)


def test_rates_step_up_from_a_share_of_bare_encode():
  assert list(capacity.next_rates(100, start=0.5, step=1.5, most=1.2)) == [50.0, 75.0, 112.5]


@pytest.mark.e2e
def test_one_short_step_writes_its_record(tmp_path):
  done = subprocess.run(
      [sys.executable, '-m', 'benchmarks.capacity', '--precision', 'fp32', '--rates', '10',
       '--seconds', '4', '--warmup', '0', '--bare_texts', '64', '--label', 'smoke',
       '--input', str(SHARED_DATA / 'wikiticker-2015-09-12-sampled.json.gz'),
       '--window_size', '1', '--results', str(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  record = json.loads((tmp_path / 'capacity-fp32-smoke.json').read_text())
  (step,) = record['steps']
  assert step['rate'] == 10 and step['events'] == 40 and step['written'] == 40
  assert record['bare_texts_per_s'] > 0 and 'cores' in record['machine']


def test_a_step_longer_than_the_slice_cycles_it(tmp_path):
  path = tmp_path / 'slice.jsonl'
  path.write_text('a\nb\nc\n')
  assert capacity.cycled_slice(str(path), 3, str(tmp_path)) == str(path)
  cycled = capacity.cycled_slice(str(path), 7, str(tmp_path))
  assert open(cycled).read().splitlines() == ['a', 'b', 'c', 'a', 'b', 'c', 'a']
