"""Opening a cached ONNX or OpenVINO graph without building the torch model.

A run on --backend onnx or openvino encodes with a graph exported once and cached
(models/onnx_backend.py), yet finding that graph meant importing sentence-transformers
(about 3 s here: scikit-learn, scipy, torch.distributed), building the torch model
(0.7 s) and hashing its weights: most of a short job's start-up. So a full load
records, beside the graphs, what opening one needs: the weights' fingerprint, the
pooling, the window and the tokenizer, keyed by a digest of the model folder's files
(models/identity.py) and the library versions. A later load of the same folder
finds the record, names the graph from it and opens it with `GraphTokenizer`: the
same tokenizer (its `tokenizers` state, as transformers configured it), answering
the three calls the project makes of a tokenizer. Anything missing or changed (other
files, other versions, a graph deleted) falls back to the full load, which records
again.
"""
import json
import logging
import os
import threading
import types
from importlib.metadata import PackageNotFoundError, version
from typing import List, Optional, Sequence

import numpy as np

from models.onnx_backend import cache_dir

_RECORD_FORMAT = 'graph-record-1'
_LIBRARIES = ('sentence-transformers', 'transformers', 'tokenizers')


class GraphTokenizer:
  """A fast tokenizer's `tokenizers` state, called as transformers' tokenizer is called
  by this project: padded and truncated batches (as arrays), token counts, offsets.
  Each combination of settings gets its own copy of the state, so threads never
  reconfigure one a peer is using."""

  def __init__(self, state: str, pad_token: str, pad_token_id: int, pad_token_type_id: int,
               padding_side: str, truncation_side: str, model_input_names: Sequence[str]):
    self._state = state
    self._pad = dict(pad_token=pad_token, pad_id=pad_token_id, pad_type_id=pad_token_type_id,
                     direction=padding_side)
    self._truncation_side = truncation_side
    self._names = tuple(model_input_names)
    self._configured = {}
    self._lock = threading.Lock()

  @classmethod
  def of(cls, tokenizer) -> Optional['GraphTokenizer']:
    """The GraphTokenizer of a transformers fast tokenizer (None for a slow one)."""
    backend = getattr(tokenizer, 'backend_tokenizer', None)
    if backend is None:
      return None
    return cls(backend.to_str(), tokenizer.pad_token, tokenizer.pad_token_id,
               tokenizer.pad_token_type_id, tokenizer.padding_side, tokenizer.truncation_side,
               tokenizer.model_input_names)

  def to_json(self) -> dict:
    return {'state': self._state, 'pad_token': self._pad['pad_token'],
            'pad_token_id': self._pad['pad_id'], 'pad_token_type_id': self._pad['pad_type_id'],
            'padding_side': self._pad['direction'], 'truncation_side': self._truncation_side,
            'model_input_names': list(self._names)}

  @property
  def pad_token_id(self) -> int:
    return self._pad['pad_id']

  @property
  def pad_token_type_id(self) -> int:
    return self._pad['pad_type_id']

  @property
  def padding_side(self) -> str:
    return self._pad['direction']

  @classmethod
  def from_json(cls, fields: dict) -> 'GraphTokenizer':
    return cls(**fields)

  def _backend(self, max_length: Optional[int], padding: bool, pad_to_multiple_of: Optional[int]):
    key = (max_length, padding, pad_to_multiple_of)
    with self._lock:
      found = self._configured.get(key)
      if found is None:
        from tokenizers import Tokenizer
        found = Tokenizer.from_str(self._state)
        found.no_truncation()
        found.no_padding()
        if max_length:
          found.enable_truncation(max_length, stride=0, strategy='longest_first',
                                  direction=self._truncation_side)
        if padding:
          found.enable_padding(pad_to_multiple_of=pad_to_multiple_of, **self._pad)
        self._configured[key] = found
    return found

  def __call__(self, texts: List[str], add_special_tokens: bool = True, padding: bool = False,
               truncation: bool = False, max_length: Optional[int] = None,
               return_tensors: Optional[str] = None, pad_to_multiple_of: Optional[int] = None,
               return_attention_mask: bool = True, return_token_type_ids: bool = True,
               return_offsets_mapping: bool = False, verbose: bool = True):
    del verbose
    if isinstance(texts, str) or return_tensors not in (None, 'np') or padding not in (
        True, False):
      raise TypeError('GraphTokenizer takes a list of texts, padding True or False and '
                      "return_tensors None or 'np'")
    if truncation and not max_length:
      raise TypeError('GraphTokenizer truncates at an explicit max_length only')
    backend = self._backend(max_length if truncation else None, padding,
                            pad_to_multiple_of if padding else None)
    encodings = backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
    out = {'input_ids': [e.ids for e in encodings]}
    if return_token_type_ids and 'token_type_ids' in self._names:
      out['token_type_ids'] = [e.type_ids for e in encodings]
    if return_attention_mask and 'attention_mask' in self._names:
      out['attention_mask'] = [e.attention_mask for e in encodings]
    if return_offsets_mapping:
      out['offset_mapping'] = [e.offsets for e in encodings]
    if return_tensors == 'np':
      out = {name: np.asarray(rows, dtype=np.int64) for name, rows in out.items()}
    return out


