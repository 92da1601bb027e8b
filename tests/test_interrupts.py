"""Ctrl-C and SIGTERM at any moment of a command: one line, no traceback, 130 or 143."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.redis_server import started
from transforms.io.redis_urls import RedisStreamAddress

pytestmark = pytest.mark.e2e


def _start(*args):
  return subprocess.Popen([sys.executable, '-m', 'pipelines', *args], cwd=ROOT,
                          env=dict(os.environ, HF_HUB_OFFLINE='1'), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _archive(path, count):
  path.write_text(''.join(json.dumps({'id': f'e{n}', 'time': n, 'text': f'event {n}'}) + '\n'
                          for n in range(count)))
  return path


@pytest.mark.parametrize('signum, status', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize('after_s', [0.3, 1.5])  # while Beam and pyarrow import, or just after
def test_an_interrupt_while_a_command_starts_ends_in_one_line(tmp_path, signum, status, after_s):
  job = _start('replay', '--input', str(_archive(tmp_path / 'a.jsonl', 50)), '--output',
               str(tmp_path / 'out'))
  time.sleep(after_s)
  job.send_signal(signum)
  _, err = job.communicate(timeout=120)  # imports and the model take several seconds
  name = signal.Signals(signum).name
  assert job.returncode == status, err
  lines = err.strip().splitlines()
  assert 'Traceback' not in err and lines[-1] == (
      f'interrupted ({name}): replay stopped; a rerun writes what is missing and replaces '
      'the files it wrote'), err
  # A job that got as far as starting has logged that much: nothing else comes before.
  assert all(' INFO ' in line for line in lines[:-1]), err


def test_unknown_commands_are_refused_in_one_line():
  job = _start('frobnicate')
  _, err = job.communicate(timeout=60)
  assert job.returncode == 2 and err.startswith('usage: python -m pipelines {replay|')


@pytest.mark.parametrize('signum, status', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_producer_says_how_many_entries_it_sent(tmp_path, signum, status):
  with started() as server:
    job = _start('produce', '--input', str(_archive(tmp_path / 'a.jsonl', 10_000)),
                 '--target', f'{server.url()}?stream=events', '--rate', '50')
    client = server.client()
    for _ in range(600):  # until the first entries are in, or 60 s
      if client.exists('events') and client.xlen('events') >= 5:
        break
      time.sleep(0.1)
    job.send_signal(signum)
    _, err = job.communicate(timeout=60)
    assert job.returncode == status, err
    name = signal.Signals(signum).name
    sent = client.xlen('events')
    where = RedisStreamAddress.parse(f'{server.url()}?stream=events').describe()
    assert 'Traceback' not in err and err.strip().splitlines()[-1] == (
        f'interrupted ({name}): sent {sent} events to {where}'), err


def test_an_interrupt_wrapped_by_python_machinery_is_still_an_interrupt():
  from pipelines import interrupts
  try:
    try:
      raise interrupts.Terminated()
    except KeyboardInterrupt as e:
      raise RuntimeError("Error calling __set_name__ on 'cached_property'") from e
  except RuntimeError as wrapped:
    assert interrupts.describe(interrupts.interrupt_in(wrapped)) == ('SIGTERM', 143)
  assert interrupts.interrupt_in(ValueError('plain')) is None
