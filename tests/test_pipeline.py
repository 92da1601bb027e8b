"""The builder's composites with the hashing model: routing, accounting, files."""
import json

import apache_beam as beam
import numpy as np
import pyarrow.dataset as ds
import pytest
from tests.runners import batch_pipeline
from apache_beam.testing.util import assert_that, equal_to

from models.loading import ModelConfig
from pipelines.builder import build, build_enrichment
from pipelines.config import JobConfig
from tests.fakes import FAIL_MARKER, HashingModelHandler, hashed_vector
from transforms import records as r
from transforms.eventtime import TimeParser
from transforms.fields import FieldMapping
from transforms.io.synthetic import GenerateSyntheticEvents, synthetic_records
from transforms.io.targets import parse_sink
from transforms.windowing import WindowSpec


def config(output='unused', window=WindowSpec(10, max_out_of_orderness_s=5), streaming=False):
  return JobConfig(mapping=FieldMapping.from_flags('id', 'time', 'text'),
                   time_parser=TimeParser(), window=window, model=ModelConfig(),
                   output=str(output), streaming=streaming, replay_lateness=True)


def raw(n, seconds, text='hello', **extra):
  fields = {'id': f'e{n}', 'time': seconds, 'text': text, **extra}
  return r.RawRecord(json.dumps(fields), 'stream', n)


RECORDS = [
    raw(1, 1, 'first'),
    raw(2, 3, 'second'),
    raw(3, 12, 'third'),
    r.RawRecord('{broken', 'stream', 4),
    raw(5, 13, FAIL_MARKER),          # inference fails for this text only
    raw(6, 40, 'pushes the watermark to 35'),
    raw(7, 2, 'late'),                # window [0,10) closed at watermark 35
    raw(8, 14, '   '),
]


def test_events_and_dead_letters_are_routed_by_reason():
  with batch_pipeline() as p:
    outputs = build_enrichment(p | beam.Create(RECORDS), config(), HashingModelHandler())
    assert_that(outputs.enriched | beam.Map(lambda row: row.event.id),
                equal_to(['e1', 'e2', 'e3', 'e6']), label='enriched')
    assert_that(outputs.deadletters | beam.Map(lambda d: (d.source, d.reason)),
                equal_to([('stream:4', r.INVALID_JSON), ('stream:5', r.INFERENCE_ERROR),
                          ('stream:7', r.LATE), ('stream:8', r.NO_TEXT)]),
                label='dead letters')


def test_a_failing_batch_keeps_its_good_records():
  texts = ['a', 'b', FAIL_MARKER, 'c']
  records = [raw(n, 1, t) for n, t in enumerate(texts)]
  handler = HashingModelHandler(ModelConfig(min_batch_size=4, max_batch_size=4))
  with batch_pipeline() as p:
    outputs = build_enrichment(p | beam.Create(records), config(), handler)
    assert_that(outputs.enriched | beam.Map(lambda row: (row.event.text, row.embedding.tolist())),
                equal_to([(t, hashed_vector(t).tolist()) for t in 'abc']), label='good')
    assert_that(outputs.deadletters | beam.Map(lambda d: d.reason),
                equal_to([r.INFERENCE_ERROR]), label='bad')


def test_written_files_hold_every_record_once(tmp_path):
  with batch_pipeline() as p:
    build(p | beam.Create(RECORDS), config(tmp_path), HashingModelHandler())
  enriched = ds.dataset(tmp_path / 'enriched', format='parquet', partitioning='hive').to_table()
  dead = ds.dataset(tmp_path / 'deadletter', format='parquet', partitioning='hive').to_table()
  assert enriched.num_rows + dead.num_rows == len(RECORDS)
  rows = {row['id']: row for row in enriched.to_pylist()}
  assert set(rows) == {'e1', 'e2', 'e3', 'e6'}
  assert rows['e3']['window_start'].timestamp() == 10
  assert rows['e3']['window_end'].timestamp() == 20
  assert rows['e6']['event_time'].timestamp() == 40
  np.testing.assert_allclose(rows['e1']['embedding'], hashed_vector('first'))
  assert rows['e1']['source'] == 'stream:1'
  assert sorted(p.name for p in (tmp_path / 'enriched').iterdir()) == [
      'window=19700101T000000Z', 'window=19700101T000010Z', 'window=19700101T000040Z']
  letters = {row['source']: row for row in dead.to_pylist()}
  assert letters['stream:4']['raw'] == '{broken'
  assert letters['stream:7']['reason'] == r.LATE
  assert letters['stream:7']['id'] == 'e7'
  assert 'watermark' in letters['stream:7']['error']


def test_rewriting_the_same_input_replaces_files(tmp_path):
  listings = []
  for _ in range(2):
    with batch_pipeline() as p:
      build(p | beam.Create(RECORDS), config(tmp_path), HashingModelHandler())
    listings.append(sorted(str(f.relative_to(tmp_path)) for f in tmp_path.rglob('*')))
  assert listings[0] == listings[1]
  assert len([f for f in listings[1] if f.endswith('.parquet')]) == 3 + 4  # windows + reasons
  enriched = ds.dataset(tmp_path / 'enriched', format='parquet', partitioning='hive')
  assert enriched.count_rows() == 4


