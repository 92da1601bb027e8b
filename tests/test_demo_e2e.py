"""The bounded demo (`./run.sh demo`: `python -m pipelines.demo`), end to end."""
import os
import subprocess
import sys

import pyarrow.dataset as ds
import pytest

from tests.conftest import ROOT
from transforms import records as r

pytestmark = pytest.mark.e2e


def test_demo_runs_the_synthetic_stream_to_parquet(tmp_path):
  done = subprocess.run(
      [sys.executable, '-m', 'pipelines.demo', '--num_events', '600', '--output', str(tmp_path)],
      cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE='1'), capture_output=True, text=True,
      timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  enriched = ds.dataset(tmp_path / 'enriched', format='parquet', partitioning='hive').to_table()
  dead = ds.dataset(tmp_path / 'deadletter', format='parquet', partitioning='hive').to_table()
  assert enriched.num_rows + dead.num_rows == 600
  assert set(dead.column('reason').to_pylist()) == {
      r.INVALID_JSON, r.NO_TEXT, r.BAD_TIME, r.LATE}
  assert f'Read 600 records: {enriched.num_rows} enriched rows, {dead.num_rows} dead letters' \
      in done.stdout
  assert 'events/s end to end' in done.stdout
  assert str(tmp_path) in done.stdout
  assert 'Running on FnApiRunner' in done.stderr
  windows = set(enriched.column('window').to_pylist())
  assert len(windows) >= 3  # 600 events at 20/s: 30 s of event time in 10 s windows
