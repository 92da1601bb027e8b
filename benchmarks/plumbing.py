"""The job's own cost per event: the replay builder around a model that costs nothing.

  python -m benchmarks.plumbing [--input GLOB] [--limit N] [--rounds 3]
      [--tree OTHER_CHECKOUT ...] [--no_fsync_too] [--profile FILE]

Each run is a fresh process that replays the archive through the project's
builder (parse, late flag, event time, RunInference with the project's
handler, windows, Parquet) on the FnApiRunner, with a zero-cost model: each
text's vector (width --dimensions, 384 as the default model's) comes from a hash
of the text. Beside it, the same model's bare `encode` of the same texts in
calls of the job's batch size. `--tree DIR` adds the builder of another
checkout (e.g. the commit before a change), run in alternating processes with
PYTHONPATH pointing at that tree; the ratios compare events/s within this run.
`--no_fsync_too` adds this tree with `--no_fsync` (files renamed into place without
fsync of the file and its folder), alternating likewise: the cost of durable files.

The worker part of this file imports only the standard library and the tree
under test, so that it runs against checkouts that lack this benchmark.
"""
import argparse
import gzip
import hashlib
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

_HERE = pathlib.Path(__file__).resolve()
WIKI_FLAGS = ['--time_field', 'time', '--text_field', 'comment']


