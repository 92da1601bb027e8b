"""Acknowledged only when durable: sliding windows, sinks Beam's IO writes on a side branch,
and the count check for every window kind. Against a real redis-server and real files."""
import json
import subprocess
import sys

import apache_beam as beam
import numpy as np

from models.loading import ModelConfig
from observability.metrics import snapshot
from pipelines.builder import build
from pipelines.config import JobConfig
from pipelines.launcher import JobResult
from tests.conftest import ROOT
from tests.fakes import HashingModelHandler
from tests.redis_server import started
from tests.runners import batch_pipeline
from transforms import records as r
from transforms.eventtime import TimeParser
from transforms.fields import FieldMapping
from transforms.io.redis_streams import RedisStreamAddress, RedisStreamReader, _AcknowledgeFn
from transforms.io.faults import WritePolicy
from transforms.windowing import WindowSpec

S = 1_000_000
SLIDING = WindowSpec(10, period_s=5)


def test_an_acknowledged_source_refuses_sinks_that_say_nothing_of_durability(tmp_path):
  with started() as server:
    for sink in ('bq://p.d.t', 'pubsub://projects/my-project/topics/enriched'):
      done = subprocess.run(
          [sys.executable, '-m', 'pipelines.stream', '--source',
           f'{server.url()}?stream=ev&group=g', '--sink', sink, '--output', str(tmp_path)],
          cwd=ROOT, capture_output=True, text=True, timeout=120)
      assert done.returncode == 2, done.stderr[-2000:]
      lines = done.stderr.strip().splitlines()
      assert len(lines) == 1 and lines[0].startswith(f'error: --sink {sink} does not say')


def _window(start_s, entries):
  rows = [r.Embedded(r.Event(f'e{n}', 12 * S, 't', f'ev:{entry}', 'ev', ''), np.zeros(2))
          for n, entry in enumerate(entries)]
  return r.WindowRows(start_s * S, (start_s + 10) * S, 0, rows)


def test_sliding_windows_acknowledge_an_entry_with_its_last_window():
  with started() as server:
    address = RedisStreamAddress.parse(f'{server.url()}?stream=ev&group=g&consumer=c')
    client = address.client()
    for n in range(3):
      client.xadd('ev', {'event': json.dumps({'id': n})})
    reader = RedisStreamReader(address, block_ms=10)
    reader.open()
    try:
      entries = [record.position for record in reader.poll(10)]
    finally:
      reader.close()
    assert client.xpending('ev', 'g')['pending'] == 3
    ack = _AcknowledgeFn(address, 'source', WritePolicy(), SLIDING)
    ack.setup()
    try:
      # Events at t=12 s fall in [5, 15) and [10, 20): written in the first, still open
      # in the second, so not yet acknowledged.
      assert list(ack.process(_window(5, entries))) == [0]
      assert client.xpending('ev', 'g')['pending'] == 3
      assert list(ack.process(_window(10, entries))) == [3]
      assert client.xpending('ev', 'g')['pending'] == 0
    finally:
      ack.teardown()


def test_a_window_s_rows_read_again_after_a_restart_are_not_written_twice(tmp_path):
  # Sliding windows: entries of the second half of a window are acknowledged with the next
  # window, so a kill between the two reads them again, and they come back as a smaller
  # firing of the window already written.
  import pyarrow.dataset as ds
  from transforms.io.sinks import WriteEnrichedParquet

  def write(*windows):
    with batch_pipeline() as p:
      _ = (p | beam.Create(list(windows), reshuffle=False)
           | WriteEnrichedParquet(str(tmp_path), 'm', window=SLIDING))

  write(_window(10, ['1-0', '2-0', '3-0', '4-0']))
  write(_window(10, ['3-0', '4-0']), _window(15, ['3-0', '4-0']))  # after the restart
  write(_window(10, ['4-0', '5-0']))  # one row seen before, one new (a late firing)
  table = ds.dataset(tmp_path / 'enriched', format='parquet', partitioning='hive').to_table()
  pairs = sorted(zip(table.column('source').to_pylist(),
                     table.column('window_start').cast('int64').to_pylist()))
  assert pairs == sorted([(f'ev:{n}-0', 10 * S) for n in range(1, 6)] +
                         [('ev:3-0', 15 * S), ('ev:4-0', 15 * S)])
  assert len(list((tmp_path / 'enriched').glob('window=*/part-*.parquet'))) == 3  # none empty


