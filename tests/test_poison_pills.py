"""No poison pill: one record costs at most its own dead letter, never the job or a crash loop.

Real files, real LanceDB, the real model where its reading is what is tested.
"""
import csv
import json

import apache_beam as beam
import numpy as np
import pyarrow.dataset as ds
import pytest
from apache_beam.testing.util import assert_that, equal_to

from models.forward_passes import CHARS_PER_TOKEN, encode_in_passes, readable_part
from models.loading import ModelConfig
from pipelines.builder import build, build_enrichment
from pipelines.config import JobConfig
from tests.fakes import HashingModelHandler
from tests.runners import batch_pipeline
from transforms import records as r
from transforms.eventtime import TimeParser
from transforms.fields import FieldMapping
from transforms.io.sinks import window_label
from transforms.io.sources import ReadArchive, read_archive
from transforms.io.vector_store import UpsertVectors, open_table
from transforms.parse import ParseEvents, _ParseFn, parse_record
from transforms.enrich import EmbedEvents
from transforms.windowing import FlagLateEvents, WindowSpec

MAPPING = FieldMapping.from_flags('id', 'time', 'text')
START = 1_442_016_000


def _config(output, window=WindowSpec(7), **changes):
  return JobConfig(mapping=MAPPING, time_parser=TimeParser(), window=window,
                   model=ModelConfig(), output=str(output), **changes)


def _line(n, seconds, text=None):
  return json.dumps({'id': f'e{n}', 'time': seconds, 'text': text or f'event {n}'})


def test_a_csv_field_of_any_size_is_read(tmp_path):
  path = tmp_path / 'big.csv'
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['id', 'time', 'text'])
    for n in range(100):
      writer.writerow([n, START + n, 'x' * 200_000 if n == 50 else f'row {n}'])
  rows = [json.loads(record.raw) for record in read_archive(str(path))]
  assert [row['id'] for row in rows] == [str(n) for n in range(100)]
  assert len(rows[50]['text']) == 200_000


def test_a_record_over_max_record_bytes_is_too_large_before_it_is_decoded(tmp_path):
  huge = _line(1, START, 'y' * 5_000_000)
  (tmp_path / 'a.jsonl').write_text('\n'.join([_line(0, START), huge, _line(2, START)]) + '\n')
  with batch_pipeline() as p:
    events, dead = (p | ReadArchive(str(tmp_path / '*.jsonl'))
                    | ParseEvents(MAPPING, TimeParser(), max_record_bytes=4_000_000))
    assert_that(events | beam.Map(lambda e: e.id), equal_to(['e0', 'e2']), label='events')
    assert_that(dead | beam.Map(lambda d: (d.reason, len(d.raw), d.source.endswith(':2'))),
                equal_to([(r.TOO_LARGE, r.KEPT_OF_REFUSED, True)]), label='dead')
  # Not decoded: a broken JSON line that large is too_large, not invalid_json.
  letter = parse_record(r.RawRecord('{' + 'z' * 5000, 's', 1), MAPPING, TimeParser(), 4096)
  assert letter.reason == r.TOO_LARGE and '5,001 bytes' in letter.error
  multibyte = r.RawRecord(json.dumps({'time': START, 'text': 'é' * 3000}, ensure_ascii=False),
                          's', 1)
  assert parse_record(multibyte, MAPPING, TimeParser(), 4096).reason == r.TOO_LARGE


class _BrokenParser(TimeParser):
  """A parser with a bug that raises on one value, as any per-record step might."""

  def parse(self, value):
    if value == 13:
      raise KeyError('a bug')
    return super().parse(value)


def test_an_exception_raised_by_one_record_is_its_dead_letter():
  fn = _ParseFn(MAPPING, _BrokenParser(), r.DEFAULT_MAX_RECORD_BYTES)
  out = list(fn.process(r.RawRecord(_line(1, 13), 's', 1)))
  assert len(out) == 1 and out[0].tag == r.DEADLETTER
  letter = out[0].value
  assert (letter.reason, letter.error, letter.source) == (r.RECORD_ERROR, "KeyError: 'a bug'", 's:1')
  assert [e.id for e in fn.process(r.RawRecord(_line(2, 14), 's', 2))] == ['e2']


