"""A grouping's values spilled to files: for the local batch runner, which holds a
GroupByKey's whole input in memory until the input ends.

The FnApiRunner keeps every value of a grouping decoded in one table, then encodes the
whole table once more to hand it on, so a replay that groups its rows (near-duplicates,
topics) held its archive two to three times at once. Here the keyed values (bytes)
wait in memory only in small batches per key; each batch is written to a file of its own
under a folder of the job, and only (key, file) pairs are grouped. The step after the
grouping reads a key's files back (read_values), which removes them. What waits in memory is bounded by
SPILL_VALUES values for each of OPEN_KEYS keys, whatever the archive's size; the files
hold the grouping's input once, on disk, until they are read; the launcher removes the
job's folder when the job ends (remove_spill), and one that a killed run left is removed
at the next start in that output (remove_stale_spills).

A remote runner's shuffle spills by itself; jobs there group the values directly.
"""
import ctypes
import logging
import os
import shutil
import struct
import time
import uuid

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

SPILL_DIR = '.spill'  # DIR/.spill/JOB: one folder per job, removed when it ends
# Values of one key that wait before they are written (2,048 packed rows: about 4 MB),
# and the keys that wait at once: past that, the key that began waiting first is written.
SPILL_VALUES = 2048
OPEN_KEYS = 4
# A job's spill folder untouched this long is a killed run's (a running job writes its
# files while it reads its input, then reads and removes them one after another).
STALE_SPILL_S = 3600.0
_LENGTH = struct.Struct('>I')


def write_values(folder: str, values) -> str:
  """Writes bytes values to a new file in `folder` (made if missing); returns its path."""
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f'{uuid.uuid4().hex}.values')
  with open(path, 'wb') as out:
    for value in values:
      out.write(_LENGTH.pack(len(value)))
      out.write(value)
  return path


def read_values(path: str):
  """The bytes values write_values wrote to `path`, in order; the file is removed (each is
  read once: the local runner runs a step again only in a new job)."""
  with open(path, 'rb') as spilled:
    data = spilled.read()
  os.remove(path)
  offset = 0
  while offset < len(data):
    (length,), offset = _LENGTH.unpack_from(data, offset), offset + _LENGTH.size
    yield data[offset:offset + length]
    offset += length


class _SpillFn(beam.DoFn):
  """(key, bytes) in; (key, file) out for each batch of a key's values written."""

  def __init__(self, folder: str):
    self._folder = folder
    self._waiting = {}  # key -> [bytes], in the order keys began waiting

  def start_bundle(self):
    self._waiting = {}

  def process(self, keyed):
    key, value = keyed
    waiting = self._waiting.setdefault(key, [])
    waiting.append(value)
    if len(waiting) >= SPILL_VALUES:
      yield self._write(key)
    elif len(self._waiting) > OPEN_KEYS:
      yield self._write(next(iter(self._waiting)))

  def finish_bundle(self):
    for key in list(self._waiting):
      yield WindowedValue(self._write(key), MIN_TIMESTAMP, [GlobalWindow()])

  def _write(self, key):
    return key, write_values(self._folder, self._waiting.pop(key))


class GroupSpilled(beam.PTransform):
  """GroupByKey of (key, bytes) in the global window, the values spilled to `folder`:
  (key, [file]) out, each file read with read_values (module doc)."""

  def __init__(self, folder: str):
    super().__init__()
    self._folder = folder

  def expand(self, keyed):
    return (keyed
            | 'Spill values' >> beam.ParDo(_SpillFn(self._folder))
            | 'Group files' >> beam.GroupByKey())


def release_free_memory() -> None:
  """Hands the C heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing).

  What a step frees stays resident in the C heap: after embedding a replay's archive
  (torch's work buffers), 281 of 1,080 MB on 10,000 events, which the grouped steps after
  it (LanceDB's merges in their own threads) did not reuse, so they added to the peak."""
  try:
    trim = ctypes.CDLL('libc.so.6').malloc_trim
  except (OSError, AttributeError):
    return
  trim(0)


def remove_spill(folder: str) -> None:
  """Removes a job's spill folder, and the output's spill folder once it is empty."""
  shutil.rmtree(folder, ignore_errors=True)
  try:
    os.rmdir(os.path.dirname(folder))
  except OSError:
    pass  # another job's folder is still there, or there was none


def remove_stale_spills(output: str, older_than_s: float = STALE_SPILL_S) -> int:
  """Removes the spill folders under a local `output` untouched for `older_than_s`
  (killed runs'); returns how many."""
  root = os.path.join(output, SPILL_DIR)
  if '://' in output or not os.path.isdir(root):
    return 0
  removed, now = 0, time.time()
  for name in os.listdir(root):
    path = os.path.join(root, name)
    try:
      if now - os.stat(path).st_mtime > older_than_s:
        shutil.rmtree(path)
        removed += 1
    except OSError:
      pass
  if removed:
    logging.info('Removed %d spill folders left by stopped runs under %s', removed, root)
  try:
    os.rmdir(root)
  except OSError:
    pass  # a running job's folder is still there
  return removed
