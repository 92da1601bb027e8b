"""Parquet sinks: enriched rows one folder per window, dead letters one folder per reason.

File names derive from the records in the file (part_name), so a replay into the
same folder replaces its files instead of adding copies, and several writers of
one output (consumers of one group) never replace each other's files. Files are written under a temporary name and renamed, through Beam's
FileSystems, so the same code writes to local disks and object stores.
"""
import datetime
import hashlib
import logging
import types
from typing import Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window

from transforms.io import faults
from transforms.io.files import ParquetFiles
from transforms.records import DeadLetterBatch, WindowRows


ENRICHED_DIR = 'enriched'
DEADLETTER_DIR = 'deadletter'
TIMESTAMP = pa.timestamp('us', tz='UTC')

DEADLETTER_SCHEMA = pa.schema([
    ('id', pa.string()),
    ('event_time', TIMESTAMP),
    ('reason', pa.string()),
    ('error', pa.string()),
    ('source', pa.string()),
    ('raw', pa.string()),
])


# Types of derived columns, so that an all-null column keeps its type.
EXTRA_TYPES = types.MappingProxyType({
    'label': pa.string(),
    'label_score': pa.float32(),
    'labels': pa.list_(pa.string()),
    'duplicate_of': pa.string(),
    'duplicate_score': pa.float32(),
})


def enriched_schema(dimensions: int) -> pa.Schema:
  return pa.schema([
      ('id', pa.string()),
      ('event_time', TIMESTAMP),
      ('window_start', TIMESTAMP),
      ('window_end', TIMESTAMP),
      ('text', pa.string()),
      ('embedding', pa.list_(pa.float32(), dimensions)),
      ('model', pa.string()),
      ('source', pa.string()),
      ('model_fingerprint', pa.string()),  # models/identity.py
      ('chunk_count', pa.int32()),  # 1, or the chunks a long text was embedded in
  ])


def window_label(start_us: int) -> str:
  """A path-safe UTC label for a window start, e.g. 20150912T004500Z; a start outside years
  1-9999 (a window of an event in year 1 may start in year 0) is labelled in microseconds."""
  try:
    moment = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=start_us)
  except OverflowError:
    return f'{start_us:+d}us'
  fraction = f'.{moment.microsecond:06d}' if moment.microsecond else ''
  return moment.strftime('%Y%m%dT%H%M%S') + fraction + 'Z'


def embedding_matrix(rows) -> np.ndarray:
  """The embeddings of Embedded rows stacked in their order, float32 (rows x dimensions)."""
  return np.stack([row.embedding for row in rows]).astype(np.float32, copy=False)


def part_name(sources) -> str:
  """part-CONTENT.parquet: a hash of the sources (`stream:position`) of the records in a file.

  Several writers of one output (consumers of one group) write disjoint records,
  so their files never share a name; a replay of the same input, or a restart
  that writes the same records again, replaces its own files.
  """
  digest = hashlib.blake2b(digest_size=8)
  for source in sorted(sources):
    encoded = source.encode('utf-8', 'surrogatepass')
    # Length-prefixed: no source can spell a boundary (['a\\0b'] and ['a', 'b'] differ).
    digest.update(len(encoded).to_bytes(8, 'big') + encoded)
  return f'part-{digest.hexdigest()}.parquet'


def window_part_path(folder: str, batch: WindowRows) -> str:
  """FOLDER/window=START/part-CONTENT.parquet: the file of one WindowRows (part_name)."""
  return (f'{folder}/window={window_label(batch.start_us)}/'
          f'{part_name(row.event.source for row in batch.rows)}')


def enriched_table(rows, window_start_us: int, window_end_us: int, model: str,
                   extras: Optional[dict] = None) -> pa.Table:
  """Builds the Parquet table of one window's Embedded rows, in their order, plus extra columns."""
  vectors = embedding_matrix(rows)
  n, dimensions = vectors.shape
  events = [row.event for row in rows]
  table = pa.table([
      pa.array([event.id for event in events], pa.string()),
      pa.array([event.event_time_us for event in events], TIMESTAMP),
      pa.array(np.full(n, window_start_us, np.int64), TIMESTAMP),
      pa.array(np.full(n, window_end_us, np.int64), TIMESTAMP),
      pa.array([event.text for event in events], pa.string()),
      pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dimensions),
      pa.array([row.model.name if row.model else model for row in rows], pa.string()),
      pa.array([event.source for event in events], pa.string()),
      pa.array([row.model.fingerprint if row.model else None for row in rows], pa.string()),
      pa.array([row.chunk_count for row in rows], pa.int32()),
  ], schema=enriched_schema(dimensions))
  for name, values in (extras or {}).items():
    table = table.append_column(name, pa.array(values, EXTRA_TYPES.get(name)))
  return table


def deadletter_table(letters) -> pa.Table:
  letters = sorted(letters, key=lambda d: (d.source, d.reason))
  return pa.table([
      pa.array([d.id for d in letters], pa.string()),
      pa.array([d.event_time_us for d in letters], pa.int64()).cast(TIMESTAMP),
      pa.array([d.reason for d in letters], pa.string()),
      pa.array([d.error for d in letters], pa.string()),
      pa.array([d.source for d in letters], pa.string()),
      pa.array([d.raw for d in letters], pa.string()),
  ], schema=DEADLETTER_SCHEMA)