class ZeroCostModel:
  """Answers `encode` like a SentenceTransformer, at the cost of one hash per text."""

  def __init__(self, dimensions: int = 384):
    self.dimensions = dimensions

  def encode(self, texts, batch_size=32, normalize_embeddings=False, show_progress_bar=False,
             convert_to_tensor=True):
    del batch_size, normalize_embeddings, show_progress_bar, convert_to_tensor
    import numpy as np
    import torch
    digests = b''.join(hashlib.blake2b(t.encode('utf-8', 'surrogatepass'), digest_size=64).digest()
                       for t in texts)
    rows = np.frombuffer(digests, np.uint8).reshape(len(texts), 64)
    vectors = np.tile(rows, (1, -(-self.dimensions // 64)))[:, :self.dimensions]
    return torch.from_numpy(vectors.astype(np.float32) / 255.0)


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _worker(args) -> dict:
  """One replay in this process, with whatever tree PYTHONPATH names."""
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions

  from models.handler import SentenceTransformerHandler
  from pipelines.builder import build
  try:
    from pipelines.config import job_config
  except ImportError:  # a checkout from before the config moved out of pipelines/options.py
    from pipelines.options import job_config
  try:
    from transforms.io.sources import ReadArchive
  except ImportError:  # a checkout from before sources moved to transforms/io/
    from transforms.sources import ReadArchive

  class ZeroCostHandler(SentenceTransformerHandler):

    def load_model(self):
      return ZeroCostModel(args.dimensions)

  if args.bare:
    texts = _texts(args.input)
    batch = job_config(PipelineOptions(['--output', 'unused'])).model.max_batch_size
    model = ZeroCostModel(args.dimensions)
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
      model.encode(texts[i:i + batch]).float().cpu().numpy()
    seconds = time.perf_counter() - started
    return {'events': len(texts), 'seconds': seconds, 'peak_rss_mb': _peak_rss_mb()}
  with tempfile.TemporaryDirectory() as scratch:
    out = args.output or scratch
    options = PipelineOptions(['--runner', 'FnApiRunner', '--output', out, *WIKI_FLAGS,
                               *args.flags])
    config = job_config(options)
    profiler = None
    if args.profile:
      import cProfile
      profiler = cProfile.Profile()
      profiler.enable()
    started = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    build(pipeline | 'Read records' >> ReadArchive(args.input), config,
          ZeroCostHandler(config.model))
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - started
    # The job's own peak, before anything reads its output back.
    peak_rss_mb = _peak_rss_mb()
    if profiler is not None:
      profiler.disable()
      profiler.dump_stats(args.profile)
    from apache_beam.metrics.metric import MetricsFilter
    rows = sum(c.committed or 0 for c in result.metrics().query(
        MetricsFilter().with_namespace('enrichment').with_name('enriched_rows'))['counters'])
  return {'events': rows, 'seconds': seconds, 'peak_rss_mb': peak_rss_mb}


def _texts(path: str) -> list:
  texts = []
  with gzip.open(path, 'rt', encoding='utf-8') if path.endswith('.gz') else open(path) as lines:
    for line in lines:
      text = json.loads(line).get('comment')
      if isinstance(text, str) and text.strip():
        texts.append(text)
  return texts


def run_worker(tree: pathlib.Path, archive: str, *extra: str) -> dict:
  """Runs one fresh worker process against `tree`; returns its JSON answer."""
  env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE='1')
  done = subprocess.run([sys.executable, str(_HERE), '--worker', '--input', archive, *extra],
                        cwd=str(tree), env=env, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    raise RuntimeError(f'worker on {tree} failed:\n{done.stderr[-3000:]}')
  return json.loads(done.stdout.strip().splitlines()[-1])


def slice_archive(source: str, limit: int, folder: str) -> str:
  """The first `limit` lines of a (gzipped) JSON Lines archive, as a file in `folder`."""
  target = os.path.join(folder, f'first-{limit}.jsonl')
  with gzip.open(source, 'rt', encoding='utf-8') as lines, open(target, 'w') as out:
    for n, line in enumerate(lines):
      if n == limit:
        break
      out.write(line)
  return target


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--input', default=None)
  parser.add_argument('--limit', type=int, default=0, help='only the first N lines')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--dimensions', type=int, default=384)
  parser.add_argument('--tree', action='append', default=[],
                      help='another checkout to run side by side (repeatable)')
  parser.add_argument('--no_fsync_too', action='store_true',
                      help='also run this tree with --no_fsync: the cost of fsync')
  parser.add_argument('--label', default='')
  parser.add_argument('--results', default=None, help='folder for the JSON (default: results/)')
  parser.add_argument('--profile', default=None, help='cProfile the job into this file')
  parser.add_argument('--check', action='store_true',
                      help='also compare the rows each tree writes (all columns, file names aside)')
  parser.add_argument('--output', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--bare', action='store_true', help=argparse.SUPPRESS)
  args, flags = parser.parse_known_args(argv)
  args.flags = flags  # any job option (e.g. --window_size 10) passes through
  return args


def main(argv=None):
  args = _parse(argv)
  if args.worker:
    print(json.dumps(_worker(args)))
    return
  sys.path.insert(0, str(_HERE.parent.parent))
  from benchmarks.common import DEFAULT_INPUT, RESULTS, ROOT, describe
  archive = args.input or str(DEFAULT_INPUT)
  trees = ([('this tree', ROOT, ())] + [(str(t), pathlib.Path(t).resolve(), ()) for t in args.tree]
           + ([('this tree --no_fsync', ROOT, ('--no_fsync',))] if args.no_fsync_too else []))
  machine = describe()
  print(f'machine: {machine}', flush=True)
  with tempfile.TemporaryDirectory() as folder:
    if args.limit:
      archive = slice_archive(archive, args.limit, folder)
    common = ['--dimensions', str(args.dimensions), *args.flags]
    if args.profile:
      common += ['--profile', args.profile]
    runs = {name: [] for name, _, _ in trees}
    runs['bare encode'] = []
    for n in range(args.rounds):
      for name, tree, extra in reversed(trees) if n % 2 else trees:  # alternate the order
        runs[name].append(run_worker(tree, archive, *common, *extra))
        print(f'round {n + 1} {name}: {_line(runs[name][-1])}', flush=True)
      runs['bare encode'].append(run_worker(ROOT, archive, '--bare', *common))
    identical = _same_rows(trees, archive, common, folder) if args.check else None
  table = {name: _summary(samples) for name, samples in runs.items()}
  reference = table[trees[-1][0]]['events_per_s']
  for name, row in table.items():
    row['ratio_to_last_tree'] = round(row['events_per_s'] / reference, 2)
    print(f'{name:>40}: {row["events"]} events, median {row["seconds"]:.2f} s, '
          f'{row["events_per_s"]:.0f} events/s ({row["ratio_to_last_tree"]:.2f}x), '
          f'peak RSS {row["peak_rss_mb"]:.0f} MB')
  result = {'machine': machine, 'input': archive if not args.limit else
            f'first {args.limit} lines of {args.input or DEFAULT_INPUT}',
            'dimensions': args.dimensions, 'flags': args.flags, 'rounds': args.rounds,
            'results': table, 'identical_rows': identical, 'runs': runs}
  folder = pathlib.Path(args.results) if args.results else RESULTS
  folder.mkdir(parents=True, exist_ok=True)
  name = f'plumbing{"-" + args.label if args.label else ""}.json'
  (folder / name).write_text(json.dumps(result, indent=2) + '\n')


def _same_rows(trees, archive, common, folder) -> bool:
  """Whether every tree writes the same enriched rows and dead letters, file names aside."""
  import pyarrow.dataset as ds
  tables = []
  for n, (name, tree, extra) in enumerate(trees):
    out = os.path.join(folder, f'out-{n}')
    run_worker(tree, archive, *common, *extra, '--output', out)
    written = []
    for sub, order in (('enriched', ['window', 'id']), ('deadletter', ['reason', 'source'])):
      path = os.path.join(out, sub)
      table = (ds.dataset(path, format='parquet', partitioning='hive').to_table()
               if os.path.isdir(path) and os.listdir(path) else None)
      written.append(None if table is None else table.sort_by([(c, 'ascending') for c in order]))
    tables.append(written)
    print(f'{name}: {written[0].num_rows} rows, '
          f'{0 if written[1] is None else written[1].num_rows} dead letters', flush=True)
  same = all(_equal(t, tables[0]) for t in tables[1:])
  print(f'identical rows: {"yes" if same else "NO"}', flush=True)
  return same


def _equal(a, b) -> bool:
  return all((x is None and y is None) or (x is not None and y is not None and x.equals(y))
             for x, y in zip(a, b))


def _line(sample: dict) -> str:
  return (f'{sample["events"]} events in {sample["seconds"]:.2f} s '
          f'({sample["events"] / sample["seconds"]:.0f}/s), peak RSS {sample["peak_rss_mb"]:.0f} MB')


def _summary(samples) -> dict:
  seconds = statistics.median(s['seconds'] for s in samples)
  return {'events': samples[0]['events'], 'seconds': round(seconds, 3),
          'events_per_s': round(samples[0]['events'] / seconds, 1),
          'peak_rss_mb': round(statistics.median(s['peak_rss_mb'] for s in samples), 1)}


if __name__ == '__main__':
  main()
