"""Faults mid-run: outages ridden out with backoff, a write that cannot be made stops the job.

Against real components: a real redis-server stopped and started again on its
port and data, a really full filesystem (a small tmpfs; skipped where it
cannot be mounted).
"""
import contextlib
import errno
import json
import logging
import os
import subprocess
import sys
import time

import pyarrow as pa
import pytest
import redis

from tests.conftest import ROOT
from tests.redis_server import started
from tests.test_stream_e2e import _consumer_caught_up, column, python, stop, wait_for
from transforms import job_state
from transforms.io import faults
from transforms.io.redis_streams import RedisStreamAddress, RedisStreamReader
from transforms.io.files import write_parquet


def _policy(stop_job: bool, retry_s: float = faults.DEFAULT_WRITE_RETRY_S):
  """A fresh job's write policy (a token of its own, so no test sees another's stop)."""
  return faults.WritePolicy(retry_s=retry_s, stop_job=stop_job, job=os.urandom(8).hex())


@contextlib.contextmanager
def small_filesystem(folder, size='1m'):
  """A tmpfs of `size` mounted at `folder`; skips the test where mounting is not allowed."""
  folder.mkdir()
  done = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(folder)],
                        capture_output=True, text=True)
  if done.returncode != 0:
    pytest.skip(f'cannot mount a small filesystem here: {done.stderr.strip()}')
  try:
    yield folder
  finally:
    subprocess.run(['umount', '-l', str(folder)], check=False)


def fill(folder, leave_bytes: int):
  """Writes a filler file until only about `leave_bytes` are free; returns its path."""
  stat = os.statvfs(folder)
  filler = folder / 'filler'
  with open(filler, 'wb') as out:
    out.write(b'\0' * max(0, stat.f_bavail * stat.f_frsize - leave_bytes))
  return filler


def _messages(caplog, word):
  return [r.getMessage() for r in caplog.records if f' {word}' in r.getMessage()]


def test_retry_rides_out_a_fault_and_logs_each_state_change_once(caplog, monkeypatch):
  monkeypatch.setattr(faults.time, 'sleep', lambda s: None)
  failures = [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))] * 3

  def write():
    if failures:
      raise failures.pop()
    return 'written'

  with caplog.at_level(logging.INFO):
    assert faults.retry(write, _policy(True), 'output files', 'cannot write f',
                        (OSError,)) == "written"
  assert _messages(caplog, 'lost') == [
      'output files lost: cannot write f: [Errno 28] No space left on device; retrying with '
      'backoff']
  assert len(_messages(caplog, 'restored')) == 1
  backoff = faults.Backoff()
  assert [backoff.next() for _ in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]


def test_a_write_given_up_stops_a_local_job_and_is_raised_on_a_remote_runner():
  def full():
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  remote = _policy(False, retry_s=0.1)
  with pytest.raises(OSError):
    faults.retry(full, remote, 'output files', 'cannot write f', (OSError,))
  state = job_state.of(remote.job)
  assert state.stop_reason is None and not state.drain.is_set()
  local = _policy(True, retry_s=0.1)
  with pytest.raises(faults.WriteAbandoned):
    faults.retry(full, local, 'output files', 'cannot write f', (OSError,))
  state = job_state.of(local.job)
  assert state.stop_reason == ('cannot write f: [Errno 28] No space left on device '
                               '(still failing after 0.1 s)')
  assert state.drain.is_set()  # the live source stops reading
  with pytest.raises(faults.WriteAbandoned):  # later writes are skipped at once
    faults.retry(lambda: pytest.fail('called'), local, 'output files', 'cannot write g',
                 (OSError,))
  other = _policy(True, retry_s=0.1)  # another job in the same process goes on
  assert faults.retry(lambda: 1, other, 'output files', 'cannot write h', (OSError,)) == 1


