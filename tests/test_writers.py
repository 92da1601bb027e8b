"""File names and the vector store with several writers of one output; the bounded
per-stream collection writes what whole-window grouping writes."""
import json
import subprocess
import sys

import apache_beam as beam
import pyarrow.dataset as ds
import pytest

from models.loading import ModelConfig
from pipelines.builder import build
from pipelines.config import JobConfig
from tests.conftest import ROOT
from tests.fakes import HashingModelHandler
from tests.runners import batch_pipeline
from transforms import records as r
from transforms.derive import DeriveSpec
from transforms.eventtime import TimeParser
from transforms.fields import FieldMapping
from transforms.io.sinks import part_name
from transforms.windowing import WindowSpec


def config(output, window=WindowSpec(10, max_out_of_orderness_s=5), **derive):
  return JobConfig(mapping=FieldMapping.from_flags('id', 'time', 'text'),
                   time_parser=TimeParser(), window=window, model=ModelConfig(),
                   output=str(output), derive=DeriveSpec(**derive))


def raw(stream, n, seconds, text):
  return r.RawRecord(json.dumps({'id': f'{stream}-{n}', 'time': seconds, 'text': text}), stream, n)


def test_part_names_depend_on_the_records_only():
  one, other = ['events:1-0', 'events:2-0'], ['events:3-0', 'events:4-0']
  assert part_name(one) == part_name(reversed(one))  # order inside a file does not matter
  assert part_name(one) != part_name(other)  # writers of other records: other names
  assert part_name(one) != part_name(one[:1])
  assert part_name(one).startswith('part-') and part_name(one).endswith('.parquet')


def _records():
  """Two streams (files) whose events share windows, in stream order with some disorder."""
  records = []
  for stream, offset in (('a.jsonl', 0), ('b.jsonl', 3)):
    times = [1, 4, 2, 9, 12, 11, 25, 21, 33, 47, 45, 60]
    records += [raw(stream, n + 1, t + offset, f'{stream} text {n % 4}')
                for n, t in enumerate(times)]
  return records


def _rows(out):
  table = ds.dataset(out / 'enriched', format='parquet', partitioning='hive').to_table()
  return sorted((row['window'], row['id'], row['event_time'], row['window_start'],
                 row['window_end'], row['text'], tuple(row['embedding']), row['source'])
                for row in table.to_pylist())


def test_per_stream_collection_writes_the_rows_of_whole_windows(tmp_path):
  # With near-duplicates on, windows are grouped whole; without, collected per stream.
  for window in (WindowSpec(10, max_out_of_orderness_s=5),
                 WindowSpec(10, period_s=5, max_out_of_orderness_s=5, allowed_lateness_s=3)):
    written = {}
    for name, derive in (('whole', {'dedup_threshold': 2.0}), ('per_stream', {})):
      with batch_pipeline() as p:
        build(p | beam.Create(_records()), config(tmp_path / name, window, **derive),
              HashingModelHandler())
      written[name] = _rows(tmp_path / name)
    assert written['whole'] == written['per_stream'] and len(written['whole']) > 20
    # Per stream, a window shared by both files has one file per stream.
    shared = tmp_path / 'per_stream' / 'enriched' / 'window=19700101T000000Z'
    assert len(list(shared.glob('*.parquet'))) == 2
    for name in written:
      (tmp_path / name).rename(tmp_path / f'{name}-{window.kind}')


def _upsert(store, writer, windows):
  """Upserts `windows` WindowRows of 30 rows each through the vector store sink's DoFn,
  one bundle (one merge) per window, in a process of its own."""
  code = f'''
import numpy as np
from apache_beam.transforms.window import GlobalWindow
from transforms import records as r
from models.loading import ModelConfig
from transforms.io.vector_store import _UpsertFn
upsert = _UpsertFn({str(store)!r}, 'events', ModelConfig())
upsert.setup()
for w in range({windows}):
  rows = [r.Embedded(r.Event(f'{writer}-{{w}}-{{k}}', w * 10_000_000 + k, 't', 's', 's', ''),
                     np.full(8, k, np.float32)) for k in range(30)]
  upsert.start_bundle()
  batch = r.WindowRows(w * 10_000_000, (w + 1) * 10_000_000, 0, rows)
  assert not list(upsert.process(batch, GlobalWindow(), 0))  # 30 rows: none merged yet
  assert len(list(upsert.finish_bundle())) == 1
'''
  return subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, stderr=subprocess.PIPE,
                          text=True)


@pytest.mark.slow
def test_concurrent_upserts_from_several_jobs_keep_every_row(tmp_path):
  from transforms.io.vector_store import open_table
  store = tmp_path / 'vectors'
  open_table(str(store), 8)
  jobs = [_upsert(store, writer, 25) for writer in ('w1', 'w2', 'w3')]
  for job in jobs:
    _, errors = job.communicate(timeout=300)
    assert job.returncode == 0, errors[-3000:]
  rows = {row['id']: row['vector'] for row in open_table(str(store)).to_arrow().to_pylist()}
  assert len(rows) == 3 * 25 * 30  # no merge failed, none lost another's rows
  assert rows['w2-24-7'] == [7.0] * 8


def test_duckdb_reads_the_enriched_parquet_embeddings_included(tmp_path):
  """The docs' DuckDB reader: rows, window folders, and cosines over the embedding column."""
  import duckdb
  import numpy as np
  from transforms.io.files import write_parquet
  from transforms.io.sinks import enriched_table
  vectors = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]], np.float32)
  rows = [r.Embedded(r.Event(f'e{n}', n * 1_000_000, f'text {n}', f'f:{n}', 'f', ''), v)
          for n, v in enumerate(vectors)]
  write_parquet(enriched_table(rows, 0, 60_000_000, 'm'),
                f'{tmp_path}/enriched/window=19700101T000000Z/part-0.parquet')
  found = duckdb.sql(f"""
      WITH r AS (SELECT id, "window", embedding::FLOAT[4] AS e
                 FROM read_parquet('{tmp_path}/enriched/*/*.parquet'))
      SELECT b.id, b."window", array_cosine_similarity(a.e, b.e)
      FROM r a, r b WHERE a.id = 'e0' ORDER BY b.id""").fetchall()
  assert [(i, w) for i, w, _ in found] == [(f'e{n}', '19700101T000000Z') for n in range(3)]
  np.testing.assert_allclose([c for _, _, c in found], [1.0, 0.5 ** 0.5, 0.0], atol=1e-6)
