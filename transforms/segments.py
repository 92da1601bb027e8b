"""Bounded input, fixed windows: whole windows and their recent past, grouped by segment.

Live, each row is also copied into every later window that starts within the look-back
(grouping.py): with 60 s windows and a 600 s horizon, ten copies of each row, embedding
included. A batch runner's GroupByKey holds all of its input at once (the FnApiRunner
keeps it in memory until the input ends), so in a replay those copies were the archive
eleven times over. Here rows are grouped by segment instead: a run of whole windows
covering SEGMENT_LOOKBACKS look-backs (one window without a look-back). A segment also
receives the rows of the one before it that lie within the look-back of its start (at
most one copy of a row; with segments of two look-backs, about half the rows), then cuts
itself into its windows, each with the rows of the look-back before it as context,
shared, not copied. The windows are those of the per-window grouping: the same rows, the
same context (rows of earlier windows at most the look-back older than the window's
start), the same dead-letter counts, one pane each.

What the grouping holds is kept small: each row crosses it packed into one bytes value
(its fields and the raw bytes of its vectors: the FnApiRunner keeps a grouping's values
decoded, an Embedded of 384 floats as about 3.3 KB of Python objects; packed, a row of
the shared archive takes 1.9 KB, a look-back copy 1.75 KB); on the
local runner the packed rows wait in files, not in memory (transforms/spill.py); and the
dead letters are counted beside them, as a side input of counts per window, so the rows
need no Flatten with them (which the FnApiRunner materializes: the archive once more).
"""
import bisect
import collections
import pickle
from typing import Optional

import apache_beam as beam
import numpy as np
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from transforms.grouping import context_copy, in_order, slim
from transforms.records import Embedded, Event, WindowRows
from transforms.spill import GroupSpilled, read_values, release_free_memory
from transforms.windowing import WindowSpec

_MICROS = 1_000_000
# A segment spans this many look-backs (in whole windows): a row is copied to the next
# segment when it lies in the last look-back of its own, so about 1 / SEGMENT_LOOKBACKS of
# the rows cross the grouping twice, and a segment's group holds SEGMENT_LOOKBACKS + 1
# look-backs of rows (the per-window grouping's held one window and one look-back).
SEGMENT_LOOKBACKS = 2


