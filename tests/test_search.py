"""Semantic search over written output finds a planted nearest neighbour."""
import json
import os
import subprocess
import sys
from typing import NamedTuple

import pyarrow as pa
import pytest

from models.loading import DEFAULT_MODEL
from pipelines.search import main as search_main
from tests.conftest import ROOT
from transforms.records import Embedded, Event, WindowRows
from transforms.io.files import write_parquet
from transforms.io.sinks import enriched_table

pytestmark = pytest.mark.real_model
S = 1_000_000
PLANTED = 'The refrigerator in the office kitchen is leaking water onto the floor.'
OTHERS = ['Quarterly revenue grew by twelve percent.', 'The football match ended in a draw.',
          'Please reset my password.', 'A new species of frog was found in Peru.',
          'The train to Berlin is delayed by an hour.']


class Store(os.PathLike):
  """The output folder of the planted rows, and the window firings that wrote them."""

  def __init__(self, folder, batches):
    self.folder, self.batches = folder, batches

  def __fspath__(self):
    return str(self.folder)

  def __str__(self):
    return str(self.folder)

  def __truediv__(self, other):
    return self.folder / other


@pytest.fixture(scope='module')
def store(tmp_path_factory, real_model):
  out = tmp_path_factory.mktemp('store')
  texts = OTHERS + [PLANTED]
  vectors = real_model.encode(texts)
  batches = []
  rows = [Embedded(Event(f'id-{n}', (n + 1) * 10 * S, t, f'f:{n}', 'f', '{}'), v)
          for n, (t, v) in enumerate(zip(texts, vectors))]
  for start in (0, 60):  # two windows of a minute
    batch = [r for r in rows if start * S <= r.event.event_time_us < (start + 60) * S]
    table = enriched_table(batch, start * S, (start + 60) * S, DEFAULT_MODEL,
                           {'label': ['planted' if r.event.text == PLANTED else 'other'
                                      for r in batch]})
    write_parquet(table, f'{out}/enriched/window={start}/part-00000.parquet')
    batches.append(WindowRows(start * S, (start + 60) * S, 0, batch, {
        'label': ['planted' if r.event.text == PLANTED else 'other' for r in batch]}))
  return Store(out, batches)


@pytest.fixture(scope='module')
def vector_store(store, tmp_path_factory):
  """The same rows in a LanceDB store, as `--sink vectors` writes them."""
  return _vector_store(store.batches, str(tmp_path_factory.mktemp('vectors') / 'db'))


def _vector_store(batches, uri: str) -> str:
  """WindowRows into a LanceDB table, as the vector store sink writes them."""
  from models.identity import of_config
  from models.loading import ModelConfig
  from transforms.io.vector_store import identity_record, open_table, vector_tables
  config = ModelConfig()
  identity = of_config(config)
  target = open_table(uri, 384, identity=identity_record(identity, config))
  for batch in batches:
    for data in vector_tables(batch, identity).values():
      target.add(data)
  return uri


def test_vector_store_search_agrees_with_exact_search(store, vector_store, search):
  exact = search('water is dripping from the fridge', '--store', str(store), '-k', '3', '--json')
  stored = search('water is dripping from the fridge', '--store', f'lancedb:{vector_store}',
                  '-k', '3', '--json')
  assert stored.returncode == 0, stored.stderr
  ranked = lambda done: [(json.loads(l)['id'], round(json.loads(l)['score'], 4))
                         for l in done.stdout.splitlines()]
  assert ranked(stored) == ranked(exact)
  assert ranked(stored)[0][0] == 'id-5'
  # Every key exact search gives, `source` included (the vector store had none before);
  # the store adds `duplicate_of` (null) where these rows carry no such column.
  first = lambda done: set(json.loads(done.stdout.splitlines()[0]))
  assert first(exact) <= first(stored) and 'source' in first(exact)
  assert json.loads(stored.stdout.splitlines()[0])['source'] == 'f:5'
  labelled = search('anything', '--store', f'lancedb:{vector_store}', '--label', 'planted',
                    '--until', '1970-01-01T00:02:00Z', '--json')
  assert [json.loads(l)['id'] for l in labelled.stdout.splitlines()] == ['id-5']