class _WriteWindowFn(beam.DoFn):

  def __init__(self, output_dir: str, model: str, policy: faults.WritePolicy, spec):
    self._output_dir = output_dir.rstrip('/')
    self._model = model
    self._policy = policy
    self._spec = spec
    self._files = None
    self._written = Metrics.counter('enrichment', 'enriched_rows')
    # Each event counted once, in its last window, with the rows it should have made.
    self._events = Metrics.counter('enrichment', 'enriched_events')
    self._copies = Metrics.counter('enrichment', 'window_copies')

  def setup(self):
    self._files = ParquetFiles(self._policy)

  def process(self, batch: WindowRows):
    path = window_part_path(f'{self._output_dir}/{ENRICHED_DIR}', batch)
    directory, name = path.rsplit('/', 1)
    try:
      written = self._files.sources_in(directory, name)
      fresh = not_yet_written(batch, written)
      if fresh.rows:
        self._files.write(enriched_table(fresh.rows, batch.start_us, batch.end_us, self._model,
                                         fresh.extras), path)
      if len(fresh.rows) < len(batch.rows):
        logging.info('window %s: %d of %d rows were written before (entries read again '
                     'after a restart); not written twice', window_label(batch.start_us),
                     len(batch.rows) - len(fresh.rows), len(batch.rows))
    except faults.WriteAbandoned:
      pass  # the job is stopping; not passed on, so never acknowledged
    else:
      self._written.inc(len(batch.rows))
      if self._spec is not None:
        times = [row.event.event_time_us for row in batch.rows]
        last = [t for t in times if self._spec.in_last_window(t, batch.start_us)]
        self._events.inc(len(last))
        self._copies.inc(sum(self._spec.windows_of(t) for t in last))
      # Passed on whole (every entry is acknowledged), saying which rows were there before.
      yield (batch if fresh is batch else batch._replace(written_before=frozenset(
          row.event.source for row in batch.rows if row.event.source in written)))


def not_yet_written(batch: WindowRows, written: frozenset) -> WindowRows:
  """The rows of `batch` whose records are in none of its window's other files (`written`:
  their sources): on sliding windows an entry is acknowledged with its last window, so a
  restart reads again entries whose earlier windows were already written."""
  if not written:
    return batch
  keep = [n for n, row in enumerate(batch.rows) if row.event.source not in written]
  if len(keep) == len(batch.rows):
    return batch
  extras = {name: [values[n] for n in keep] for name, values in (batch.extras or {}).items()}
  return batch._replace(rows=[batch.rows[n] for n in keep], extras=extras or batch.extras)


class WriteEnrichedParquet(beam.PTransform):
  """Writes each WindowRows to DIR/enriched/window=START/part-CONTENT.parquet; passes it on.

  Args:
    window: the job's WindowSpec, for the count check of sliding windows (each event counted
      in its last window, with the windows it falls in); None counts only rows.
  """

  def __init__(self, output_dir: str, model: str,
               policy: faults.WritePolicy = faults.WritePolicy(), window=None):
    super().__init__()
    self._output_dir = output_dir
    self._model = model
    self._policy = policy
    self._window = window

  def expand(self, windows):
    return windows | 'Write window file' >> beam.ParDo(
        _WriteWindowFn(self._output_dir, self._model, self._policy, self._window))


class _WriteReasonFn(beam.DoFn):

  def __init__(self, output_dir: str, policy: faults.WritePolicy):
    self._output_dir = output_dir.rstrip('/')
    self._policy = policy
    self._files = None
    self._written = Metrics.counter('enrichment', 'deadletters')

  def setup(self):
    self._files = ParquetFiles(self._policy)

  def process(self, batch: DeadLetterBatch):
    path = (f'{self._output_dir}/{DEADLETTER_DIR}/reason={batch.reason}/'
            f'{part_name(letter.source for letter in batch.letters)}')
    try:
      self._files.write(deadletter_table(batch.letters), path)
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

  def __init__(self, periodic: bool, flush_every_s: int = 5):
    """Args: periodic: flush every `flush_every_s` (unbounded input; the FnApiRunner
    that runs bounded jobs has no processing-time triggers)."""
    super().__init__()
    self._periodic = periodic
    self._flush_every_s = flush_every_s

  def expand(self, letters):
    flush = (trigger.Repeatedly(trigger.AfterProcessingTime(self._flush_every_s))
             if self._periodic else trigger.DefaultTrigger())
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

  The name hashes the sources of the letters in the file (part_name): a replay,
  or a restart that reprocesses the same records, replaces the file it wrote
  before; writers of disjoint records never share a name.
  """

  def __init__(self, output_dir: str, policy: faults.WritePolicy = faults.WritePolicy()):
    super().__init__()
    self._output_dir = output_dir
    self._policy = policy

  def expand(self, batches):
    return batches | 'Write reason file' >> beam.ParDo(
        _WriteReasonFn(self._output_dir, self._policy))


class CollectDeadLetters(beam.PTransform):
  """Flattens dead letters from steps with different windowing into one PCollection."""

  def expand(self, pcolls):
    unwindowed = [
        pcoll | f'Unwindow {n}' >> beam.WindowInto(window.GlobalWindows())
        for n, pcoll in enumerate(pcolls)
    ]
    return unwindowed | 'Flatten' >> beam.Flatten()
