"""Durable files: synced before and after the rename, stale temporaries removed at start,
temporary names of their own, content names that cannot collide. Real files and folders."""
import os
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.launcher import _make_output_folders
from transforms.io.faults import WritePolicy
from transforms.io.files import STALE_TEMPORARY_S, ParquetFiles, write_text
from transforms.io.sinks import part_name


def test_content_names_cannot_collide():
  assert part_name(['a\\0b']) != part_name(['a', 'b'])
  assert part_name(['ab']) != part_name(['a', 'b'])
  assert part_name(['s:1', 's:2']) == part_name(['s:2', 's:1'])


def _synced(monkeypatch):
  """Records what os.fsync is asked to sync (by path), and syncs it."""
  paths, real = [], os.fsync

  def fsync(fd):
    paths.append(os.readlink(f'/proc/self/fd/{fd}'))
    real(fd)

  monkeypatch.setattr(os, 'fsync', fsync)
  return paths


def test_a_parquet_file_and_its_folder_are_synced_unless_turned_off(tmp_path, monkeypatch):
  paths = _synced(monkeypatch)
  table = pa.table({'x': [1, 2, 3]})
  folder = tmp_path / 'window=1'
  ParquetFiles(WritePolicy()).write(table, str(folder / 'part-a.parquet'))
  assert len(paths) == 2
  assert os.path.basename(paths[0]).startswith('.') and paths[0].endswith('.tmp')
  assert paths[1] == str(folder)
  assert pq.read_table(folder / 'part-a.parquet').equals(table)
  ParquetFiles(WritePolicy(fsync=False)).write(table, str(folder / 'part-b.parquet'))
  assert len(paths) == 2
  write_text(str(tmp_path / 'report.html'), 'page')
  assert len(paths) == 4 and paths[3] == str(tmp_path)


def test_stale_temporaries_are_removed_at_start_and_a_live_peer_s_kept(tmp_path):
  window = tmp_path / 'enriched' / 'window=20150912T000000Z'
  window.mkdir(parents=True)
  stale, fresh = window / '.0123abcd.tmp', window / '.4567ef.tmp'
  kept = window / 'part-0011.parquet'
  for path in (stale, fresh, kept):
    path.write_bytes(b'x')
  old = time.time() - STALE_TEMPORARY_S - 60
  os.utime(stale, (old, old))
  os.utime(kept, (old, old))
  _make_output_folders(str(tmp_path))
  assert not stale.exists() and fresh.exists() and kept.exists()


def test_two_writers_of_one_report_never_share_a_temporary_name(tmp_path):
  path, errors = str(tmp_path / 'report.html'), []

  def write(text):
    try:
      for _ in range(100):
        write_text(path, text, fsync=False)
    except OSError as e:  # one writer's rename taking the other's temporary file
      errors.append(e)

  threads = [threading.Thread(target=write, args=(text,)) for text in ('one', 'two')]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert not errors
  assert open(path).read() in ('one', 'two')
  assert sorted(os.listdir(tmp_path)) == ['report.html']
