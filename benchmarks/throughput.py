"""Throughput of the replay pipeline against a bare `SentenceTransformer.encode`.

  python -m benchmarks.throughput [--limit 3000] [--rounds 2] [--precisions fp32,bf16,onnx]

On the same texts (default: the first 3000 comments of the shared Wikipedia
edit stream), alternating in one run, each variant in a fresh process:
  bare         load the model, `encode` every text with sentence-transformers'
               defaults (batch_size 32): the limit;
  bare-tuned   the same texts in the job's forward passes (sorted by token count,
               filled to a token budget: models/forward_passes.py), without Beam
               and without the cache, so the job's own overhead shows apart from
               how it batches;
  pipeline     this project's replay, archive to Parquet, on the local runner;
  mltransform  Beam's MLTransform + SentenceTransformerEmbeddings on the same texts.
End to end runs from the child's spawn through imports, model load and the
first full pass; each setting's graph is built (and cached, models/cached_encoder.py)
by an untimed load before the rounds, so every round measures what any run after
a machine's first one pays. Steady state leaves start-up out: bare times a second
`encode` of all texts; the pipelines subtract a 64-event run from a second
full run (each run builds its pipeline and loads its model, so fixed costs cancel).
Each setting beyond fp32 (fp16, bf16, onnx, onnx-int8, openvino, openvino-bf16,
openvino-int8, openvino-int8-bf16, and auto and fast: models/precision.py) runs bare
and pipeline with it, with the minimum and mean cosine of its embeddings to fp32 ones
(first round); `python -m benchmarks.accuracy` judges the settings' tiers.
Prints events/s, ratios to bare fp32, peak RSS; writes JSON and PNG to benchmarks/results/.
"""
import argparse
import itertools
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import (DEFAULT_INPUT, RESULTS, ROOT, bar_chart, describe, read_texts,
                               write_result, write_slice)
from models.embedding_cache import hit_rate

VARIANTS = ('bare', 'bare-tuned', 'pipeline', 'mltransform')
ST_DEFAULT_BATCH = 32  # SentenceTransformer.encode's batch_size
SMALL = 64


def _settings():
  """Model settings a variant can run with, as the job's flags: the named ones of
  models/precision.py, and auto and fast (chosen for the machine where they run)."""
  from models.precision import SETTINGS as NAMED
  named = {name: setting.flags() for name, setting in NAMED.items()}
  return {**named, 'auto': ['--precision', 'auto'], 'fast': ['--precision', 'fast']}


SETTINGS = _settings()


def setting_config(setting: str, device: str):
  from models.loading import ModelConfig
  flags = SETTINGS[setting]
  values = dict(zip(flags[::2], flags[1::2]))
  return ModelConfig(device=device, precision=values.get('--precision', 'fp32'),
                     backend=values.get('--backend', 'torch'),
                     quantize=values.get('--quantize', 'none'))


BASELINE = 'bare@fp32'


# --- children: each runs one variant in its own process and prints JSON ---

def _bare_child(tuned: bool):

  def child(args):
    return child_bare(args, tuned)

  return child


def child_bare(args, tuned=False):
  from models.forward_passes import encode_in_passes
  from models.loading import forward_pass_limits, load_sentence_transformer
  texts = read_texts(args.slice, args.text_field)
  config = setting_config(args.precision, args.device)

  def encode():
    started = time.perf_counter()
    if tuned:
      encode_in_passes(model, texts, {'show_progress_bar': False, 'convert_to_tensor': True},
                       *forward_pass_limits(config, args.device))
    else:
      model.encode(texts, batch_size=ST_DEFAULT_BATCH, show_progress_bar=False,
                   convert_to_tensor=True)
    return time.perf_counter() - started

  model = load_sentence_transformer(config)
  encode()
  e2e = time.time() - args.spawned_at
  measured = {'e2e_s': e2e, 'steady_s': None if args.e2e_only else encode()}
  if args.accuracy and args.precision != 'fp32':
    measured.update(accuracy_against_fp32(model, texts, args.device))
  return measured


def accuracy_against_fp32(model, texts, device):
  """Minimum and mean cosine of this model's embeddings to fp32 ones of the same texts."""
  import torch
  from models.loading import ModelConfig, load_sentence_transformer
  reference = load_sentence_transformer(ModelConfig(device=device, precision='fp32'))
  kwargs = dict(batch_size=32, show_progress_bar=False, convert_to_tensor=True)
  ours = model.encode(texts, **kwargs).float()
  exact = reference.encode(texts, **kwargs).float()
  cosines = torch.nn.functional.cosine_similarity(ours, exact, dim=1)
  return {'min_cosine': float(cosines.min()), 'mean_cosine': float(cosines.mean())}


