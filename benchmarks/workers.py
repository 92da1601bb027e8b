"""The local batch runner with one or several worker processes, a model copy each or one shared.

  python -m benchmarks.workers [--limit 2000] [--rounds 2] [--workers 2] [--device cpu]
      [--precision fp32] [-- extra replay flags]

Replays the first `limit` distinct comments of the shared Wikipedia edit stream,
split into as many files as workers, with `python -m pipelines.replay` in a fresh
process per run, alternating between
  1 worker               --direct_num_workers 1 (in process);
  N workers, own models  --direct_num_workers N --direct_running_mode multi_processing
                         --share_model never;
  N workers, one model   the same with --share_model always (Beam's multi-process
                         sharing: one process serves the model to the others).
Wall time of the whole process (start-up included) and the peak of the summed RSS of
its process tree (sampled every 0.1 s). Writes JSON to benchmarks/results/.
"""
import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import DEFAULT_INPUT, RESULTS, ROOT, describe, write_result
from benchmarks.common import write_slice


def tree_rss(pid: int) -> int:
  """Summed resident memory of `pid` and all its descendants, in bytes."""
  children = {}
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat') as stat:
          parent = int(stat.read().rsplit(')', 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
      except (OSError, ValueError, IndexError):
        pass
  total, todo = 0, [pid]
  while todo:
    current = todo.pop()
    todo.extend(children.get(current, []))
    try:
      with open(f'/proc/{current}/statm') as statm:
        total += int(statm.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError):
      pass
  return total


def run_replay(flags):
  started = time.perf_counter()
  process = subprocess.Popen([sys.executable, '-m', 'pipelines.replay', *flags], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, HF_HUB_OFFLINE='1'))
  peak = 0
  while process.poll() is None:
    peak = max(peak, tree_rss(process.pid))
    time.sleep(0.1)
  output = process.stdout.read()
  if process.returncode != 0:
    raise SystemExit(f'replay {" ".join(flags)} failed:\n{output[-3000:]}')
  return time.perf_counter() - started, peak


def split(path: str, parts: int, folder: str):
  with open(path) as lines:
    records = lines.readlines()
  for part in range(parts):
    with open(os.path.join(folder, f'part-{part}.jsonl'), 'w') as out:
      out.writelines(records[part::parts])
  return len(records)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--input', default=str(DEFAULT_INPUT))
  parser.add_argument('--text_field', default='comment')
  parser.add_argument('--limit', type=int, default=2000)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--device', default='cpu')
  parser.add_argument('--precision', default='fp32')
  parser.add_argument('--label', default='')
  parser.add_argument('replay_args', nargs='*', help='Extra replay flags, after --.')
  args = parser.parse_args(argv)
  many = ['--direct_num_workers', str(args.workers), '--direct_running_mode', 'multi_processing']
  variants = {
      '1 worker': ['--direct_num_workers', '1'],
      f'{args.workers} workers, own models': [*many, '--share_model', 'never'],
      f'{args.workers} workers, one model': [*many, '--share_model', 'always'],
  }
  load_before = os.getloadavg()[0]
  with tempfile.TemporaryDirectory() as folder:
    source = write_slice(pathlib.Path(args.input), args.text_field, args.limit,
                         folder, distinct=True)
    inputs = os.path.join(folder, 'in')
    os.makedirs(inputs)
    n = split(source, args.workers, inputs)
    base = ['--input', os.path.join(inputs, '*.jsonl'), '--time_field', 'time',
            '--text_field', args.text_field, '--device', args.device,
            '--precision', args.precision, *args.replay_args]
    runs = {name: [] for name in variants}
    for round_number in range(args.rounds):
      order = list(variants) if round_number % 2 == 0 else list(reversed(variants))
      for name in order:
        output = os.path.join(folder, f'out-{round_number}-{len(runs[name])}')
        seconds, peak = run_replay([*base, *variants[name], '--output', output])
        runs[name].append((seconds, peak))
        print(f'round {round_number + 1} {name}: {seconds:.1f} s, peak RSS {peak / 2**20:.0f} MB',
              flush=True)
  machine = describe()
  results = {}
  baseline = n / statistics.median(s for s, _ in runs['1 worker'])
  print(f'\n{n} distinct texts, {args.precision} on {args.device}, median of {args.rounds}; '
        f'{machine}')
  for name, measured in runs.items():
    rate = n / statistics.median(s for s, _ in measured)
    peak = max(p for _, p in measured) / 2**20
    results[name] = {'events_per_s': rate, 'ratio_to_1_worker': rate / baseline,
                     'peak_rss_mb': peak, 'seconds': [round(s, 2) for s, _ in measured]}
    print(f'{name:<26} {rate:7.1f} events/s {rate / baseline:5.2f}x  peak RSS {peak:6.0f} MB')
  stem = f'workers-{args.device}-{args.precision}{"-" + args.label if args.label else ""}'
  record = {'texts': n, 'device': args.device, 'precision': args.precision, 'machine': machine,
            'rounds': args.rounds, 'replay_args': args.replay_args,
            'results': results}
  write_result(RESULTS, stem, record, load_before)


if __name__ == '__main__':
  main()
