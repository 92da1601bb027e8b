"""Spilled groupings: values written in small batches per key, read back once, folders
removed; what waits in memory stays bounded whatever the input."""
import json
import os
import time

import apache_beam as beam
import pyarrow.dataset as ds
import pytest
from apache_beam.testing.util import assert_that, equal_to

from tests.runners import batch_pipeline
from transforms import spill
from transforms.spill import (GroupSpilled, _SpillFn, read_values, remove_spill,
                              remove_stale_spills, write_values)


def test_values_come_back_in_order_and_their_file_goes(tmp_path):
  values = [b'', b'a', bytes(range(256)) * 9, b'\x00\x00\x00\x01']
  path = write_values(str(tmp_path / 'job'), values)
  assert list(read_values(path)) == values
  assert not os.path.exists(path)


def test_what_waits_is_bounded_by_keys_and_values(tmp_path, monkeypatch):
  monkeypatch.setattr(spill, 'SPILL_VALUES', 3)
  monkeypatch.setattr(spill, 'OPEN_KEYS', 2)
  fn = _SpillFn(str(tmp_path))
  fn.start_bundle()
  written, most = [], 0
  for n in range(60):  # keys in order, a straggler now and then
    key = n // 5 if n % 7 else 0
    written.extend(fn.process((key, b'%d' % n)))
    most = max(most, sum(len(v) for v in fn._waiting.values()))
    assert len(fn._waiting) <= 2
  written.extend(v.value for v in fn.finish_bundle())
  assert most <= 2 * 3 and not fn._waiting
  back = {}
  for key, path in written:
    back.setdefault(key, []).extend(read_values(path))
  assert sorted(v for vs in back.values() for v in vs) == sorted(b'%d' % n for n in range(60))
  assert all(key == (int(v) // 5 if int(v) % 7 else 0) for key, vs in back.items() for v in vs)


def test_a_spilled_grouping_groups_like_group_by_key(tmp_path, monkeypatch):
  monkeypatch.setattr(spill, 'SPILL_VALUES', 4)
  pairs = [(n % 5, b'v%d' % n) for n in range(50)]
  with batch_pipeline() as p:
    grouped = (p | beam.Create(pairs) | GroupSpilled(str(tmp_path / 'job'))
               | beam.Map(lambda kv: (kv[0], sorted(v for f in kv[1] for v in read_values(f)))))
    assert_that(grouped, equal_to([(k, sorted(v for key, v in pairs if key == k))
                                   for k in range(5)]))


def test_a_killed_run_s_spill_is_removed_at_the_next_start(tmp_path):
  root = tmp_path / spill.SPILL_DIR
  old, running = root / 'old', root / 'running'
  write_values(str(old), [b'x'])
  write_values(str(running), [b'y'])
  past = time.time() - spill.STALE_SPILL_S - 10
  os.utime(old, (past, past))
  assert remove_stale_spills(str(tmp_path)) == 1
  assert not old.exists() and running.is_dir()
  remove_spill(str(running))  # the job's own, when it ends: the empty root goes too
  assert not root.exists()
  assert remove_stale_spills(str(tmp_path)) == 0 and remove_stale_spills('gs://b/out') == 0


@pytest.mark.real_model
def test_a_replay_leaves_no_spill_behind_and_clears_a_killed_run_s(tmp_path):
  from pipelines import replay
  archive = tmp_path / 'events.jsonl'
  archive.write_text(''.join(json.dumps({'id': f'e{n}', 'time': 60 * n // 7, 'text': t}) + '\n'
                             for n, t in enumerate(['card declined', 'my card was declined',
                                                    'parcel late', 'refund missing'] * 7)))
  out = tmp_path / 'out'
  stale = out / spill.SPILL_DIR / 'killed'
  write_values(str(stale), [b'rows of a killed run'])
  past = time.time() - spill.STALE_SPILL_S - 10
  os.utime(stale, (past, past))
  result = replay.run(['--input', str(archive), '--output', str(out), '--id_field', 'id',
                       '--text_field', 'text', '--dedup', '--dedup_horizon', '120',
                       '--append'])
  assert result.enriched_rows == 28 and result.balanced and result.failure is None
  assert not (out / spill.SPILL_DIR).exists()
  rows = ds.dataset(out / 'enriched', format='parquet', partitioning='hive').to_table()
  duplicates = dict(zip(rows.column('id').to_pylist(), rows.column('duplicate_of').to_pylist()))
  assert duplicates['e4'] == 'e0'  # the same text, 34 s later, in its window
  assert duplicates['e8'] == 'e0'  # 68 s later, in the next window: from the look-back
