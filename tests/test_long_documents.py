"""Long documents against the real model and a real LanceDB store: the truncation counter,
chunks (one Parquet row per event, one store row per chunk), search by document, model
identities refused and re-embedded into a new table."""
import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow.dataset as ds
import pytest

from tests.conftest import ROOT, SHARED_DATA
from tests.model_copies import cls_pooling_copy

pytestmark = pytest.mark.real_model
JOB = ['--id_field', 'id', '--time_field', 'time', '--text_field', 'text',
       '--window_size', '86400']
SHORT = ['The committee met on Tuesday.', 'Rain is expected over the weekend.']


@pytest.fixture(scope='module')
def articles():
  """Six long Wikinews articles and two short texts, as a JSON Lines archive's records."""
  with open(SHARED_DATA / 'wikinews_2019.csv', newline='', encoding='utf-8') as f:
    rows = [row for row in csv.DictReader(f) if len(row['text'].split()) > 400][:6]
  records = [{'id': row['url'], 'time': row['date'], 'text': row['text']} for row in rows]
  return records + [{'id': f'short-{n}', 'time': '2019-06-01', 'text': text}
                    for n, text in enumerate(SHORT)]


@pytest.fixture(scope='module')
def archive(articles, tmp_path_factory):
  path = tmp_path_factory.mktemp('input') / 'articles.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in articles), encoding='utf-8')
  return path


@pytest.fixture(scope='module')
def other_model(tmp_path_factory):
  """A second model made from the packaged one: CLS pooling instead of mean (weights linked)."""
  return pathlib.Path(cls_pooling_copy(tmp_path_factory.mktemp('models') / 'minilm-cls'))


def replay(archive, out, *flags):
  from pipelines.replay import run
  result = run(['--input', str(archive), '--output', str(out), *JOB, *flags])
  assert result.balanced, result.summary()
  return result


def command(module, *args):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT,
                        env=dict(os.environ, HF_HUB_OFFLINE='1'), capture_output=True,
                        text=True, timeout=600)


def store_rows(uri, table='events'):
  from transforms.io.vector_store import open_table
  return open_table(uri, table=table).to_arrow().drop_columns(['vector']).to_pylist()


def test_chunks_are_token_exact_overlap_and_prefer_sentence_ends(articles, real_model):
  from models.chunking import _tokenize, chunk_spans
  tokenizer = real_model.tokenizer
  text = articles[0]['text']
  spans = chunk_spans(text, _tokenize(tokenizer, [text])[0], 128, 32)
  assert len(spans) > 2 and spans[0][0] == 0 and spans[-1][1] == len(text.rstrip())
  for (a, b), (c, d) in zip(spans, spans[1:]):
    assert c < b < d  # each chunk repeats the end of the one before and goes further
  sizes = [len(tokenizer(text[a:b])['input_ids']) for a, b in spans]
  assert max(sizes) <= 128 and min(sizes[:-1]) >= 64
  ends = [text[b - 1] for a, b in spans[:-1]]
  assert sum(end in '.!?"' for end in ends) >= len(ends) // 2  # most end a sentence


def test_long_texts_are_counted_chunked_and_stored_one_row_per_chunk(archive, articles,
                                                                     tmp_path):
  out = tmp_path / 'out'
  result = replay(archive, out, '--sink', 'vectors')  # chunks on by default with a store
  assert result.truncated == 6 and result.chunked
  assert 'Model: sentence-transformers/all-MiniLM-L6-v2@' in result.summary()
  rows = ds.dataset(out / 'enriched', format='parquet', partitioning='hive').to_table()
  assert rows.num_rows == len(articles)  # one Parquet row per event
  counts = dict(zip(rows.column('id').to_pylist(), rows.column('chunk_count').to_pylist()))
  assert all(counts[r['id']] > 1 for r in articles[:6])
  assert counts['short-0'] == counts['short-1'] == 1
  assert set(rows.column('model_fingerprint').to_pylist()) == {result.model.split('@')[1]}
  vectors = np.array(rows.column('embedding').to_pylist())
  assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
  stored = store_rows(str(out / 'vectors'))
  assert len(stored) == sum(counts.values())
  assert len({(r['id'], r['chunk']) for r in stored}) == len(stored)
  texts = {r['id']: r['text'] for r in articles}
  for row in stored:
    assert texts[row['id']][row['chunk_start']:row['chunk_end']] == row['text']
  replay(archive, out, '--sink', 'vectors')  # again: still one row per chunk
  assert len(store_rows(str(out / 'vectors'))) == len(stored)
  # Search answers documents, the best chunk of each, never one twice.
  late = texts[articles[2]['id']][-300:].split('. ')[1]
  done = command('pipelines.search', late, '--store', str(out), '-k', '5', '--json')
  assert done.returncode == 0, done.stderr[-2000:]
  found = [json.loads(line) for line in done.stdout.splitlines()]
  assert len(found) == 5 and len({r['id'] for r in found}) == 5
  best = found[0]
  assert best['id'] == articles[2]['id'] and best['chunk'] > 0  # a late chunk of it
  assert best['chunk_end'] > 2 * len(texts[best['id']]) / 3 and best['text'] in texts[best['id']]
  # Without chunks, the same texts are still counted: cut, not chunked.
  cut = replay(archive, tmp_path / 'cut', '--chunk_tokens', '0')
  assert cut.truncated == 6 and not cut.chunked and 'cut at the window' in cut.summary()
  plain = ds.dataset(tmp_path / 'cut' / 'enriched', format='parquet',
                     partitioning='hive').to_table()
  assert set(plain.column('chunk_count').to_pylist()) == {1}


