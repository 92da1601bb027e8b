"""Resident memory: of a long live run, and of replays as the archive grows.

  python -m benchmarks.memory [--seconds 600] [--rate 20]
  python -m benchmarks.memory --replay [--sizes 10000,0] [--input GLOB]
  python -m benchmarks.memory --replay --generate 1000000

Live: runs `pipelines.stream` on the synthetic source for the given time and
prints the job process's RSS every 30 s (from /proc), then the first and last samples.

Replay: the builder of benchmarks.plumbing (zero-cost model, width 384) on the
first N events of the archive for each size (0: all of it), each in a fresh
process, and the peak RSS growth per event between the smallest and largest.
`--generate N` first writes a synthetic archive of N events to /tmp (the shared
Wikipedia edit stream repeated, each copy a day later) and replays it whole.
"""
import argparse
import datetime
import gzip
import itertools
import json
import pathlib
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.common import DEFAULT_INPUT, RESULTS, ROOT, describe



def rss_mb(pid: int) -> float:
  with open(f'/proc/{pid}/status') as status:
    for line in status:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 1024
  return 0.0


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
  result = {'machine': describe(), 'model': 'zero-cost, width 384', 'trees': {}}
  with tempfile.TemporaryDirectory() as folder:
    if args.generate:
      archive = generate(args.generate, DEFAULT_INPUT, f'/tmp/synthetic-{args.generate}.jsonl')
      sizes = [0]
    else:
      sizes = [int(n) for n in args.sizes.split(',')]
    paths = [slice_archive(archive, size, folder) if size else archive for size in sizes]
    for name, tree in trees:
      runs = []
      for path in paths:
        started = time.monotonic()
        sample = run_worker(tree, path)
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


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seconds', type=float, default=600)
  parser.add_argument('--rate', type=float, default=20)
  parser.add_argument('--every', type=float, default=30)
  parser.add_argument('--replay', action='store_true', help='replay memory instead of live')
  parser.add_argument('--sizes', default='10000,0', help='replay: events per run, 0 = all')
  parser.add_argument('--input', default=None, help='replay: the archive (default: shared)')
  parser.add_argument('--results', default=None, help='folder for the JSON (default: results/)')
  parser.add_argument('--tree', action='append', default=[],
                      help='replay: also measure another checkout (benchmarks.plumbing)')
  parser.add_argument('--generate', type=int, default=0,
                      help='replay: write a synthetic archive of N events to /tmp, replay it')
  args = parser.parse_args(argv)
  if args.replay:
    result = replay_memory(args)
    folder = pathlib.Path(args.results) if args.results else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    name = f'memory-replay{"-" + str(args.generate) if args.generate else ""}.json'
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
