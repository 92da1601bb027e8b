"""An OpenVINO backend: the project's ONNX export, converted once, run by OpenVINO's CPU plugin.

On the AMD EPYC development host (AVX512-BF16, AVX512-VNNI, 2 cores) OpenVINO ran
the MiniLM forward passes several times faster than torch at the same precision
(docs/precision.md has the figures). `--precision bf16` asks its CPU plugin for
bf16 arithmetic (native with AVX512-BF16 or AMX; elsewhere the plugin keeps f32);
`--quantize int8` quantizes the graph statically with NNCF: weights per channel,
activation ranges calibrated on the texts in models/calibration/, and the
operations NNCF's transformer preset knows to be sensitive (softmax, layer norm,
the residual adds) left in higher precision; `--quantize int8_weights` stores only the
weights in int8 (NNCF's weight compression, asymmetric, per output channel) and computes
at `--precision`: it kept the archive's neighbours where static int8 did not
(docs/precision.md). Converted and quantized graphs are
cached beside the ONNX export, keyed by the weights' fingerprint and the library
versions (models/onnx_backend.py).
"""
import json
import logging
import os
import pathlib
import threading
import types
from typing import List

import numpy as np

from models.onnx_backend import (OnnxEncoder, _graph_parts, cached_folder, exported_onnx,
                                 onnx_path, weights_fingerprint)

CALIBRATION = pathlib.Path(__file__).resolve().parent / 'calibration' / 'wikiticker-comments.jsonl'
_CALIBRATION_BATCH = 16
_HINTS = types.MappingProxyType({'fp32': 'f32', 'bf16': 'bf16'})


def calibration_texts() -> List[str]:
  with open(CALIBRATION, encoding='utf-8') as lines:
    return [json.loads(line)['text'] for line in lines if line.strip()]


class _Session:
  """The two calls OnnxEncoder makes of an ONNX Runtime session, on a compiled model.
  Each thread gets its own infer request (requests are not thread-safe; RunInference
  shares one model among a process's threads)."""

  def __init__(self, compiled):
    self._compiled = compiled
    self._output = compiled.output(0)
    self._local = threading.local()
    self._inputs = [_Input(port.get_any_name()) for port in compiled.inputs]

  def get_inputs(self):
    return self._inputs

  def run(self, _, feed):
    request = getattr(self._local, 'request', None)
    if request is None:
      request = self._local.request = self._compiled.create_infer_request()
    return [request.infer(feed)[self._output].copy()]


class _Input:

  def __init__(self, name: str):
    self.name = name


def _feeds(tokenizer, texts: List[str], names: List[str], max_length: int):
  for start in range(0, len(texts), _CALIBRATION_BATCH):
    tokens = tokenizer(texts[start:start + _CALIBRATION_BATCH], padding=True, truncation=True,
                       max_length=max_length, return_tensors='np')
    yield {name: tokens[name].astype(np.int64) for name in names}


def ir_path(fingerprint: str, pooling: str, max_seq_length, quantize: str) -> str:
  """Where the OpenVINO IR (.xml) of the weights with `fingerprint` is cached, as
  `quantize` leaves it; named without importing NNCF (a second on its own)."""
  from importlib.metadata import version
  import openvino as ov
  versions = [ov.__version__]
  if quantize in ('int8', 'int8_weights'):
    versions.append(version('nncf'))
  if quantize == 'int8':
    versions.append(_calibration_digest())
  export = onnx_path(fingerprint, pooling, max_seq_length)
  folder = cached_folder('openvino', fingerprint, ['ir-1', quantize, *versions,
                                                   os.path.basename(os.path.dirname(export))])
  return os.path.join(folder, f'model-{quantize}.xml' if quantize != 'none' else 'model.xml')


def converted(model, quantize: str) -> str:
  """The OpenVINO IR (.xml) of the model, fp32 or int8, built once and cached."""
  import openvino as ov
  _, pooling, _ = _graph_parts(model)
  path = ir_path(weights_fingerprint(model), pooling, model.max_seq_length, quantize)
  if os.path.exists(path):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  graph = ov.convert_model(exported_onnx(model))
  if quantize == 'int8':
    import nncf
    logging.info('Quantizing the model to int8 with NNCF (once: later runs reuse %s)', path)
    transformer = model[0]
    names = [port.get_any_name() for port in graph.inputs]
    items = list(_feeds(transformer.tokenizer, calibration_texts(), names,
                        model.max_seq_length))
    graph = nncf.quantize(graph, nncf.Dataset(items), subset_size=len(items) * _CALIBRATION_BATCH,
                          model_type=nncf.ModelType.TRANSFORMER)
  elif quantize == 'int8_weights':
    logging.info('Compressing the weights to int8 with NNCF (once: later runs reuse %s)', path)
    graph = compressed_weights(graph)
  temporary = f'{path[:-4]}.{os.getpid()}.tmp.xml'
  ov.save_model(graph, temporary, compress_to_fp16=False)  # fp16 weights would change vectors
  os.replace(temporary[:-4] + '.bin', path[:-4] + '.bin')
  os.replace(temporary, path)
  return path


def compressed_weights(graph):
  """`graph` with its weights stored in int8 (asymmetric), what --quantize int8_weights builds."""
  import nncf
  return nncf.compress_weights(graph, mode=nncf.CompressWeightsMode.INT8_ASYM)


def _calibration_digest() -> str:
  import hashlib
  return hashlib.sha256(CALIBRATION.read_bytes()).hexdigest()[:16]


def load_openvino(model, precision: str = 'fp32', quantize: str = 'none',
                  threads: int = 0) -> OnnxEncoder:
  """An encoder on OpenVINO's CPU plugin at `precision` (its inference hint)."""
  transformer, _, normalize = _graph_parts(model)
  return openvino_encoder(converted(model, quantize), transformer.tokenizer,
                          model.max_seq_length, normalize, precision, threads)


def openvino_encoder(path: str, tokenizer, max_seq_length: int, normalize: bool,
                     precision: str = 'fp32', threads: int = 0) -> OnnxEncoder:
  """An encoder on the IR at `path`, compiled for OpenVINO's CPU plugin at `precision`."""
  import openvino as ov
  core = ov.Core()
  properties = {'INFERENCE_PRECISION_HINT': _HINTS[precision], 'PERFORMANCE_HINT': 'LATENCY'}
  if threads:
    properties['INFERENCE_NUM_THREADS'] = threads
  compiled = core.compile_model(core.read_model(path), 'CPU', properties)
  return OnnxEncoder(_Session(compiled), tokenizer, max_seq_length, normalize)
