"""Bad flags and broken dependencies end the job before it starts: one `error:` line, exit 2.

Each case runs the entry point as a user would. "Before it starts" is checked by what the
job did, not by a clock: exit 2 with one line and no traceback, before the job was built
(no "Running on" line). The seconds are printed (pytest -s); they are asserted only for
the checks made before Beam and torch load (pipelines.first_checks, Kafka's: 5 s).
"""
import json
import os
import subprocess
import sys
import time

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import preflight
from pipelines.options import ConfigError
from tests.conftest import ROOT
from tests.redis_server import free_port, started

pytestmark = pytest.mark.e2e
SECRET = 'preflight-secret'
_HAS_NVIDIA = os.path.exists('/proc/driver/nvidia') or os.path.exists('/dev/nvidia0')


@pytest.fixture(scope='module')
def archive(tmp_path_factory):
  path = tmp_path_factory.mktemp('input') / 'events.jsonl'
  path.write_text(''.join(json.dumps({'time': 1_700_000_000 + n, 'text': f'event {n}'}) + '\n'
                          for n in range(5)))
  return path


@pytest.fixture(scope='module')
def server():
  with started(password=SECRET) as running:
    yield running


def refused_at_start(module, *args, expect, within_s=None):
  """Runs `python -m module args`; asserts exit 2 with one `error:` line holding `expect`,
  and where `within_s` is given, that it came that soon (from the start to the exit)."""
  began = time.monotonic()
  done = subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE='1'))
  seconds = time.monotonic() - began
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2, done.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith('error: '), done.stderr[-3000:]
  assert expect in lines[0], lines[0]
  assert SECRET not in done.stdout + done.stderr
  assert 'Traceback' not in done.stderr and 'Running on' not in done.stdout + done.stderr
  print(f'{module} {expect!r}: exit 2 after {seconds:.1f} s')
  assert within_s is None or seconds < within_s, f'exit 2 after {seconds:.1f} s: {lines[0]}'
  return lines[0]


def replay_args(archive, *more):
  return ['--input', str(archive), '--time_field', 'time', '--text_field', 'text', *more]


def test_unreachable_source():
  source = f'redis://127.0.0.1:{free_port()}/0?stream=events&group=g'
  refused_at_start('pipelines.stream', '--source', source, '--output', 'out',
                   expect='Connection refused')


def test_refused_password(server, archive, tmp_path):
  wrong = f'{server.url(password="not-it")}?stream=events&group=g'
  line = refused_at_start('pipelines.stream', '--source', wrong, '--output', str(tmp_path),
                          expect='refused the user or password')
  assert ':***@' in line
  refused_at_start('pipelines.stream', '--source', f'{server.url()}?stream=e&group=g',
                   '--sink', f'{server.url(password="nope")}?stream=out',
                   '--output', str(tmp_path), expect='sink redis://:***@')
  refused_at_start('pipelines.stream', '--source', f'{server.url(password="")}?stream=e&group=g',
                   '--output', str(tmp_path), expect='Authentication required')
  refused_at_start('pipelines.produce', '--input', str(archive), '--target',
                   f'{server.url(password="not-it")}?stream=e', expect='refused the user')


@pytest.mark.parametrize('module', ['pipelines.stream', 'pipelines.replay'])
def test_missing_output_parent_and_output_that_is_a_file(module, archive, tmp_path):
  args = replay_args(archive) if module.endswith('replay') else []
  refused_at_start(module, *args, '--output', str(tmp_path / 'no' / 'such' / 'out'),
                   expect='does not exist')
  a_file = tmp_path / 'a_file'
  a_file.write_text('not a folder')
  refused_at_start(module, *args, '--output', str(a_file), expect='is a file, not a folder')


@pytest.mark.parametrize('module', ['pipelines.stream', 'pipelines.replay'])
def test_model_not_found_with_the_hub_offline(module, archive, tmp_path):
  args = replay_args(archive) if module.endswith('replay') else []
  refused_at_start(module, *args, '--output', str(tmp_path), '--model', 'no-such-model',
                   expect='not in the Hugging Face cache')


@pytest.mark.skipif(_HAS_NVIDIA, reason='this machine has an NVIDIA driver')
@pytest.mark.parametrize('module', ['pipelines.stream', 'pipelines.replay'])
def test_cuda_without_cuda(module, archive, tmp_path):
  args = replay_args(archive) if module.endswith('replay') else []
  refused_at_start(module, *args, '--output', str(tmp_path), '--device', 'cuda',
                   expect='--device cuda')


def test_remote_runners_skip_the_local_checks(archive, tmp_path):
  """A Dataflow launcher has no GPU and may not reach the workers' Redis or model."""
  from pipelines.config import job_config
  options = PipelineOptions(['--runner', 'DataflowRunner', '--device', 'cuda', '--model',
                             'no-such-model', '--output', 'gs://bucket/out'])
  source = f'redis://127.0.0.1:{free_port()}/0?stream=e&group=g'
  preflight.check_start(options, job_config(options), source)  # nothing raised
  local = PipelineOptions(['--output', str(tmp_path), '--model', 'no-such-model'])
  with pytest.raises(ConfigError, match='no-such-model'):
    preflight.check_start(local, job_config(local))
  preflight.check_output('gs://bucket/no/such/parent')  # an object store has no folders


def test_a_source_that_fails_every_poll_is_not_a_success(server, tmp_path):
  """Reachable at the start, gone before the first poll: read nothing, exit 1, no success line."""
  log_path = tmp_path / 'job.log'
  with open(log_path, 'w') as log:
    job = subprocess.Popen(
        [sys.executable, '-m', 'pipelines.stream', '--source',
         f'{server.url()}?stream=events&group=g', '--output', str(tmp_path), '--duration', '15'],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE='1'))
    try:
      deadline = time.monotonic() + 60
      while 'Running on' not in log_path.read_text():  # the start checks passed
        assert time.monotonic() < deadline and job.poll() is None, log_path.read_text()
        time.sleep(0.05)
      server.stop()
      try:
        code = job.wait(180)
      finally:
        server.start()  # the module's other tests use it
    finally:
      if job.poll() is None:  # a failed wait: the job must not outlive the test
        job.kill()
  printed = log_path.read_text()
  assert code == 1, printed[-3000:]
  assert 'every record accounted for' not in printed
  assert 'error: read nothing: source redis://:***@' in printed
  assert printed.count(' lost: ') == 1 and 'Traceback' not in printed, printed[-3000:]
