"""Atomic Parquet files: written under a hidden temporary name, then renamed, through
Beam's FileSystems (local disks and object stores alike), retried under the job's
WritePolicy."""
import collections
import io
import logging
import os
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.io import faults

# Columns that repeat one value (or a few) per file. Dictionary encoding of the
# embeddings' floats, pyarrow's default, tripled the write time of a window file
# (3.0 against 1.0 ms for 28 rows of 384 floats) and made it larger (61 against 42 KB).
_DICTIONARY_COLUMNS = frozenset({'window_start', 'window_end', 'model', 'label', 'reason'})
# Folders one writer remembers having made, so that each is made once, not once per
# file; bounded, since a live job makes a folder per window for months.
_MADE_DIRS_KEPT = 256
# A hidden temporary file untouched this long is left by a killed writer (a write in
# flight touches its file every few milliseconds); such files are removed at start.
STALE_TEMPORARY_S = 600.0


def is_temporary(name: str) -> bool:
  """Whether a file name is one of the hidden temporary names writers use (.NAME.tmp)."""
  return name.startswith('.') and name.endswith('.tmp')


def sync_file(stream) -> None:
  """Flushes a local file's data to the disk (nothing to do for an object store's stream)."""
  fileno = getattr(stream, 'fileno', None)
  if fileno is None:
    return
  try:
    number = fileno()
  except (OSError, ValueError, io.UnsupportedOperation):
    return
  stream.flush()
  os.fsync(number)


def sync_folder(directory: str) -> None:
  """Makes a rename in a local folder durable (the folder's entry is flushed too)."""
  if '://' in directory or not os.path.isdir(directory):
    return
  descriptor = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(descriptor)
  finally:
    os.close(descriptor)


def write_text(path: str, text: str, fsync: bool = True) -> None:
  """Writes a local text file atomically: under a hidden name of its own (two jobs into one
  folder never share one), synced where `fsync`, then renamed over `path`."""
  directory, name = os.path.split(path)
  temporary = os.path.join(directory, f'.{name}.{uuid.uuid4().hex}.tmp')
  try:
    with open(temporary, 'w', encoding='utf-8') as f:
      f.write(text)
      if fsync:
        sync_file(f)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise
  if fsync:
    sync_folder(directory or '.')


def remove_stale_temporaries(folder: str, older_than_s: float = STALE_TEMPORARY_S) -> int:
  """Removes hidden temporary files under a local `folder` left by killed writers; returns
  how many. A file younger than `older_than_s` may be a live peer's write: it is kept."""
  if '://' in folder or not os.path.isdir(folder):
    return 0
  removed, now = 0, time.time()
  for directory, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(directory, name)
      try:
        if is_temporary(name) and now - os.stat(path).st_mtime > older_than_s:
          os.remove(path)
          removed += 1
      except OSError:
        pass  # gone meanwhile, or not ours to remove
  if removed:
    logging.info('Removed %d temporary files left by a stopped run under %s', removed, folder)
  return removed


class ParquetFiles:
  """Writes Parquet files so that readers never see a half-written one.

  A failing write (disk full, no permission) is retried with backoff under the
  job's WritePolicy (transforms.io.faults); then faults.WriteAbandoned is raised
  and the caller passes nothing on, so nothing behind it is acknowledged.
  Each writing DoFn owns one (made in setup()).
  """

  def __init__(self, policy: faults.WritePolicy):
    self._policy = policy
    self._made_dirs = collections.OrderedDict()

  def write(self, table: pa.Table, path: str) -> None:
    faults.retry(lambda: self._write_once(table, path), self._policy, 'output files',
                 f'cannot write {path}', (OSError,))

  def sources_in(self, directory: str, besides: str) -> frozenset:
    """The `source` of every row in the part files of `directory` other than `besides`
    (a window's other files: an earlier run's, or a peer writer's). A file that cannot be
    read (a peer replacing it) is passed over."""
    try:
      found = FileSystems.match([f'{directory}/part-*.parquet'])[0].metadata_list
    except (IOError, OSError):
      return frozenset()
    sources = set()
    for metadata in found:
      if metadata.path.rsplit('/', 1)[-1] == besides:
        continue
      try:
        with FileSystems.open(metadata.path) as stream:
          sources.update(pq.read_table(stream, columns=['source']).column('source').to_pylist())
      except (IOError, OSError, pa.ArrowException):
        continue
    return frozenset(sources)

  def _make_dir(self, directory: str) -> None:
    try:
      FileSystems.mkdirs(directory)
    except IOError:
      pass  # already there
    self._made_dirs[directory] = None
    while len(self._made_dirs) > _MADE_DIRS_KEPT:
      self._made_dirs.popitem(last=False)

  def _write_once(self, table: pa.Table, path: str) -> None:
    directory = path.rsplit('/', 1)[0]
    if directory not in self._made_dirs:
      self._make_dir(directory)
    temporary = f'{directory}/.{uuid.uuid4().hex}.tmp'  # hidden from readers and globs
    try:
      stream = FileSystems.create(temporary)
    except (IOError, OSError):  # the folder may have gone away since: make it again
      self._made_dirs.pop(directory, None)
      # If it is there, creating again raises the real error (disk full, read-only).
      self._make_dir(directory)
      stream = FileSystems.create(temporary)
    try:
      with stream:
        pq.write_table(table, stream, compression='zstd',
                       use_dictionary=[c for c in table.column_names
                                       if c in _DICTIONARY_COLUMNS])
        if self._policy.fsync:
          sync_file(stream)
      FileSystems.rename([temporary], [path])
      if self._policy.fsync:
        sync_folder(directory)
    except Exception:
      try:
        FileSystems.delete([temporary])  # a full disk needs its space back
      except IOError:
        pass
      raise


def write_parquet(table: pa.Table, path: str,
                  policy: faults.WritePolicy = faults.WritePolicy()) -> None:
  """Writes one table atomically (ParquetFiles), outside a pipeline."""
  ParquetFiles(policy).write(table, path)
