"""`python -m pipelines.stream` as a user runs it, against a real Redis server the test starts."""
import gzip
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.dataset as ds
import pytest
import redis

from tests.conftest import ROOT
from tests.redis_server import redis_server

pytestmark = pytest.mark.e2e
WIKI = ['--time_field', 'time', '--text_field', 'comment', '--window_size', '5',
        '--max_out_of_orderness', '1']


@pytest.fixture
def server():
  with redis_server() as url:
    yield url


@pytest.fixture(scope='module')
def wiki_lines(tmp_path_factory, wiki_archive):
  path = tmp_path_factory.mktemp('events') / 'wiki.jsonl'
  with gzip.open(wiki_archive, 'rt', encoding='utf-8') as source:
    path.write_text(''.join(itertools.islice(source, 2400)))  # a minute at 40/s
  return path


_STARTED = []  # the processes python() started in the running test


@pytest.fixture(autouse=True)
def no_process_left_running():
  """A test that fails while its jobs run kills them: left running, a job keeps polling
  a server that is gone and slows every later test."""
  yield
  while _STARTED:
    process = _STARTED.pop()
    if process.poll() is None:
      process.kill()
      process.wait(30)


def python(module, *args, log):
  process = subprocess.Popen([sys.executable, '-m', module, *args], cwd=ROOT,
                             env=dict(os.environ, HF_HUB_OFFLINE='1'),
                             stdout=log, stderr=subprocess.STDOUT)
  _STARTED.append(process)
  return process


