"""Resident memory: of a long live run, and of replays as the archive grows.

  python -m benchmarks.memory [--seconds 600] [--rate 20]
  python -m benchmarks.memory --replay [--sizes 10000,0] [--input GLOB]
  python -m benchmarks.memory --replay --generate 1000000
  python -m benchmarks.memory --replay --derived [--sizes 0] [--zero_cost] [--tree DIR]

Live: runs `pipelines.stream` on the synthetic source for the given time and
prints the job process's RSS every 30 s (from /proc), then the first and last samples.

Replay: the builder of benchmarks.plumbing (zero-cost model, width 384) on the
first N events of the archive for each size (0: all of it), each in a fresh
process, and the peak RSS growth per event between the smallest and largest.
`--generate N` first writes a synthetic archive of N events to /tmp (the shared
Wikipedia edit stream repeated, each copy a day later) and replays it whole.

Derived (`--derived`): the derived-columns replay of docs/derived-columns.md (labels,
near-duplicates with a 300 s horizon, topics with a 600 s horizon, the vector store) as a
user runs it, `python -m pipelines replay` with the real model, on the first N events
(default: the whole archive), each a fresh process: its peak RSS (the kernel's, from
wait4) and the peak of the process tree sampled every 0.5 s, and what it wrote (counts and
a digest of the rows, labels, duplicates, summaries and vector store, to compare trees).
`--zero_cost` runs the same flags in the benchmarks.plumbing builder instead (zero-cost
model, no process of its own for the entry point): cheap, for growth per event;
`--without_store` leaves the vector store out of it.
"""
import argparse
import datetime
import gzip
import hashlib
import itertools
import json
import pathlib
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.common import DEFAULT_INPUT, RESULTS, ROOT, describe

# docs/derived-columns.md's whole-archive replay, less the field mapping.
DERIVED_FLAGS = ('--label_file', 'examples/wikipedia_labels.yaml', '--dedup',
                 '--dedup_horizon', '300', '--topics', '--topic_horizon', '600',
                 '--sink', 'vectors')
WIKI_FIELDS = ('--text_field', 'comment', '--time_field', 'time')

def rss_mb(pid: int) -> float:
  with open(f'/proc/{pid}/status') as status:
    for line in status:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 1024
  return 0.0


def derived_flags(args) -> tuple:
  """DERIVED_FLAGS, without the vector store where asked (--without_store)."""
  if not args.without_store:
    return DERIVED_FLAGS
  return DERIVED_FLAGS[:DERIVED_FLAGS.index('--sink')]


def tree_rss_mb(pid: int) -> float:
  """RSS of a process and all its descendants, from /proc (0 for those gone meanwhile)."""
  total, stack = 0.0, [pid]
  while stack:
    current = stack.pop()
    try:
      total += rss_mb(current)
      for task in os.listdir(f'/proc/{current}/task'):
        with open(f'/proc/{current}/task/{task}/children') as children:
          stack.extend(int(child) for child in children.read().split())
    except (OSError, ValueError):
      continue
  return total


def generate(events: int, source: pathlib.Path, target: str) -> str:
  """Writes `events` records: the source archive's lines again and again, each copy a day
  later; an archive of that many lines already at `target` is taken as written before."""
  if os.path.exists(target):
    with open(target, 'rb') as existing:
      if sum(1 for _ in existing) == events:
        return target
  written, copy = 0, 0
  with open(target, 'w', encoding='utf-8') as out:
    while written < events:
      shift = datetime.timedelta(days=copy)
      with gzip.open(source, 'rt', encoding='utf-8') as lines:
        for line in itertools.islice(lines, events - written):
          record = json.loads(line)
          moment = datetime.datetime.fromisoformat(record['time'].replace('Z', '+00:00'))
          record['time'] = (moment + shift).isoformat().replace('+00:00', 'Z')
          out.write(json.dumps(record, ensure_ascii=False) + '\n')
          written += 1
      copy += 1
  return target


