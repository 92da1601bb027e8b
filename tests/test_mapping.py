"""Field mapping for archives people have: joined time fields, text templates, CSV logs."""
import datetime
import json
import os
import subprocess
import sys

import pyarrow.dataset as ds
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.config import csv_delimiter, job_config
from pipelines.options import ConfigError
from tests.conftest import ROOT
from transforms import records as r
from transforms.eventtime import TimeParser
from transforms.fields import MISSING, FieldMapping
from transforms.parse import parse_record
from transforms.io.sources import read_archive
from transforms.template import TextTemplate

PR_EVENT = {
    'repo': {'name': 'apache/beam'},
    'payload': {'pull_request': {'title': 'Fix the watermark', 'labels': ['bug', 'io']},
                'number': 42},
    'created_at': '2024-01-02T03:04:05Z',
}


def parsed(obj, **flags):
  mapping = FieldMapping.from_flags(flags.get('id'), flags.get('time', 'created_at'),
                                    flags.get('text'), flags.get('template'))
  parser = TimeParser(flags.get('time_format'), flags.get('timezone', 'UTC'))
  return parse_record(r.RawRecord(json.dumps(obj), 'events.jsonl', 1), mapping, parser)


def test_template_builds_text_from_nested_paths():
  event = parsed(PR_EVENT, template='{repo.name}: {payload.pull_request.title} '
                 '[{payload.pull_request.labels.0}]')
  assert isinstance(event, r.Event)
  assert event.text == 'apache/beam: Fix the watermark [bug]'


def test_template_renders_missing_and_non_string_parts_empty():
  event = parsed(PR_EVENT, template='{repo.name} #{payload.number}: {payload.body}')
  assert event.text == 'apache/beam #: '
  assert TextTemplate.parse('{a}{{literal}}').render({'a': 'x'}) == 'x{literal}'


@pytest.mark.parametrize('obj', [
    {'created_at': '2024-01-02T03:04:05Z'},
    {'created_at': '2024-01-02T03:04:05Z', 'repo': {'name': '   '}, 'payload': 3},
])
def test_blank_template_is_no_text(obj):
  letter = parsed(obj, template='{repo.name}: {payload.pull_request.title}')
  assert isinstance(letter, r.DeadLetter)
  assert letter.reason == r.NO_TEXT
  assert 'template' in letter.error


@pytest.mark.parametrize('template,message', [
    ('{}', 'names no field'), ('plain text', 'names no'), ('{a:>10}', 'format spec'),
    ('{a!r}', 'conversion'), ('{a', 'expected'), ('{a..b}', 'empty segment'),
])
def test_bad_templates_are_refused(template, message):
  with pytest.raises(ValueError, match=message):
    TextTemplate.parse(template)


def test_template_excludes_text_field():
  options = PipelineOptions(['--text_template', '{a}', '--text_field', 'b'])
  with pytest.raises(ConfigError, match='exclude each other'):
    job_config(options)
  assert job_config(PipelineOptions(['--text_template', '{a}'])).mapping.text_paths == (('a',),)
  assert job_config(PipelineOptions([])).mapping.text_paths == (('text',),)


def test_joined_time_fields():
  row = {'Date': '2017-05-16', 'Time': '00:00:00.008', 'log': {'t': 5}, 'text': 'x'}
  mapping = FieldMapping.from_flags(None, 'Date+Time', None)
  assert mapping.time_of(row) == '2017-05-16 00:00:00.008'
  event = parsed(row, time='Date+Time', text='text')
  assert event.event_time_us == int(datetime.datetime(
      2017, 5, 16, 0, 0, 0, 8000, tzinfo=datetime.timezone.utc).timestamp() * 1e6)
  # Format and zone apply to the joined value; numbers join as text.
  event = parsed(dict(row, Date='16/05/2017'), time='Date+Time', text='text',
                 time_format='%d/%m/%Y %H:%M:%S.%f', timezone='Europe/Berlin')
  assert event.event_time_us == int(datetime.datetime(
      2017, 5, 15, 22, 0, 0, 8000, tzinfo=datetime.timezone.utc).timestamp() * 1e6)
  event = parsed(dict(row, Date='16/05/2017'), time='Date+log.t', text='text',
                 time_format='%d/%m/%Y %H')
  assert event.event_time_us == int(datetime.datetime(
      2017, 5, 16, 5, tzinfo=datetime.timezone.utc).timestamp() * 1e6)


