"""A live job takes a new model between windows, without a restart (models/updates.py): a
real Redis server, the real model and a second one made from it, a real LanceDB store."""
import os
import time

import pytest

from models.identity import of_config
from models.loading import ModelConfig
from models.updates import POLL_S, SETTLE_S
from tests.model_copies import cls_pooling_copy
from tests.redis_server import redis_server
from tests.test_stream_e2e import (WIKI, column, python, read, stop, wait_for, window_files,
                                   wiki_lines, _written)  # noqa: F401 (wiki_lines: a fixture)
from transforms.io.vector_store import open_table

pytestmark = [pytest.mark.e2e, pytest.mark.real_model]
BEFORE, AFTER = 60, 140  # events sent before the new model appears, and after
EVENTS = BEFORE + AFTER


def test_a_model_folder_appearing_mid_run_takes_over_between_windows(wiki_lines, tmp_path):
  out, watch, log_path = tmp_path / 'out', tmp_path / 'models', tmp_path / 'job.log'
  watch.mkdir()
  lines = wiki_lines.read_text().splitlines(keepends=True)
  (tmp_path / 'before.jsonl').write_text(''.join(lines[:BEFORE]))
  (tmp_path / 'after.jsonl').write_text(''.join(lines[BEFORE:EVENTS]))
  send = lambda name, log: python('pipelines.produce', '--input', str(tmp_path / name),
                                  '--target', f'{url}?stream=events', '--rate', '15',
                                  '--retime', log=log)
  with redis_server() as url, open(log_path, 'w') as log:
    job = python('pipelines.stream', '--source', f'{url}?stream=events&group=enrich',
                 '--output', str(out), '--sink', 'vectors', '--model_watch', str(watch),
                 *WIKI, log=log)
    try:
      assert send('before.jsonl', log).wait(120) == 0
      wait_for(lambda: _written(out) == BEFORE, 240, 'the events before the update')
      # Made beside the watched folder, then renamed into it: it appears whole.
      staged = cls_pooling_copy(tmp_path / 'staging')
      os.rename(staged, watch / '0002-minilm-cls')
      time.sleep(SETTLE_S + POLL_S)  # the folder has settled and been seen
      assert send('after.jsonl', log).wait(120) == 0
      wait_for(lambda: _written(out) == EVENTS, 240, 'every event to be written')
      assert job.poll() is None, log_path.read_text()[-3000:]
    finally:
      stop(job, log_path)
  old = of_config(ModelConfig(precision='auto'))  # the job's default precision
  new = of_config(ModelConfig(model=str(watch / '0002-minilm-cls'), precision='auto'))
  sources = column(out, 'enriched', 'source') + column(out, 'deadletter', 'source')
  assert len(sources) == len(set(sources)) == EVENTS  # nothing lost, nothing twice
  rows = read(out, 'enriched').to_pylist()
  by_window = {}
  for row in rows:
    by_window.setdefault(row['window_start'], set()).add(row['model_fingerprint'])
  assert all(len(prints) == 1 for prints in by_window.values())  # one model per window
  order = [prints.pop() for _, prints in sorted(by_window.items())]
  assert order[0] == old.fingerprint and order[-1] == new.fingerprint
  switched = order.index(new.fingerprint)
  assert set(order[:switched]) == {old.fingerprint} and set(order[switched:]) == {
      new.fingerprint}  # before the folder came the old model, after it the new one
  stored_old = open_table(str(out / 'vectors')).to_arrow()
  stored_new = open_table(str(out / 'vectors'), table=new.table('events')).to_arrow()
  assert set(stored_old.column('model_fingerprint').to_pylist()) == {old.fingerprint}
  assert set(stored_new.column('model_fingerprint').to_pylist()) == {new.fingerprint}
  assert stored_old.num_rows + stored_new.num_rows == sum(row['chunk_count'] for row in rows)
  assert 'Loading the updated model' in log_path.read_text()
  assert len(order) >= 2