def replay_memory(args) -> dict:
  from benchmarks.plumbing import run_worker, slice_archive
  archive = args.input or str(DEFAULT_INPUT)
  trees = [('this tree', ROOT)] + [(t, pathlib.Path(t).resolve()) for t in args.tree]
  result = {'machine': describe(), 'model': 'zero-cost, width 384', 'trees': {},
            'date': datetime.date.today().isoformat(),
            'flags': list(derived_flags(args)) if args.derived else []}
  with tempfile.TemporaryDirectory() as folder:
    if args.generate:
      archive = generate(args.generate, DEFAULT_INPUT, f'/tmp/synthetic-{args.generate}.jsonl')
      sizes = [0]
    else:
      sizes = [int(n) for n in (args.sizes or '10000,0').split(',')]
    paths = [slice_archive(archive, size, folder) if size else archive for size in sizes]
    for name, tree in trees:
      runs = []
      for path in paths:
        started = time.monotonic()
        sample = run_worker(tree, path, *(derived_flags(args) if args.derived else ()))
        sample['process_seconds'] = round(time.monotonic() - started, 1)
        runs.append(sample)
        print(f'{name}: {sample["events"]} events: job {sample["seconds"]:.1f} s '
              f'({sample["events"] / sample["seconds"]:.0f} events/s), process '
              f'{sample["process_seconds"]} s, peak RSS {sample["peak_rss_mb"]:.0f} MB', flush=True)
      entry = result['trees'][name] = {'runs': runs}
      if len(runs) > 1:
        low, high = runs[0], runs[-1]
        entry['growth_kb_per_event'] = round(
            (high['peak_rss_mb'] - low['peak_rss_mb']) * 1024 / (high['events'] - low['events']), 2)
        print(f'{name}: peak RSS growth {entry["growth_kb_per_event"]} KB per event '
              f'between {low["events"]} and {high["events"]} events', flush=True)
  result['input'] = archive
  return result


def derived_run(tree: pathlib.Path, archive: str, every: float = 0.5) -> dict:
  """One derived-columns replay with the real model in a fresh process (module doc)."""
  with tempfile.TemporaryDirectory() as out:
    command = [sys.executable, '-m', 'pipelines', 'replay', '--input', archive,
               '--output', out, *WIKI_FIELDS, *DERIVED_FLAGS]
    load_before = os.getloadavg()
    with open(os.path.join(out, 'job.log'), 'w') as log:
      started = time.monotonic()
      job = subprocess.Popen(command, cwd=tree, stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE='1'))
      sampled = 0.0
      while True:
        done, status, usage = os.wait4(job.pid, os.WNOHANG)
        if done:
          break
        sampled = max(sampled, tree_rss_mb(job.pid))
        time.sleep(every)
      job.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    with open(os.path.join(out, 'job.log')) as log:
      tail = log.read()[-2000:]
    if job.returncode != 0:
      raise RuntimeError(f'the replay in {tree} failed ({job.returncode}):\n{tail}')
    return {'command': ' '.join(command[1:]).replace(out, 'OUT'), 'tree': str(tree),
            'process_seconds': round(seconds, 1), 'peak_rss_mb': round(usage.ru_maxrss / 1024),
            'sampled_tree_peak_rss_mb': round(sampled),
            'load_average_before_after': [round(load_before[0], 2),
                                          round(os.getloadavg()[0], 2)],
            'summary': [line for line in tail.splitlines() if line.strip()][-4:],
            **derived_outputs(pathlib.Path(out))}


def table_digest(table, order) -> str:
  """A digest of every column of `table`, its rows sorted by `order` (vectors by their bytes)."""
  import numpy as np
  import pyarrow as pa
  table = table.sort_by([(c, 'ascending') for c in order]).combine_chunks()
  digest = hashlib.sha256()
  for name in sorted(table.column_names):
    column = table.column(name)
    digest.update(name.encode())
    if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type) and \
        pa.types.is_floating(column.type.value_type):
      digest.update(np.asarray(column.chunk(0).flatten()).tobytes())
    else:
      digest.update(json.dumps(column.to_pylist(), default=str).encode())
  return digest.hexdigest()[:16]


def derived_outputs(out: pathlib.Path) -> dict:
  """What a derived-columns replay wrote: counts, and digests of every column that compare
  trees (file names aside: the rows' own, and the windows' parts named after them)."""
  import lancedb
  import pyarrow.dataset as ds
  enriched = ds.dataset(out / 'enriched', format='parquet', partitioning='hive').to_table()
  summaries = ds.dataset(out / 'windows', format='parquet', partitioning='hive').to_table()
  store = lancedb.connect(str(out / 'vectors')).open_table('events').to_arrow()
  deadletters = out / 'deadletter'
  labels, duplicates = enriched.column('label'), enriched.column('duplicate_of')
  return {'rows': enriched.num_rows, 'labelled': enriched.num_rows - labels.null_count,
          'duplicates': enriched.num_rows - duplicates.null_count,
          'deadletters': ds.dataset(deadletters, format='parquet').count_rows()
          if any(deadletters.rglob('*.parquet')) else 0,
          'summaries': summaries.num_rows,
          'new_topics': sum(n or 0 for n in summaries.column('new_topics').to_pylist()),
          'store_rows': store.num_rows,
          'digests': {'rows': table_digest(enriched, ['window_start', 'id']),
                      'summaries': table_digest(summaries, ['window_start', 'part']),
                      'store': table_digest(store, ['id', 'chunk'])}}


