"""Bad input that must cost one dead letter, never the stream: far-future times, records
the decoder refuses wherever they are read, damaged compressed archives."""
import bz2
import gzip
import json
import os
import time

import apache_beam as beam
import pytest
import zstandard
from apache_beam.testing.util import assert_that, equal_to

from pipelines.preflight import check_archive
from pipelines.config import JobConfig
from pipelines.options import ConfigError
from models.loading import ModelConfig
from tests.runners import batch_pipeline
from transforms import records as r
from transforms.eventtime import TimeParser, is_future
from transforms.fields import FieldMapping
from transforms.io.live_sources import EventTimeOf
from transforms.parse import ParseEvents, parse_record
from transforms.io.sources import ReadArchive, read_archive
from transforms.windowing import FlagLateEvents, WindowSpec

YEAR_3000 = 32503680000  # epoch seconds of 3000-01-01
S = 1_000_000
MAPPING = FieldMapping.from_flags('id', 'time', 'text')
DEEP = '[' * 100_000


def lines(count, start=1_442_016_000):
  return [json.dumps({'id': f'e{n}', 'time': start + n, 'text': f'event {n}'})
          for n in range(count)]


def test_is_future_judges_against_the_clock():
  now = time.time_ns() // 1000
  assert not is_future(now + 299 * S, 300, now)
  assert is_future(now + 301 * S, 300, now)
  assert not is_future(YEAR_3000 * S, 0)  # 0: no guard
  assert not is_future(0, 300) and is_future(YEAR_3000 * S, 300)


def test_window_spec_refuses_a_negative_future_skew():
  with pytest.raises(ValueError, match='max_future_skew'):
    WindowSpec(10, max_future_skew_s=-1).validate()


def _replay_one_file(raw_lines, spec=WindowSpec(10, max_out_of_orderness_s=2)):
  records = [r.RawRecord(line, 'f.jsonl', n) for n, line in enumerate(raw_lines, start=1)]
  with batch_pipeline() as p:
    events, _ = p | beam.Create(records, reshuffle=False) | ParseEvents(MAPPING, TimeParser())
    on_time, dead = events | FlagLateEvents(spec)
    assert_that(on_time | 'ids' >> beam.Map(lambda e: e.id),
                equal_to([f'e{n}' for n in range(200) if n != 100]), label='on time')
    assert_that(dead | 'reasons' >> beam.Map(lambda d: (d.id, d.reason)),
                equal_to([('e100', r.FUTURE_TIME)]), label='dead')


def test_a_year_3000_record_in_a_file_moves_no_lateness_watermark():
  """The issue's replay case: before, every record after it was `late` (101 of 199 written)."""
  raw = lines(200)
  raw[100] = json.dumps({'id': 'e100', 'time': YEAR_3000, 'text': 'a broken clock'})
  _replay_one_file(raw)


def test_the_live_peek_ignores_far_future_and_undecodable_records():
  peek = EventTimeOf(MAPPING, TimeParser(), max_future_skew_s=300)
  now_s = int(time.time())
  assert peek(r.RawRecord(json.dumps({'time': now_s}), 's', 1)) == now_s * S
  assert peek(r.RawRecord(json.dumps({'time': YEAR_3000}), 's', 2)) is None
  assert peek(r.RawRecord(DEEP, 's', 3)) is None  # RecursionError used to escape the source
  assert peek(r.RawRecord('', 's', 4, file_error='damaged')) is None
  assert EventTimeOf(MAPPING, TimeParser())(
      r.RawRecord(json.dumps({'time': YEAR_3000}), 's', 5)) == YEAR_3000 * S  # no guard


@pytest.mark.parametrize('raw,reason', [
    (DEEP, r.INVALID_JSON), ('{"a": 1' + ', "b": ' + '9' * 5000 + '}', r.INVALID_JSON),
    ('[1, 2]', r.NOT_AN_OBJECT), ('  ', r.EMPTY_RECORD),
])
def test_one_decoder_refuses_what_the_parse_step_dead_letters(raw, reason):
  record = r.RawRecord(raw, 'f', 1)
  assert r.decode_object(record).reason == reason
  assert parse_record(record, MAPPING, TimeParser()).reason == reason


def test_a_lone_surrogate_in_text_or_id_is_a_dead_letter_not_a_failed_write():
  text = parse_record(r.RawRecord('{"id": "a", "time": 1, "text": "x\\ud800"}', 'f', 1),
                      MAPPING, TimeParser())
  assert text.reason == r.INVALID_UTF8 and 'surrogate' in text.error
  ident = parse_record(r.RawRecord('{"id": "\\udfff", "time": 1, "text": "x"}', 'f', 1),
                       MAPPING, TimeParser())
  assert ident.reason == r.BAD_ID


