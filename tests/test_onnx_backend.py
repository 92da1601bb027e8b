"""The ONNX Runtime backend: exported from the packaged weights, equal to torch's encode."""
import numpy as np
import pytest

from models.handler import SentenceTransformerHandler
from models.loading import ModelConfig, load_sentence_transformer
from tests.test_model import TEXTS, cosine

pytestmark = pytest.mark.real_model


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  folder = tmp_path_factory.mktemp('onnx-cache')
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('STREAM_EMBEDDINGS_CACHE', str(folder))
    yield folder


@pytest.mark.slow
def test_onnx_matches_torch_and_is_exported_once(cache, real_model):
  config = ModelConfig(device='cpu', backend='onnx')
  config.validate()
  encoder = load_sentence_transformer(config)
  exported = list(cache.rglob('model.onnx'))
  assert len(exported) == 1
  results = SentenceTransformerHandler(config).run_inference(TEXTS, encoder)
  direct = real_model.encode(TEXTS)
  for result, expected in zip(results, direct):
    assert result.inference.dtype == np.float32 and result.inference.shape == (384,)
    assert cosine(result.inference, expected) >= 0.999
  # The packaged model ends in Normalize: unit vectors, as from torch.
  assert np.allclose([np.linalg.norm(r.inference) for r in results], 1, atol=1e-4)
  load_sentence_transformer(config)
  assert list(cache.rglob('model.onnx')) == exported  # reused, not exported again


def test_graph_passes_take_the_graph_lengths_and_padding_leaves_the_vectors(cache, real_model,
                                                                            wiki_archive):
  # The graph encoders pad each pass to the next of graph_lengths (finer than torch's
  # multiples of 16, where the archive's short texts are) and to graph_pass_texts; the extra
  # padding is masked, so each text's vector is what it is padded to its own length alone.
  from models.forward_passes import graph_lengths, graph_pass_texts
  from tests.test_forward_passes import _first_distinct_texts
  texts = _first_distinct_texts(wiki_archive, 300)
  encoder = load_sentence_transformer(ModelConfig(device='cpu', backend='onnx'))
  assert encoder.pass_lengths == graph_lengths(256)
  shapes, run = [], encoder._session.run

  def recording(outputs, feed):
    shapes.append(feed['input_ids'].shape)
    return run(outputs, feed)

  encoder._session.run = recording
  try:
    ours, _, _ = SentenceTransformerHandler(
        ModelConfig(device='cpu', backend='onnx', embedding_cache=0)).wrap(encoder).embed(texts)
  finally:
    encoder._session.run = run
  assert shapes and all(length in encoder.pass_lengths and batch == graph_pass_texts(batch)
                        for batch, length in shapes), shapes
  assert {length for _, length in shapes} - set(range(16, 257, 16))  # finer lengths were used
  encoder.pass_lengths = None  # padded to each text's own length
  alone = np.concatenate([encoder.encode([text]) for text in texts[:40]])
  assert np.abs(ours[:40] - alone).max() < 1e-5


@pytest.mark.slow
def test_int8_quantization_loads_and_stays_near(cache, real_model):
  encoder = load_sentence_transformer(ModelConfig(device='cpu', backend='onnx', quantize='int8'))
  vectors = encoder.encode(TEXTS[:3])
  direct = real_model.encode(TEXTS[:3])
  assert min(cosine(v, d) for v, d in zip(vectors, direct)) > 0.9
  assert list(cache.rglob('model-int8*.onnx'))


@pytest.mark.parametrize('config,message', [
    (ModelConfig(quantize='int8'), 'needs --backend onnx'),
    (ModelConfig(backend='onnx', precision='bf16'), 'fp32 on the CPU'),
    (ModelConfig(backend='tensorrt'), '--backend must be'),
])
def test_backend_options_are_checked(config, message):
  with pytest.raises(ValueError, match=message):
    config.validate()
