import pytest

from transforms.fields import (MISSING, FieldMapping, derive_id, parse_path, pick_text,
                               resolve)

RECORD = {
    'payload': {'commits': [{'message': 'first'}, {'message': 'second'}], '0': 'key zero'},
    'title': '   ',
    'body': 'hello',
    'count': 3,
    'nothing': None,
}


def test_parse_path_splits_segments():
  assert parse_path('payload.commits.0.message') == ('payload', 'commits', '0', 'message')
  with pytest.raises(ValueError):
    parse_path('a..b')
  with pytest.raises(ValueError):
    parse_path('  ')


@pytest.mark.parametrize('path,expected', [
    ('payload.commits.0.message', 'first'),
    ('payload.commits.1.message', 'second'),
    ('payload.commits.-1.message', 'second'),
    ('payload.0', 'key zero'),  # an object key that looks like an index
    ('payload.commits.2.message', MISSING),
    ('payload.commits.x', MISSING),
    ('body.deeper', MISSING),
    ('nothing', None),
    ('absent', MISSING),
])
def test_resolve(path, expected):
  assert resolve(RECORD, parse_path(path)) == expected


def test_pick_text_takes_first_non_blank_string():
  paths = FieldMapping.from_flags(None, 'time', 'title, count, nothing, body').text_paths
  assert pick_text(RECORD, paths) == 'hello'
  assert pick_text(RECORD, paths[:3]) is None


def test_mapping_lists_its_paths():
  mapping = FieldMapping.from_flags('payload.id', 'ts', 'a,b')
  assert [flag for flag, _ in mapping.paths()] == [
      '--time_field', '--id_field', '--text_field', '--text_field']
  with pytest.raises(ValueError):
    FieldMapping.from_flags(None, 'ts', ' , ')


def test_derived_ids_are_deterministic_and_keep_identical_records_apart():
  a = derive_id('/data/archive.jsonl', 1, '{"x": 1}')
  assert a == derive_id('/elsewhere/archive.jsonl', 1, '{"x": 1}')
  assert a != derive_id('/data/archive.jsonl', 2, '{"x": 1}')
  assert a != derive_id('/data/archive.jsonl', 1, '{"x": 2}')
  assert len(a) == 32
