"""Live capacity: the highest event rate a live job from Redis sustains, against bare encode.

  python -m benchmarks.capacity [--precision auto] [--seconds 300] [--rates 100,150]

First bare `encode` of the same texts at the same setting, in a fresh process
after its model load: texts/s, the limit. Then, stepping the rate up (from
--start times the bare rate, by --step, or through --rates): a throwaway Redis
server, the streaming job on it (started first; events are sent once its
model is loaded), and the producer sending distinct comments of the shared
archive with --retime (event time = send time) at the rate for --seconds. A
step is sustained when
  - p99 latency (Parquet file written minus event time, events after the first
    --warmup seconds) is within window + out-of-orderness + 2 s, and
  - the backlog does not grow: Redis's count of events not yet written
    (undelivered plus delivered, unacknowledged: the job acknowledges after its
    writes), fitted over the step after warm-up, rises by less than 2 s worth of
    events.
Texts repeat only when a step needs more events than the archive has distinct
comments (the slice is then cycled, and the result says so); the job runs with
--embedding_cache 0, so a repeat costs its inference as in bare `encode`. Prints each
step and the highest sustained rate as a ratio to bare encode; writes JSON under
benchmarks/results/. The default 300 s per step is the issue's; short steps
(--seconds 30) are for a shared machine and say less.
"""
import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import (DEFAULT_INPUT, RESULTS, ROOT, describe, fitted_rise, read_texts,
                               write_result, write_slice)
from benchmarks.latency import latencies
from tests.redis_server import redis_server

GROUP = 'capacity'
SLACK_S = 2.0


def backlog_growth(samples, rate: float) -> float:
  """Events the backlog gains over the samples' span, by a least-squares line through
  (seconds, events) samples, in seconds' worth of events at `rate`."""
  if len(samples) < 3 or rate <= 0:
    return 0.0
  return fitted_rise(samples)[0] / rate


def sustained(p99_s: float, growth_s: float, window_s: float, out_of_order_s: float) -> bool:
  """The step's verdict: p99 latency within window + out-of-orderness + 2 s and a backlog
  that grew by less than 2 s worth of events."""
  return p99_s <= window_s + out_of_order_s + SLACK_S and growth_s < SLACK_S


def next_rates(bare_rate: float, start: float, step: float, most: float):
  """The stepped rates: start x bare, times step each time, up to most x bare."""
  rate = start * bare_rate
  while rate <= most * bare_rate + 1e-9:
    yield round(rate, 1)
    rate *= step


def _bare_child(args):
  """Bare `encode` (batch 32) of the slice's texts at the setting, after the model load."""
  from benchmarks.throughput import setting_config
  from models.loading import load_sentence_transformer
  texts = read_texts(args.slice, args.text_field, args.bare_texts)
  model = load_sentence_transformer(setting_config(args.precision, 'cpu'))
  model.encode(texts[:64], batch_size=32, show_progress_bar=False)
  started = time.perf_counter()
  model.encode(texts, batch_size=32, show_progress_bar=False)
  return {'texts': len(texts), 'seconds': time.perf_counter() - started}


def _backlog(client, stream: str) -> int:
  """Events of the stream not yet written by the job: not delivered, or not acknowledged."""
  groups = {g['name']: g for g in client.xinfo_groups(stream)} if client.exists(stream) else {}
  group = groups.get(GROUP) or groups.get(GROUP.encode())
  if group is None:
    return client.xlen(stream) if client.exists(stream) else 0
  lag = group.get('lag')
  if lag is None:  # Redis < 7 or an unknown lag: delivered entries against the length
    lag = max(0, client.xlen(stream) - group.get('entries-read', 0))
  return int(lag) + int(group.get('pending', 0))


def cycled_slice(path: str, count: int, folder: str) -> str:
  """`path` itself when it holds `count` lines, else a copy cycled to `count` lines."""
  with open(path) as lines:
    records = lines.read().splitlines()
  if count <= len(records):
    return path
  cycled = os.path.join(folder, 'cycled.jsonl')
  with open(cycled, 'w') as out:
    out.writelines(records[n % len(records)] + '\n' for n in range(count))
  return cycled


