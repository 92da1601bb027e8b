"""Gathering each window's rows into WindowRows, the unit every writer takes.

Three shapes, one per CollectionMode, chosen by pipelines.builder.collect_windows:
- live (unbounded) input and session windows: Beam's grouping of whole windows,
  with its watermark trigger, late panes and session merging;
- bounded input with whole-window derivations (near-duplicates, topics): a plain
  GroupByKey in the global window that skips the generic trigger machinery (a batch
  run has one pane per window): fixed windows by segments of windows with their
  look-back (transforms/segments.py; spilled to files on the local runner,
  transforms/spill.py), sliding windows keyed by their bounds (GroupWindows);
- bounded input otherwise: no grouping at all. Each stream (archive file) is
  read in order, so a window of a stream is complete once that stream's watermark
  passed it; its rows are handed on then, as one part of the window (a record that
  comes back to it later, where lateness is not judged, makes another part). Memory holds only the open
  windows of each stream, not the archive.
"""
import enum
from typing import Optional

import apache_beam as beam
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from transforms.records import DeadLetterMark, Lookback, WindowRows
from transforms.watermark import Watermark
from transforms.windowing import WindowEvents, WindowSpec

_MICROS = 1_000_000


def in_order(row):
  """The order of rows in a window: event time, then id."""
  return row.event.event_time_us, row.event.id


def window_rows(start_us: int, end_us: int, pane: int, values) -> Optional[WindowRows]:
  """Sorts a window's values into rows, look-back context and dead-letter marks."""
  rows, context, letters = [], [], 0
  for value in values:
    if isinstance(value, Lookback):
      context.append(value.row)
    elif isinstance(value, DeadLetterMark):
      letters += 1
    else:
      rows.append(value)
  if not rows:  # a window may have received only context or dead letters
    return None
  return WindowRows(start_us, end_us, pane, sorted(rows, key=in_order), None,
                    tuple(sorted(context, key=in_order)), letters)


def slim(value):
  """What a grouped row still needs: the raw record only serves dead letters before this."""
  if isinstance(value, (Lookback, DeadLetterMark)):
    return value
  return value._replace(event=value.event._replace(raw=''))