def test_synthetic_source_is_deterministic_and_has_every_kind_of_flaw(tmp_path):
  records = list(synthetic_records(1000, rate=20, seed=3))
  assert records == list(synthetic_records(1000, rate=20, seed=3))
  assert [rec.position for rec in records] == list(range(1, 1001))
  with batch_pipeline() as p:
    build(p | GenerateSyntheticEvents(1000, 20, seed=3), config(tmp_path),
          HashingModelHandler())
  dead = ds.dataset(tmp_path / 'deadletter', format='parquet', partitioning='hive').to_table()
  enriched = ds.dataset(tmp_path / 'enriched', format='parquet', partitioning='hive')
  reasons = sorted(set(dead.column('reason').to_pylist()))
  assert reasons == [r.BAD_TIME, r.INVALID_JSON, r.LATE, r.NO_TEXT]
  assert enriched.count_rows() + dead.num_rows == 1000


def test_sliding_windows_embed_each_event_once(tmp_path):
  sliding = config(tmp_path, WindowSpec(10, period_s=5, max_out_of_orderness_s=5))
  records = [raw(1, 7, 'one'), raw(2, 12, 'two')]
  with batch_pipeline() as p:
    build(p | beam.Create(records), sliding, HashingModelHandler())
  result = p.result
  from apache_beam.metrics.metric import MetricsFilter
  embedded = result.metrics().query(MetricsFilter().with_name('events_embedded'))['counters']
  assert sum(c.committed for c in embedded) == 2
  table = ds.dataset(tmp_path / 'enriched', format='parquet', partitioning='hive').to_table()
  windows = sorted((row['id'], row['window_start'].timestamp()) for row in table.to_pylist())
  assert windows == [('e1', 0), ('e1', 5), ('e2', 5), ('e2', 10)]


def test_session_windows_are_written_merged(tmp_path):
  sessions = config(tmp_path, WindowSpec(session_gap_s=5, max_out_of_orderness_s=60))
  records = [raw(1, 1, 'a'), raw(2, 4, 'b'), raw(3, 30, 'c')]
  with batch_pipeline() as p:
    build(p | beam.Create(records), sessions, HashingModelHandler())
  table = ds.dataset(tmp_path / 'enriched', format='parquet', partitioning='hive').to_table()
  spans = sorted((row['id'], row['window_start'].timestamp(), row['window_end'].timestamp())
                 for row in table.to_pylist())
  assert spans == [('e1', 1, 9), ('e2', 1, 9), ('e3', 30, 35)]


@pytest.mark.slow
def test_replaying_twice_into_the_vector_store_keeps_one_vector_per_event(tmp_path):
  from transforms.io.vector_store import open_table
  with_vectors = config(tmp_path)._replace(sinks=(parse_sink('vectors', str(tmp_path)),))
  for _ in range(2):
    with batch_pipeline() as p:
      build(p | beam.Create(RECORDS), with_vectors, HashingModelHandler())
  table = open_table(str(tmp_path / 'vectors'))
  assert table.count_rows() == 4
  rows = {row['id']: row for row in table.to_arrow().to_pylist()}
  assert set(rows) == {'e1', 'e2', 'e3', 'e6'}
  np.testing.assert_allclose(rows['e1']['vector'], hashed_vector('first'))
  assert rows['e3']['window_start'].timestamp() == 10


def test_duplicates_and_new_topics_look_back_across_windows(tmp_path):
  import json as json_lib
  from transforms.derive import DeriveSpec
  records = [raw(1, 1, 'alpha'), raw(2, 12, 'alpha'),   # e2 repeats e1, 11 s later
             raw(3, 24, 'beta'), raw(4, 48, 'beta'),    # e4 repeats e3, 24 s later
             raw(5, 49, 'gamma')]
  spec = DeriveSpec(dedup_threshold=0.99, dedup_horizon_s=15, topic_distance=0.01,
                    topic_horizon_s=15)
  job = config(tmp_path, WindowSpec(10, max_out_of_orderness_s=60))._replace(derive=spec)
  with batch_pipeline() as p:
    build(p | beam.Create(records), job, HashingModelHandler())
  rows = ds.dataset(tmp_path / 'enriched', format='parquet', partitioning='hive').to_table()
  duplicates = {r['id']: r['duplicate_of'] for r in rows.to_pylist()}
  assert duplicates == {'e1': None, 'e2': 'e1', 'e3': None, 'e4': None, 'e5': None}
  summaries = {r['window']: r for r in ds.dataset(tmp_path / 'windows', format='parquet',
                                                  partitioning='hive').to_table().to_pylist()}
  assert sorted(summaries) == ['19700101T000000Z', '19700101T000010Z', '19700101T000020Z',
                               '19700101T000040Z']  # windows with no events of their own: none
  assert summaries['19700101T000010Z']['new_topics'] == 0  # alpha was seen 11 s before
  assert summaries['19700101T000040Z']['new_topics'] == 2  # beta is 24 s old: new again
  assert summaries['19700101T000000Z']['topics'][0]['new'] is True
  assert json_lib.loads(summaries['19700101T000000Z']['label_counts']) == {}


def test_window_summaries_count_their_dead_letters(tmp_path):
  from transforms.derive import DeriveSpec
  records = [raw(1, 1, 'one'), raw(2, 2, '   '), raw(3, 12, 'two'), raw(4, 13, FAIL_MARKER),
             r.RawRecord('{broken', 'stream', 5)]
  job = config(tmp_path)._replace(derive=DeriveSpec(topic_distance=0.5))
  with batch_pipeline() as p:
    build(p | beam.Create(records), job, HashingModelHandler())
  summaries = {s['window']: s for s in ds.dataset(
      tmp_path / 'windows', format='parquet', partitioning='hive').to_table().to_pylist()}
  # no_text at 2 s and the inference error at 13 s count; the broken line has no time.
  assert {w: s['deadletters'] for w, s in summaries.items()} == {
      '19700101T000000Z': 1, '19700101T000010Z': 1}