def segment_us(size_us: int, lookback_us: int, lookbacks: int = SEGMENT_LOOKBACKS) -> int:
  """A segment's length: the fewest whole windows that cover `lookbacks` look-backs."""
  return max(1, -(-lookback_us * lookbacks // size_us)) * size_us


def pack(start_us, row: Embedded) -> bytes:
  """A row and its window's start (None: a look-back copy) as one bytes value."""
  chunk_vectors = row.chunk_vectors
  return pickle.dumps((start_us, *row.event, row.embedding.dtype.str, row.embedding.shape,
                       row.embedding.tobytes(), row.chunks,
                       None if chunk_vectors is None else (chunk_vectors.dtype.str,
                                                           chunk_vectors.shape,
                                                           chunk_vectors.tobytes()),
                       None if row.model is None else (type(row.model), tuple(row.model))),
                      protocol=pickle.HIGHEST_PROTOCOL)


def _array(dtype: str, shape, data: bytes) -> np.ndarray:
  return np.frombuffer(data, dtype).reshape(shape).copy()  # writeable, as decoded arrays are


def unpack(data: bytes):
  """(window start or None, Embedded) from pack's bytes."""
  values = pickle.loads(data)
  fields = len(Event._fields)
  start_us, event = values[0], Event(*values[1:1 + fields])
  dtype, shape, vector, chunks, chunk_vectors, model = values[1 + fields:]
  return start_us, Embedded(
      event, _array(dtype, shape, vector), chunks,
      None if chunk_vectors is None else _array(*chunk_vectors),
      None if model is None else model[0](*model[1]))


class _KeyBySegmentFn(beam.DoFn):
  """Keys a row by its window's segment, packed with its window's start; a row within the
  look-back of the next segment's start is also offered to that one, as a context copy."""

  def __init__(self, segment_us_: int, lookback_us: int):
    self._segment_us = segment_us_
    self._lookback_us = lookback_us

  def process(self, row, win=beam.DoFn.WindowParam):
    start_us = win.start.micros
    segment = start_us // self._segment_us
    yield segment, pack(start_us, slim(row))
    if row.event.event_time_us >= (segment + 1) * self._segment_us - self._lookback_us:
      yield segment + 1, pack(None, context_copy(row))


def _count_by_window(mark, win=beam.DoFn.WindowParam):
  yield win.start.micros, 1


class _CutSegmentFn(beam.DoFn):
  """One segment's rows as its windows' WindowRows, each in its own IntervalWindow."""

  def __init__(self, size_us: int, lookback_us: int, spilled: bool = False):
    self._size_us = size_us
    self._lookback_us = lookback_us
    self._spilled = spilled

  def setup(self):
    # On the local batch runner this step starts once every row is embedded and grouped:
    # what embedding freed goes back to the system before the windows are cut and written.
    release_free_memory()

  def process(self, keyed_values, letters=None):
    _, values = keyed_values
    if self._spilled:  # files of packed rows
      values = (value for path in values for value in read_values(path))
    rows = collections.defaultdict(list)  # window start -> its rows
    earlier = []  # (window start, row), None for the previous segment's: any window's context
    for value in values:
      start_us, row = unpack(value)
      earlier.append((start_us, row))
      if start_us is not None:
        rows[start_us].append(row)
    earlier.sort(key=lambda pair: in_order(pair[1]))
    times = [row.event.event_time_us for _, row in earlier]
    for start_us in sorted(rows):
      # Rows of earlier windows, at most the look-back older than this window's start;
      # a row of this window or a later one starts no earlier than this window does.
      low = bisect.bisect_left(times, start_us - self._lookback_us)
      high = bisect.bisect_left(times, start_us + self._size_us)
      context = tuple(row for of, row in earlier[low:high] if of is None or of < start_us)
      end_us = start_us + self._size_us
      batch = WindowRows(start_us, end_us, 0, sorted(rows[start_us], key=in_order), None,
                         context, (letters or {}).get(start_us, 0))
      win = window.IntervalWindow(Timestamp(micros=start_us), Timestamp(micros=end_us))
      yield WindowedValue(batch, win.max_timestamp(), [win])


class GroupSegments(beam.PTransform):
  """Bounded input, fixed windows, a look-back: each window's rows as one WindowRows with
  the look-back's rows as context (module doc). Takes Embedded rows windowed by event time.

  Args:
    spec: the job's (fixed) windows.
    lookback_s: how far back each window's context reaches (0: none; a segment is a window).
    deadletter_marks: DeadLetterMarks windowed like the rows, counted per window.
    spill_dir: a local folder of this job's own: the rows wait there, not in memory, for
      the grouping (transforms/spill.py); None groups them in memory (a remote runner's
      shuffle spills by itself).
  """

  def __init__(self, spec: WindowSpec, lookback_s: float, deadletter_marks=None,
               spill_dir: Optional[str] = None):
    super().__init__()
    if spec.kind != 'fixed' or not lookback_s >= 0:
      raise ValueError('segments need fixed windows and a look-back of 0 or more')
    self._size_us = round(spec.size_s * _MICROS)
    self._lookback_us = round(lookback_s * _MICROS)
    self._marks = deadletter_marks
    self._spill_dir = spill_dir

  def expand(self, embedded):
    letters = None
    if self._marks is not None:
      letters = beam.pvalue.AsDict(
          self._marks
          | 'Key dead letters by window' >> beam.ParDo(_count_by_window)
          | 'Dead letters into one window' >> beam.WindowInto(window.GlobalWindows())
          | 'Count dead letters' >> beam.CombinePerKey(sum))
    keyed = (embedded
             | 'Key by segment' >> beam.ParDo(_KeyBySegmentFn(
                 segment_us(self._size_us, self._lookback_us), self._lookback_us))
             | 'Into one window' >> beam.WindowInto(window.GlobalWindows()))
    spilled = self._spill_dir is not None
    grouped = keyed | 'Group by segment' >> (GroupSpilled(self._spill_dir) if spilled
                                             else beam.GroupByKey())
    return grouped | 'Cut into windows' >> beam.ParDo(
        _CutSegmentFn(self._size_us, self._lookback_us, spilled), letters)
