"""Soak: a live job from a real Redis for an hour, its resources sampled each minute (not in CI).

  python -m benchmarks.soak [--minutes 60] [--rate 50] [--sample_s 60] [--precision auto]
      [--input ARCHIVE] [--results DIR] [--keep DIR]

Starts redis-server (persistence on) and the chaos benchmark's producer at `--rate`
events/s, and runs `python -m pipelines.stream` from a consumer group with `--dedup
--topics --sink vectors,redis://.../0?stream=enriched` for `--minutes`. Every
`--sample_s` it samples the job process (and its children): resident memory, open
files; the Redis sink's length; the LanceDB store's versions; the source's pending
entries; the number of series its /metrics endpoint serves. Then it drains the job
(SIGTERM) and prints one JSON line (also written under benchmarks/results/): the samples, and
RSS growth from the 10th minute to the end (issue 18 asks for at most 5 %), both between the
endpoints and along a least-squares line; and a PNG of the samples beside it.
`python -m benchmarks.soak --plot RESULT.json` draws the PNG of an earlier result again.
"""
import argparse
import json
import pathlib
import tempfile
import time
import urllib.request

import psutil
import redis

from benchmarks.chaos import _GROUP, _STREAM, Producer, Supervisor, comments
from benchmarks.common import DEFAULT_INPUT, RESULTS, describe, fitted_rise
from tests.redis_server import RedisServer, free_port

_SINK = 'enriched'


def _resources(pid: int) -> dict:
  """RSS (MB) and open files of a process and its children."""
  try:
    root = psutil.Process(pid)
    processes = [root] + root.children(recursive=True)
  except psutil.NoSuchProcess:
    return {'rss_mb': None, 'open_files': None}
  rss, files = 0, 0
  for process in processes:
    try:
      rss += process.memory_info().rss
      files += process.num_fds()
    except psutil.NoSuchProcess:
      pass
  return {'rss_mb': round(rss / 2**20, 1), 'open_files': files}


def _versions(store: pathlib.Path):
  from transforms.io.vector_store import open_table
  try:
    return len(open_table(str(store)).list_versions())
  except (ValueError, OSError):
    return None  # not made yet


def _series(metrics_port: int):
  """How many series the job's /metrics serves (None when it does not answer)."""
  try:
    with urllib.request.urlopen(f'http://127.0.0.1:{metrics_port}/metrics', timeout=5) as answer:
      text = answer.read().decode()
  except OSError:
    return None
  return sum(1 for line in text.splitlines() if line and not line.startswith('#'))


def sample(pid: int, client: redis.Redis, store: pathlib.Path, started: float,
           metrics_port: int = 0) -> dict:
  pending = None
  try:
    pending = client.xpending(_STREAM, _GROUP)['pending']
  except redis.ResponseError:
    pass  # no group yet
  return {'minute': round((time.monotonic() - started) / 60, 2), **_resources(pid),
          'sink_length': client.xlen(_SINK), 'lancedb_versions': _versions(store),
          'pending': pending, 'metric_series': _series(metrics_port) if metrics_port else None}


def growth(samples, after_minute: float = 10.0):
  """RSS growth from the first sample at or after `after_minute` to the last, as a ratio."""
  later = [s for s in samples if s['minute'] >= after_minute and s['rss_mb']]
  if len(later) < 2:
    return None
  return round(later[-1]['rss_mb'] / later[0]['rss_mb'] - 1, 4)


def trend(samples, after_minute: float = 10.0):
  """RSS growth from `after_minute` to the last sample along a least-squares line through the
  samples, as a ratio: one sample taken while a window's batch is in flight moves the
  endpoints' ratio (growth) by several per cent either way; the line does not follow it."""
  later = [(s['minute'], s['rss_mb']) for s in samples
           if s['minute'] >= after_minute and s['rss_mb']]
  if len(later) < 3:
    return None
  rise, start = fitted_rise(later)
  return round(rise / start, 4)


