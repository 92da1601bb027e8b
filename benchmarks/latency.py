"""Event-to-written latency of the live job reading a Redis Stream or a Kafka topic.

  python -m benchmarks.latency [--source redis|kafka] [--rates 40] [--seconds 60]
      [--window_size 5] [--partitions 3]

For each rate: starts a throwaway server (Redis, or for `--source kafka` the
Kafka-protocol broker the tests start, tests/kafka_broker.py, with a topic of
--partitions partitions and the tests' quick group settings), the streaming job
on it, and the producer replaying the shared Wikipedia comments with --retime
(event time = send time) at that rate. When the producer is done and every event is
written, SIGTERM drains the job. An event's latency is the modification time
of the Parquet file holding its row minus its event time: waiting for the
window to close (up to the window size, plus the out-of-orderness allowance)
plus the job's own delay. Prints p50/p95/p99 of every event and of those sent
after the first window was written (steady: the job's start left out), when
the first window was written, and whether the job kept up; writes JSON under
benchmarks/results/.
"""
import argparse
import contextlib
import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import pyarrow.dataset as ds

from benchmarks.common import DEFAULT_INPUT, RESULTS, ROOT, describe, write_result
from tests.kafka_broker import FAST_GROUP, started_broker
from tests.redis_server import redis_server


@contextlib.contextmanager
def redis_stream(_partitions: int = 1):
  """(the job's --source, the producer's --target) on a throwaway Redis server."""
  with redis_server() as url:
    yield f'{url}?stream=events&group=b', f'{url}?stream=events'


@contextlib.contextmanager
def kafka_topic(partitions: int):
  """The same for a new topic of `partitions` on a throwaway Kafka-protocol broker."""
  with started_broker() as broker:
    topic = f'kafka://{broker.bootstrap}/{broker.topic(partitions)}'
    yield f'{topic}?group=b&{FAST_GROUP}', topic


SOURCES = types.MappingProxyType({'redis': redis_stream, 'kafka': kafka_topic})


def latencies(out: pathlib.Path):
  """(latency, event time) of every written row, in seconds, as two arrays: a row's
  latency is its Parquet file's modification time less its event time."""
  values, events = [], []
  for path in (out / 'enriched').rglob('*.parquet') if out.exists() else []:
    if path.name.startswith('.'):  # a file still being written
      continue
    written = path.stat().st_mtime
    table = ds.dataset(path, format='parquet').to_table(columns=['event_time'])
    times = table.column('event_time').cast('int64').to_numpy() / 1e6
    values.extend(written - times)
    events.extend(times)
  return np.array(values), np.array(events)


def percentiles(values: np.ndarray, prefix: str) -> dict:
  return {f'{prefix}_p{q}_s': round(float(np.percentile(values, q)), 2) if len(values) else None
          for q in (50, 95, 99)}


def measure(rate: float, seconds: float, window_size: float, archive: str,
            addresses=redis_stream) -> dict:
  """One run at `rate`; `addresses()` gives (--source, --target) on a fresh server."""
  count = int(rate * seconds)
  load = os.getloadavg()  # before the run: what else the host was doing
  with addresses() as (source, target), tempfile.TemporaryDirectory() as folder:
    out = pathlib.Path(folder) / 'out'
    log = open(pathlib.Path(folder) / 'job.log', 'w')
    env = dict(os.environ, HF_HUB_OFFLINE='1')
    job = subprocess.Popen(
        [sys.executable, '-m', 'pipelines.stream', '--source', source,
         '--output', str(out), '--time_field', 'time', '--text_field', 'comment',
         '--window_size', str(window_size), '--max_out_of_orderness', '1'],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    started, started_wall = time.monotonic(), time.time()
    subprocess.run([sys.executable, '-m', 'pipelines.produce', '--input', archive, '--target',
                    target, '--rate', str(rate), '--retime',
                    '--limit', str(count)], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    produced_for = time.monotonic() - started
    first_window = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
      files = ([f for f in (out / 'enriched').rglob('*.parquet') if not f.name.startswith('.')]
               if out.exists() else [])
      if files and first_window is None:
        first_window = min(f.stat().st_mtime for f in files) - started_wall
      written = sum(ds.dataset(f, format='parquet').count_rows() for f in files)
      if written >= count:
        break
      time.sleep(0.5)
    caught_up_after = time.monotonic() - started - produced_for
    job.send_signal(signal.SIGTERM)
    job.wait(120)
    values, events = latencies(out)
  # Events sent once the job was writing: the job's own delay, without its start (model
  # load, a consumer group's first join) that the first events wait out.
  steady = values[events >= started_wall + (first_window or 0)]
  return {
      'rate': rate, 'events': count, 'written': int(len(values)),
      'load_average_before': [round(x, 2) for x in load],
      'first_window_after_start_s': round(first_window, 2) if first_window else None,
      'caught_up_s_after_last_event': round(caught_up_after, 2),
      **percentiles(values, 'latency'),
      'events_after_first_window': int(len(steady)), **percentiles(steady, 'steady'),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--source', choices=sorted(SOURCES), default='redis')
  parser.add_argument('--partitions', type=int, default=3, help='Of the Kafka topic.')
  parser.add_argument('--rates', default='40', help='Comma-separated events per second.')
  parser.add_argument('--seconds', type=float, default=60)
  parser.add_argument('--window_size', type=float, default=5)
  parser.add_argument('--input', default=str(DEFAULT_INPUT))
  args = parser.parse_args(argv)
  results = []
  for rate in [float(r) for r in args.rates.split(',')]:
    result = measure(rate, args.seconds, args.window_size, args.input,
                     functools.partial(SOURCES[args.source], args.partitions))
    results.append(result)
    print(json.dumps(result), flush=True)
  machine = describe()
  name = ('' if args.source == 'redis' else f'{args.source}-') + args.rates.replace(',', '-')
  write_result(RESULTS, f'latency-{name}', {
      'machine': machine, 'source': args.source, 'window_size': args.window_size,
      'seconds': args.seconds, 'results': results})


if __name__ == '__main__':
  main()
