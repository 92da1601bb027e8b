"""Parquet sinks: enriched rows one folder per window, dead letters one folder per reason.

File names derive from the window (or reason) and the pane index only, so a
replay into the same folder replaces its files instead of adding copies.
Files are written under a temporary name and renamed, through Beam's
FileSystems, so the same code writes to local disks and object stores.
"""
import datetime
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms import window

from transforms import records as r

ENRICHED_DIR = 'enriched'
DEADLETTER_DIR = 'deadletter'
_TS = pa.timestamp('us', tz='UTC')

DEADLETTER_SCHEMA = pa.schema([
    ('id', pa.string()),
    ('event_time', _TS),
    ('reason', pa.string()),
    ('error', pa.string()),
    ('source', pa.string()),
    ('raw', pa.string()),
])


def enriched_schema(dimensions: int) -> pa.Schema:
  return pa.schema([
      ('id', pa.string()),
      ('event_time', _TS),
      ('window_start', _TS),
      ('window_end', _TS),
      ('text', pa.string()),
      ('embedding', pa.list_(pa.float32(), dimensions)),
      ('model', pa.string()),
      ('source', pa.string()),
  ])


def window_label(start_us: int) -> str:
  """A path-safe UTC label for a window start, e.g. 20150912T004500Z."""
  moment = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=start_us)
  fraction = f'.{moment.microsecond:06d}' if moment.microsecond else ''
  return moment.strftime('%Y%m%dT%H%M%S') + fraction + 'Z'


def write_parquet(table: pa.Table, path: str) -> None:
  """Writes a table so that readers never see a half-written file."""
  directory = path.rsplit('/', 1)[0]
  try:
    FileSystems.mkdirs(directory)
  except IOError:
    pass  # already there
  temporary = f'{directory}/.tmp-{uuid.uuid4().hex}.parquet'
  with FileSystems.create(temporary) as stream:
    pq.write_table(table, stream, compression='zstd')
  FileSystems.rename([temporary], [path])


def enriched_table(rows, window_start_us: int, window_end_us: int, model: str) -> pa.Table:
  """Builds the Parquet table of one window's Embedded rows, sorted by (event time, id)."""
  rows = sorted(rows, key=lambda row: (row.event.event_time_us, row.event.id))
  vectors = np.stack([row.embedding for row in rows]).astype(np.float32, copy=False)
  n, dimensions = vectors.shape
  return pa.table([
      pa.array([row.event.id for row in rows], pa.string()),
      pa.array([row.event.event_time_us for row in rows], pa.int64()).cast(_TS),
      pa.array(np.full(n, window_start_us, np.int64)).cast(_TS),
      pa.array(np.full(n, window_end_us, np.int64)).cast(_TS),
      pa.array([row.event.text for row in rows], pa.string()),
      pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dimensions),
      pa.array([model] * n, pa.string()),
      pa.array([row.event.source for row in rows], pa.string()),
  ], schema=enriched_schema(dimensions))


def deadletter_table(letters) -> pa.Table:
  letters = sorted(letters, key=lambda d: (d.source, d.reason))
  return pa.table([
      pa.array([d.id for d in letters], pa.string()),
      pa.array([d.event_time_us for d in letters], pa.int64()).cast(_TS),
      pa.array([d.reason for d in letters], pa.string()),
      pa.array([d.error for d in letters], pa.string()),
      pa.array([d.source for d in letters], pa.string()),
      pa.array([d.raw for d in letters], pa.string()),
  ], schema=DEADLETTER_SCHEMA)


class _WriteWindowFn(beam.DoFn):

  def __init__(self, output_dir: str, model: str):
    self._output_dir = output_dir.rstrip('/')
    self._model = model
    self._written = Metrics.counter('enrichment', 'enriched_rows')

  def process(self, keyed_rows, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
    _, rows = keyed_rows
    rows = list(rows)
    if not isinstance(win, window.IntervalWindow):
      raise ValueError(f'enriched rows must be windowed by event time, not {win}')
    start_us, end_us = win.start.micros, win.end.micros
    table = enriched_table(rows, start_us, end_us, self._model)
    index = pane.index if pane is not None else 0
    path = (f'{self._output_dir}/{ENRICHED_DIR}/window={window_label(start_us)}/'
            f'part-{index:05d}.parquet')
    write_parquet(table, path)
    self._written.inc(len(rows))
    yield path, len(rows), start_us, end_us


class WriteEnrichedParquet(beam.PTransform):
  """Writes each window's Embedded rows to DIR/enriched/window=START/part-PANE.parquet.

  Returns a PCollection of (path, rows, window start, window end), one per file.
  """

  def __init__(self, output_dir: str, model: str):
    super().__init__()
    self._output_dir = output_dir
    self._model = model

  def expand(self, embedded):
    return (embedded
            | 'Key by window' >> beam.Map(lambda row: (None, row))
            | 'Group by window' >> beam.GroupByKey()
            | 'Write window file' >> beam.ParDo(_WriteWindowFn(self._output_dir, self._model)))


class _WriteReasonFn(beam.DoFn):

  def __init__(self, output_dir: str):
    self._output_dir = output_dir.rstrip('/')
    self._written = Metrics.counter('enrichment', 'deadletters')

  def process(self, keyed_letters, pane=beam.DoFn.PaneInfoParam):
    reason, letters = keyed_letters
    letters = list(letters)
    index = pane.index if pane is not None else 0
    path = f'{self._output_dir}/{DEADLETTER_DIR}/reason={reason}/part-{index:05d}.parquet'
    write_parquet(deadletter_table(letters), path)
    self._written.inc(len(letters))
    yield path, len(letters)


class WriteDeadLetters(beam.PTransform):
  """Writes globally windowed DeadLetters to DIR/deadletter/reason=REASON/part-PANE.parquet."""

  def __init__(self, output_dir: str):
    super().__init__()
    self._output_dir = output_dir

  def expand(self, letters):
    return (letters
            | 'Key by reason' >> beam.Map(lambda letter: (letter.reason, letter))
            | 'Group by reason' >> beam.GroupByKey()
            | 'Write reason file' >> beam.ParDo(_WriteReasonFn(self._output_dir)))


class CollectDeadLetters(beam.PTransform):
  """Flattens dead letters from steps with different windowing into one PCollection."""

  def expand(self, pcolls):
    unwindowed = [
        pcoll | f'Unwindow {n}' >> beam.WindowInto(window.GlobalWindows())
        for n, pcoll in enumerate(pcolls)
    ]
    return unwindowed | 'Flatten' >> beam.Flatten()
