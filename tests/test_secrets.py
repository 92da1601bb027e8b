"""Secrets: one redactor for every output, and passwords kept off the command line.

Against real redis-server processes and a real replay; the password shows in no
line printed and in no file the job writes.
"""
import json
import os
import subprocess
import sys

import pytest
import redis

from pipelines.produce import produce
from tests.conftest import ROOT
from tests.redis_server import started
from transforms.io.redis_urls import REDIS_PASSWORD_ENV, RedisStreamAddress
from transforms.io.uri_query import redacted

SECRET = 'p@ss:w0rd-only@in-tests'
QUOTED = 'p%40ss%3Aw0rd-only%40in-tests'


def test_a_password_holding_at_signs_is_redacted_to_the_host():
  assert redacted('redis://:p@ss@host:6379/0?stream=s') == 'redis://:***@host:6379/0?stream=s'
  assert redacted('see rediss://u:a@b@h/1 and redis://:c@d') == (
      'see rediss://u:***@h/1 and redis://:***@d')
  assert redacted('redis://h:6379/0?stream=a@b') == 'redis://h:6379/0?stream=a@b'


def _events(tmp_path, n=3):
  archive = tmp_path / 'events.jsonl'
  archive.write_text(''.join(json.dumps(
      {'id': i, 'time': f'2026-01-01T00:00:{i:02d}Z', 'text': f'event {i}'}) + '\n' for i in range(n)))
  return archive


def test_password_from_a_file_or_the_environment(tmp_path, monkeypatch):
  with started(password=SECRET) as server:
    base = f'redis://127.0.0.1:{server.port}/0'
    secret_file = tmp_path / 'redis-password'
    secret_file.write_text(SECRET + '\n')
    address = RedisStreamAddress.parse(f'{base}?stream=ev&password_file={secret_file}')
    assert SECRET not in repr(address) and QUOTED not in address.describe()
    assert produce(str(_events(tmp_path)), address) == 3
    monkeypatch.setenv(REDIS_PASSWORD_ENV, SECRET)
    assert RedisStreamAddress.parse(f'{base}?stream=ev').client().xlen('ev') == 3
    monkeypatch.delenv(REDIS_PASSWORD_ENV)
    with pytest.raises(redis.AuthenticationError):
      RedisStreamAddress.parse(f'{base}?stream=ev').client().ping()
    with pytest.raises(ValueError, match='cannot read the password_file'):
      RedisStreamAddress.parse(f'{base}?stream=ev&password_file={tmp_path}/none')


@pytest.mark.e2e
def test_no_password_in_the_report_or_any_line_printed(tmp_path):
  with started(password=SECRET) as server:
    sink = f'redis://:{QUOTED}@127.0.0.1:{server.port}/0?stream=out'
    out = tmp_path / 'out'
    done = subprocess.run(
        [sys.executable, '-m', 'pipelines.replay', '--input', str(_events(tmp_path, 6)),
         '--output', str(out), '--window_size', '60', '--sink', sink],
        cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE='1'), capture_output=True, text=True,
        timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert server.client().xlen('out') == 6
    page = (out / 'report.html').read_text()
    assert ':***@127.0.0.1' in page
    for shown in (page, done.stdout, done.stderr):
      assert SECRET not in shown and QUOTED not in shown