def test_the_pre_start_check_skips_a_record_the_parse_step_dead_letters(tmp_path):
  path = tmp_path / 'deep.jsonl'
  path.write_text('\n'.join([DEEP] + lines(5)) + '\n')
  config = JobConfig(mapping=MAPPING, time_parser=TimeParser(), window=WindowSpec(),
                     model=ModelConfig(), output=str(tmp_path / 'out'))
  check_archive(str(path), None, config)  # used to raise: cannot read ...: RecursionError
  path.write_text(DEEP + '\n')
  with pytest.raises(ConfigError, match='no readable record'):
    check_archive(str(path), None, config)


COMPRESSORS = {'gz': gzip.compress, 'bz2': bz2.compress,
               'zst': lambda data: zstandard.ZstdCompressor().compress(data)}


@pytest.mark.parametrize('extension', sorted(COMPRESSORS))
def test_a_truncated_archive_is_named_by_a_dead_letter(tmp_path, extension, caplog):
  data = COMPRESSORS[extension](('\n'.join(lines(3000)) + '\n').encode())
  path = tmp_path / f'cut.jsonl.{extension}'
  path.write_bytes(data[:len(data) * 2 // 3])
  records = list(read_archive(str(path)))
  damaged = records[-1]
  assert [rec.file_error for rec in records[:-1]] == [None] * (len(records) - 1)
  assert damaged.file_error and 'truncated' in damaged.file_error
  assert str(path) in damaged.file_error and damaged.position == len(records)
  letter = parse_record(damaged, MAPPING, TimeParser())
  assert letter.reason == r.DAMAGED_FILE and letter.source == f'{path}:{len(records)}'
  assert [rec for rec in caplog.records if 'damaged' in rec.getMessage()]
  complete = tmp_path / f'whole.jsonl.{extension}'
  complete.write_bytes(data)
  assert [rec.file_error for rec in read_archive(str(complete))] == [None] * 3000


def test_corrupt_gzip_data_keeps_the_records_before_it(tmp_path):
  # Random text compresses little, so the damage lies several reads into the file.
  rows = [json.dumps({'time': n, 'text': os.urandom(200).hex()}) for n in range(10_000)]
  data = gzip.compress(('\n'.join(rows) + '\n').encode())
  cut = len(data) // 2
  path = tmp_path / 'corrupt.jsonl.gz'
  path.write_bytes(data[:cut] + b'\x00garbage' * 50 + data[cut + 400:])
  records = list(read_archive(str(path)))
  assert 1000 < len(records) < 10_000 and records[-1].file_error
  assert records[-1].file_error.startswith(f'{path} is damaged after record {len(records) - 1}')


def test_a_damaged_file_among_good_ones_through_the_pipeline(tmp_path):
  """Replay: the good file whole, the cut file up to its cut, one damaged_file dead letter."""
  (tmp_path / 'good.jsonl').write_text('\n'.join(lines(10)) + '\n')
  (tmp_path / 'cut.jsonl.gz').write_bytes(gzip.compress(
      ('\n'.join(lines(2000)) + '\n').encode())[:3000])
  with batch_pipeline() as p:
    events, dead = (p | ReadArchive(str(tmp_path / '*'))
                    | ParseEvents(FieldMapping.from_flags(None, 'time', 'text'), TimeParser()))
    assert_that(dead | beam.Map(lambda d: d.reason)
                | beam.Filter(lambda reason: reason == r.DAMAGED_FILE)
                | beam.combiners.Count.Globally(), equal_to([1]))


def test_a_stream_that_jumps_far_backwards_is_late_until_it_catches_up():
  """What docs/output.md documents: watermarks never move back, so after a jump back of an hour the
  events are `late` dead letters (kept whole) until their times pass the old watermark."""
  start = 1_442_016_000
  times = ([start + n for n in range(50)] + [start - 3600 + n for n in range(50)]
           + [start + 60 + n for n in range(50)])
  raw = [json.dumps({'id': f'e{n}', 'time': t, 'text': f'event {n}'})
         for n, t in enumerate(times)]
  records = [r.RawRecord(line, 'f.jsonl', n) for n, line in enumerate(raw, start=1)]
  with batch_pipeline() as p:
    events, _ = p | beam.Create(records, reshuffle=False) | ParseEvents(MAPPING, TimeParser())
    on_time, dead = events | FlagLateEvents(WindowSpec(10, max_out_of_orderness_s=2))
    assert_that(on_time | 'ids' >> beam.Map(lambda e: e.id),
                equal_to([f'e{n}' for n in list(range(50)) + list(range(100, 150))]),
                label='on time')
    assert_that(dead | 'reasons' >> beam.Map(lambda d: d.reason),
                equal_to([r.LATE] * 50), label='late')


def test_a_local_time_pushed_past_year_9999_by_its_zone_is_a_bad_time():
  with pytest.raises(ValueError, match='outside years 1-9999'):
    TimeParser(None, 'America/New_York').parse('9999-12-31T23:00:00')
  letter = parse_record(r.RawRecord('{"id": "a", "time": "9999-12-31T23:00:00-05:00", '
                                    '"text": "x"}', 'f', 1), MAPPING, TimeParser())
  assert letter.reason == r.BAD_TIME
  assert TimeParser(None, 'America/New_York').parse('9999-12-31T18:00:00') > 0
