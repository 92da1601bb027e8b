"""The Kafka source's watermark: one Watermark per partition, the job following the slowest."""
import threading
import time
from collections import Counter
from typing import Callable, Dict, Iterable

from transforms.io.live_sources import _StreamWatermark
from transforms.records import RawRecord
from transforms.watermark import Watermark
from transforms.windowing import WindowSpec


class PartitionWatermark(_StreamWatermark):
  """A watermark per partition: the job's follows the slowest partition that is not idle.

  A partition is idle once it has nothing left to read (`backlog(part)` is
  False) and nothing arrived from it for `idle_after_s`: it no longer holds
  the watermark back. A partition with records to come whose event time is
  not known yet (just assigned, a backlog not yet fetched) holds it where it
  is. When every partition is idle, event time passes like wall time, as for
  a single stream (_StreamWatermark).
  """

  def __init__(self, max_out_of_orderness_s: float, idle_after_s: float,
               backlog: Callable[[str], bool] = lambda part: False):
    super().__init__(max_out_of_orderness_s, idle_after_s)
    self._backlog = backlog
    self._spec = WindowSpec(max_out_of_orderness_s=max_out_of_orderness_s)
    self._marks: Dict[str, Watermark] = {}  # partition (TOPIC/P) -> its own watermark
    self._arrived: Dict[str, float] = {}
    self._coming = Counter()  # records handed to the job, not yet observed
    self._lock = threading.Lock()  # assigned() and forget() come from the consumer's thread

  def observe(self, event_time_us, record=None):
    now = time.monotonic()
    self._last_arrival = now
    if record is None:
      return
    part = partition_of(record)
    with self._lock:
      self._arrived[part] = now
      if self._coming[part] > 0:
        self._coming[part] -= 1
      if event_time_us is not None:
        mark = self._marks.get(part)
        if mark is None:
          mark = self._marks[part] = Watermark(self._spec)
        mark.observe(event_time_us)
        if self.newest_us is None or event_time_us > self.newest_us:
          self.newest_us = event_time_us
      self._follow_slowest(now)

  def idle(self):
    now = time.monotonic()
    with self._lock:
      if not self._follow_slowest(now):
        super().idle()

  def assigned(self, parts: Iterable[str]) -> None:
    """Partitions this reader now owns: each holds the watermark until it is read or idle."""
    with self._lock:
      for part in parts:
        self._arrived.setdefault(part, -float('inf'))

  def coming(self, parts: Iterable[str]) -> None:
    """Records (by partition) that the reader has just handed out, to be observed next:
    a poll's later records must not find the watermark moved on by its earlier ones."""
    with self._lock:
      self._coming.update(parts)

  def forget(self, parts: Iterable[str]) -> None:
    """Partitions this reader no longer owns."""
    with self._lock:
      for part in parts:
        self._marks.pop(part, None)
        self._arrived.pop(part, None)
        self._coming.pop(part, None)

  def _follow_slowest(self, now: float) -> bool:
    """Advances to the slowest busy partition; False when every partition is idle."""
    marks = []
    parts = set(self._arrived) | {part for part, count in self._coming.items() if count > 0}
    for part in parts:
      arrived = self._arrived.get(part, -float('inf'))
      if (now - arrived >= self._idle_after_s and not self._coming[part] and
          not self._backlog(part)):
        continue
      if part not in self._marks:
        return True  # records to come, of a time not known yet: hold
      marks.append(self._marks[part].watermark_us)
    if marks:
      self._advance(min(marks))  # the slowest busy partition's own watermark
    return bool(marks)


def partition_of(record: RawRecord) -> str:
  """TOPIC/PARTITION of a record read from Kafka: its stream (its position is the offset)."""
  return record.stream

