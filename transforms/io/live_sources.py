"""Unbounded sources: one splittable DoFn that polls a reader and owns the watermark.

A reader (synthetic stream, Redis Stream, archive read as a stream) hands out
RawRecords in order. The DoFn emits each poll as one bundle, stamps every
record with the watermark it has reported so far, and moves the watermark:
  - to the newest event time minus `max_out_of_orderness`;
  - while the source is idle, forward at the pace of the wall clock, so the
    last window of a quiet stream still closes;
  - to +infinity when the reader is exhausted or a drain is requested, which
    ends the stream cleanly: the runner then closes every open window.
"""
import itertools
import time
from typing import Callable, List, Optional

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Duration, Timestamp

from transforms.eventtime import is_future
from transforms import job_state
from observability.instruments import SourceGauges
from transforms.records import RawRecord, Undecodable, decode_object
from transforms.io.sources import read_archive
from transforms.watermark import Watermark
from transforms.windowing import WindowSpec

_ENDLESS = 2**62

class Reader:
  """What a live source polls. Subclasses open connections in open()."""

  def open(self) -> None:
    pass

  def poll(self, max_records: int) -> List[RawRecord]:
    """Returns the records ready now (maybe none)."""
    raise NotImplementedError

  def exhausted(self) -> bool:
    """True when no record will ever come again (bounded readers)."""
    return False

  def stalled(self) -> bool:
    """True while the source cannot be reached: its silence is not idleness."""
    return False

  def close(self) -> None:
    pass

  def gauges(self) -> dict:
    """Figures about the source to report as Beam gauges (name -> int), e.g. pending entries."""
    return {}

  def watermark(self, max_out_of_orderness_s: float, idle_after_s: float):
    """The watermark this source moves, or None for the default (_StreamWatermark). A source
    of several parts (Kafka partitions) returns one that keeps a watermark per part."""
    return None


class _Unbounded(RestrictionProvider):

  def initial_restriction(self, element):
    return OffsetRange(0, _ENDLESS)

  def create_tracker(self, restriction):
    return OffsetRestrictionTracker(restriction)

  def restriction_size(self, element, restriction):
    return restriction.size()


class _StreamWatermark:
  """The source's Watermark, moved by the wall clock while the source is idle."""

  def __init__(self, max_out_of_orderness_s: float, idle_after_s: float):
    self._mark = Watermark(WindowSpec(max_out_of_orderness_s=max_out_of_orderness_s))
    self._idle_after_s = idle_after_s
    self._last_arrival = time.monotonic()

  @property
  def watermark_us(self) -> Optional[int]:
    return self._mark.watermark_us

  @property
  def newest_us(self) -> Optional[int]:
    return self._mark.newest_us

  @newest_us.setter
  def newest_us(self, value: Optional[int]) -> None:
    self._mark.newest_us = value

  def _advance(self, candidate_us: int) -> None:
    """For sources of several parts, which compute the candidate per part (kafka.py)."""
    self._mark.advance_to(candidate_us)

  def observe(self, event_time_us: Optional[int], record: Optional[RawRecord] = None) -> None:
    """An arrival (None: an outage ended or goes on; only the idle clock restarts)."""
    self._last_arrival = time.monotonic()
    if event_time_us is not None:
      self._mark.observe(event_time_us)

  def idle(self) -> None:
    """No record this poll: after a while, event time is assumed to pass like wall time."""
    idle_s = time.monotonic() - self._last_arrival
    if idle_s >= self._idle_after_s:
      self._mark.idle_for(idle_s)