class Searched(NamedTuple):
  returncode: int
  stdout: str
  stderr: str


@pytest.fixture
def search(capsys):
  """Runs `pipelines.search` in this process (the model's import is paid once per session;
  one test below runs the command itself)."""

  def run(*args) -> Searched:
    capsys.readouterr()
    try:
      search_main(list(args))
      code = 0
    except SystemExit as e:
      code = e.code
    out = capsys.readouterr()
    return Searched(code, out.out, out.err)

  return run


@pytest.mark.e2e
def test_the_command_answers_and_refuses_a_missing_query(store):
  done = subprocess.run([sys.executable, '-m', 'pipelines.search', 'water leak', '--store',
                         str(store), '-k', '1', '--json'], cwd=ROOT,
                        env=dict(os.environ, HF_HUB_OFFLINE='1'), capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout)['id'] == 'id-5'
  done = subprocess.run([sys.executable, '-m', 'pipelines.search', '--store', str(store)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2 and done.stderr.startswith('error:')


def test_search_finds_the_planted_neighbour_with_filters_and_json(store, tmp_path, search):
  queries = tmp_path / 'queries.txt'
  queries.write_text('water is dripping from the fridge\nwhen does my train leave\n')
  done = search('--store', str(store), '--queries', str(queries), '-k', '2', '--json')
  assert done.returncode == 0, done.stderr
  results = [json.loads(line) for line in done.stdout.splitlines()]
  assert [(r['query'][:5], r['rank']) for r in results] == [
      ('water', 1), ('water', 2), ('when ', 1), ('when ', 2)]
  assert results[0]['id'] == 'id-5' and results[0]['text'] == PLANTED
  assert results[0]['score'] > results[1]['score']
  assert results[2]['text'].startswith('The train')
  assert results[0]['label'] == 'planted' and results[0]['window_start'].endswith('Z')
  # Filters: time and label.
  done = search('water leak', '--store', str(store), '--until', '1970-01-01T00:00:59Z', '--json')
  assert 'id-5' not in done.stdout and done.stdout.count('"rank"') == 5
  done = search('anything', '--store', str(store), '--label', 'planted', '--json')
  assert [json.loads(line)['id'] for line in done.stdout.splitlines()] == ['id-5']
  done = search('--store', str(store))
  assert done.returncode == 2 and done.stderr.startswith('error:')


def test_ties_rank_by_id_alike_in_both_backends(real_model, tmp_path, search):
  """Repeated texts have equal scores; both backends order them by id, also at the k-th place."""
  texts = ['The train to Berlin is delayed by an hour.'] * 4 + OTHERS[:3]
  ids = ['t-d', 't-b', 't-c', 't-a', 'o-1', 'o-2', 'o-3']
  rows = [Embedded(Event(i, (n + 1) * S, t, f'f:{n}', 'f', '{}'), v)
          for n, (i, t, v) in enumerate(zip(ids, texts, real_model.encode(texts)))]
  table = enriched_table(rows, 0, 60 * S, DEFAULT_MODEL, {'label': ['x'] * len(rows)})
  write_parquet(table, f'{tmp_path}/out/enriched/window=0/part-00000.parquet')
  uri = _vector_store([WindowRows(0, 60 * S, 0, rows, {'label': ['x'] * len(rows)})],
                      str(tmp_path / 'db'))
  for k in ('2', '5'):
    exact = search('train delay', '--store', str(tmp_path / 'out'), '-k', k, '--json')
    stored = search('train delay', '--store', f'lancedb:{uri}', '-k', k, '--json')
    order = lambda done: [json.loads(line)['id'] for line in done.stdout.splitlines()]
    assert order(exact) == order(stored)
    assert order(exact)[:4] == ['t-a', 't-b', 't-c', 't-d'][:int(k)]


def test_one_query_prints_its_results_only(store, search):
  done = search('water leak', '--store', str(store), '-k', '2')
  lines = done.stdout.splitlines()
  assert len(lines) == 2 and lines[0].startswith('  1. ') and 'id-5' in lines[0], lines
