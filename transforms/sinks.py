"""Parquet sinks: enriched rows one folder per window, dead letters one folder per reason.

File names derive from the window and pane (dead letters: from the records in
the file), so a replay into the same folder replaces its files instead of adding copies.
Files are written under a temporary name and renamed, through Beam's
FileSystems, so the same code writes to local disks and object stores.
"""
import datetime
import hashlib
import json
import uuid
from typing import NamedTuple, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms import trigger, window

from transforms import faults

ENRICHED_DIR = 'enriched'
DEADLETTER_DIR = 'deadletter'
TIMESTAMP = _TS = pa.timestamp('us', tz='UTC')

DEADLETTER_SCHEMA = pa.schema([
    ('id', pa.string()),
    ('event_time', _TS),
    ('reason', pa.string()),
    ('error', pa.string()),
    ('source', pa.string()),
    ('raw', pa.string()),
])


# Types of derived columns, so that an all-null column keeps its type.
EXTRA_TYPES = {
    'label': pa.string(),
    'label_score': pa.float32(),
    'labels': pa.list_(pa.string()),
    'duplicate_of': pa.string(),
    'duplicate_score': pa.float32(),
}


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
  """Writes a table so that readers never see a half-written file.

  A failing write (disk full, no permission) is retried with backoff for a
  bounded time (transforms.faults); then faults.WriteAbandoned is raised and
  the caller passes nothing on, so nothing behind it is acknowledged.
  """
  faults.retry(lambda: _write_once(table, path), 'output files', f'cannot write {path}',
               (OSError,))


def _write_once(table: pa.Table, path: str) -> None:
  directory = path.rsplit('/', 1)[0]
  try:
    FileSystems.mkdirs(directory)
  except IOError:
    pass  # already there
  temporary = f'{directory}/.{uuid.uuid4().hex}.tmp'  # hidden from readers and globs
  try:
    with FileSystems.create(temporary) as stream:
      pq.write_table(table, stream, compression='zstd')
    FileSystems.rename([temporary], [path])
  except Exception:
    try:
      FileSystems.delete([temporary])  # a full disk needs its space back
    except IOError:
      pass
    raise


def embedding_matrix(rows) -> np.ndarray:
  """The embeddings of Embedded rows stacked in their order, float32 (rows x dimensions)."""
  return np.stack([row.embedding for row in rows]).astype(np.float32, copy=False)


def window_part_path(folder: str, batch) -> str:
  """FOLDER/window=START/part-PANE.parquet: one file per window firing (WindowRows)."""
  return f'{folder}/window={window_label(batch.start_us)}/part-{batch.pane:05d}.parquet'


def enriched_table(rows, window_start_us: int, window_end_us: int, model: str,
                   extras: Optional[dict] = None) -> pa.Table:
  """Builds the Parquet table of one window's Embedded rows, in their order, plus extra columns."""
  vectors = embedding_matrix(rows)
  n, dimensions = vectors.shape
  table = pa.table([
      pa.array([row.event.id for row in rows], pa.string()),
      pa.array([row.event.event_time_us for row in rows], pa.int64()).cast(_TS),
      pa.array(np.full(n, window_start_us, np.int64)).cast(_TS),
      pa.array(np.full(n, window_end_us, np.int64)).cast(_TS),
      pa.array([row.event.text for row in rows], pa.string()),
      pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dimensions),
      pa.array([model] * n, pa.string()),
      pa.array([row.event.source for row in rows], pa.string()),
  ], schema=enriched_schema(dimensions))
  for name, values in (extras or {}).items():
    table = table.append_column(name, pa.array(values, EXTRA_TYPES.get(name)))
  return table


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


class WindowRows(NamedTuple):
  """One firing of one window: its bounds, pane index and rows (sorted by event time, id).

  extras: derived columns, name -> values aligned with rows.
  """
  start_us: int
  end_us: int
  pane: int
  rows: list
  extras: Optional[dict] = None
  context: tuple = ()  # rows of earlier windows within the look-back, sorted, not written
  deadletters: int = 0  # dead letters with an event time in this window (not late ones)