class _LiveSourceFn(beam.DoFn):
  """Polls a reader forever (or until drained/exhausted), emitting one bundle per poll."""

  def __init__(self, make_reader: Callable[[], Reader], event_time_us: Callable,
               max_out_of_orderness_s: float, poll_interval_s: float, max_records: int,
               job: str):
    self._make_reader = make_reader
    self._job = job
    self._drain = None
    self._event_time_us = event_time_us
    self._max_out_of_orderness_s = max_out_of_orderness_s
    self._poll_interval_s = poll_interval_s
    self._max_records = max_records
    self._reader = None
    self._watermark = None
    self._held = []
    self._gauges = None

  def setup(self):
    self._drain = job_state.of(self._job).drain
    self._reader = self._make_reader()
    self._reader.open()
    idle_after_s = max(1.0, self._max_out_of_orderness_s)
    self._watermark = (self._reader.watermark(self._max_out_of_orderness_s, idle_after_s) or
                       _StreamWatermark(self._max_out_of_orderness_s, idle_after_s))
    self._gauges = SourceGauges()

  def teardown(self):
    if self._reader is not None:
      self._reader.close()

  @beam.DoFn.unbounded_per_element()
  def process(self, _, tracker=beam.DoFn.RestrictionParam(_Unbounded()),
              watermark=beam.DoFn.WatermarkEstimatorParam(
                  ManualWatermarkEstimator.default_provider())):
    if self._reader is None:
      self.setup()  # some runners call process() on an SDF that was never set up
    if self._drain.is_set() or (not self._held and self._reader.exhausted()):
      watermark.set_watermark(MAX_TIMESTAMP)
      # Claiming past the end marks the restriction done; returning ends it.
      tracker.try_claim(tracker.current_restriction().stop)
      return
    position = tracker.current_restriction().start
    records, self._held = (self._held or self._reader.poll(self._max_records)), []
    for n, record in enumerate(records):
      if not tracker.try_claim(position):
        self._held = records[n:]  # the runner split us: emit these on the next call
        return
      position += 1
      stamped = self._watermark.watermark_us
      self._watermark.observe(self._event_time_us(record), record)
      # Emitted at the watermark it was read under: never behind the runner's
      # watermark, and re-stamped with its event time after parsing.
      at = stamped if stamped is not None else self._watermark.watermark_us
      yield beam.window.TimestampedValue(record._replace(watermark_us=stamped),
                                         Timestamp(micros=at) if at is not None else
                                         Timestamp.now())
    if not records and self._reader.stalled():
      # An outage: entries wait on the server, so event time has not moved.
      # Restart the idle clock, or they would all be late once it is back.
      self._watermark.observe(None)
    elif not records:
      self._watermark.idle()
    if self._watermark.watermark_us is not None:
      watermark.set_watermark(Timestamp(micros=self._watermark.watermark_us))
    self._gauges.update(self._watermark.watermark_us, self._reader)
    # Poll again at once only while there is a backlog; otherwise wait, so
    # that a trickle of events forms batches instead of a busy loop of ones.
    backlog = len(records) >= self._max_records
    tracker.defer_remainder(Duration.of(0 if backlog else self._poll_interval_s))


class ReadLive(beam.PTransform):
  """Reads an unbounded stream of RawRecords from a Reader.

  Args:
    make_reader: builds the Reader on the worker (readers hold connections).
    event_time_us: a record's event time in epoch microseconds, or None.
    max_out_of_orderness_s: how far the watermark trails the newest event time.
    poll_interval_s: the wait before polling again after an empty poll.
    max_records: the most records in one poll (one bundle).
    job: the job's token (transforms.job_state.of): a drain of that job ends this source.
  """

  def __init__(self, make_reader: Callable[[], Reader], event_time_us: Callable,
               max_out_of_orderness_s: float, poll_interval_s: float = 0.2,
               max_records: int = 1024, job: str = ''):
    super().__init__()
    self._fn = _LiveSourceFn(make_reader, event_time_us, max_out_of_orderness_s,
                             poll_interval_s, max_records, job)

  def expand(self, pbegin):
    return pbegin | 'Start' >> beam.Impulse() | 'Poll' >> beam.ParDo(self._fn)


class EventTimeOf:
  """A record's event time from the job's field mapping, or None when it should
  not move the watermark: unreadable (the parse step dead-letters it with the
  same decoder) or further ahead of the clock than `max_future_skew_s` (the
  late flag makes it a `future_time` dead letter)."""

  def __init__(self, mapping, time_parser, max_future_skew_s: float = 0.0):
    self._mapping = mapping
    self._time_parser = time_parser
    self._max_future_skew_s = max_future_skew_s

  def __call__(self, record: RawRecord) -> Optional[int]:
    obj = decode_object(record)
    if isinstance(obj, Undecodable) or not isinstance(obj, dict):
      return None
    try:
      event_time_us = self._time_parser.parse(self._mapping.time_of(obj))
    except ValueError:
      return None
    if is_future(event_time_us, self._max_future_skew_s):
      return None
    return event_time_us


class ArchiveReader(Reader):
  """Archive files (a glob) read in order as a stream; exhausted at their end."""

  def __init__(self, pattern: str, input_format: Optional[str] = None,
               csv_delimiter: str = ','):
    self._pattern = pattern
    self._input_format = input_format
    self._csv_delimiter = csv_delimiter
    self._records = None
    self._done = False

  def open(self):
    from apache_beam.io.filesystems import FileSystems
    paths = sorted(m.path for m in FileSystems.match([self._pattern])[0].metadata_list)
    self._records = (record for path in paths
                     for record in read_archive(path, self._input_format, self._csv_delimiter))

  def poll(self, max_records):
    batch = list(itertools.islice(self._records, max_records))
    self._done = len(batch) < max_records
    return batch

  def exhausted(self):
    return self._done
