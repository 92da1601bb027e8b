"""`python -m pipelines.replay` as a user runs it, on a slice of the shared Wikipedia edit stream."""
import gzip
import itertools
import os
import subprocess
import sys

import numpy as np
import pyarrow.dataset as ds
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e
SLICE = 300
BAD_LINES = ['{"time": "2015-09-12T01:00:00Z", "comment": "truncated',
             '{"time": "2015-09-12T01:00:00Z", "comment": "   "}',
             '{"time": "half past one", "comment": "a bad time"}',
             '']
# Exact fp32: the embeddings are compared with plain fp32 encode and across runs.
WIKI_FLAGS = ['--time_field', 'time', '--text_field', 'comment,page', '--precision', 'fp32']


@pytest.fixture(scope='module')
def archive_dir(tmp_path_factory, wiki_archive):
  folder = tmp_path_factory.mktemp('archive')
  with gzip.open(wiki_archive, 'rt', encoding='utf-8') as source, \
      gzip.open(folder / 'wiki-slice.json.gz', 'wt', encoding='utf-8') as target:
    target.writelines(itertools.islice(source, SLICE))
  (folder / 'broken.jsonl').write_text('\n'.join(BAD_LINES) + '\n')
  return folder


def replay(*args):
  env = dict(os.environ, HF_HUB_OFFLINE='1')
  return subprocess.run([sys.executable, '-m', 'pipelines.replay', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def read(folder, name):
  return ds.dataset(folder / name, format='parquet', partitioning='hive').to_table()


@pytest.fixture(scope='module')
def first_run(archive_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp('run1')
  done = replay('--input', str(archive_dir / '*'), '--output', str(out), *WIKI_FLAGS)
  assert done.returncode == 0, done.stderr[-3000:]
  return out, done


def test_replay_accounts_for_every_record(first_run):
  out, done = first_run
  total = SLICE + len(BAD_LINES)
  enriched, dead = read(out, 'enriched'), read(out, 'deadletter')
  assert enriched.num_rows == SLICE
  assert sorted(dead.column('reason').to_pylist()) == [
      'bad_time', 'empty_record', 'invalid_json', 'no_text']
  assert f'Read {total} records: {SLICE} enriched rows, {len(BAD_LINES)} dead letters' \
      in done.stdout
  assert 'every record accounted for' in done.stdout
  sources = sorted(src.rsplit('/', 1)[-1] for src in dead.column('source').to_pylist())
  assert sources == [f'broken.jsonl:{n}' for n in range(1, 5)]
  assert sorted(dead.column('raw').to_pylist()) == sorted(BAD_LINES)


def test_replay_schema_and_windows(first_run):
  out, _ = first_run
  table = read(out, 'enriched')
  for column in ('id', 'event_time', 'window_start', 'window_end', 'text', 'embedding', 'model'):
    assert column in table.column_names
  assert str(table.schema.field('event_time').type) == 'timestamp[us, tz=UTC]'
  assert table.schema.field('embedding').type.list_size == 384
  for row in table.slice(0, 50).to_pylist():
    assert row['window_start'] <= row['event_time'] < row['window_end']
    assert (row['window_end'] - row['window_start']).total_seconds() == 60
    assert row['model'] == 'sentence-transformers/all-MiniLM-L6-v2'


def test_replay_embeddings_equal_direct_encode(first_run, real_model):
  out, _ = first_run
  table = read(out, 'enriched').sort_by('id')
  texts = table.column('text').to_pylist()
  written = np.array(table.column('embedding').to_pylist(), np.float64)
  direct = real_model.encode(texts).astype(np.float64)
  cosines = (written * direct).sum(1) / (np.linalg.norm(written, axis=1) *
                                        np.linalg.norm(direct, axis=1))
  assert cosines.min() >= 0.999


def test_replay_is_deterministic(first_run, archive_dir, tmp_path):
  out, _ = first_run
  again = replay('--input', str(archive_dir / '*'), '--output', str(tmp_path), *WIKI_FLAGS)
  assert again.returncode == 0, again.stderr[-3000:]
  columns = ['id', 'event_time', 'window_start', 'window_end', 'text']
  first, second = (read(o, 'enriched').sort_by('id') for o in (out, tmp_path))
  assert first.select(columns).equals(second.select(columns))
  np.testing.assert_allclose(np.array(first.column('embedding').to_pylist()),
                             np.array(second.column('embedding').to_pylist()), atol=1e-5)
  assert len(set(first.column('id').to_pylist())) == SLICE
  files = lambda o: sorted(str(f.relative_to(o)) for f in o.rglob('*.parquet'))
  assert files(out) == files(tmp_path)


@pytest.mark.parametrize('args,message', [
    (['--input', '/no/such/dir/*.jsonl'], 'no file matches --input'),
    (['--input_format', 'xml'], 'unknown --input_format'),
    (['--text_field', 'no_such_field'], '--text_field no_such_field matches nothing'),
    (['--time_field', 'payload.0.time'], '--time_field payload.0.time matches nothing'),
    (['--precision', 'int3'], '--precision must be one of'),
    (['--timezone', 'Mars/Base'], "unknown time zone 'Mars/Base'"),
    (['--window_size', '-5'], 'size must be positive'),
])
def test_bad_options_fail_with_one_clear_line(archive_dir, tmp_path, args, message):
  base = ['--input', str(archive_dir / '*.json.gz'), '--output', str(tmp_path), *WIKI_FLAGS]
  done = replay(*base, *args)
  assert done.returncode == 2
  errors = [line for line in done.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and message in errors[0], done.stderr
  assert 'Traceback' not in done.stderr