class _CollectWindowFn(beam.DoFn):

  def process(self, keyed_rows, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
    if not isinstance(win, window.IntervalWindow):
      raise ValueError(f'enriched rows must be windowed by event time, not {win}')
    batch = window_rows(win.start.micros, win.end.micros, pane.index if pane else 0,
                        keyed_rows[1])
    if batch is not None:
      yield batch


def _key_by_bounds(value, win=beam.DoFn.WindowParam):
  yield (win.start.micros, win.end.micros), slim(value)


def _collect_keyed(keyed_values):
  (start_us, end_us), values = keyed_values
  batch = window_rows(start_us, end_us, 0, values)
  if batch is not None:
    win = window.IntervalWindow(Timestamp(micros=start_us), Timestamp(micros=end_us))
    yield WindowedValue(batch, win.max_timestamp(), [win])


def context_copy(row):
  """A row as another window's context: id, time and vector; the texts are left behind."""
  return row._replace(event=row.event._replace(text='', raw='', source='', stream=''))


class _OfferLookbackFn(beam.DoFn):
  """Copies a row into each later fixed window that starts within `lookback_us` of it."""

  def __init__(self, lookback_s: float):
    self._lookback_us = round(lookback_s * _MICROS)

  def process(self, row, win=beam.DoFn.WindowParam):
    size_us = win.end.micros - win.start.micros
    start_us = win.end.micros
    slim_row = context_copy(row)
    while start_us <= row.event.event_time_us + self._lookback_us:
      yield window.TimestampedValue(Lookback(slim_row), start_us / _MICROS)
      start_us += size_us


class GroupWindows(beam.PTransform):
  """Gathers each window firing's Embedded rows into one WindowRows.

  Args:
    lookback_s: also hand each window, as context, the rows of earlier windows
      from this many seconds before its events (fixed windows only).
    rewindow: re-applies the rows' windowing to the context copies.
    deadletter_marks: DeadLetterMarks windowed like the rows, counted per window.
    by_bounds: group by window bounds in the global window (bounded input,
      windows that never merge): one pane per window, without Beam's trigger machinery.
  """

  def __init__(self, lookback_s: float = 0, rewindow: Optional[beam.PTransform] = None,
               deadletter_marks: Optional[beam.PCollection] = None, by_bounds: bool = False):
    super().__init__()
    self._lookback_s = lookback_s
    self._rewindow = rewindow
    self._marks = deadletter_marks
    self._by_bounds = by_bounds

  def expand(self, embedded):
    inputs = [embedded]
    if self._lookback_s > 0:
      inputs.append(embedded
                    | 'Offer to later windows' >> beam.ParDo(_OfferLookbackFn(self._lookback_s))
                    | 'Window copies' >> self._rewindow)
    if self._marks is not None:
      inputs.append(self._marks)
    if len(inputs) > 1:
      embedded = inputs | 'With context' >> beam.Flatten()
    if self._by_bounds:
      return (embedded
              | 'Key by bounds' >> beam.ParDo(_key_by_bounds)
              | 'Into one window' >> beam.WindowInto(window.GlobalWindows())
              | 'Group by bounds' >> beam.GroupByKey()
              | 'Collect window' >> beam.ParDo(_collect_keyed))
    return (embedded
            | 'Key by window' >> beam.Map(lambda value: (None, slim(value)))
            | 'Group by window' >> beam.GroupByKey()
            | 'Collect window' >> beam.ParDo(_CollectWindowFn()))


class _CollectStreamWindowsFn(beam.DoFn):
  """Holds each stream's open windows; hands a window on once the stream's Watermark
  has closed it, and all the rest at the end of the bundle.
  Windows are computed here from event time, as Beam's WindowFns would assign them."""

  def __init__(self, spec: WindowSpec):
    self._spec = spec
    self._size_us = round(spec.size_s * _MICROS)
    self._open = {}  # stream -> {window start: [rows]}
    self._watermarks = {}  # stream -> Watermark

  def start_bundle(self):
    self._open, self._watermarks = {}, {}

  def process(self, row):
    event = row.event
    windows = self._open.get(event.stream)
    if windows is None:
      windows = self._open[event.stream] = {}
      self._watermarks[event.stream] = Watermark(self._spec)
    for start_us in self._spec.window_starts_us(event.event_time_us):
      rows = windows.get(start_us)
      if rows is None:
        windows[start_us] = [row]
      else:
        rows.append(row)
    mark = self._watermarks[event.stream]
    if mark.observe(event.event_time_us):
      closed = [start_us for start_us in windows if mark.window_closed(start_us)]
      for start_us in closed:
        yield self._emit(start_us, windows.pop(start_us))

  def _emit(self, start_us, rows):
    end_us = start_us + self._size_us
    win = window.IntervalWindow(Timestamp(micros=start_us), Timestamp(micros=end_us))
    return WindowedValue(WindowRows(start_us, end_us, 0, sorted(rows, key=in_order)),
                         win.max_timestamp(), [win])

  def finish_bundle(self):
    for windows in self._open.values():
      for start_us, rows in windows.items():
        yield self._emit(start_us, rows)
    self._open, self._watermarks = {}, {}


class CollectStreamWindows(beam.PTransform):
  """Bounded input, fixed or sliding windows: each stream's rows of a window as one
  WindowRows, handed on as soon as the stream has passed the window (see module doc).
  Takes Embedded rows not yet windowed (their windows follow from their event time)."""

  def __init__(self, spec: WindowSpec):
    super().__init__()
    self._spec = spec

  def expand(self, embedded):
    return embedded | 'Collect per stream' >> beam.ParDo(_CollectStreamWindowsFn(self._spec))


class CollectionMode(enum.Enum):
  """How a job gathers windows: decided once (decide), read by every step that depends on it.

  UNBOUNDED: live input; windows first, then embedding inside them, Beam's grouping.
  PER_STREAM: bounded input, fixed or sliding windows, nothing derived from whole
    windows: embedded across windows, each stream's windows collected in order.
  PER_WINDOW: bounded input otherwise (sessions, near-duplicates, topics): embedded,
    then grouped by window (fixed windows by segments, sliding ones by bounds).
  """
  UNBOUNDED = 'unbounded'
  PER_STREAM = 'per stream'
  PER_WINDOW = 'per window'

  @classmethod
  def decide(cls, streaming: bool, window_kind: str, whole_windows: bool) -> 'CollectionMode':
    """Args: whole_windows: a derivation needs every row of a window at once."""
    if streaming:
      return cls.UNBOUNDED
    if window_kind == 'sessions' or whole_windows:
      return cls.PER_WINDOW
    return cls.PER_STREAM

  @property
  def unbounded(self) -> bool:
    return self is CollectionMode.UNBOUNDED
