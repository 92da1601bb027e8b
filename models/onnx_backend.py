"""An ONNX Runtime backend for sentence-transformers models, exported from the local weights.

sentence-transformers' own ONNX backend needs optimum-onnx, whose only release
requires transformers < 4.58 (sentence-transformers 6 needs 5), so the export
is done here with torch.onnx (no download): the transformer and its pooling go
into one graph, and `OnnxEncoder.encode` answers like `SentenceTransformer.encode`
for what the handler asks. Supported: Transformer + Pooling (mean or cls)
[+ Normalize] models, which covers the sentence-transformers MiniLM/MPNet family.
`--quantize int8` adds ONNX Runtime's dynamic int8 quantization (per channel).
Graphs are cached on disk under `cache_dir()`, in a folder named by a
fingerprint of the model's weights and the settings that shape the graph, so a
run reuses what an earlier one exported (models/openvino_backend.py builds on
the same export).
"""
import hashlib
import logging
import os
from typing import List, Sequence

import numpy as np

from models.forward_passes import graph_lengths, padded_length
from models.vectors import unit_rows


def cache_dir() -> str:
  """$STREAM_EMBEDDINGS_CACHE, else stream-embeddings in the user's cache folder."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.environ.get('STREAM_EMBEDDINGS_CACHE', os.path.join(base, 'stream-embeddings'))


def weights_fingerprint(model) -> str:
  """A digest of a loaded model's weights (names, shapes, dtypes, values): a graph
  exported from other weights never matches, whatever path they were loaded from.
  Computed once per loaded model (about 0.2 s for MiniLM's 90 MB)."""
  found = getattr(model, '_weights_fingerprint', None)
  if found:
    return found
  import torch
  digest = hashlib.sha256()
  for name, tensor in sorted(model.state_dict().items()):
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f'{name}|{tuple(tensor.shape)}|{tensor.dtype}|'.encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
  model._weights_fingerprint = digest.hexdigest()  # pylint: disable=protected-access
  return model._weights_fingerprint  # pylint: disable=protected-access


def cached_folder(kind: str, fingerprint: str, parts: Sequence[str]) -> str:
  """cache_dir()/kind/<digest of the weights' fingerprint and `parts`> (settings, library
  versions)."""
  key = hashlib.sha256('|'.join([fingerprint, *parts]).encode()).hexdigest()
  return os.path.join(cache_dir(), kind, key[:20])


def onnx_path(fingerprint: str, pooling: str, max_seq_length) -> str:
  """Where the fp32 ONNX export of the weights with `fingerprint` is cached (named by the
  torch that exports, read from its metadata: importing torch costs seconds)."""
  from importlib.metadata import version
  folder = cached_folder('onnx', fingerprint, ['export-1', version('torch'), pooling,
                                               str(max_seq_length)])
  return os.path.join(folder, 'model.onnx')


def int8_path(plain: str) -> str:
  """Where ONNX Runtime's dynamic int8 quantization of the export at `plain` is cached."""
  from importlib.metadata import version
  return os.path.join(os.path.dirname(plain), f'model-int8-ort{version("onnxruntime")}.onnx')


def exported_onnx(model) -> str:
  """The fp32 ONNX graph of a CPU fp32 SentenceTransformer, exported once and cached."""
  _, pooling, _ = _graph_parts(model)
  path = onnx_path(weights_fingerprint(model), pooling, model.max_seq_length)
  if not os.path.exists(path):
    logging.info('Exporting the model to ONNX at %s (once: later runs reuse it)', path)
    export(model, path)
  return path


class OnnxEncoder:
  """Encodes texts with an exported graph; the same call shape as SentenceTransformer.encode."""

  def __init__(self, session, tokenizer, max_seq_length: int, normalize: bool):
    self._session = session
    self.tokenizer = tokenizer  # public, as on SentenceTransformer: forward passes count tokens
    self.max_seq_length = max_seq_length
    # The lengths its passes are padded to (read by models/forward_passes.py when it plans).
    self.pass_lengths = graph_lengths(max_seq_length)
    self._pad_values = _pad_values(tokenizer)
    self._pad_left = getattr(tokenizer, 'padding_side', 'right') == 'left'
    self._normalize = normalize
    self._inputs = [i.name for i in session.get_inputs()]

  def encode(self, texts: List[str], batch_size: int = 32, normalize_embeddings: bool = False,
             show_progress_bar: bool = False, convert_to_tensor: bool = False, **_):
    order = np.argsort([-len(t) for t in texts], kind='stable')  # as encode does: little padding
    out = None
    for start in range(0, len(texts), batch_size):
      chosen = order[start:start + batch_size]
      tokens = self.tokenizer([texts[i] for i in chosen], padding=True, truncation=True,
                               max_length=self.max_seq_length, return_tensors='np')
      feed = self._padded({name: tokens[name].astype(np.int64) for name in self._inputs})
      vectors = self._session.run(None, feed)[0]
      if out is None:
        out = np.zeros((len(texts), vectors.shape[1]), np.float32)
      out[chosen] = vectors
    if out is None:
      out = np.zeros((0, 0), np.float32)
    if self._normalize or normalize_embeddings:
      out = unit_rows(out)
    if convert_to_tensor:
      import torch  # only when asked for: the job takes the array
      return torch.from_numpy(out)
    return out

  def _padded(self, feed: dict) -> dict:
    """`feed` (padded to its longest text) padded further to its pass length, as the
    tokenizer pads (its side, the pad token, attention 0), so the vectors do not change."""
    width = next(iter(feed.values())).shape[1]
    length = padded_length(self.pass_lengths, width) if self.pass_lengths else width
    if length == width:
      return feed
    extra = length - width
    side = (extra, 0) if self._pad_left else (0, extra)
    return {name: np.pad(array, ((0, 0), side), constant_values=self._pad_values.get(name, 0))
            for name, array in feed.items()}


def _pad_values(tokenizer) -> dict:
  return {'input_ids': getattr(tokenizer, 'pad_token_id', None) or 0,
          'token_type_ids': getattr(tokenizer, 'pad_token_type_id', None) or 0}


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


def load_onnx(model, quantize: str = 'none') -> OnnxEncoder:
  """Opens an ONNX Runtime encoder on the cached export (quantized once if asked)."""
  transformer, _, normalize = _graph_parts(model)
  path = plain = exported_onnx(model)
  if quantize == 'int8':
    path = int8_path(plain)
    if not os.path.exists(path):
      from onnxruntime.quantization import QuantType, quantize_dynamic
      temporary = f'{path}.{os.getpid()}.tmp'
      quantize_dynamic(plain, temporary, weight_type=QuantType.QInt8, per_channel=True)
      os.replace(temporary, path)
  return onnx_encoder(path, transformer.tokenizer, model.max_seq_length, normalize)


def onnx_encoder(path: str, tokenizer, max_seq_length: int, normalize: bool) -> OnnxEncoder:
  """An ONNX Runtime encoder on the graph at `path`."""
  import onnxruntime
  session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
  return OnnxEncoder(session, tokenizer, max_seq_length, normalize)
