"""Which int8 keeps the neighbours: OpenVINO/NNCF quantization variants against fp32.

  python -m benchmarks.int8_variants [--variants static,static-keep-ffn-out-last,...]

On the first 2,000 distinct comments of the shared archive: each variant's top-10
neighbour overlap and min/mean cosine to plain fp32 `encode` (the accuracy guard's
measures, benchmarks/accuracy.py), the time to build it and to encode the texts
(OpenVINO bf16 hint for what stays unquantized). Variants:
  bf16                         no quantization (the reference speed);
  static                       NNCF static int8, transformer preset, calibrated on
                               models/calibration/ (what --quantize int8 builds);
  static-keep-ffn-out          the feed-forward output MatMuls left unquantized;
  static-keep-ffn-out-last     ... and the last layer's MatMuls;
  static-keep-ffn-out-ends     ... and the first and last layers' MatMuls;
  weights-int8                 weight-only int8 (nncf.compress_weights, INT8_ASYM).
Build times and speeds are as loaded as the machine was (recorded); writes JSON
under benchmarks/results/.
"""
import argparse
import json
import os
import time


from benchmarks.accuracy import row_cosines, top_k_overlap
from benchmarks.common import DEFAULT_INPUT, RESULTS, archive_texts, write_result

VARIANTS = ('bf16', 'static', 'static-keep-ffn-out',
            'static-keep-ffn-out-last', 'static-keep-ffn-out-ends', 'weights-int8')


def _matmuls(graph, keep):
  return [op.get_friendly_name() for op in graph.get_ordered_ops()
          if op.get_type_name() == 'MatMul' and keep(op.get_friendly_name())]


def build(name, onnx_path, items):
  import nncf
  import openvino as ov
  graph = ov.convert_model(onnx_path)
  if name == 'bf16':
    return graph
  if name == 'weights-int8':
    from models.openvino_backend import compressed_weights
    return compressed_weights(graph)  # what --quantize int8_weights builds
  ignored = []
  if 'keep-ffn-out' in name:
    ignored += _matmuls(graph, lambda n: n.endswith('/output/dense/MatMul') and 'attention' not in n)
  if name.endswith(('-last', '-ends')):
    ignored += _matmuls(graph, lambda n: 'layer.5/' in n)
  if name.endswith('-ends'):
    ignored += _matmuls(graph, lambda n: 'layer.0/' in n)
  kwargs = {'model_type': nncf.ModelType.TRANSFORMER, 'subset_size': 16 * len(items)}
  if ignored:
    kwargs['ignored_scope'] = nncf.IgnoredScope(names=sorted(set(ignored)))
  return nncf.quantize(graph, nncf.Dataset(items), **kwargs)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument('--limit', type=int, default=2000)
  parser.add_argument('--input', default=str(DEFAULT_INPUT))
  parser.add_argument('--label', default='')
  args = parser.parse_args(argv)
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  import openvino as ov
  from models import openvino_backend
  from models.forward_passes import encode_in_passes
  from models.loading import ModelConfig, load_sentence_transformer
  from models.onnx_backend import OnnxEncoder, exported_onnx
  texts = archive_texts(args.input, 'comment', args.limit, distinct=True)
  model = load_sentence_transformer(ModelConfig(device='cpu', precision='fp32'))
  reference = model.encode(texts, show_progress_bar=False)
  tokenizer = model[0].tokenizer
  items = list(openvino_backend._feeds(  # pylint: disable=protected-access
      tokenizer, openvino_backend.calibration_texts(),
      ['input_ids', 'attention_mask', 'token_type_ids'], model.max_seq_length))
  results = {}
  for name in args.variants.split(','):
    started = time.perf_counter()
    graph = build(name, exported_onnx(model), items)
    built = time.perf_counter() - started
    compiled = ov.Core().compile_model(graph, 'CPU', {'INFERENCE_PRECISION_HINT': 'bf16',
                                                      'PERFORMANCE_HINT': 'LATENCY'})
    encoder = OnnxEncoder(openvino_backend._Session(compiled),  # pylint: disable=protected-access
                          tokenizer, model.max_seq_length, True)
    encode_in_passes(encoder, texts[:200], {'convert_to_tensor': True}, 2048)
    started = time.perf_counter()
    vectors = encode_in_passes(encoder, texts, {'convert_to_tensor': True}, 2048)
    cosines = row_cosines(vectors, reference)
    results[name] = {'build_s': round(built, 1),
                     'encode_s': round(time.perf_counter() - started, 2),
                     'top10_overlap': round(top_k_overlap(reference, vectors), 4),
                     'min_cosine': round(float(cosines.min()), 4),
                     'mean_cosine': round(float(cosines.mean()), 5),
                     'load_average': round(os.getloadavg()[0], 1)}
    print(name, json.dumps(results[name]), flush=True)
  write_result(RESULTS, f'int8-variants{"-" + args.label if args.label else ""}',
               {'texts': len(texts), 'results': results})


if __name__ == '__main__':
  main()