@pytest.mark.parametrize('row', [
    {'Date': '2017-05-16', 'text': 'x'},
    {'Date': '2017-05-16', 'Time': None, 'text': 'x'},
    {'Date': '2017-05-16', 'Time': '  ', 'text': 'x'},
    {'Date': '2017-05-16', 'Time': {'h': 1}, 'text': 'x'},
])
def test_missing_time_part_is_no_time(row):
  assert FieldMapping.from_flags(None, 'Date+Time', None).time_of(row) is MISSING
  letter = parsed(row, time='Date+Time', text='text')
  assert letter.reason == r.NO_TIME
  assert 'Date+Time' in letter.error


def test_csv_delimiter_flag():
  assert csv_delimiter(PipelineOptions([])) == ','
  assert csv_delimiter(PipelineOptions(['--csv_delimiter', ';'])) == ';'
  assert csv_delimiter(PipelineOptions(['--csv_delimiter', '\\t'])) == '\t'
  for bad in ('', ';;', '"'):
    with pytest.raises(ConfigError, match='--csv_delimiter'):
      csv_delimiter(PipelineOptions(['--csv_delimiter', bad]))


# A log as exported by log tools: CRLF, a byte-order mark, a quoted message over
# three lines (with a delimiter and quotes inside), ids with leading zeros.
LOG_CSV = ('\ufeffid;Date;Time;Level;Message\r\n'
           '0007;2017-05-16;00:00:00.008;INFO;service started\r\n'
           '0008;2017-05-16;00:00:01.250;WARN;"disk almost full;\r\n'
           'volume ""data"" at 91%\r\n'
           'second warning"\r\n'
           '0100;2017-05-16;23:59:59.999;INFO;12345\r\n'
           '0101;2017-05-17;00:00:02.000;ERROR;worker crashed\r\n')
EXPECTED = {
    '0007': ('2017-05-16T00:00:00.008', 'INFO: service started'),
    '0008': ('2017-05-16T00:00:01.250',
             'WARN: disk almost full;\r\nvolume "data" at 91%\r\nsecond warning'),
    '0100': ('2017-05-16T23:59:59.999', 'INFO: 12345'),
    '0101': ('2017-05-17T00:00:02.000', 'ERROR: worker crashed'),
}


def write_log(folder):
  path = folder / 'app-log.csv'
  path.write_bytes(LOG_CSV.encode('utf-8'))
  return path


def test_csv_reader_keeps_quoted_lines_crlf_and_strings(tmp_path):
  records = list(read_archive(str(write_log(tmp_path)), csv_delimiter=';'))
  assert [rec.position for rec in records] == [1, 2, 3, 4]
  assert [rec.row['id'] for rec in records] == list(EXPECTED)
  assert records[1].row['Message'] == 'disk almost full;\r\nvolume "data" at 91%\r\nsecond warning'
  assert records[2].row['Message'] == '12345'  # numbers stay strings
  assert list(records[0].row) == ['id', 'Date', 'Time', 'Level', 'Message']  # no BOM in a name


@pytest.mark.e2e
def test_two_column_time_csv_log_replays_at_the_right_instants(tmp_path):
  write_log(tmp_path)
  out = tmp_path / 'out'
  done = subprocess.run(
      [sys.executable, '-m', 'pipelines.replay', '--input', str(tmp_path / '*.csv'),
       '--output', str(out), '--csv_delimiter', ';', '--id_field', 'id',
       '--time_field', 'Date+Time', '--text_template', '{Level}: {Message}'],
      cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE='1'), capture_output=True, text=True,
      timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'Read 4 records: 4 enriched rows, 0 dead letters' in done.stdout
  table = ds.dataset(out / 'enriched', format='parquet', partitioning='hive').to_table()
  rows = {row['id']: row for row in table.to_pylist()}
  assert set(rows) == set(EXPECTED)
  for event_id, (instant, text) in EXPECTED.items():
    expected = datetime.datetime.fromisoformat(instant).replace(tzinfo=datetime.timezone.utc)
    assert rows[event_id]['event_time'] == expected
    assert rows[event_id]['text'] == text
    assert len(rows[event_id]['embedding']) == 384


@pytest.mark.e2e
def test_template_with_text_field_is_one_line_exit_2(tmp_path):
  write_log(tmp_path)
  done = subprocess.run(
      [sys.executable, '-m', 'pipelines.replay', '--input', str(tmp_path / '*.csv'),
       '--output', str(tmp_path / 'out'), '--text_template', '{Message}', '--text_field', 'x'],
      cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE='1'), capture_output=True, text=True,
      timeout=120)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
      'error: --text_template and --text_field exclude each other; give one']


def test_file_source_reads_csv_with_the_delimiter(tmp_path):
  from transforms.io.uris import reader_factory
  write_log(tmp_path)
  reader = reader_factory(f'file://{tmp_path}/*.csv', None, ';')()
  reader.open()
  records = reader.poll(10)
  assert [rec.row['id'] for rec in records] == list(EXPECTED)
  assert reader.exhausted()