def measure(rate: float, args, setting_flags) -> dict:
  import redis
  count = int(rate * args.seconds)
  with redis_server() as url, tempfile.TemporaryDirectory() as folder:
    step_slice = cycled_slice(args.slice, count, folder)
    out = pathlib.Path(folder) / 'out'
    log_path = pathlib.Path(folder) / 'job.log'
    env = dict(os.environ, HF_HUB_OFFLINE='1')
    with open(log_path, 'w') as log:
      job = subprocess.Popen(
          [sys.executable, '-m', 'pipelines.stream', '--source',
           f'{url}?stream=events&group={GROUP}', '--output', str(out), '--time_field', 'time',
           '--text_field', args.text_field, '--window_size', str(args.window_size),
           '--max_out_of_orderness', str(args.max_out_of_orderness), '--embedding_cache', '0',
           *setting_flags],
          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
      ready_after = _wait_for_model(log_path, job, 180)
      client = redis.Redis.from_url(url)
      producer = subprocess.Popen(
          [sys.executable, '-m', 'pipelines.produce', '--input', step_slice, '--target',
           f'{url}?stream=events', '--rate', str(rate), '--retime', '--limit', str(count)],
          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
      samples = []  # (wall time, backlog) while the producer runs
      while producer.poll() is None:
        samples.append((time.time(), _backlog(client, 'events')))
        time.sleep(1.0)
      if producer.returncode:
        raise SystemExit(f'the producer failed ({producer.returncode})')
      # The first and last events' times from their stream ids (ms): the producer's own
      # start-up (imports) is not part of the step.
      first_s, last_s = (int(entries[0][0].split(b'-')[0]) / 1000
                         for entries in (client.xrange('events', count=1),
                                         client.xrevrange('events', count=1)))
      sent_for = max(last_s - first_s, 1e-3)
      sent = client.xlen('events')
      deadline = time.monotonic() + args.drain_s
      while time.monotonic() < deadline and _backlog(client, 'events') > 0:
        time.sleep(0.5)
      drained_after = time.time() - last_s
      left = _backlog(client, 'events')
    finally:
      job.send_signal(signal.SIGTERM)
      try:
        job.wait(120)
      except subprocess.TimeoutExpired:
        job.kill()
    values, times = latencies(out)
  warm = times >= first_s + args.warmup
  measured = values[warm] if warm.any() else values
  growth = backlog_growth([(t - first_s, n) for t, n in samples
                           if first_s + args.warmup <= t <= last_s], rate)
  p99 = float(np.percentile(measured, 99)) if len(measured) else float('inf')
  return {
      'rate': rate, 'events': count, 'sent': sent, 'written': int(len(values)),
      'sent_in_s': round(sent_for, 1),
      'achieved_send_rate': round((sent - 1) / sent_for, 1) if sent > 1 else None,
      'job_ready_after_s': ready_after,
      'latency_p50_s': round(float(np.percentile(measured, 50)), 2) if len(measured) else None,
      'latency_p99_s': round(p99, 2),
      'backlog_growth_s': round(growth, 2), 'backlog_peak': max((s[1] for s in samples),
                                                                default=0),
      'drained_s_after_last_event': round(drained_after, 1), 'left_unwritten': left,
      'sustained': bool(sustained(p99, growth, args.window_size, args.max_out_of_orderness)
                        and left == 0 and len(values) >= count),
  }


def _wait_for_model(log_path, job, limit_s: float):
  """Seconds until the job logs its loaded model (None: not seen in time)."""
  started = time.monotonic()
  while time.monotonic() - started < limit_s:
    if job.poll() is not None:
      raise SystemExit(f'the job exited ({job.returncode}):\n{log_path.read_text()[-3000:]}')
    if 'Loaded ' in log_path.read_text(errors='replace'):
      return round(time.monotonic() - started, 1)
    time.sleep(0.5)
  return None


def main(argv=None):
  from benchmarks.throughput import SETTINGS
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--precision', default='auto',
                      help=f'A setting: {", ".join(SETTINGS)} (auto: the job default).')
  parser.add_argument('--seconds', type=float, default=300, help='Seconds per step.')
  parser.add_argument('--warmup', type=float, default=10,
                      help='Seconds at the start of a step left out of latency and backlog.')
  parser.add_argument('--rates', default='', help='Comma-separated events/s instead of stepping.')
  parser.add_argument('--start', type=float, default=0.5, help='First step, times bare rate.')
  parser.add_argument('--step', type=float, default=1.2, help='Each next step, times the last.')
  parser.add_argument('--most', type=float, default=1.5, help='Last step, at most x bare rate.')
  parser.add_argument('--window_size', type=float, default=5)
  parser.add_argument('--max_out_of_orderness', type=float, default=1)
  parser.add_argument('--drain_s', type=float, default=60)
  parser.add_argument('--bare_texts', type=int, default=3000)
  parser.add_argument('--input', default=str(DEFAULT_INPUT))
  parser.add_argument('--text_field', default='comment')
  parser.add_argument('--label', default='')
  parser.add_argument('--results', default=str(RESULTS))
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--slice', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(_bare_child(args)))
    return
  if args.precision not in SETTINGS:
    parser.exit(2, f'error: --precision must be one of {", ".join(SETTINGS)}\n')
  load_before = os.getloadavg()[0]
  with tempfile.TemporaryDirectory() as folder:
    # Distinct texts, as many as there are (a long step at a high rate may need more).
    args.slice = write_slice(pathlib.Path(args.input), args.text_field, None, folder,
                             distinct=True)
    distinct = len(read_texts(args.slice, args.text_field))
    done = subprocess.run([sys.executable, '-m', 'benchmarks.capacity', '--child', '--slice',
                           args.slice, '--precision', args.precision, '--text_field',
                           args.text_field, '--bare_texts', str(args.bare_texts)],
                          cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE='1'))
    if done.returncode:
      raise SystemExit(f'bare encode failed:\n{done.stderr[-3000:]}')
    bare = json.loads(done.stdout.strip().splitlines()[-1])
    bare_rate = bare['texts'] / bare['seconds']
    print(f'bare encode at {args.precision}: {bare_rate:.1f} texts/s ({bare["texts"]} texts)',
          flush=True)
    rates = ([float(r) for r in args.rates.split(',')] if args.rates
             else list(next_rates(bare_rate, args.start, args.step, args.most)))
    steps = []
    for rate in rates:
      step = measure(rate, args, SETTINGS[args.precision])
      step['ratio_to_bare'] = round(rate / bare_rate, 3)
      step['texts_repeat'] = step['events'] > distinct
      steps.append(step)
      print(json.dumps(step), flush=True)
      if not step['sustained'] and not args.rates:
        break
  best = max((s for s in steps if s['sustained']), key=lambda s: s['rate'], default=None)
  machine = describe()
  print(f'\n{args.precision}, {args.seconds:.0f} s steps, window {args.window_size} s + '
        f'{args.max_out_of_orderness} s: highest sustained '
        f'{best["rate"] if best else "none"} events/s = '
        f'{best["ratio_to_bare"] if best else 0:.2f}x bare encode ({bare_rate:.1f}/s); '
        f'{machine}')
  stem = f'capacity-{args.precision}{"-" + args.label if args.label else ""}'
  write_result(args.results, stem, {
      'machine': machine, 'precision': args.precision, 'seconds_per_step': args.seconds,
      'warmup_s': args.warmup, 'window_size': args.window_size,
      'max_out_of_orderness': args.max_out_of_orderness, 'distinct_texts': distinct,
      'bare_texts_per_s': round(bare_rate, 1), 'bare': bare,
      'highest_sustained_rate': best['rate'] if best else None,
      'ratio_to_bare': best['ratio_to_bare'] if best else None, 'steps': steps}, load_before)


if __name__ == '__main__':
  main()