def test_another_model_is_refused_then_reembedded_into_a_new_table(archive, other_model,
                                                                   tmp_path):
  out = tmp_path / 'out'
  first = replay(archive, out, '--sink', 'vectors')
  done = command('pipelines.replay', '--input', str(archive), '--output', str(out), *JOB,
                 '--sink', 'vectors', '--model', str(other_model))
  assert done.returncode == 2
  error = done.stderr.strip().splitlines()
  assert len(error) == 1 and error[0].startswith('error: the vector table events')
  from models.identity import of_config
  from models.loading import ModelConfig
  new = of_config(ModelConfig(model=str(other_model), precision='auto'))  # the job's default
  assert new.fingerprint != first.model.split('@')[1]
  table = new.table('events')
  assert f'?table={table}' in error[0]
  # Re-embedding: the enriched Parquet of the old job, its text embedded by the new model
  # into a new table beside the old one (which readers keep using until they switch).
  moved = replay(f'{out}/enriched/*/*.parquet', tmp_path / 'moved', '--input_format', 'parquet',
                 '--time_field', 'event_time', '--sink',
                 f'lancedb:{out}/vectors?table={table}', '--model', str(other_model))
  assert moved.model == str(new)
  old, fresh = store_rows(str(out / 'vectors')), store_rows(str(out / 'vectors'), table)
  assert {r['model_fingerprint'] for r in fresh} == {new.fingerprint}
  assert sorted((r['id'], r['chunk']) for r in fresh) == sorted((r['id'], r['chunk'])
                                                                 for r in old)
  query = 'The committee met on Tuesday.'
  for name in ('events', table):  # readers switch with --table
    done = command('pipelines.search', query, '--store', str(out), '--table', name, '-k', '1',
                   '--json')
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)['id'] == 'short-0'
  # The model behind the new table changes: its queries would not compare, so refused.
  pooling = other_model / '1_Pooling' / 'config.json'
  pooling.write_text(pooling.read_text().replace('"pooling_mode_max_tokens": false',
                                                 '"pooling_mode_max_tokens": true'))
  done = command('pipelines.search', query, '--store', str(out), '--table', table)
  assert done.returncode == 2 and done.stderr.startswith('error: the vector table')


def test_the_truncated_counter_reaches_prometheus():
  from observability.metrics import Snapshot
  from observability.monitoring import families
  found = {f.name: f.samples[0].value for f in families(Snapshot(0.0, {'truncated': 3}, {}))}
  assert found['enrichment_truncated'] == 3


def test_a_text_without_word_breaks_is_cut_at_word_pieces_and_covered(real_model):
  from models.chunking import _tokenize, chunk_spans
  text = 'ab-' * 400  # one "word" of 800 word pieces: no boundary to prefer
  marks = _tokenize(real_model.tokenizer, [text])[0]
  spans = chunk_spans(text, marks, 64, 8)
  assert spans[0][0] == 0 and spans[-1][1] == len(text)
  assert all(c < b and c > a for (a, b), (c, _) in zip(spans, spans[1:]))
  assert max(len(real_model.tokenizer(text[a:b])['input_ids']) for a, b in spans) <= 64
  assert chunk_spans('Short.', _tokenize(real_model.tokenizer, ['Short.'])[0], 64, 8) == [(0, 6)]
