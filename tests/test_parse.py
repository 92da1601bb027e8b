import json

import pytest

from transforms import records as r
from transforms.eventtime import TimeParser
from transforms.fields import FieldMapping
from transforms.parse import parse_record
from transforms.io.sources import read_jsonl

MAPPING = FieldMapping.from_flags('meta.id', 'ts', 'payload.commits.0.message,title')
PARSER = TimeParser()


def parse(raw, **kwargs):
  return parse_record(r.RawRecord(raw, 'events.jsonl', 7, **kwargs), MAPPING, PARSER)


def line(**fields):
  return json.dumps(fields)


def test_a_good_record_becomes_an_event():
  event = parse(line(meta={'id': 'e1'}, ts='2015-09-12T00:46:58Z',
                     payload={'commits': [{'message': 'fix the parser'}]}))
  assert isinstance(event, r.Event)
  assert (event.id, event.text, event.source) == ('e1', 'fix the parser', 'events.jsonl:7')
  assert event.event_time_us == 1442018818 * 1_000_000


def test_text_falls_back_to_the_next_path():
  event = parse(line(meta={'id': 1}, ts=0, payload={'commits': []}, title='fallback'))
  assert (event.id, event.text) == ('1', 'fallback')


@pytest.mark.parametrize('raw,reason', [
    ('{"ts": 1, "title": "x"', r.INVALID_JSON),
    ('not json at all', r.INVALID_JSON),
    ('[1, 2]', r.NOT_AN_OBJECT),
    ('"a string"', r.NOT_AN_OBJECT),
    ('', r.EMPTY_RECORD),
    ('   ', r.EMPTY_RECORD),
    (line(title='no time'), r.NO_TIME),
    (line(ts=None, title='null time'), r.NO_TIME),
    (line(ts='soon', title='x'), r.BAD_TIME),
    (line(ts=True, title='x'), r.BAD_TIME),
    (line(ts={'seconds': 1}, title='x'), r.BAD_TIME),
    (line(ts=1), r.NO_TEXT),
    (line(ts=1, title=''), r.NO_TEXT),
    (line(ts=1, title=42), r.NO_TEXT),
    (line(ts=1, title=['a list']), r.NO_TEXT),
    (line(ts=1, title='x', meta={'id': {'nested': 1}}), r.BAD_ID),
    (line(ts=1, title='x', meta={'id': 1.5}), r.BAD_ID),
])
def test_bad_records_become_dead_letters(raw, reason):
  letter = parse(raw)
  assert isinstance(letter, r.DeadLetter)
  assert letter.reason == reason
  assert letter.raw == raw
  assert letter.source == 'events.jsonl:7'
  assert letter.error


def test_missing_id_is_derived_deterministically():
  raw = line(ts=1, title='same text')
  first, again = parse(raw), parse(raw)
  assert first.id == again.id
  other_line = parse_record(r.RawRecord(raw, 'events.jsonl', 8), MAPPING, PARSER)
  assert other_line.id != first.id


def test_invalid_utf8_is_dead_lettered_with_the_readable_part_kept():
  lines = list(read_jsonl(_BytesLines([b'{"ts": 1, "title": "ok"}\n',
                                       b'{"ts": 1, "title": "caf\xe9"}\n']), 'f.jsonl'))
  assert parse_record(lines[0], MAPPING, PARSER).text == 'ok'
  letter = parse_record(lines[1], MAPPING, PARSER)
  assert letter.reason == r.INVALID_UTF8
  assert '\\xe9' in letter.raw
  assert letter.source == 'f.jsonl:2'


def test_a_megabyte_of_text_passes_whole():
  text = 'word ' * 200_000
  event = parse(line(ts=1, title=text))
  assert event.text == text


def test_columnar_rows_are_used_as_decoded():
  row = {'ts': 1, 'title': 'from parquet'}
  event = parse(json.dumps(row), row=row)
  assert event.text == 'from parquet'


class _BytesLines:

  def __init__(self, lines):
    self._lines = list(lines)

  def readline(self):
    return self._lines.pop(0) if self._lines else b''
