"""The throughput benchmark on a few texts: it runs, and its result says what ran on what.

Its figures are not bounded here (timings belong to benchmark runs, not tests), but each
ratio it writes must be the ratio of the rates it measured in that run, and each rate the
texts over the seconds it timed.
"""
import json
import statistics
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SHARED_DATA

pytestmark = pytest.mark.slow
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
  bare = results['bare@fp32']
  for name, result in results.items():
    # One round: the rate is the texts over that round's (rounded) end-to-end seconds.
    assert result['e2e_events_per_s'] == pytest.approx(80 / result['e2e_s'][0], rel=0.02), name
    assert result['e2e_ratio'] == pytest.approx(
        result['e2e_events_per_s'] / bare['e2e_events_per_s']), name
    assert result['steady_ratio'] == pytest.approx(
        result['steady_events_per_s'] / bare['steady_events_per_s']), name
  assert 'cores' in record['machine'] and record['machine'].count(',') >= 3  # CPU and its units
  # The cache setting and the pipeline's hit rate (80 comments hold repeats).
  assert record['embedding_cache'] > 0 and 0 < results['pipeline@fp32']['cache_hit_rate'] < 1


def test_plumbing_benchmark_compares_trees_and_their_rows(tmp_path):
  # This checkout against itself: the comparison path runs, and its rows must agree.
  done = subprocess.run(
      [sys.executable, '-m', 'benchmarks.plumbing', '--input', str(ARCHIVE), '--limit', '300',
       '--rounds', '1', '--tree', str(ROOT), '--check', '--results', str(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  record = json.loads((tmp_path / 'plumbing.json').read_text())
  assert record['identical_rows'] is True and record['dimensions'] == 384
  assert set(record['results']) == {'this tree', str(ROOT), 'bare encode'}
  assert all(r['events'] == 300 and r['events_per_s'] > 0 for r in record['results'].values())
  reference = record['results'][str(ROOT)]['events_per_s']  # the last tree named
  for name, row in record['results'].items():
    assert row['ratio_to_last_tree'] == round(row['events_per_s'] / reference, 2), name
  assert record['machine'].count(',') >= 3  # the CPU and its vector units


def test_replay_memory_benchmark_reports_growth_per_event(tmp_path):
  done = subprocess.run(
      [sys.executable, '-m', 'benchmarks.memory', '--replay', '--input', str(ARCHIVE),
       '--sizes', '100,300', '--results', str(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  record = json.loads((tmp_path / 'memory-replay.json').read_text())
  runs = record['trees']['this tree']['runs']
  assert [run['events'] for run in runs] == [100, 300] and all(r['peak_rss_mb'] > 0 for r in runs)
  assert 'growth_kb_per_event' in record['trees']['this tree']


@pytest.mark.real_model
def test_derived_replay_memory_benchmark_compares_what_each_tree_wrote(tmp_path):
  # This checkout against itself, on 300 events: same counts and digests, a peak each.
  done = subprocess.run(
      [sys.executable, '-m', 'benchmarks.memory', '--replay', '--derived', '--input',
       str(ARCHIVE), '--sizes', '300', '--tree', str(ROOT), '--results', str(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  record = json.loads((tmp_path / 'memory-replay-derived.json').read_text())
  (run,), (again,) = record['trees']['this tree'], record['trees'][str(ROOT)]
  assert run['rows'] == 300 and run['store_rows'] >= 300 and run['summaries'] > 0
  assert 0 < run['labelled'] < 300 and 0 < run['duplicates'] < 300
  assert run['peak_rss_mb'] > 0 and run['sampled_tree_peak_rss_mb'] > 0
  assert {k: run[k] for k in ('rows', 'labelled', 'duplicates', 'summaries', 'new_topics',
                              'store_rows', 'digests')} == {
      k: again[k] for k in ('rows', 'labelled', 'duplicates', 'summaries', 'new_topics',
                            'store_rows', 'digests')}
  assert '--dedup_horizon 300' in run['command'] and record['machine'].count(',') >= 3


def test_forward_batch_benchmark_names_each_setting(tmp_path):
  done = subprocess.run(
      [sys.executable, '-m', 'benchmarks.forward_batch', '--input', str(ARCHIVE), '--limit', '40',
       '--rounds', '1', '--batches', '8,16', '--budgets', '512', '--precisions', 'fp32',
       '--bundle', '16', '--label', 'smoke',
       '--results', str(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  record = json.loads((tmp_path / 'forward-batch-cpu-smoke.json').read_text())
  assert record['texts'] == 40 and record['bundle'] == 16 and set(record['results']) == {
      'fp32@batch 8', 'fp32@batch 16', 'fp32@tokens 512'}
  results = record['results']
  best = max(r['texts_per_s'] for r in results.values())
  for name, result in results.items():
    assert result['texts_per_s'] == pytest.approx(
        40 / statistics.median(result['seconds']), rel=0.02), name
    assert result['ratio_to_best'] == pytest.approx(result['texts_per_s'] / best), name
  assert 'cores' in record['machine']


def test_accuracy_guard_writes_verdicts_beside_fp32(tmp_path):
  done = subprocess.run(
      [sys.executable, '-m', 'benchmarks.accuracy', '--input', str(ARCHIVE), '--limit', '40',
       '--sts', str(SHARED_DATA / 'sts-dev.csv'), '--sts_limit', '30', '--settings', 'fp32,auto',
       '--label', 'smoke', '--results', str(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  record = json.loads((tmp_path / 'accuracy-cpu-smoke.json').read_text())
  assert record['sts_pairs'] == 30 and record['archive_texts'] == 40
  results = record['results']
  assert set(results) == {'fp32 encode', 'fp32', 'auto'}
  assert results['fp32']['near-exact'] and results['fp32']['chosen'] == 'fp32'
  assert results['auto']['near-exact']  # whatever auto chose on this CPU
  assert 'as asked' in results['fp32']['why'] and '--precision auto' in results['auto']['why']