def enriched_records(batch: WindowRows, model: str):
  """Each row of a window firing as a dict of JSON types: the Parquet columns, times as
  RFC 3339 text, the embedding as a list; for message and table sinks."""
  from transforms.eventtime import format_micros
  start, end = format_micros(batch.start_us), format_micros(batch.end_us)
  extras = batch.extras or {}
  for n, row in enumerate(batch.rows):
    record = {
        'id': row.event.id,
        'event_time': format_micros(row.event.event_time_us),
        'window_start': start,
        'window_end': end,
        'text': row.event.text,
        'embedding': [float(x) for x in row.embedding],
        'model': model,
        'source': row.event.source,
    }
    for name, values in extras.items():
      record[name] = values[n]
    yield record


def record_json(record: dict) -> str:
  """One enriched record as the JSON the message sinks write."""
  return json.dumps(record, ensure_ascii=False)


class DeadLetterMark(NamedTuple):
  """Stands for one dead letter in its event-time window, to be counted there."""
  reason: str


class Lookback(NamedTuple):
  """An earlier window's row, offered to a later window as context (never written there)."""
  row: object


class _CollectWindowFn(beam.DoFn):

  def process(self, keyed_rows, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
    if not isinstance(win, window.IntervalWindow):
      raise ValueError(f'enriched rows must be windowed by event time, not {win}')
    rows, context, letters = [], [], 0
    for value in keyed_rows[1]:
      if isinstance(value, Lookback):
        context.append(value.row)
      elif isinstance(value, DeadLetterMark):
        letters += 1
      else:
        rows.append(value)
    if rows:  # a window may have received only context or dead letters
      in_order = lambda row: (row.event.event_time_us, row.event.id)
      yield WindowRows(win.start.micros, win.end.micros, pane.index if pane else 0,
                       sorted(rows, key=in_order), None, tuple(sorted(context, key=in_order)),
                       letters)


class _OfferLookbackFn(beam.DoFn):
  """Copies a row into each later fixed window that starts within `lookback_us` of it."""

  def __init__(self, lookback_s: float):
    self._lookback_us = round(lookback_s * 1_000_000)

  def process(self, row, win=beam.DoFn.WindowParam):
    size_us = win.end.micros - win.start.micros
    start_us = win.end.micros
    # Context needs only id, time and vector: copies leave the texts behind.
    slim = row._replace(event=row.event._replace(text='', raw='', source='', stream=''))
    while start_us <= row.event.event_time_us + self._lookback_us:
      yield window.TimestampedValue(Lookback(slim), start_us / 1_000_000)
      start_us += size_us


class GroupWindows(beam.PTransform):
  """Gathers each window firing's Embedded rows into one WindowRows.

  Args:
    lookback_s: also hand each window, as context, the rows of earlier windows
      from this many seconds before its events (fixed windows only).
    rewindow: re-applies the rows' windowing to the context copies.
    deadletter_marks: DeadLetterMarks windowed like the rows, counted per window.
  """

  def __init__(self, lookback_s: float = 0, rewindow: Optional[beam.PTransform] = None,
               deadletter_marks: Optional[beam.PCollection] = None):
    super().__init__()
    self._lookback_s = lookback_s
    self._rewindow = rewindow
    self._marks = deadletter_marks

  def expand(self, embedded):
    inputs = [embedded]
    if self._lookback_s > 0:
      inputs.append(embedded
                    | 'Offer to later windows' >> beam.ParDo(_OfferLookbackFn(self._lookback_s))
                    | 'Window copies' >> self._rewindow)
    if self._marks is not None:
      inputs.append(self._marks)
    if len(inputs) > 1:
      embedded = inputs | 'With context' >> beam.Flatten()
    return (embedded
            | 'Key by window' >> beam.Map(lambda row: (None, row))
            | 'Group by window' >> beam.GroupByKey()
            | 'Collect window' >> beam.ParDo(_CollectWindowFn()))


class _WriteWindowFn(beam.DoFn):

  def __init__(self, output_dir: str, model: str):
    self._output_dir = output_dir.rstrip('/')
    self._model = model
    self._written = Metrics.counter('enrichment', 'enriched_rows')

  def process(self, batch: WindowRows):
    table = enriched_table(batch.rows, batch.start_us, batch.end_us, self._model, batch.extras)
    try:
      write_parquet(table, window_part_path(f'{self._output_dir}/{ENRICHED_DIR}', batch))
    except faults.WriteAbandoned:
      pass  # the job is stopping; not passed on, so never acknowledged
    else:
      self._written.inc(len(batch.rows))
      yield batch


class WriteEnrichedParquet(beam.PTransform):
  """Writes each WindowRows to DIR/enriched/window=START/part-PANE.parquet; passes it on."""

  def __init__(self, output_dir: str, model: str):
    super().__init__()
    self._output_dir = output_dir
    self._model = model

  def expand(self, windows):
    return windows | 'Write window file' >> beam.ParDo(
        _WriteWindowFn(self._output_dir, self._model))


class DeadLetterBatch(NamedTuple):
  reason: str
  letters: list


def _content_name(sources) -> str:
  digest = hashlib.blake2b(digest_size=8)
  for source in sorted(sources):
    digest.update(source.encode('utf-8', 'surrogatepass') + b'\\0')
  return digest.hexdigest()


class _WriteReasonFn(beam.DoFn):

  def __init__(self, output_dir: str):
    self._output_dir = output_dir.rstrip('/')
    self._written = Metrics.counter('enrichment', 'deadletters')

  def process(self, batch: DeadLetterBatch):
    name = _content_name(letter.source for letter in batch.letters)
    path = f'{self._output_dir}/{DEADLETTER_DIR}/reason={batch.reason}/part-{name}.parquet'
    try:
      write_parquet(deadletter_table(batch.letters), path)
    except faults.WriteAbandoned:
      pass  # the job is stopping; not passed on, so never acknowledged
    else:
      self._written.inc(len(batch.letters))
      yield batch


class GroupDeadLetters(beam.PTransform):
  """Gathers dead letters by reason, in the global window.

  A batch job groups each reason once, at the end; a streaming job every few
  seconds of processing time, so dead letters never wait for the job to end.
  """

  def __init__(self, flush_every_s: int = 5):
    super().__init__()
    self._flush_every_s = flush_every_s

  def expand(self, letters):
    streaming = letters.pipeline.options.view_as(StandardOptions).streaming
    # Batch runners group at the end of input; the FnApiRunner has no
    # processing-time triggers, so the periodic flush is for streaming only.
    flush = (trigger.Repeatedly(trigger.AfterProcessingTime(self._flush_every_s))
             if streaming else trigger.DefaultTrigger())
    return (letters
            | 'Flush periodically' >> beam.WindowInto(
                window.GlobalWindows(), trigger=flush,
                accumulation_mode=trigger.AccumulationMode.DISCARDING)
            | 'Key by reason' >> beam.Map(lambda letter: (letter.reason, letter))
            | 'Group by reason' >> beam.GroupByKey()
            | 'Collect reason' >> beam.MapTuple(
                lambda reason, letters: DeadLetterBatch(reason, list(letters))))


class WriteDeadLetters(beam.PTransform):
  """Writes each DeadLetterBatch to DIR/deadletter/reason=REASON/part-CONTENT.parquet.

  The name hashes the sources of the letters in the file, so a replay, or a
  restart that reprocesses the same records, replaces the file it wrote before.
  """

  def __init__(self, output_dir: str):
    super().__init__()
    self._output_dir = output_dir

  def expand(self, batches):
    return batches | 'Write reason file' >> beam.ParDo(_WriteReasonFn(self._output_dir))


class CollectDeadLetters(beam.PTransform):
  """Flattens dead letters from steps with different windowing into one PCollection."""

  def expand(self, pcolls):
    unwindowed = [
        pcoll | f'Unwindow {n}' >> beam.WindowInto(window.GlobalWindows())
        for n, pcoll in enumerate(pcolls)
    ]
    return unwindowed | 'Flatten' >> beam.Flatten()
