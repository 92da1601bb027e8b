import gzip
import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.runners import batch_pipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.io.sources import ReadArchive, format_of, read_archive

ROWS = [{'ts': '2015-09-12T00:00:0%dZ' % i, 'text': f'event {i}', 'n': i} for i in range(3)]


@pytest.mark.parametrize('path,expected', [
    ('a.jsonl', 'jsonl'), ('a.json.gz', 'jsonl'), ('dir/a.ndjson.bz2', 'jsonl'),
    ('a.parquet', 'parquet'), ('a.csv', 'csv'), ('a.CSV.GZ', 'csv'),
])
def test_format_from_extension(path, expected):
  assert format_of(path) == expected


def test_unknown_format_is_explained():
  with pytest.raises(ValueError, match='--input_format'):
    format_of('events.txt')
  with pytest.raises(ValueError, match='unknown --input_format'):
    format_of('events.txt', 'xml')
  assert format_of('events.txt', 'csv') == 'csv'


def write_all_formats(folder):
  with gzip.open(folder / 'a.jsonl.gz', 'wt') as f:
    f.writelines(json.dumps(row) + '\n' for row in ROWS)
  pq.write_table(pa.Table.from_pylist(ROWS), folder / 'b.parquet')
  with open(folder / 'c.csv', 'w') as f:
    f.write('ts,text,n\n' + ''.join(f'{r["ts"]},{r["text"]},{r["n"]}\n' for r in ROWS))


def test_each_format_reads_in_order_with_positions(tmp_path):
  write_all_formats(tmp_path)
  for name in ('a.jsonl.gz', 'b.parquet', 'c.csv'):
    records = list(read_archive(str(tmp_path / name)))
    assert [rec.position for rec in records] == [1, 2, 3]
    decoded = [rec.row if rec.row is not None else json.loads(rec.raw) for rec in records]
    assert [d['text'] for d in decoded] == ['event 0', 'event 1', 'event 2']


def test_parquet_and_csv_raw_is_the_row_as_json(tmp_path):
  write_all_formats(tmp_path)
  record = next(read_archive(str(tmp_path / 'b.parquet')))
  assert json.loads(record.raw) == ROWS[0]
  record = next(read_archive(str(tmp_path / 'c.csv')))
  assert json.loads(record.raw) == {'ts': ROWS[0]['ts'], 'text': 'event 0', 'n': '0'}


def test_read_archive_transform_reads_every_matching_file(tmp_path):
  write_all_formats(tmp_path)
  with batch_pipeline() as p:
    texts = (p | ReadArchive(str(tmp_path / '*'))
             | beam.Map(lambda rec: (rec.stream.rsplit('/', 1)[-1], rec.position)))
    assert_that(texts, equal_to([(name, n) for name in ('a.jsonl.gz', 'b.parquet', 'c.csv')
                                 for n in (1, 2, 3)]))
