"""Which records a written output finishes: the one rule behind XACK and Kafka commits.

A record is done, and its source may acknowledge it, once every output of it is
durably written: its dead letter, or its row in its last window. On sliding windows an
event has a row in several windows; acknowledging it with its first would lose it from
the windows still open if the job were killed then.
"""
from typing import List, Optional

from transforms.records import DeadLetterBatch, WindowRows
from transforms.windowing import WindowSpec


def done_sources(written, window: Optional[WindowSpec] = None) -> List[str]:
  """The sources (`STREAM:POSITION`) of the records `written` (WindowRows or a
  DeadLetterBatch) finishes; `window` is the job's WindowSpec (None: every row finishes)."""
  if isinstance(written, WindowRows):
    return [row.event.source for row in written.rows
            if window is None or window.in_last_window(row.event.event_time_us, written.start_us)]
  if isinstance(written, DeadLetterBatch):
    return [letter.source for letter in written.letters]
  return []
