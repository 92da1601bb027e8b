"""Event time, windows and lateness."""
import time
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.transforms import trigger, window

from transforms import records as r
from transforms.eventtime import format_micros, is_future
from transforms.records import DEADLETTER
from transforms.watermark import Watermark

_MICROS = 1_000_000


class WindowSpec(NamedTuple):
  """How events are windowed, in seconds.

  Fixed windows of `size_s` by default; sliding when `period_s` is set;
  sessions when `session_gap_s` is set. The watermark of a stream trails its
  newest event time by `max_out_of_orderness_s`; an event whose last window
  ended more than `allowed_lateness_s` before the watermark is late.
  `source_slack_s`: how much longer the runner keeps windows open, for sources
  whose runner watermark may lead the one the late flag judges by
  (transforms.io.uris.watermark_slack_s).
  `max_future_skew_s`: an event time further than this ahead of the processing
  clock is not believed (a producer with a broken clock): the event is a
  `future_time` dead letter and moves no watermark. 0 turns the guard off.
  """
  size_s: float = 60.0
  period_s: Optional[float] = None
  session_gap_s: Optional[float] = None
  allowed_lateness_s: float = 0.0
  max_out_of_orderness_s: float = 10.0
  source_slack_s: float = 0.0
  max_future_skew_s: float = 300.0

  @property
  def kind(self) -> str:
    if self.session_gap_s is not None:
      return 'sessions'
    return 'sliding' if self.period_s is not None else 'fixed'

  def validate(self) -> None:
    for name in ('size_s', 'period_s', 'session_gap_s'):
      value = getattr(self, name)
      if value is not None and value <= 0:
        raise ValueError(f'{name[:-2]} must be positive, got {value}')
    if self.period_s is not None and self.session_gap_s is not None:
      raise ValueError('choose sliding windows (--window_period) or sessions '
                       '(--session_gap), not both')
    if self.period_s is not None and self.period_s > self.size_s:
      raise ValueError('--window_period must not exceed --window_size')
    if min(self.allowed_lateness_s, self.max_out_of_orderness_s, self.source_slack_s) < 0:
      raise ValueError('lateness and out-of-orderness must not be negative')
    if not self.max_future_skew_s >= 0:  # also refuses nan
      raise ValueError('--max_future_skew must not be negative (0 turns the guard off)')

  def window_fn(self) -> window.WindowFn:
    if self.kind == 'sessions':
      return window.Sessions(self.session_gap_s)
    if self.kind == 'sliding':
      return window.SlidingWindows(self.size_s, self.period_s)
    return window.FixedWindows(self.size_s)

  def window_starts_us(self, event_time_us: int) -> range:
    """The starts of the fixed or sliding windows an event falls in, latest first (as
    Beam's FixedWindows and SlidingWindows assign them)."""
    step = round((self.period_s or self.size_s) * _MICROS)
    latest = event_time_us - event_time_us % step
    return range(latest, event_time_us - round(self.size_s * _MICROS), -step)

  def in_last_window(self, event_time_us: int, start_us: int) -> bool:
    """Whether the window starting at `start_us` is the event's last (fixed windows and
    sessions: its only one), after which nothing of it is still open."""
    return self.kind != 'sliding' or self.window_starts_us(event_time_us)[0] == start_us

  def windows_of(self, event_time_us: int) -> int:
    """How many windows an event falls in: 1, or on sliding windows size / period (rounded)."""
    return len(self.window_starts_us(event_time_us)) if self.kind == 'sliding' else 1

  def last_window_end_us(self, event_time_us: int) -> int:
    """The end of the latest window an event belongs to (before any session merge)."""
    if self.kind == 'sessions':
      return event_time_us + round(self.session_gap_s * _MICROS)
    step = round((self.period_s or self.size_s) * _MICROS)
    return event_time_us - event_time_us % step + round(self.size_s * _MICROS)