def test_write_parquet_on_a_full_filesystem(tmp_path):
  with small_filesystem(tmp_path / 'disk') as disk:
    filler = fill(disk, leave_bytes=8 * 1024)
    table = pa.table({'x': list(range(100_000))})
    policy = _policy(True, retry_s=0.5)
    with pytest.raises(faults.WriteAbandoned):
      write_parquet(table, f'{disk}/out/part.parquet', policy)
    assert '[Errno 28] No space left on device' in job_state.of(policy.job).stop_reason
    assert not [p for p in (disk / 'out').iterdir()]  # the temporary file was removed
    filler.unlink()
    write_parquet(table, f'{disk}/out/part.parquet', _policy(True, retry_s=0.5))
    assert [p.name for p in (disk / 'out').iterdir()] == ['part.parquet']
    # A filesystem that refuses writes (root passes permission checks, so read-only here).
    subprocess.run(['mount', '-o', 'remount,ro', str(disk)], check=True)
    policy = _policy(True, retry_s=0.5)
    with pytest.raises(faults.WriteAbandoned):
      write_parquet(table, f'{disk}/out/other.parquet', policy)
    assert '[Errno 30] Read-only file system' in job_state.of(policy.job).stop_reason


def test_redis_reader_rides_out_a_server_restart(caplog):
  with started(persist=True) as server:
    client = server.client()
    for n in range(3):
      client.xadd('events', {'event': json.dumps({'n': n})})
    reader = RedisStreamReader(RedisStreamAddress.parse(
        f'{server.url()}?stream=events&group=g&consumer=c'), block_ms=10)
    reader.open()
    with caplog.at_level(logging.INFO):
      assert len(reader.poll(10)) == 3 and not reader.stalled()
      server.stop()
      for _ in range(5):
        assert reader.poll(10) == []  # no exception, no traceback
      assert reader.stalled()
      server.start()
      server.client().xadd('events', {'event': json.dumps({'n': 3})})
      got = []
      deadline = time.monotonic() + 20
      while not got and time.monotonic() < deadline:
        got = reader.poll(10)
        time.sleep(0.05)
    assert [json.loads(r.raw)['n'] for r in got] == [3]
    assert not reader.stalled()
    reader.close()
  assert len(_messages(caplog, 'lost')) == 1 and len(_messages(caplog, 'restored')) == 1
  assert 'Traceback' not in caplog.text


def _events(path, count, first=0):
  # From the start of a 5 s window: 120 events (3 s) fall in one window, so whether a
  # part of them fits on a nearly full disk does not depend on the clock.
  now = time.time() // 5 * 5
  path.write_text(''.join(json.dumps({'id': f'e{n}', 'time': now + (n - first) / 40,
                                      'comment': f'edit number {n} of the page'}) + '\n'
                          for n in range(first, first + count)))
  return path


def _ids(out):
  """The enriched ids written so far ([] while there are none, or a file is being renamed)."""
  try:
    return column(out, 'enriched', 'id')
  except (OSError, ValueError):
    return []


def _all_acknowledged(client):
  try:
    return client.xpending('events', 'enrich')['pending'] == 0 and _consumer_caught_up(client)
  except redis.ResponseError:  # no group yet
    return False


def _produce(server, path):
  from pipelines.produce import produce
  return produce(str(path), RedisStreamAddress.parse(f'{server.url()}?stream=events'))


FLAGS = ['--time_field', 'time', '--text_field', 'comment', '--window_size', '5',
         '--max_out_of_orderness', '1']


