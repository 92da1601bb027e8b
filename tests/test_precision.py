"""--precision auto and fast, the accuracy guard's measures, and the OpenVINO backend."""
import importlib.util

import numpy as np
import pytest

from benchmarks import accuracy
from models.loading import ModelConfig, load_sentence_transformer
from models.precision import SETTINGS, TABLE, choose
from tests.test_model import TEXTS, cosine

HAS_OPENVINO = all(importlib.util.find_spec(p) for p in ('openvino', 'nncf'))


# --- the choice ---

@pytest.mark.parametrize('device,units', [('cpu', 'avx512'),
                                          ('cuda', None), ('cuda:1', None)])
def test_unmeasured_rows_fall_back_to_fp32(device, units):
  for precision in ('auto', 'fast'):
    choice = choose(ModelConfig(precision=precision), device, units)
    assert choice.config.precision == 'fp32' and choice.config.backend == 'torch'
    assert choice.name == 'fp32' and 'not measured' in choice.reason


@pytest.mark.skipif(not HAS_OPENVINO, reason='openvino and nncf are not installed')
@pytest.mark.parametrize('units', ['avx2', 'avx512-bf16', 'amx'])
def test_measured_row_picks_each_tier_and_says_why(units):
  near_exact = choose(ModelConfig(precision='auto'), 'cpu', units)
  accurate = choose(ModelConfig(precision='fast'), 'cpu', units)
  row = TABLE[('cpu', units)]
  assert (near_exact.name, near_exact.tier) == (row.near_exact, 'near-exact')
  assert (accurate.name, accurate.tier) == (row.accurate, 'accurate')
  assert near_exact.config.backend == SETTINGS[row.near_exact].backend
  assert accurate.config.quantize == SETTINGS[row.accurate].quantize
  assert '--precision auto: ' + row.near_exact in near_exact.reason
  assert 'fastest accurate setting' in accurate.reason


def test_explicit_settings_are_kept():
  for config in (ModelConfig(precision='fp32'), ModelConfig(precision='bf16'),
                 ModelConfig(backend='openvino', precision='bf16', quantize='int8')):
    assert choose(config, 'cpu', 'avx512-bf16').config == config
  by_hand = choose(ModelConfig(precision='auto', backend='onnx'), 'cpu', 'avx512-bf16')
  assert by_hand.config == ModelConfig(precision='fp32', backend='onnx')


@pytest.mark.parametrize('config,message', [
    (ModelConfig(precision='fast', backend='onnx'), 'chooses the backend'),
    (ModelConfig(precision='fp16', backend='openvino'), 'fp32 or bf16 on the CPU'),
    (ModelConfig(backend='openvino', device='cuda'), 'fp32 or bf16 on the CPU'),
    (ModelConfig(quantize='int8'), 'needs --backend onnx or openvino'),
    (ModelConfig(backend='onnx', quantize='int8_weights'), 'int8_weights needs --backend openvino'),
    (ModelConfig(backend='openvino', quantize='int4'), '--quantize must be one of'),
    (ModelConfig(precision='int4'), '--precision must be one of'),
])
def test_precision_flags_are_checked(config, message):
  with pytest.raises(ValueError, match=message):
    config.validate()


def test_the_job_defaults_to_auto():
  from apache_beam.options.pipeline_options import PipelineOptions
  from pipelines.options import ModelOptions
  assert PipelineOptions([]).view_as(ModelOptions).precision == 'auto'


# --- the accuracy guard's measures ---

def test_sts_lines_are_split_on_tabs(tmp_path):
  path = tmp_path / 'sts.csv'
  path.write_text('main-news\tMSRvid\t2012test\t0001\t5.000\tA "quoted" man.\tA man.\n'
                  'main-forum\tdeft\t2014\t0002\t1.5\tOne, two\tThree\tsrc1\tsrc2\n'
                  'broken line\n')
  firsts, seconds, gold = accuracy.read_sts(path)
  assert firsts == ['A "quoted" man.', 'One, two'] and seconds == ['A man.', 'Three']
  assert gold.tolist() == [5.0, 1.5]


def test_ranks_share_ties_and_spearman_follows_them():
  assert accuracy.ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
  assert accuracy.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert accuracy.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
  # Ranks [1, 2, 3] against [1, 3, 2]: 1 - 6 * 2 / (3 * 8) = 0.5.
  assert accuracy.spearman([0.1, 0.5, 0.9], [0, 9, 3]) == pytest.approx(0.5)


def test_near_duplicate_pairs_and_their_agreement():
  vectors = np.array([[1, 0], [0.99, 0.14], [0, 1], [-1, 0]], np.float32)
  assert accuracy.near_duplicate_pairs(vectors, 0.9) == {(0, 1)}
  assert accuracy.near_duplicate_pairs(vectors, -2) == {
      (i, j) for i in range(4) for j in range(i + 1, 4)}
  assert accuracy.pair_agreement({(0, 1)}, {(0, 1), (2, 3)}) == 0.5
  assert accuracy.pair_agreement(set(), set()) == 1.0


