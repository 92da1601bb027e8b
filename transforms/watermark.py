"""The watermark rule, written once: the late flag, the bounded collector and the live
sources all decide with this class, so live and replay decide alike.

The watermark of a stream is its newest event time minus the allowed disorder
(`max_out_of_orderness`); it never moves back. An event is late, and a window
closed, once the end of its last window plus the allowed lateness is at or
behind the watermark: the point where a Beam runner would drop the event.
"""
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
  from transforms.windowing import WindowSpec

_MICROS = 1_000_000


class Watermark:
  """One stream's watermark, from the event times it has seen, and what it has closed.

  Args:
    spec: the job's WindowSpec (windows, allowed lateness, out-of-orderness).
  """

  def __init__(self, spec: 'WindowSpec'):
    self._spec = spec
    self._disorder_us = round(spec.max_out_of_orderness_s * _MICROS)
    self._lateness_us = round(spec.allowed_lateness_s * _MICROS)
    self._size_us = round(spec.size_s * _MICROS)
    self.newest_us: Optional[int] = None
    self._watermark_us: Optional[int] = None

  @property
  def watermark_us(self) -> Optional[int]:
    """The watermark in epoch microseconds; None before the first event."""
    return self._watermark_us

  def observe(self, event_time_us: int) -> bool:
    """Records an event time; returns whether the watermark moved."""
    if self.newest_us is not None and event_time_us <= self.newest_us:
      return False
    self.newest_us = event_time_us
    return self._advance(event_time_us - self._disorder_us)

  def idle_for(self, idle_s: float) -> bool:
    """No event for `idle_s` seconds: event time is taken to pass like wall time, so the
    last window of a quiet stream still closes. Returns whether the watermark moved."""
    if self.newest_us is None:
      return False
    return self._advance(self.newest_us + round(idle_s * _MICROS) - self._disorder_us)

  def advance_to(self, candidate_us: int) -> bool:
    """Moves the watermark to `candidate_us` if that is later (a source of several parts
    computes its candidate from the slowest part); returns whether it moved."""
    return self._advance(candidate_us)

  def _advance(self, candidate_us: int) -> bool:
    if self._watermark_us is None or candidate_us > self._watermark_us:
      self._watermark_us = candidate_us
      return True
    return False

  def is_late(self, event_time_us: int, watermark_us: Optional[int] = None) -> bool:
    """Whether every window of the event has closed at `watermark_us` (default: this
    stream's own watermark)."""
    at = self._watermark_us if watermark_us is None else watermark_us
    return (at is not None and
            self._spec.last_window_end_us(event_time_us) + self._lateness_us <= at)

  def window_closed(self, start_us: int) -> bool:
    """Whether no later on-time event can fall in the fixed or sliding window starting at
    `start_us`: the latest such event lies just before the window's end."""
    return self.is_late(start_us + self._size_us - 1)