@pytest.mark.e2e
def test_disk_full_stops_the_job_with_one_line_and_a_restart_writes_every_record_once(tmp_path):
  with small_filesystem(tmp_path / 'disk') as disk, started(persist=True) as server:
    filler = fill(disk, leave_bytes=64 * 1024)  # one window of 120 rows needs ~190 KB
    out = disk / 'out'
    source = f'{server.url()}?stream=events&group=enrich&consumer=w1'
    assert _produce(server, _events(tmp_path / 'a.jsonl', 120)) == 120
    log_path = tmp_path / 'full.log'
    with open(log_path, 'w') as log:
      job = python('pipelines.stream', '--source', source, '--output', str(out),
                   '--write_retry_timeout', '3', '--duration', '240', *FLAGS, log=log)
      code = job.wait(300)
    printed = log_path.read_text()
    assert code == 1, printed[-3000:]
    errors = [line for line in printed.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and printed.strip().splitlines()[-1] == errors[0]
    assert 'No space left on device' in errors[0] and str(out) in errors[0]
    assert 'stay pending' in errors[0] and 'read again on restart' in errors[0]
    assert 'Traceback' not in printed and 'every record accounted for' not in printed
    client = server.client()
    assert client.xpending('events', 'enrich')['pending'] == 120  # nothing acknowledged
    filler.unlink()  # space is back
    log_path = tmp_path / 'again.log'
    with open(log_path, 'w') as log:
      job = python('pipelines.stream', '--source', source, '--output', str(out), *FLAGS,
                   log=log)
      wait_for(lambda: _all_acknowledged(client), 180, 'every entry to be acknowledged')
      stop(job, log_path)
    ids = column(out, 'enriched', 'id')
    assert sorted(ids) == sorted(f'e{n}' for n in range(120))  # each exactly once


@pytest.mark.e2e
def test_sink_and_source_redis_outages_mid_run_are_ridden_out(tmp_path):
  """The sink's server down while a window is written, then the source's: nothing lost."""
  with started(persist=True) as source, started(persist=True) as sink:
    out, log_path = tmp_path / 'out', tmp_path / 'job.log'
    client = source.client()
    with open(log_path, 'w') as log:
      job = python('pipelines.stream', '--source', f'{source.url()}?stream=events&group=enrich',
                   '--sink', f'{sink.url()}?stream=enriched', '--output', str(out), *FLAGS,
                   log=log)
      _produce(source, _events(tmp_path / 'a.jsonl', 80))
      wait_for(lambda: _all_acknowledged(client) and _ids(out), 180,
               'the first events to be written and acknowledged')
      for role, down in (('sink', sink), ('source', source)):
        down.stop()
        if down is sink:  # a window to write while the sink is down
          _produce(source, _events(tmp_path / 'b.jsonl', 80, first=80))
        wait_for(lambda: f'WARNING {role} redis://' in log_path.read_text(), 60,
                 f'the {role} outage to be noticed')
        time.sleep(5)
        down.start()
        client = source.client()
      _produce(source, _events(tmp_path / 'c.jsonl', 80, first=160))
      wait_for(lambda: _all_acknowledged(client) and len(_ids(out)) == 240, 180,
               'every entry to be written and acknowledged after the outages')
      stop(job, log_path)
    printed = log_path.read_text()
    assert 'Traceback' not in printed, printed[-3000:]
    for role in ('sink', 'source'):  # one line when lost, one when restored
      lines = [line for line in printed.splitlines() if f'WARNING {role} redis://' in line]
      assert len(lines) == 2 and ' lost: ' in lines[0] and ' restored after ' in lines[1], lines
    assert sorted(_ids(out)) == sorted(f'e{n}' for n in range(240))
    assert sink.client().xlen('enriched') >= 240  # the sink is at least once


@pytest.mark.e2e
def test_disk_full_stops_a_replay_with_one_line(tmp_path):
  with small_filesystem(tmp_path / 'disk') as disk:
    fill(disk, leave_bytes=32 * 1024)  # 60 rows need ~90 KB
    archive = _events(tmp_path / 'a.jsonl', 60)
    done = subprocess.run(
        [sys.executable, '-m', 'pipelines.replay', '--input', str(archive), '--output',
         str(disk / 'out'), '--write_retry_timeout', '2', *FLAGS], cwd=ROOT,
        capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE='1'))
  printed = done.stdout + done.stderr
  assert done.returncode == 1, printed[-3000:]
  errors = [line for line in printed.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'No space left on device' in errors[0], printed[-3000:]
  assert errors[0].endswith('a rerun writes what is missing and replaces the files it wrote')
  assert 'Traceback' not in printed and 'every record accounted for' not in printed