def produce(url, path, *args):
  done = subprocess.run([sys.executable, '-m', 'pipelines.produce', '--input', str(path),
                         '--target', f'{url}?stream=events', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr


def wait_for(predicate, timeout, what):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return
    time.sleep(0.2)
  raise AssertionError(f'timed out after {timeout} s waiting for {what}')


def window_files(out):
  return sorted((out / 'enriched').rglob('*.parquet')) if (out / 'enriched').exists() else []


def read(out, name):
  return ds.dataset(out / name, format='parquet', partitioning='hive').to_table()


def column(out, name, field):
  """A column of a written folder; [] when the folder holds no file (no dead letters)."""
  table = read(out, name)
  return table.column(field).to_pylist() if table.num_rows else []


def stop(job, log_path):
  job.send_signal(signal.SIGTERM)
  try:
    assert job.wait(120) == 0, log_path.read_text()[-3000:]
  finally:
    if job.poll() is None:
      job.kill()


def entry_ids(url):
  client = redis.Redis.from_url(url)
  return [entry_id.decode() for entry_id, _ in client.xrange('events')]


def test_windows_are_written_while_running_and_sigterm_drains(server, wiki_lines, tmp_path):
  out, log_path = tmp_path / 'out', tmp_path / 'job.log'
  with open(log_path, 'w') as log:
    job = python('pipelines.stream', '--source', f'{server}?stream=events&group=enrich',
                 '--sink', f'{server}?stream=enriched', '--output', str(out), *WIKI, log=log)
    producer = python('pipelines.produce', '--input', str(wiki_lines), '--target',
                      f'{server}?stream=events', '--rate', '40', '--retime', '--limit', '400',
                      log=log)
    # Windows come out while the job runs, not when it is stopped. No tighter
    # wall-clock bound than wait_for's: two test workers share two cores, and a
    # slow start can see the whole 10 s stream arrive before the first window.
    wait_for(lambda: window_files(out), 60, 'the first window file')
    assert job.poll() is None, 'the job must keep running after writing a window'
    assert producer.wait(60) == 0
    # The source is idle now; its watermark follows the clock, so the last
    # window closes and every event is written while the job keeps running.
    wait_for(lambda: _written(out) == 400, 30, 'the last window of the idle stream')
    assert job.poll() is None
    stop(job, log_path)
  sources = column(out, 'enriched', 'source') + column(out, 'deadletter', 'source')
  assert len(sources) == len(set(sources)) == 400
  assert {s.rpartition(':')[2] for s in sources} == set(entry_ids(server))
  client = redis.Redis.from_url(server)
  assert client.xpending('events', 'enrich')['pending'] == 0
  downstream = [json.loads(fields[b'event']) for _, fields in client.xrange('enriched')]
  assert len(downstream) == len(column(out, 'enriched', 'id'))
  assert len(downstream[0]['embedding']) == 384 and downstream[0]['text']
  text = log_path.read_text()
  assert 'Read 400 records' in text and 'every record accounted for' in text
  assert 'latency p50' in text


def test_kill_9_and_restart_lose_and_duplicate_nothing(server, wiki_lines, tmp_path):
  out = tmp_path / 'out'
  source = f'{server}?stream=events&group=enrich&consumer=worker-1'
  produce(server, wiki_lines, '--rate', '40', '--retime', '--limit', '200')
  with open(tmp_path / 'first.log', 'w') as log:
    job = python('pipelines.stream', '--source', source, '--output', str(out), *WIKI, log=log)
    produce(server, wiki_lines, '--rate', '40', '--retime', '--limit', '200')
    wait_for(lambda: window_files(out), 60, 'a first window')
    job.kill()  # SIGKILL: no drain, no acknowledgements for open windows
    job.wait(30)
  client = redis.Redis.from_url(server)
  assert client.xpending('events', 'enrich')['pending'] > 0  # work was left unacknowledged
  produce(server, wiki_lines, '--rate', '100', '--retime', '--limit', '200')
  log_path = tmp_path / 'second.log'
  with open(log_path, 'w') as log:
    job = python('pipelines.stream', '--source', source, '--output', str(out), *WIKI, log=log)
    wait_for(lambda: client.xpending('events', 'enrich')['pending'] == 0 and
             _consumer_caught_up(client), 90, 'every entry to be acknowledged')
    stop(job, log_path)
  ids = column(out, 'enriched', 'id')
  assert len(ids) == len(set(ids)), 'duplicated rows'
  sources = column(out, 'enriched', 'source') + column(out, 'deadletter', 'source')
  assert len(sources) == len(set(sources))
  assert {s.rpartition(':')[2] for s in sources} == set(entry_ids(server))  # nothing lost


def _written(out):
  try:
    return len(column(out, 'enriched', 'id')) + len(column(out, 'deadletter', 'id'))
  except (OSError, ValueError):  # a file being renamed into place
    return 0


def _consumer_caught_up(client):
  groups = client.xinfo_groups('events')
  return all(group.get('lag', 0) in (0, None) for group in groups)


def test_live_file_stream_agrees_with_replay_and_dead_letters_late_events(tmp_path):
  """Same rows, windows, labels, duplicates, topics and late dead letters live and in replay."""
  texts = ['Card payment declined at checkout.', 'My card payment was declined at checkout!',
           'The parcel is late.', 'Thanks, great support!', 'Login from an unknown country.',
           'Refund still missing.', 'Courier lost my box.', 'Password reset email I never asked for.',
           'Five stars, love it.', 'Tracking has not moved in a week.']
  events = [{'id': f'e{n}', 'time': t, 'text': texts[n]} for n, t in
            enumerate([1, 2, 6, 11, 3, 12, 22, 9, 23, 31])]
  # With 5 s windows and 1 s disorder: e4 (t=3, window ends 5) arrives at watermark 10: late;
  # e7 (t=9, window ends 10) arrives at watermark 21: late.
  archive = tmp_path / 'events.jsonl'
  archive.write_text(''.join(json.dumps(e) + '\n' for e in events))
  flags = ['--id_field', 'id', '--window_size', '5', '--max_out_of_orderness', '1',
           '--label_file', str(ROOT / 'tests' / 'data' / 'labels.yaml'), '--dedup_threshold', '0.9',
           '--topics', '--dedup_horizon', '10', '--topic_horizon', '10']
  live, replayed = tmp_path / 'live', tmp_path / 'replay'
  done = subprocess.run([sys.executable, '-m', 'pipelines.stream', '--source',
                         f'file://{archive}', '--output', str(live), *flags],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  done = subprocess.run([sys.executable, '-m', 'pipelines.replay', '--input', str(archive),
                         '--output', str(replayed), '--replay_lateness', *flags],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  results = []
  for out in (live, replayed):
    rows = sorted((r['id'], r['window_start'].timestamp(), r['label'], r['duplicate_of'])
                  for r in read(out, 'enriched').to_pylist())
    late = sorted((r['id'], r['reason']) for r in read(out, 'deadletter').to_pylist())
    topics = sorted((r['window'], r['events'], r['duplicates'], r['label_counts'],
                     json.dumps(r['topics'])) for r in read(out, 'windows').to_pylist())
    results.append((rows, late, topics))
  assert results[0] == results[1]
  assert results[0][1] == [('e4', 'late'), ('e7', 'late')]
  assert len(results[0][0]) == 8
  assert len(results[0][2]) == 5  # five windows hold on-time events
  assert [row for row in results[0][0] if row[3]] == [('e1', 0.0, 'payments', 'e0')]


def _run_consumers(url, lines, out, tmp_path, jobs, seconds, rate=40):
  """`jobs` live jobs in one consumer group write one output folder while a producer
  sends `rate` events/s for `seconds`; returns the produced entry ids and the job logs."""
  logs = [tmp_path / f'c{n}.log' for n in range(1, jobs + 1)]
  running = []
  try:
    for n, log_path in enumerate(logs, start=1):
      with open(log_path, 'w') as log:
        running.append(python('pipelines.stream', '--source',
                              f'{url}?stream=events&group=enrich&consumer=c{n}',
                              '--output', str(out), '--topics', *WIKI, log=log))
    produce(url, lines, '--rate', str(rate), '--retime', '--limit', str(rate * seconds))
    client = redis.Redis.from_url(url)
    wait_for(lambda: client.xpending('events', 'enrich')['pending'] == 0 and
             _consumer_caught_up(client) and _written(out) >= client.xlen('events'),
             300, 'every entry to be written and acknowledged')
    for job, log_path in zip(running, logs):
      stop(job, log_path)
  finally:
    for job in running:
      if job.poll() is None:
        job.kill()
  return entry_ids(url), [log.read_text() for log in logs]


def test_consumers_of_one_group_share_one_output_without_loss(server, wiki_lines, tmp_path):
  """Two jobs (MULTI_WRITER_JOBS), 40 events/s for 30 s (MULTI_WRITER_SECONDS)."""
  jobs = int(os.environ.get('MULTI_WRITER_JOBS', '2'))
  seconds = int(os.environ.get('MULTI_WRITER_SECONDS', '30'))
  out = tmp_path / 'out'
  produced, logs = _run_consumers(server, wiki_lines, out, tmp_path, jobs, seconds)
  rows = column(out, 'enriched', 'source')
  letters = column(out, 'deadletter', 'source')
  written = [s.rpartition(':')[2] for s in rows + letters]
  lost, duplicated = set(produced) - set(written), len(written) - len(set(written))
  print(f'{jobs} jobs, {len(produced)} produced: {len(rows)} rows, {len(letters)} dead '
        f'letters, {len(lost)} lost, {duplicated} duplicated')
  assert (len(lost), duplicated) == (0, 0)
  assert set(written) == set(produced)
  for log in logs:  # each job did its share and accounted for it
    assert 'every record accounted for' in log and 'Read 0 records' not in log, log[-2000:]
  # Windows written by several jobs hold one file per job, and one partial summary each,
  # named as the file it summarises; their counts add up to the window's rows.
  enriched, summaries = read(out, 'enriched'), read(out, 'windows')
  per_part = {}
  for row in enriched.select(['window', 'id']).to_pylist():
    per_part[row['window']] = per_part.get(row['window'], 0) + 1
  counted = {}
  for summary in summaries.to_pylist():
    counted[summary['window']] = counted.get(summary['window'], 0) + summary['events']
    assert (out / 'enriched' / f'window={summary["window"]}' / summary['part']).exists()
  assert counted == per_part
  shared = [w for w in (out / 'enriched').iterdir() if len(list(w.glob('*.parquet'))) > 1]
  assert shared, 'no window was written by more than one job'