def test_any_time_the_parser_accepts_is_windowed_and_written(tmp_path):
  first = TimeParser().parse('0001-01-01T00:00:03Z')
  assert window_label(first - first % 7_000_000) == f'{first - first % 7_000_000:+d}us'
  assert window_label(0) == '19700101T000000Z'
  lines = [_line(n, START + n) for n in range(20)]
  lines.insert(10, _line(99, '0001-01-01T00:00:03Z'))
  (tmp_path / 'a.jsonl').write_text('\n'.join(lines) + '\n')
  out = tmp_path / 'out'
  with batch_pipeline() as p:
    build(p | ReadArchive(str(tmp_path / 'a.jsonl')), _config(out), HashingModelHandler())
  table = ds.dataset(out / 'enriched', format='parquet', partitioning='hive').to_table()
  assert table.num_rows == 21
  assert 'e99' in table.column('id').to_pylist()


def test_a_replay_enriches_an_archive_that_jumps_back_a_month(tmp_path):
  """Two periods' logs concatenated: lateness is judged in replay only when asked."""
  month = 30 * 24 * 3600
  lines = [_line(n, START + n) for n in range(30)] + [
      _line(n, START - month + n) for n in range(30, 60)]
  (tmp_path / 'a.jsonl').write_text('\n'.join(lines) + '\n')
  for asked, late in ((False, 0), (True, 30)):
    with batch_pipeline() as p:
      outputs = build_enrichment(p | f'Read {asked}' >> ReadArchive(str(tmp_path / 'a.jsonl')),
                                 _config(tmp_path, replay_lateness=asked), HashingModelHandler())
      assert_that(outputs.enriched | beam.combiners.Count.Globally(), equal_to([60 - late]),
                  label='enriched')
      assert_that(outputs.deadletters | beam.Map(lambda d: d.reason), equal_to([r.LATE] * late),
                  label='late')


class _Recording:
  """The real model, noting the length of every text its tokenizer and encode are handed."""

  def __init__(self, model):
    self.model, self.seen = model, []
    self.max_seq_length = model.max_seq_length

  def tokenizer(self, texts, **kwargs):
    self.seen.extend(len(t) for t in texts)
    return self.model.tokenizer(texts, **kwargs)

  def encode(self, texts, **kwargs):
    self.seen.extend(len(t) for t in texts)
    return self.model.encode(texts, **kwargs)


def test_a_text_is_cut_to_what_the_model_reads_before_it_is_tokenized(real_model):
  most = real_model.max_seq_length * CHARS_PER_TOKEN
  long_text = 'The parcel arrived late and damaged. ' * 100_000  # 3.7 million characters
  assert [len(t) for t in readable_part(real_model, [long_text, 'short'])] == [most, 5]
  reader = _Recording(real_model)
  vectors = encode_in_passes(reader, [long_text, 'short'], {'convert_to_tensor': True},
                             token_budget=4096)
  assert reader.seen and max(reader.seen) <= most
  plain = real_model.encode([long_text[:most]], convert_to_tensor=True).float().numpy()
  np.testing.assert_allclose(vectors[0], plain[0], atol=1e-5)


def _window(ids, dims=4):
  rows = [r.Embedded(r.Event(i, START * 1_000_000, f'text {n}', f's:{n}', 's', ''),
                     np.full(dims, n, np.float32)) for n, i in enumerate(ids)]
  return r.WindowRows(START * 1_000_000, (START + 60) * 1_000_000, 0, rows)


def test_upserts_dedupe_ids_within_a_batch_and_stay_one_vector_per_id(tmp_path):
  ids = [f'id{n % 30}' for n in range(40)]  # 40 rows, 30 distinct ids
  uri = str(tmp_path / 'vectors')
  for _ in range(2):  # replayed twice
    with batch_pipeline() as p:
      _ = (p | beam.Create([_window(ids[:20]), _window(ids[20:])], reshuffle=False)
           | UpsertVectors(uri, ModelConfig()))
  table = open_table(uri).to_arrow()
  assert table.num_rows == 30
  assert sorted(table.column('id').to_pylist()) == sorted(set(ids))
  last = {row['id']: row['text'] for row in table.to_pylist()}
  assert last['id0'] in ('text 30', 'text 10')  # a later row of the bundle wins