def derived_memory(args) -> dict:
  from benchmarks.plumbing import slice_archive
  archive = args.input or str(DEFAULT_INPUT)
  sizes = [int(n) for n in (args.sizes or '0').split(',')]
  trees = [('this tree', ROOT)] + [(t, pathlib.Path(t).resolve()) for t in args.tree]
  result = {'machine': describe(), 'model': 'the default (all-MiniLM-L6-v2)',
            'date': datetime.date.today().isoformat(), 'input': archive, 'trees': {}}
  with tempfile.TemporaryDirectory() as folder:
    paths = [slice_archive(archive, size, folder) if size else archive for size in sizes]
    for name, tree in trees:
      runs = result['trees'][name] = []
      for path in paths:
        runs.append(derived_run(tree, path))
        run = runs[-1]
        print(f'{name}: {run["rows"]} rows: process {run["process_seconds"]} s, peak RSS '
              f'{run["peak_rss_mb"]} MB (process tree sampled: '
              f'{run["sampled_tree_peak_rss_mb"]} MB), load {run["load_average_before_after"]}',
              flush=True)
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seconds', type=float, default=600)
  parser.add_argument('--rate', type=float, default=20)
  parser.add_argument('--every', type=float, default=30)
  parser.add_argument('--replay', action='store_true', help='replay memory instead of live')
  parser.add_argument('--sizes', default=None,
                      help='replay: events per run, 0 = all (default 10000,0; --derived: 0)')
  parser.add_argument('--derived', action='store_true',
                      help='replay: the derived-columns replay of docs/derived-columns.md')
  parser.add_argument('--zero_cost', action='store_true',
                      help='--derived: in the zero-cost builder of benchmarks.plumbing')
  parser.add_argument('--without_store', action='store_true',
                      help='--derived --zero_cost: without the vector store (--sink vectors)')
  parser.add_argument('--input', default=None, help='replay: the archive (default: shared)')
  parser.add_argument('--results', default=None, help='folder for the JSON (default: results/)')
  parser.add_argument('--tree', action='append', default=[],
                      help='replay: also measure another checkout (benchmarks.plumbing)')
  parser.add_argument('--generate', type=int, default=0,
                      help='replay: write a synthetic archive of N events to /tmp, replay it')
  args = parser.parse_args(argv)
  if args.replay:
    derived = args.derived and not args.zero_cost
    result = derived_memory(args) if derived else replay_memory(args)
    folder = pathlib.Path(args.results) if args.results else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    name = (f'memory-replay{"-derived" if args.derived else ""}'
            f'{"-zero-cost" if args.derived and args.zero_cost else ""}'
            f'{"-no-store" if args.derived and args.without_store else ""}'
            f'{"-" + str(args.generate) if args.generate else ""}.json')
    (folder / name).write_text(json.dumps(result, indent=2) + '\n')
    return
  with tempfile.TemporaryDirectory() as folder:
    job = subprocess.Popen(
        [sys.executable, '-m', 'pipelines.stream', '--source', f'synthetic://?rate={args.rate}',
         '--output', folder, '--duration', str(args.seconds)],
        cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE='1'),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started, samples = time.monotonic(), []
    time.sleep(min(20, args.every))  # past start-up and the model load
    while job.poll() is None:
      samples.append((round(time.monotonic() - started), round(rss_mb(job.pid))))
      print(f'{samples[-1][0]:>5} s  RSS {samples[-1][1]} MB', flush=True)
      time.sleep(args.every)
    code = job.wait()
  result = {'seconds': args.seconds, 'rate': args.rate, 'exit': code, 'samples': samples,
            'rss_first_mb': samples[0][1], 'rss_last_mb': samples[-1][1]}
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / 'memory.json').write_text(json.dumps(result, indent=2) + '\n')
  print(f'RSS {samples[0][1]} MB at {samples[0][0]} s, {samples[-1][1]} MB at '
        f'{samples[-1][0]} s; job exit {code}')


if __name__ == '__main__':
  main()