def run(minutes: float, rate: float, sample_s: float, precision: str, archive: str,
        folder: pathlib.Path) -> dict:
  (folder / 'redis').mkdir()
  server = RedisServer(str(folder / 'redis'), persist=True).start()
  url = f'redis://127.0.0.1:{server.port}/0'
  out = folder / 'out'
  metrics_port = free_port()
  job = Supervisor(
      ['--source', f'{url}?stream={_STREAM}&group={_GROUP}&consumer=soak', '--output', str(out),
       '--id_field', 'id', '--time_field', 'time', '--text_field', 'comment',
       '--window_size', '5', '--max_out_of_orderness', '1', '--precision', precision,
       '--dedup', '--topics', '--sink', f'vectors,{url}?stream={_SINK}',
       '--metrics_port', str(metrics_port)],
      folder / 'job.log')
  producer = Producer(server.port, comments(archive, int(minutes * 60 * rate)), rate)
  client = redis.Redis(port=server.port, socket_timeout=5)
  started = time.monotonic()
  job.start()
  producer.start()
  samples, next_at = [], started + sample_s
  while time.monotonic() - started < minutes * 60:
    job.check()
    if time.monotonic() >= next_at:
      samples.append(sample(job.job.pid, client, out / 'vectors', started, metrics_port))
      print(json.dumps(samples[-1]), flush=True)
      next_at += sample_s
    time.sleep(0.5)
  producer.stop.set()
  drain_exit = job.drain()
  final = sample(0, client, out / 'vectors', started)
  server.stop()
  return {'minutes': minutes, 'rate': rate, 'produced': producer.sent, 'precision': precision,
          'drain_exit': drain_exit, 'unplanned_exits': dict(job.exits),
          'rss_growth_after_10_min': growth(samples),
          'rss_trend_after_10_min': trend(samples), 'samples': samples,
          'after_drain': {k: final[k] for k in ('sink_length', 'lancedb_versions', 'pending')}}


def plot(result: dict, path: pathlib.Path) -> None:
  """The samples over the run: RSS, pending entries, sink length, LanceDB versions."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  samples = result['samples']
  minutes = [s['minute'] for s in samples]
  panels = (('rss_mb', 'RSS of the job (MB)'), ('pending', 'entries pending in the group'),
            ('sink_length', 'Redis sink length (entries)'),
            ('lancedb_versions', 'LanceDB table versions'))
  fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
  for ax, (key, title) in zip(axes.flat, panels):
    values = [float('nan') if s[key] is None else s[key] for s in samples]
    ax.plot(minutes, values, marker='.', linewidth=1)
    ax.set_title(title, fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
  for ax in axes[1]:
    ax.set_xlabel('minutes since the job started')
  ends, line = result.get('rss_growth_after_10_min'), trend(samples)
  fig.suptitle(f'soak: {result["rate"]:g} events/s for {result["minutes"]:g} min, '
               f'{result["precision"]}; RSS growth after minute 10: '
               f'{"n/a" if ends is None else f"{ends:+.1%}"} (endpoints), '
               f'{"n/a" if line is None else f"{line:+.1%}"} (fitted line)\n{result["host"]}',
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--minutes', type=float, default=60)
  parser.add_argument('--rate', type=float, default=50, help='Events per second.')
  parser.add_argument('--sample_s', type=float, default=60, help='Seconds between samples.')
  parser.add_argument('--precision', default='auto',
                      help="The job's --precision (auto: the job's own default).")
  parser.add_argument('--input', default=str(DEFAULT_INPUT))
  parser.add_argument('--results', default=str(RESULTS))
  parser.add_argument('--keep', default=None, help='Keep output, Redis files and job log here.')
  parser.add_argument('--plot', default=None, help='Only draw the PNG of this result file.')
  args = parser.parse_args(argv)
  if args.plot:
    source = pathlib.Path(args.plot)
    result = json.loads(source.read_text())
    plot(result, source.with_suffix('.png'))
    print(f"RSS growth after minute 10: {result.get('rss_growth_after_10_min')} (endpoints), "
          f"{trend(result['samples'])} (fitted line)")
    return
  with tempfile.TemporaryDirectory() as scratch:
    folder = pathlib.Path(args.keep or scratch)
    folder.mkdir(parents=True, exist_ok=True)
    result = {'host': describe(), **run(args.minutes, args.rate, args.sample_s, args.precision,
                                        args.input, folder)}
  line = json.dumps(result)
  print(line)
  results = pathlib.Path(args.results)
  results.mkdir(parents=True, exist_ok=True)
  target = results / f'soak-{time.strftime("%Y%m%dT%H%M%S")}.json'
  target.write_text(line + '\n')
  plot(result, target.with_suffix('.png'))


if __name__ == '__main__':
  main()
