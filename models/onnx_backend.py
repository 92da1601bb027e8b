"""An ONNX Runtime backend for sentence-transformers models, exported from the local weights.

sentence-transformers' own ONNX backend needs optimum-onnx, whose only release
requires transformers < 4.58 (sentence-transformers 6 needs 5), so the export
is done here with torch.onnx (no download): the transformer and its pooling go
into one graph, and `OnnxEncoder.encode` answers like `SentenceTransformer.encode`
for what the handler asks. Supported: Transformer + Pooling (mean or cls)
[+ Normalize] models, which covers the sentence-transformers MiniLM/MPNet family.
`--quantize int8` adds ONNX Runtime's dynamic int8 quantization (per channel).
"""
import hashlib
import logging
import os
from typing import List

import numpy as np

from models.vectors import unit_rows


def cache_dir() -> str:
  return os.environ.get('STREAM_EMBEDDINGS_CACHE',
                        os.path.join(os.path.expanduser('~'), '.cache', 'stream-embeddings'))


class OnnxEncoder:
  """Encodes texts with an exported graph; the same call shape as SentenceTransformer.encode."""

  def __init__(self, session, tokenizer, max_seq_length: int, normalize: bool):
    self._session = session
    self.tokenizer = tokenizer  # public, as on SentenceTransformer: forward passes count tokens
    self.max_seq_length = max_seq_length
    self._normalize = normalize
    self._inputs = [i.name for i in session.get_inputs()]

  def encode(self, texts: List[str], batch_size: int = 32, normalize_embeddings: bool = False,
             show_progress_bar: bool = False, convert_to_tensor: bool = False, **_):
    import torch
    order = np.argsort([-len(t) for t in texts], kind='stable')  # as encode does: little padding
    out = None
    for start in range(0, len(texts), batch_size):
      chosen = order[start:start + batch_size]
      tokens = self.tokenizer([texts[i] for i in chosen], padding=True, truncation=True,
                               max_length=self.max_seq_length, return_tensors='np')
      feed = {name: tokens[name].astype(np.int64) for name in self._inputs}
      vectors = self._session.run(None, feed)[0]
      if out is None:
        out = np.zeros((len(texts), vectors.shape[1]), np.float32)
      out[chosen] = vectors
    if out is None:
      out = np.zeros((0, 0), np.float32)
    if self._normalize or normalize_embeddings:
      out = unit_rows(out)
    return torch.from_numpy(out) if convert_to_tensor else out


def _graph_parts(model):
  names = [type(module).__name__ for module in model]
  if names[:2] != ['Transformer', 'Pooling'] or names[2:] not in ([], ['Normalize']):
    raise ValueError(f'--backend onnx supports Transformer + Pooling [+ Normalize] models, '
                     f'not {" + ".join(names)}')
  pooling = model[1].get_config_dict().get('pooling_mode', 'mean')
  if pooling not in ('mean', 'cls'):
    raise ValueError(f'--backend onnx supports mean or cls pooling, not {pooling}')
  return model[0], pooling, names[2:] == ['Normalize']


def export(model, path: str) -> None:
  """Writes the transformer plus pooling of a CPU fp32 SentenceTransformer as ONNX."""
  import torch
  transformer, pooling, _ = _graph_parts(model)
  auto = transformer.auto_model
  tokens = transformer.tokenizer(['an example', 'another, longer example text'],
                                 padding=True, return_tensors='pt')
  names = [n for n in ('input_ids', 'attention_mask', 'token_type_ids') if n in tokens]

  class Pooled(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.auto = auto

    def forward(self, *inputs):
      kwargs = dict(zip(names, inputs))
      hidden = self.auto(**kwargs).last_hidden_state
      if pooling == 'cls':
        return hidden[:, 0]
      mask = kwargs['attention_mask'].unsqueeze(-1).to(hidden.dtype)
      return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

  axes = {n: {0: 'batch', 1: 'tokens'} for n in names}
  axes['embedding'] = {0: 'batch'}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temporary = f'{path}.{os.getpid()}.tmp'
  # The TorchScript exporter: its graph is what ONNX Runtime fuses best here.
  torch.onnx.export(Pooled().eval(), tuple(tokens[n] for n in names), temporary,
                    input_names=names, output_names=['embedding'], dynamic_axes=axes,
                    opset_version=17, dynamo=False)
  os.replace(temporary, path)


def load_onnx(model, source: str, quantize: str = 'none') -> OnnxEncoder:
  """Exports (once, cached by model source and quantization) and opens an ONNX encoder."""
  import onnxruntime
  transformer, _, normalize = _graph_parts(model)
  key = hashlib.sha256(f'{os.path.abspath(source) if os.path.exists(source) else source}'
                       f'|{onnxruntime.__version__}'.encode()).hexdigest()[:16]
  folder = os.path.join(cache_dir(), 'onnx', key)
  plain = os.path.join(folder, 'model.onnx')
  if not os.path.exists(plain):
    logging.info('Exporting %s to ONNX at %s', source, plain)
    export(model, plain)
  path = plain
  if quantize == 'int8':
    path = os.path.join(folder, 'model-int8.onnx')
    if not os.path.exists(path):
      from onnxruntime.quantization import QuantType, quantize_dynamic
      temporary = f'{path}.{os.getpid()}.tmp'
      quantize_dynamic(plain, temporary, weight_type=QuantType.QInt8, per_channel=True)
      os.replace(temporary, path)
  session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
  return OnnxEncoder(session, transformer.tokenizer, model.max_seq_length, normalize)