def test_the_vector_store_is_compacted_and_its_old_versions_removed(tmp_path):
  from transforms.io.vector_store import _UpsertFn
  uri = str(tmp_path / 'vectors')
  upsert = _UpsertFn(uri, 'events', ModelConfig(), compact_every=10, keep_versions_s=0)
  upsert.setup()
  for n in range(35):  # a bundle each: a merge each
    upsert.start_bundle()
    list(upsert.process(_window([f'id{n}', f'id{n + 1}']), None, 0))
    list(upsert.finish_bundle())
  assert len(open_table(uri).list_versions()) < 10
  upsert.teardown()  # at drain
  table = open_table(uri)
  assert len(table.list_versions()) <= 2
  assert table.count_rows() == 36


def test_a_compaction_that_fails_says_why_and_does_not_stop_the_writer(tmp_path):
  from transforms.io.vector_store import compact_table
  failed = compact_table(str(tmp_path / 'vectors'), 'no_such_table', 0)
  assert failed is not None and 'no_such_table' in failed


def test_a_large_bundle_is_merged_in_parts_and_its_windows_passed_on_meanwhile(tmp_path):
  """A batch runner's bundle may be the whole archive: windows wait for at most merge_rows
  rows, then are merged and passed on, the store the same as with one merge."""
  from transforms.io.vector_store import _UpsertFn
  uri = str(tmp_path / 'vectors')
  upsert = _UpsertFn(uri, 'events', ModelConfig(), merge_rows=5)
  upsert.setup()
  upsert.start_bundle()
  passed, waiting = [], []
  for n in range(10):  # windows of 2 rows; id1 comes again in the last one
    ids = [f'id{2 * n}', f'id{2 * n + 1}'] if n < 9 else ['id1', 'id18']
    passed.extend(upsert.process(_window(ids), None, 0))
    waiting.append(len(upsert._pending))
  assert max(waiting) <= 3 and len(passed) == 9  # 3 windows of 2 rows reach 5
  passed.extend(upsert.finish_bundle())
  assert len(passed) == 10
  table = open_table(uri).to_arrow()
  assert sorted(table.column('id').to_pylist()) == sorted({f'id{n}' for n in range(19)})
  assert {row['id']: row['text'] for row in table.to_pylist()}['id1'] == 'text 0'  # the later
  assert len(open_table(uri).list_versions()) >= 4


def _event(n, event_time_us):
  return r.Event(id=f'e{n}', event_time_us=event_time_us, text=f'event {n}', source=f's:{n}',
                 stream='s', raw=_line(n, 0))


def test_a_late_check_that_raises_on_one_event_dead_letters_it(tmp_path):
  """A bug in judging one event's lateness costs that event, not the job."""
  events = [_event(1, START * 10**6), _event(2, 'not a number'), _event(3, START * 10**6 + 1)]
  with batch_pipeline() as p:
    on_time, dead = p | beam.Create(events) | FlagLateEvents(WindowSpec(7))
    assert_that(on_time | beam.Map(lambda e: e.id), equal_to(['e1', 'e3']), label='on time')
    assert_that(dead | beam.Map(lambda d: (d.id, d.reason, d.error.split(':')[0], d.source)),
                equal_to([('e2', r.RECORD_ERROR, 'TypeError', 's:2')]), label='dead')


def test_a_result_that_cannot_be_stamped_dead_letters_its_event(tmp_path):
  """After inference, one event that cannot be stamped costs its own row only."""
  events = [_event(1, START * 10**6), _event(2, 'not a number')]
  with batch_pipeline() as p:
    embedded, dead = p | beam.Create(events) | EmbedEvents(HashingModelHandler())
    assert_that(embedded | beam.Map(lambda e: e.event.id), equal_to(['e1']), label='rows')
    assert_that(dead | beam.Map(lambda d: (d.id, d.reason)), equal_to([('e2', r.RECORD_ERROR)]),
                label='dead')
