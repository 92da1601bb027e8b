"""The vector store sink: idempotent upserts of one row per chunk into LanceDB.

Chosen by measurement against Qdrant's embedded mode on the 39,244 rows of the
shared Wikipedia replay (benchmarks/vector_store.py, docs/search.md): 60,888 vs 931
rows/s upserted, 16.9 vs 28.4 ms median search, both recall@10 = 1.0.
LanceDB stores Arrow tables in a folder, or on an object store or a LanceDB
server with the same API, so `lancedb:URI` reaches those too.

Rows are keyed by (id, chunk): a text embedded whole is chunk 0; a long text
embedded in chunks (models/chunking.py) has a row per chunk with its
character offsets and its text. A table holds the vectors of one model
identity (models/identity.py), recorded in its schema's metadata: the job
refuses at start to write another identity's vectors into it, and after a
live model update writes the new model's rows to TABLE_FINGERPRINT instead.
"""
import json
import logging
import subprocess
import sys
from typing import Dict, List, Optional

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue
import numpy as np
import pyarrow as pa

from models.identity import ModelIdentity, of_config
from transforms.records import WindowRows
from transforms.io.sinks import TIMESTAMP
from transforms.spill import release_free_memory

TABLE = 'events'
IDENTITY_KEY = b'model_identity'
KEYS = ('id', 'chunk')
# Each merge adds a table version (and small files): every COMPACT_EVERY merges, and when the
# writer is torn down (at drain), the table is compacted and versions older than
# KEEP_VERSIONS_S removed (a search still reading one that old is unlikely).
COMPACT_EVERY = 100
KEEP_VERSIONS_S = 300.0
# Rows (chunks) that wait for one merge at most. LanceDB's memory grows with the merge:
# 40,000 rows of 384 floats merged into a new table in one merge raised the peak RSS by
# 472 MB, in merges of 8,192 rows by 283 MB, of 1,024 by 101 MB, of 512 by 99 MB (the CPU
# time 2.9 s against 2.7 s for 4,096 and 3.9 s for 512); a replay of the 39,244-event
# archive makes 39 merges.
MERGE_ROWS = 1024
# A compaction runs in a child process, which hands its memory back when it exits: in the
# job's own process, LanceDB kept what each compaction allocated, and that grew with the
# table (a table merged 250 rows at a time, compacted every 100 merges: RSS 276 -> 483 MB
# over 200,000 rows in the process, 280 -> 314 MB with the compactions in a child; the hour
# at 50 events/s of benchmarks/soak.py rose in steps at compactions). Costs about 3 s each.
_COMPACT = '''
import datetime, sys, lancedb
table = lancedb.connect(sys.argv[1]).open_table(sys.argv[2])
table.optimize(cleanup_older_than=datetime.timedelta(seconds=float(sys.argv[3])))
'''
COMPACT_TIMEOUT_S = 1800.0


def compact_table(uri: str, table: str, keep_versions_s: float,
                  timeout_s: float = COMPACT_TIMEOUT_S) -> Optional[str]:
  """Compacts `table` of the store at `uri` and removes versions older than
  `keep_versions_s`, in a child process; returns why it failed (None: done)."""
  try:
    done = subprocess.run([sys.executable, '-c', _COMPACT, uri, table, str(keep_versions_s)],
                          capture_output=True, text=True, timeout=timeout_s, check=False)
  except subprocess.TimeoutExpired:
    return f'not done within {timeout_s:.0f} s'
  except OSError as e:
    return str(e)
  if done.returncode:
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f'exit {done.returncode}'
  return None


def vector_schema(dimensions: int, identity: Optional[dict] = None) -> pa.Schema:
  schema = pa.schema([
      ('id', pa.string()),
      ('chunk', pa.int32()),
      ('chunk_start', pa.int32()),  # character offsets of the chunk in the event's text
      ('chunk_end', pa.int32()),
      ('vector', pa.list_(pa.float32(), dimensions)),
      ('event_time', TIMESTAMP),
      ('window_start', TIMESTAMP),
      ('window_end', TIMESTAMP),
      ('text', pa.string()),  # the chunk's text
      ('label', pa.string()),
      ('duplicate_of', pa.string()),
      ('model', pa.string()),
      ('model_fingerprint', pa.string()),
      ('source', pa.string()),  # file:line or stream:entry, as in the Parquet rows
  ])
  return schema.with_metadata({IDENTITY_KEY: json.dumps(identity)}) if identity else schema