def _timed_replay(args, slice_path, output):
  from pipelines import replay
  started = time.perf_counter()
  result = replay.run(['--input', slice_path, '--output', output, '--time_field', 'time',
                       '--text_field', args.text_field, '--device', args.device,
                       *SETTINGS[args.precision], *args.pipeline_args])
  assert result.enriched_rows == result.records_read, result
  args.cache_counts = {'cache_hits': result.cache_hits, 'cache_misses': result.cache_misses}
  return time.perf_counter() - started


def _timed_mltransform(args, slice_path, output):
  import apache_beam as beam
  from apache_beam.ml.transforms.base import MLTransform
  from apache_beam.ml.transforms.embeddings.huggingface import SentenceTransformerEmbeddings
  from models.loading import packaged_model_path
  started = time.perf_counter()
  with beam.Pipeline(runner='FnApiRunner') as p:
    _ = (p
         | beam.io.ReadFromText(slice_path)
         | beam.Map(lambda line: {'text': json.loads(line)[args.text_field]})
         | MLTransform(write_artifact_location=output).with_transform(
             SentenceTransformerEmbeddings(model_name=packaged_model_path(), columns=['text']))
         | beam.Map(lambda row: len(row['text'])))
  return time.perf_counter() - started


def _pipeline_child(run_once):
  """End to end is the first full run; steady state subtracts a small run from a second."""

  def child(args):
    with tempfile.TemporaryDirectory() as folder:
      run_once(args, args.slice, os.path.join(folder, 'first'))
      e2e = time.time() - args.spawned_at
      first_counts = getattr(args, 'cache_counts', {})
      if args.e2e_only:
        return {'e2e_s': e2e, 'steady_s': None, **first_counts}
      small_slice = os.path.join(folder, 'small.jsonl')
      with open(args.slice) as lines, open(small_slice, 'w') as out:
        out.writelines(itertools.islice(lines, SMALL))
      small = run_once(args, small_slice, os.path.join(folder, 'small'))
      full = run_once(args, args.slice, os.path.join(folder, 'full'))
    return {'e2e_s': e2e, 'steady_s': full - small, 'steady_n_offset': SMALL, **first_counts}

  return child


def _warm_child(args):
  """Loads the model at the setting once, untimed: builds and records its cached graph."""
  from models.loading import load_sentence_transformer
  load_sentence_transformer(setting_config(args.precision, args.device))
  return {}


CHILDREN = {'warm': _warm_child, 'bare': _bare_child(False), 'bare-tuned': _bare_child(True),
            'pipeline': _pipeline_child(_timed_replay),
            'mltransform': _pipeline_child(_timed_mltransform)}


def run_child(args, variant, accuracy=False):
  kind, precision = variant.split('@')
  command = [sys.executable, '-m', 'benchmarks.throughput', '--child', kind,
             '--spawned_at', repr(time.time()),
             '--slice', args.slice, '--text_field', args.text_field, '--device', args.device,
             '--precision', precision, *(['--accuracy'] if accuracy else []),
             *(['--e2e_only'] if args.e2e_only else []),
             '--', *args.pipeline_args]
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, HF_HUB_OFFLINE='1'))
  if done.returncode != 0:
    raise SystemExit(f'{variant} failed:\n{done.stderr[-4000:]}')
  return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(runs, n):
  summary = {}
  for variant, measured in runs.items():
    e2e = statistics.median(m['e2e_s'] for m in measured)
    steadies = [m['steady_s'] for m in measured if m['steady_s'] is not None]
    steady = statistics.median(steadies) if steadies else float('inf')
    steady_n = n - measured[0].get('steady_n_offset', 0)
    summary[variant] = {
        'e2e_events_per_s': n / e2e,
        'steady_events_per_s': steady_n / steady,
        'peak_rss_mb': max(m['peak_rss_mb'] for m in measured),
        'e2e_s': [round(m['e2e_s'], 2) for m in measured],
    }
    for key in ('min_cosine', 'mean_cosine', 'cache_hits', 'cache_misses'):
      if key in measured[0]:
        summary[variant][key] = measured[0][key]
    if 'cache_hits' in measured[0]:  # of the first full run in the first round
      summary[variant]['cache_hit_rate'] = hit_rate(measured[0]['cache_hits'],
                                                    measured[0]['cache_misses'])
  bare = summary[BASELINE]
  for variant in summary.values():
    variant['e2e_ratio'] = variant['e2e_events_per_s'] / bare['e2e_events_per_s']
    variant['steady_ratio'] = (variant['steady_events_per_s'] / bare['steady_events_per_s']
                               if bare['steady_events_per_s'] else 0.0)
  return summary


def _gpu_name(device: str):
  if not device.startswith('cuda'):
    return None
  import torch
  return torch.cuda.get_device_name(0)