def test_a_window_s_rows_read_again_are_summarised_once_with_their_file(tmp_path):
  # --topics: each summary covers the rows its enriched file holds, so a window's summaries
  # add up to its rows; a firing whose every row was written before gets no summary.
  import pyarrow.dataset as ds
  from transforms.io.sinks import WriteEnrichedParquet
  from transforms.topics import SummarizeWindows

  def write(*windows):
    with batch_pipeline() as p:
      _ = (p | beam.Create(list(windows), reshuffle=False)
           | WriteEnrichedParquet(str(tmp_path), 'm', window=SLIDING)
           | SummarizeWindows(str(tmp_path), 0.5))

  def window(entries):
    batch = _window(10, entries)
    return batch._replace(rows=[row._replace(embedding=np.array([1.0, n], np.float32))
                                for n, row in enumerate(batch.rows)])

  write(window(['1-0', '2-0', '3-0']))
  write(window(['2-0', '3-0']))  # after a restart: all written before
  write(window(['3-0', '4-0', '5-0']))  # one written before, two new
  summaries = ds.dataset(tmp_path / 'windows', format='parquet', partitioning='hive').to_table()
  assert sorted(summaries.column('events').to_pylist()) == [2, 3]
  parts = {path.name for path in (tmp_path / 'enriched').glob('window=*/part-*.parquet')}
  assert set(summaries.column('part').to_pylist()) == parts  # each names its own file


def test_the_count_check_holds_for_sliding_windows(tmp_path):
  lines = [json.dumps({'id': f'e{n}', 'time': 1_442_016_000 + n, 'text': f'event {n}'})
           for n in range(30)] + ['not json']
  (tmp_path / 'a.jsonl').write_text('\n'.join(lines) + '\n')
  config = JobConfig(mapping=FieldMapping.from_flags('id', 'time', 'text'),
                     time_parser=TimeParser(), window=SLIDING, model=ModelConfig(),
                     output=str(tmp_path / 'out'))
  from transforms.io.sources import ReadArchive
  p = batch_pipeline()
  build(p | ReadArchive(str(tmp_path / 'a.jsonl')), config, HashingModelHandler())
  result = p.run()
  result.wait_until_finish()
  counts = snapshot(result).counters
  assert (counts['records_read'], counts['enriched_events'], counts['deadletters']) == (31, 30, 1)
  assert counts['enriched_rows'] == counts['window_copies'] == 60  # 2 windows x 30 events
  job = JobResult(31, 60, 1, 1.0, 'out', 'sliding', enriched_events=30, window_copies=60)
  assert job.balanced and 'once per window' in job.check
  assert not job._replace(enriched_rows=59).balanced  # a row lost from one window
  assert not job._replace(enriched_events=29, window_copies=58).balanced


def test_a_live_sliding_window_job_writes_each_event_once_per_window(tmp_path):
  """Found by the sliding count check in the chaos benchmark: live, each row came twice."""
  archive = tmp_path / 'events.jsonl'
  archive.write_text(''.join(json.dumps({'id': f'e{n}', 'time': 1_442_016_000 + n,
                                         'text': f'event {n}'}) + '\n' for n in range(20)))
  out = tmp_path / 'out'
  done = subprocess.run([sys.executable, '-m', 'pipelines.stream', '--source', f'file://{archive}',
                         '--output', str(out), '--window_size', '5', '--window_period', '2.5'],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'every record accounted for: 20 events, each written once per window it falls in, ' \
      '40 rows' in done.stdout
  import pyarrow.dataset as ds
  table = ds.dataset(out / 'enriched', format='parquet', partitioning='hive').to_table()
  pairs = list(zip(table.column('id').to_pylist(), table.column('window_start').to_pylist()))
  assert len(pairs) == len(set(pairs)) == 40