def identity_record(identity: ModelIdentity, config) -> dict:
  """What a table records of the model that fills it: enough to load it again for queries."""
  return {'model': identity.name, 'fingerprint': identity.fingerprint,
          'precision': config.precision, 'backend': config.backend,
          'quantize': config.quantize, 'normalize': config.normalize}


def vector_tables(batch: WindowRows, fallback: ModelIdentity) -> Dict[ModelIdentity, pa.Table]:
  """The store's rows for one window firing, one row per chunk, by the identity that made them."""
  extras = batch.extras or {}
  columns: Dict[ModelIdentity, Dict[str, list]] = {}
  vectors: Dict[ModelIdentity, List[np.ndarray]] = {}
  for n, row in enumerate(batch.rows):
    identity = row.model or fallback
    out = columns.setdefault(identity, {name: [] for name in vector_schema(1).names})
    text, spans = row.event.text, row.chunks or ((0, len(row.event.text)),)
    own = row.chunk_vectors if row.chunks else [row.embedding]
    vectors.setdefault(identity, []).extend(own)
    for index, (start, end) in enumerate(spans):
      for name, value in (('id', row.event.id), ('chunk', index), ('chunk_start', start),
                          ('chunk_end', end), ('event_time', row.event.event_time_us),
                          ('window_start', batch.start_us), ('window_end', batch.end_us),
                          ('text', text[start:end] if row.chunks else text),
                          ('label', extras.get('label', [None] * (n + 1))[n]),
                          ('duplicate_of', extras.get('duplicate_of', [None] * (n + 1))[n]),
                          ('model', identity.name), ('model_fingerprint', identity.fingerprint),
                          ('source', row.event.source)):
        out[name].append(value)
  tables = {}
  for identity, values in columns.items():
    matrix = np.stack(vectors[identity]).astype(np.float32, copy=False)
    schema = vector_schema(matrix.shape[1])
    values['vector'] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)),
                                                         matrix.shape[1])
    tables[identity] = pa.table([pa.array(values[f.name], f.type) if f.name != 'vector'
                                 else values['vector'] for f in schema], schema=schema)
  return tables


def last_row_per_key(table: pa.Table, keys=KEYS) -> pa.Table:
  """`table` with one row per key, the last one (LanceDB refuses a merge whose source
  repeats a key: `Ambiguous merge inserts are prohibited`)."""
  columns = [table.column(key).to_pylist() for key in keys]
  last = {k: i for i, k in enumerate(zip(*columns))}
  if len(last) == table.num_rows:
    return table
  return table.take(sorted(last.values()))


def open_table(uri: str, dimensions: Optional[int] = None, table: str = TABLE,
               identity: Optional[dict] = None, writer: bool = False):
  """Opens `table` of the store at `uri`, creating it (recording `identity`) when
  `dimensions` is given.

  Args:
    writer: for a writer that never searches: without LanceDB's index and metadata
      caches (on a replay of the 39,244-event archive they held about 80 MB).
  """
  import lancedb
  session = lancedb.Session(index_cache_size_bytes=0, metadata_cache_size_bytes=0) \
      if writer else None
  db = lancedb.connect(uri, session=session)
  try:
    return db.open_table(table)
  except (ValueError, FileNotFoundError):
    if dimensions is None:
      raise ValueError(f'no vector table {table} in the store at {uri}') from None
    return db.create_table(table, schema=vector_schema(dimensions, identity), exist_ok=True)


def table_identity(table) -> Optional[dict]:
  """The identity record of the model that filled `table` (None: none recorded)."""
  raw = (table.schema.metadata or {}).get(IDENTITY_KEY)
  return json.loads(raw) if raw else None


def check_store(uri: str, table: str, model_config) -> None:
  """Raises ValueError when `table` at `uri` holds vectors of another model identity (or of
  the layout before chunks), naming the table to write instead."""
  try:
    found = open_table(uri, table=table)
  except ValueError:
    return  # a new table: it records this job's model
  identity = of_config(model_config)
  recorded = table_identity(found)
  if recorded is None or 'chunk' not in found.schema.names:
    raise ValueError(f'the vector table {table} at {uri} records no model identity (written '
                     f'before identities); write to a new table: ?table={identity.table(table)}')
  if recorded['fingerprint'] != identity.fingerprint:
    raise ValueError(
        f'the vector table {table} at {uri} holds vectors of {recorded["model"]}@'
        f'{recorded["fingerprint"]}, not of this job\'s {identity}; write to another table '
        f'(e.g. --sink \'...?table={identity.table(table)}\'), then switch readers to it')