def _cache_setting(pipeline_args) -> int:
  """The pipelines' --embedding_cache (vectors held per model copy; 0: off)."""
  from pipelines.options import ModelOptions
  return ModelOptions(list(pipeline_args)).embedding_cache


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--input', default=str(DEFAULT_INPUT), help='JSON Lines archive (.gz ok).')
  parser.add_argument('--text_field', default='comment')
  parser.add_argument('--limit', type=int, default=3000)
  parser.add_argument('--skip_accuracy', action='store_true',
                      help='Leave out the cosines to fp32 (they encode every text twice more).')
  parser.add_argument('--e2e_only', action='store_true',
                      help='Only the end-to-end pass (steady state shows as 0).')
  parser.add_argument('--distinct', action='store_true',
                      help='Each text once: the first `limit` distinct texts (no cache hits).')
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument('--device', default='cpu')
  parser.add_argument('--precisions', default='fp32',
                      help=f'Comma-separated settings ({", ".join(SETTINGS)}); bare fp32 is '
                      'always the baseline, and MLTransform runs at fp32 only.')
  parser.add_argument('--precision', default='fp32', help=argparse.SUPPRESS)
  parser.add_argument('--accuracy', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--label', default='', help='Suffix of the result file names.')
  parser.add_argument('--results', default=str(RESULTS), help='Folder for the JSON and PNG.')
  parser.add_argument('--child', choices=('warm',) + VARIANTS, help=argparse.SUPPRESS)
  parser.add_argument('--slice', help=argparse.SUPPRESS)
  parser.add_argument('--spawned_at', type=float, help=argparse.SUPPRESS)
  parser.add_argument('pipeline_args', nargs='*', help='Extra replay flags, after --.')
  args = parser.parse_args(argv)

  if args.child:
    measured = CHILDREN[args.child](args)
    measured['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(measured))
    return

  kinds = [v for v in args.variants.split(',') if v]
  precisions = [p for p in args.precisions.split(',') if p]
  variants = [BASELINE] + [f'{kind}@{precision}' for precision in precisions for kind in kinds
                           if (kind, precision) != ('bare', 'fp32')
                           and (kind != 'mltransform' or precision == 'fp32')
                           and (kind != 'bare-tuned' or precision in ('fp32', 'bf16'))]
  with tempfile.TemporaryDirectory() as folder:
    load_before = os.getloadavg()[0]
    args.slice = write_slice(pathlib.Path(args.input), args.text_field, args.limit, folder,
                             args.distinct)
    n = len(read_texts(args.slice, args.text_field))
    runs = {v: [] for v in variants}
    for precision in dict.fromkeys(['fp32', *precisions]):
      # Untimed: the first load on a machine exports and converts its graph once (minutes
      # with int8 calibration); every round then measures a load from the filled cache.
      run_child(args, f'warm@{precision}')
    for round_number in range(args.rounds):
      order = variants if round_number % 2 == 0 else list(reversed(variants))
      for variant in order:
        measured = run_child(args, variant,
                             accuracy=round_number == 0 and not args.skip_accuracy)
        runs[variant].append(measured)
        print(f'round {round_number + 1} {variant}: {measured["e2e_s"]:.1f} s end to end',
              flush=True)
  summary = summarize(runs, n)
  machine = describe()
  print(f'\n{n} {"distinct " if args.distinct else ""}texts on {args.device}, median of '
        f'{args.rounds} rounds, ratios to bare fp32, pipeline --embedding_cache '
        f'{_cache_setting(args.pipeline_args)}; {machine}')
  print(f'{"variant":<18} {"e2e ev/s":>9} {"ratio":>6} {"steady ev/s":>12} {"ratio":>6} '
        f'{"peak RSS MB":>12} {"min/mean cos to fp32":>21} {"cache hits":>10}')
  for variant, s in summary.items():
    accuracy = (f'{s["min_cosine"]:.4f}/{s["mean_cosine"]:.4f}' if 'min_cosine' in s
                else '-')
    print(f'{variant:<18} {s["e2e_events_per_s"]:>9.1f} {s["e2e_ratio"]:>6.2f} '
          f'{s["steady_events_per_s"]:>12.1f} {s["steady_ratio"]:>6.2f} '
          f'{s["peak_rss_mb"]:>12.0f} {accuracy:>21} '
          f'{s["cache_hit_rate"] if "cache_hit_rate" in s else "-":>10.3}')
  results = pathlib.Path(args.results)
  stem = f'throughput-{args.device}-{"-".join(precisions)}{"-" + args.label if args.label else ""}'
  record = {'texts': n, 'distinct': args.distinct, 'device': args.device,
            'precisions': precisions, 'rounds': args.rounds, 'machine': machine,
            'gpu': _gpu_name(args.device), 'pipeline_args': args.pipeline_args,
            'embedding_cache': _cache_setting(args.pipeline_args),
            'results': summary}
  write_result(results, stem, record, load_before)
  bar_chart(summary, results / f'{stem}.png', f'{n} texts, {args.device}, {machine}')
  print(f'Wrote {results / stem}.png')


if __name__ == '__main__':
  main()
