"""A cached graph opened without the torch model: the same tokens, the same vectors, and a
full load whenever the folder, the libraries or the graph changed."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.cached_encoder import GraphTokenizer, _record_path, open_cached
from models.loading import ModelConfig, load_sentence_transformer, packaged_model_path
from tests.test_model import TEXTS

HAS_OPENVINO = importlib.util.find_spec('openvino') is not None
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHIVE_LIKE = TEXTS + ['', ' ', 'Ünïcödé, emoji 🙂 and CJK 漢字かな', 'x' * 3000,
                        'tabs\tand\nnewlines  and   spaces', '[CLS] [SEP] [PAD] [UNK] [MASK]',
                        ' '.join(['word'] * 400)]


@pytest.fixture(scope='module')
def tokenizers():
  from transformers import AutoTokenizer
  hf = AutoTokenizer.from_pretrained(packaged_model_path())
  hf.model_max_length = 256
  return hf, GraphTokenizer.from_json(json.loads(json.dumps(GraphTokenizer.of(hf).to_json())))


def _same_calls(hf, ours, texts):
  padded = dict(padding=True, truncation=True, max_length=256, return_tensors='np',
                pad_to_multiple_of=16)
  expected, got = hf(texts, **padded), ours(texts, **padded)
  assert sorted(expected) == sorted(got)
  for name in expected:
    assert got[name].dtype == np.int64 and np.array_equal(expected[name], got[name]), name
  counted = dict(add_special_tokens=True, truncation=True, max_length=256,
                 return_attention_mask=False, return_token_type_ids=False)
  assert hf(texts, **counted)['input_ids'] == ours(texts, **counted)['input_ids']
  offsets = dict(add_special_tokens=False, return_offsets_mapping=True,
                 return_attention_mask=False, return_token_type_ids=False, verbose=False)
  assert [list(map(tuple, o)) for o in hf(texts, **offsets)['offset_mapping']] == [
      list(map(tuple, o)) for o in ours(texts, **offsets)['offset_mapping']]


def test_graph_tokenizer_answers_as_transformers_does(tokenizers):
  _same_calls(*tokenizers, ARCHIVE_LIKE)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=300), min_size=1, max_size=6))
def test_graph_tokenizer_matches_on_any_text(tokenizers, texts):
  _same_calls(*tokenizers, texts)


def test_graph_tokenizer_refuses_calls_it_cannot_answer(tokenizers):
  _, ours = tokenizers
  with pytest.raises(TypeError):
    ours('one text, not a list')
  with pytest.raises(TypeError):
    ours(['a'], return_tensors='pt')
  with pytest.raises(TypeError):
    ours(['a'], truncation=True)  # no max_length: the tokenizer's own limit is not kept


@pytest.mark.real_model
@pytest.mark.skipif(not HAS_OPENVINO, reason='openvino is not installed')
def test_second_load_opens_the_graph_without_sentence_transformers(tmp_path, monkeypatch):
  monkeypatch.setenv('STREAM_EMBEDDINGS_CACHE', str(tmp_path))
  config = ModelConfig(device='cpu', backend='openvino', precision='fp32')
  full = load_sentence_transformer(config)
  assert not isinstance(full.tokenizer, GraphTokenizer)  # the first load builds and records
  quick = load_sentence_transformer(config)
  assert isinstance(quick.tokenizer, GraphTokenizer)
  assert np.array_equal(full.encode(ARCHIVE_LIKE, batch_size=4),
                        quick.encode(ARCHIVE_LIKE, batch_size=4))
  # In a fresh process neither sentence-transformers nor transformers is imported.
  probe = ('import sys; from models.loading import ModelConfig, load_sentence_transformer; '
           "m = load_sentence_transformer(ModelConfig(device='cpu', backend='openvino')); "
           "print(type(m.tokenizer).__name__, 'sentence_transformers' in sys.modules, "
           "'transformers' in sys.modules, m.encode(['a text']).shape)")
  done = subprocess.run([sys.executable, '-c', probe], cwd=ROOT, capture_output=True,
                        text=True, env=dict(os.environ, STREAM_EMBEDDINGS_CACHE=str(tmp_path),
                                            HF_HUB_OFFLINE='1'), timeout=120)
  assert done.stdout.split() == ['GraphTokenizer', 'False', 'False', '(1,', '384)'], done.stderr


@pytest.mark.real_model
@pytest.mark.skipif(not HAS_OPENVINO, reason='openvino is not installed')
def test_a_job_on_a_cached_graph_never_imports_torch(tmp_path, monkeypatch):
  # Beam's RunInference module imports torch for an option the job never sets
  # (runners/beam_inference.py); the graph backends need none of it: seconds of start-up.
  cache = str(tmp_path / 'cache')
  monkeypatch.setenv('STREAM_EMBEDDINGS_CACHE', cache)
  load_sentence_transformer(ModelConfig(device='cpu', backend='openvino', precision='fp32'))
  written = [text for text in ARCHIVE_LIKE if text.strip()]  # blank ones are dead letters
  events = tmp_path / 'events.jsonl'
  events.write_text(''.join(json.dumps({'time': f'2026-12-03T10:00:{i:02d}Z', 'text': text})
                            + '\n' for i, text in enumerate(written)))
  flags = ['--input', str(events), '--output', str(tmp_path / 'out'), '--time_field', 'time',
           '--text_field', 'text', '--device', 'cpu', '--backend', 'openvino',
           '--precision', 'fp32']
  probe = (f'import sys; from pipelines import replay; r = replay.run({flags!r}); '
           "print(r.enriched_rows, 'torch' in sys.modules, 'scipy' in sys.modules)")
  done = subprocess.run([sys.executable, '-c', probe], cwd=ROOT, capture_output=True,
                        text=True, env=dict(os.environ, STREAM_EMBEDDINGS_CACHE=cache,
                                            HF_HUB_OFFLINE='1'), timeout=240)
  assert done.stdout.split()[-3:] == [str(len(written)), 'False', 'False'], (
      done.stdout, done.stderr[-3000:])


@pytest.mark.real_model
@pytest.mark.skipif(not HAS_OPENVINO, reason='openvino is not installed')
def test_a_changed_folder_or_a_lost_graph_loads_fully(tmp_path, monkeypatch):
  monkeypatch.setenv('STREAM_EMBEDDINGS_CACHE', str(tmp_path / 'cache'))
  folder = tmp_path / 'model'
  shutil.copytree(packaged_model_path(), folder)
  config = ModelConfig(model=str(folder), device='cpu', backend='openvino', precision='fp32')
  load_sentence_transformer(config)
  assert open_cached(str(folder), 'openvino', 'fp32', 'none') is not None
  assert open_cached(str(folder), 'onnx', 'fp32', 'int8') is None  # that graph was never built

  config_file = folder / 'sentence_bert_config.json'
  settings_ = json.loads(config_file.read_text())
  config_file.write_text(json.dumps(dict(settings_, max_seq_length=128)))
  assert open_cached(str(folder), 'openvino', 'fp32', 'none') is None  # another folder now
  reloaded = load_sentence_transformer(config)
  assert not isinstance(reloaded.tokenizer, GraphTokenizer) and reloaded.max_seq_length == 128
  assert load_sentence_transformer(config).max_seq_length == 128  # recorded again

  for graph in (tmp_path / 'cache' / 'openvino').rglob('model.*'):
    graph.unlink()
  assert open_cached(str(folder), 'openvino', 'fp32', 'none') is None
  assert os.path.exists(_record_path(str(folder)))
  assert not isinstance(load_sentence_transformer(config).tokenizer, GraphTokenizer)


@pytest.mark.real_model
def test_a_record_that_cannot_be_written_only_warns(tmp_path, monkeypatch, real_model, caplog):
  from models.cached_encoder import record
  blocker = tmp_path / 'a-file-not-a-folder'
  blocker.write_text('')
  monkeypatch.setenv('STREAM_EMBEDDINGS_CACHE', str(blocker))
  record(packaged_model_path(), real_model)  # the load that called it goes on
  assert 'Could not record the cached graph' in caplog.text