class _UpsertFn(beam.DoFn):
  """Upserts once per bundle, or once `merge_rows` rows wait: each merge costs a table
  version, so a replay of many small windows merges many windows' rows at once, then
  passes the windows on; but a batch runner's bundle may be the whole archive, whose
  windows (and their look-back context) would all wait in memory for one merge."""

  def __init__(self, uri: str, table: str, model_config, compact_every: int = COMPACT_EVERY,
               keep_versions_s: float = KEEP_VERSIONS_S, merge_rows: int = MERGE_ROWS):
    self._uri = uri
    self._merge_rows = merge_rows
    self._pending_rows = 0
    self._table = table
    self._config = model_config
    self._compact_every = compact_every
    self._keep_versions_s = keep_versions_s
    self._tables = {}
    self._identity = None
    self._pending = []
    self._merges = 0

  def setup(self):
    self._identity = of_config(self._config)

  def compact(self):
    """Compacts the tables' files and removes their old versions."""
    if self._merges:
      for table in self._tables.values():
        failed = compact_table(self._uri, table.name, self._keep_versions_s)
        if failed:  # e.g. a peer compacting too: next time
          logging.warning('Could not compact the vector store %s: %s', self._uri, failed)
        table.checkout_latest()  # the compacted version, not one the child removed
      self._merges = 0

  def teardown(self):
    self.compact()

  def start_bundle(self):
    self._pending, self._pending_rows = [], 0

  def process(self, batch: WindowRows, win=beam.DoFn.WindowParam,
              timestamp=beam.DoFn.TimestampParam):
    self._pending.append((batch, win, timestamp))
    self._pending_rows += sum(row.chunk_count for row in batch.rows)
    if self._pending_rows >= self._merge_rows:
      yield from self._merge()

  def finish_bundle(self):
    yield from self._merge()

  def _merge(self):
    """Merges the waiting windows' rows, then passes the windows on."""
    if not self._pending:
      return
    by_identity: Dict[ModelIdentity, List[pa.Table]] = {}
    for batch, _, _ in self._pending:
      for identity, data in vector_tables(batch, self._identity).items():
        by_identity.setdefault(identity, []).append(data)
    for identity, parts in by_identity.items():
      data = last_row_per_key(pa.concat_tables(parts))
      (self._store(identity, data.schema.field('vector').type.list_size)
       .merge_insert(list(KEYS)).when_matched_update_all().when_not_matched_insert_all()
       .execute(data))
    self._merges += 1
    release_free_memory()  # what the merge's threads freed (its join reads the whole table)
    if self._merges >= self._compact_every:
      self.compact()
    pending, self._pending, self._pending_rows = self._pending, [], 0
    for batch, win, timestamp in pending:  # only now durable: pass them on
      yield WindowedValue(batch, timestamp, [win])

  def _store(self, identity: ModelIdentity, dimensions: int):
    """The table of `identity`: the named one for the job's model, TABLE_FINGERPRINT for a
    model that replaced it while the job runs (models/updates.py)."""
    if identity not in self._tables:
      name = self._table if identity == self._identity else identity.table(self._table)
      record = identity_record(identity, self._config)
      table = open_table(self._uri, dimensions, name, record, writer=True)
      recorded = table_identity(table)
      if recorded is not None and recorded['fingerprint'] != identity.fingerprint:
        raise ValueError(f'the vector table {name} holds vectors of another model')
      self._tables[identity] = table
    return self._tables[identity]


class UpsertVectors(beam.PTransform):
  """Upserts each window firing's rows by (id, chunk): a replay leaves one row per chunk."""

  def __init__(self, uri: str, model_config, table: str = TABLE):
    super().__init__()
    self._uri = uri
    self._config = model_config
    self._table = table

  def expand(self, windows):
    return windows | 'Upsert vectors' >> beam.ParDo(
        _UpsertFn(self._uri, self._table, self._config))
