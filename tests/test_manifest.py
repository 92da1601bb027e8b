"""An output folder remembers the settings that shaped it (pipelines.manifest)."""
import json
import os
import subprocess
import sys

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.config import job_config
from pipelines.manifest import APPEND, MANIFEST, OVERWRITE, REFUSE, prepare_output
from pipelines.options import ConfigError
from tests.conftest import ROOT


def _config(out, *flags):
  return job_config(PipelineOptions(['--output', str(out), *flags]))


def test_the_first_run_records_its_settings_and_the_same_settings_go_on(tmp_path):
  prepare_output(_config(tmp_path, '--window_size', '10'))
  recorded = json.loads((tmp_path / MANIFEST).read_text())['settings']
  assert len(recorded) == 1 and recorded[0]['window']['size_s'] == 10
  prepare_output(_config(tmp_path, '--window_size', '10'))  # a rerun, a resumed live job
  assert json.loads((tmp_path / MANIFEST).read_text())['settings'] == recorded


@pytest.mark.parametrize('flags, named', [
    (['--window_size', '30'], 'window'), (['--dedup'], 'derived'),
    (['--model', 'all-MiniLM-L6-v2', '--normalize'], 'model'),
    (['--text_field', 'comment'], 'fields'), (['--sink', 'vectors'], 'sinks'),
])
def test_other_settings_are_refused_in_one_line_naming_what_differs(tmp_path, flags, named):
  prepare_output(_config(tmp_path))
  with pytest.raises(ConfigError) as refused:
    prepare_output(_config(tmp_path, *flags), REFUSE)
  message = str(refused.value)
  assert '\n' not in message and f'({named} differs' in message
  assert '--overwrite' in message and '--append' in message


def test_overwrite_removes_the_earlier_output_and_append_records_both(tmp_path):
  prepare_output(_config(tmp_path))
  (tmp_path / 'enriched' / 'window=x').mkdir(parents=True)
  (tmp_path / 'vectors').mkdir()
  (tmp_path / 'report.html').write_text('old')
  prepare_output(_config(tmp_path, '--window_size', '5'), OVERWRITE)
  assert sorted(os.listdir(tmp_path)) == [MANIFEST]
  prepare_output(_config(tmp_path, '--window_size', '7'), APPEND)
  sizes = [s['window']['size_s'] for s in json.loads((tmp_path / MANIFEST).read_text())[
      'settings']]
  assert sizes == [5, 7]
  prepare_output(_config(tmp_path, '--window_size', '5'))  # one of the recorded settings


def test_both_flags_at_once_are_refused(tmp_path):
  with pytest.raises(ConfigError, match='not both'):
    _config(tmp_path, '--overwrite', '--append')


@pytest.mark.e2e
def test_a_replay_with_other_settings_into_the_same_folder_exits_2(tmp_path):
  archive = tmp_path / 'a.jsonl'
  archive.write_text(''.join(json.dumps({'id': f'e{n}', 'time': n, 'text': f'event {n}'}) + '\n'
                             for n in range(30)))

  def replay(*flags):
    return subprocess.run([sys.executable, '-m', 'pipelines.replay', '--input', str(archive),
                           '--output', str(tmp_path / 'out'), *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, HF_HUB_OFFLINE='1'))

  assert replay('--window_size', '10').returncode == 0
  refused = replay('--window_size', '5')
  assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
      refused.stderr.strip()] and refused.stderr.startswith('error: --output ')
  assert len(os.listdir(tmp_path / 'out' / 'enriched')) == 3  # untouched: 10 s windows
  replaced = replay('--window_size', '5', '--overwrite')
  assert replaced.returncode == 0, replaced.stderr[-2000:]
  assert len(os.listdir(tmp_path / 'out' / 'enriched')) == 6