class _StampFn(beam.DoFn):

  def process(self, event: r.Event):
    yield window.TimestampedValue(event, event.event_time_us / _MICROS)


class AssignEventTime(beam.PTransform):
  """Gives each Event its event time as the element timestamp."""

  def expand(self, events):
    return events | 'Stamp' >> beam.ParDo(_StampFn())


class _FlagLateFn(beam.DoFn):
  """Judges archive records by their stream's own order (it runs fused behind
  the reader), where asked; live records by the watermark their source stamped on them.
  An event from the far future is split off first, so it moves no watermark."""

  def __init__(self, spec: WindowSpec, archive_lateness: bool):
    self._spec = spec
    self._archive_lateness = archive_lateness
    self._watermarks = {}  # stream -> Watermark

  def process(self, event: r.Event):
    try:
      judged = list(self._judge(event))
    except Exception as e:  # pylint: disable=broad-except
      judged = [beam.pvalue.TaggedOutput(DEADLETTER, r.event_error(event, e))]
    yield from judged

  def _judge(self, event: r.Event):
    if is_future(event.event_time_us, self._spec.max_future_skew_s):
      yield beam.pvalue.TaggedOutput(DEADLETTER, self._dead(
          event, r.FUTURE_TIME,
          f'event time {format_micros(event.event_time_us)} is more than '
          f'{self._spec.max_future_skew_s:g}s ahead of the clock '
          f'({format_micros(time.time_ns() // 1000)})'))
      return
    if event.watermark_us is None and not self._archive_lateness:
      yield event  # a backfill enriches every record, however its archive is ordered
      return
    mark = self._watermarks.get(event.stream)
    if mark is None:
      mark = self._watermarks[event.stream] = Watermark(self._spec)
    if event.watermark_us is None:
      late = mark.is_late(event.event_time_us)
      mark.observe(event.event_time_us)
      watermark_us = mark.watermark_us
    else:  # a live source: judge by the watermark it reported to the runner
      watermark_us = event.watermark_us
      late = mark.is_late(event.event_time_us, watermark_us)
    if not late:
      yield event
    else:
      yield beam.pvalue.TaggedOutput(DEADLETTER, self._dead(
          event, r.LATE,
          f'event time {format_micros(event.event_time_us)} is behind the '
          f'watermark {format_micros(watermark_us)} by more than the '
          f'allowed lateness of {self._spec.allowed_lateness_s:g}s'))

  @staticmethod
  def _dead(event: r.Event, reason: str, error: str) -> r.DeadLetter:
    return r.DeadLetter(raw=event.raw, reason=reason, error=error, source=event.source,
                        id=event.id, event_time_us=event.event_time_us)


class FlagLateEvents(beam.PTransform):
  """Splits off events that arrive after their windows closed, or from the far
  future; returns (events, dead letters).

  Args:
    archive_lateness: judge archive records (no watermark of their own) late as a live
      stream would, in their file's order (replay's --replay_lateness); else only live
      records can be late.
  """

  def __init__(self, spec: WindowSpec, archive_lateness: bool = True):
    super().__init__()
    self._spec = spec
    self._archive_lateness = archive_lateness

  def expand(self, events):
    outputs = events | 'Flag late' >> beam.ParDo(
        _FlagLateFn(self._spec, self._archive_lateness)).with_outputs(
        DEADLETTER, main='on_time')
    return outputs.on_time, outputs[DEADLETTER]


class WindowEvents(beam.PTransform):
  """Windows timestamped elements by event time; a late pane fires per late element."""

  def __init__(self, spec: WindowSpec):
    super().__init__()
    self._spec = spec

  def expand(self, events):
    return events | 'Window' >> beam.WindowInto(
        self._spec.window_fn(),
        trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
        accumulation_mode=trigger.AccumulationMode.DISCARDING,
        allowed_lateness=self._spec.allowed_lateness_s + self._spec.source_slack_s)