def test_top_k_overlap_counts_shared_neighbours():
  line = np.array([[1, 0], [0.9, 0.1], [0.5, 0.5], [0.1, 0.9], [0, 1]], np.float32)
  assert accuracy.top_k_overlap(line, line, k=2) == 1.0
  swapped = line.copy()
  swapped[0] = [0, 1]  # text 0 now sits beside text 4: its neighbours change, and so do others'
  assert 0 < accuracy.top_k_overlap(line, swapped, k=1) < 1


def test_verdicts_apply_the_two_rules():
  base = {'min_cosine': 0.995, 'sts_spearman': 0.864, 'top10_overlap': 0.95}
  assert accuracy.verdicts(base, 0.867) == {'near-exact': True, 'accurate': True}
  worse = dict(base, min_cosine=0.95, sts_spearman=0.860)
  assert accuracy.verdicts(worse, 0.867) == {'near-exact': False, 'accurate': False}
  assert accuracy.verdicts(dict(worse, sts_spearman=0.866, top10_overlap=0.94),
                           0.867)['accurate'] is False


def test_row_cosines():
  a = np.array([[1, 0], [0, 2]], np.float32)
  assert accuracy.row_cosines(a, np.array([[2, 0], [1, 1]])).tolist() == pytest.approx(
      [1.0, 2 ** -0.5])


# --- the real model on this machine ---

@pytest.mark.real_model
def test_auto_is_near_exact_here(real_model):
  """Whatever auto picks on this CPU keeps every text within the near-exact bound."""
  encoder = load_sentence_transformer(ModelConfig(device='cpu', precision='auto'))
  vectors, direct = encoder.encode(TEXTS), real_model.encode(TEXTS)
  assert min(cosine(v, d) for v, d in zip(vectors, direct)) >= accuracy.NEAR_EXACT_COSINE


@pytest.mark.real_model
@pytest.mark.skipif(not HAS_OPENVINO, reason='openvino and nncf are not installed')
def test_openvino_graphs_are_built_once_per_weights(tmp_path, monkeypatch, real_model):
  monkeypatch.setenv('STREAM_EMBEDDINGS_CACHE', str(tmp_path))
  config = ModelConfig(device='cpu', backend='openvino', precision='fp32')
  vectors = load_sentence_transformer(config).encode(TEXTS)
  assert min(cosine(v, d) for v, d in zip(vectors, real_model.encode(TEXTS))) >= 0.9999
  built = sorted(p.stat().st_mtime_ns for p in tmp_path.rglob('*.xml'))
  assert len(built) == 1 and len(list(tmp_path.rglob('model.onnx'))) == 1
  load_sentence_transformer(config)
  assert sorted(p.stat().st_mtime_ns for p in tmp_path.rglob('*.xml')) == built  # reused

  import torch
  from models.onnx_backend import cached_folder, weights_fingerprint
  changed = load_sentence_transformer(ModelConfig(device='cpu', precision='fp32'))
  with torch.no_grad():
    next(changed.parameters())[0, 0] += 1.0
  assert cached_folder('onnx', weights_fingerprint(changed), []) != cached_folder(
      'onnx', weights_fingerprint(real_model), [])


@pytest.mark.real_model
@pytest.mark.skipif(not HAS_OPENVINO, reason='openvino and nncf are not installed')
def test_openvino_int8_is_calibrated_and_stays_near(real_model):
  encoder = load_sentence_transformer(ModelConfig(device='cpu', backend='openvino',
                                                  quantize='int8'))
  vectors = encoder.encode(TEXTS)
  assert min(cosine(v, d) for v, d in zip(vectors, real_model.encode(TEXTS))) > 0.95


@pytest.mark.real_model
@pytest.mark.skipif(not HAS_OPENVINO, reason='openvino and nncf are not installed')
def test_openvino_weight_only_int8_is_cached_apart_and_stays_near(tmp_path, monkeypatch,
                                                                  real_model):
  """Weight-only int8 is its own cached graph, with int8 weights, and computes close to fp32."""
  monkeypatch.setenv('STREAM_EMBEDDINGS_CACHE', str(tmp_path))
  encoder = load_sentence_transformer(ModelConfig(device='cpu', backend='openvino',
                                                  precision='bf16', quantize='int8_weights'))
  vectors = encoder.encode(TEXTS)
  assert min(cosine(v, d) for v, d in zip(vectors, real_model.encode(TEXTS))) > 0.99
  graphs = list(tmp_path.rglob('model-int8_weights.xml'))
  assert len(graphs) == 1 and 'element_type="u8"' in graphs[0].read_text()  # asymmetric int8
  assert (graphs[0].with_suffix('.bin').stat().st_size
          < 0.5 * next(tmp_path.rglob('model.onnx')).stat().st_size)
