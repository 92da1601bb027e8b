"""run.sh as a user calls it: options to the main job, paths from the caller's folder."""
import json
import os
import subprocess

import pyarrow.dataset as ds
import pytest

from pipelines.launcher import JobResult
from tests.conftest import ROOT

RUN_SH = str(ROOT / 'run.sh')


def run_sh(*args, cwd, timeout=600) -> subprocess.CompletedProcess:
  # SKIP_SETUP: the suite already runs in the project's .venv; never reinstall from a test.
  env = dict(os.environ, SKIP_SETUP='1', HF_HUB_OFFLINE='1')
  return subprocess.run([RUN_SH, *args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)


def test_an_unknown_command_is_one_error_line(tmp_path):
  done = run_sh('bogus', cwd=tmp_path, timeout=60)
  assert done.returncode == 2
  assert done.stderr == 'error: unknown command: bogus (see ./run.sh help)\n'


def test_a_replay_without_input_is_one_lowercase_error_line(tmp_path):
  done = run_sh('replay', '--output', 'out', cwd=tmp_path, timeout=300)
  assert done.returncode == 2
  assert done.stderr == 'error: --input is required: a file glob of the archive(s) to replay\n'


def test_help_documents_options_for_the_main_job(tmp_path):
  done = run_sh('help', cwd=tmp_path, timeout=60)
  assert done.returncode == 0
  assert done.stdout.startswith('The one entry point.')
  assert './run.sh [OPTIONS]' in done.stdout and '--duration S' in done.stdout
  assert 'set -euo' not in done.stdout


def test_the_summary_counts_in_singular_and_plural():
  one = JobResult(1, 1, 0, 1.0, 'out', 'fixed').summary()
  assert one.startswith('Read 1 record: 1 enriched row, 0 dead letters (')
  two = JobResult(3, 2, 1, 1.0, 'out', 'fixed').summary()
  assert two.startswith('Read 3 records: 2 enriched rows, 1 dead letter (')


@pytest.mark.e2e
def test_replay_reads_and_writes_paths_from_the_callers_folder(tmp_path):
  events = [{'time': f'2026-01-01T00:00:0{n}Z', 'text': f'event number {n}'} for n in range(3)]
  (tmp_path / 'mine.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in events))
  (tmp_path / 'out').mkdir()
  done = run_sh('replay', '--input', 'mine.jsonl', '--output', 'out/r', cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'Read 3 records: 3 enriched rows, 0 dead letters' in done.stdout
  rows = ds.dataset(tmp_path / 'out/r/enriched', format='parquet', partitioning='hive')
  assert rows.count_rows() == 3


@pytest.mark.e2e
def test_options_without_a_command_go_to_the_live_job(tmp_path):
  done = run_sh('--duration', '8', '--output', 'live', cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'every record accounted for' in done.stdout
  assert (tmp_path / 'live' / 'report.html').exists()