def _versions() -> List[str]:
  found = []
  for library in _LIBRARIES:
    try:
      found.append(f'{library}={version(library)}')
    except PackageNotFoundError:
      found.append(f'{library}=none')
  return found


def _record_path(folder: str) -> str:
  import hashlib
  from models.identity import folder_facts
  key = hashlib.sha256('|'.join([_RECORD_FORMAT, folder_facts(folder).digest, *_versions()])
                       .encode()).hexdigest()
  return os.path.join(cache_dir(), 'records', f'{key[:24]}.json')


def record(folder: str, model) -> None:
  """Notes what opening the graphs of `model` (a SentenceTransformer loaded from `folder`)
  needs, for open_cached; a hub name, or a model these graphs cannot serve, is not noted."""
  from models.onnx_backend import _graph_parts, weights_fingerprint
  if not os.path.isdir(folder):
    return
  try:
    transformer, pooling, normalize = _graph_parts(model)
  except ValueError:
    return
  tokenizer = GraphTokenizer.of(transformer.tokenizer)
  if tokenizer is None:
    return
  fields = {'format': _RECORD_FORMAT, 'fingerprint': weights_fingerprint(model),
            'pooling': pooling, 'normalize': normalize,
            'max_seq_length': model.max_seq_length, 'tokenizer': tokenizer.to_json()}
  path = _record_path(folder)
  temporary = f'{path}.{os.getpid()}.{threading.get_ident()}.tmp'
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(temporary, 'w', encoding='utf-8') as out:
      json.dump(fields, out)
    os.replace(temporary, path)
  except OSError as e:  # only the next load's speed depends on it
    logging.warning('Could not record the cached graph at %s (%s): later loads build the '
                    'model again', path, e)


_BACKEND_NAMES = types.MappingProxyType({'onnx': 'ONNX Runtime', 'openvino': 'OpenVINO'})


def open_recorded(config, source: str):
  """open_cached for a concrete ModelConfig loading from `source` (None: load it fully)."""
  if not os.path.isdir(source):
    return None
  encoder = open_cached(source, config.backend, config.precision, config.quantize,
                        config.torch_threads)
  if encoder is not None:
    logging.info('Loaded %s from %s with %s at %s (quantize: %s; its cached graph, without '
                 'building the torch model)', config.model, source,
                 _BACKEND_NAMES[config.backend], config.precision, config.quantize)
  return encoder


def open_cached(folder: str, backend: str, precision: str, quantize: str, threads: int = 0):
  """The encoder of the graph cached for the model in `folder` at these settings, opened
  without torch's model, or None where no record or no graph is cached (load fully)."""
  try:
    with open(_record_path(folder), encoding='utf-8') as found:
      fields = json.load(found)
  except (OSError, ValueError):
    return None
  if fields.get('format') != _RECORD_FORMAT:
    return None
  fingerprint, pooling, window = fields['fingerprint'], fields['pooling'], fields['max_seq_length']
  tokenizer = GraphTokenizer.from_json(fields['tokenizer'])
  if backend == 'openvino':
    from models.openvino_backend import ir_path, openvino_encoder
    path = ir_path(fingerprint, pooling, window, quantize)
    if not (os.path.exists(path) and os.path.exists(path[:-4] + '.bin')):
      return None
    return openvino_encoder(path, tokenizer, window, fields['normalize'], precision, threads)
  if backend == 'onnx':
    from models.onnx_backend import int8_path, onnx_encoder, onnx_path
    path = onnx_path(fingerprint, pooling, window)
    if quantize == 'int8':
      path = int8_path(path)
    if not os.path.exists(path):
      return None
    return onnx_encoder(path, tokenizer, window, fields['normalize'])
  logging.debug('no cached graph for backend %s', backend)
  return None
