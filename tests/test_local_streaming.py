"""The local streaming compatibility layer: pinned to Beam 2.77.0, and windows fire live.

If a Beam upgrade breaks the patched internals, these tests fail first.
"""
import time

import apache_beam as beam
import pytest
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.clock import TestClock
from apache_beam.runners.direct.evaluation_context import DirectUnmergedState
from apache_beam.runners.direct.watermark_manager import _TransformWatermarks
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms import window
from apache_beam.transforms.trigger import TimeDomain
from apache_beam.utils.timestamp import Timestamp

from runners import local_streaming
from tests.runners import streaming_pipeline
from transforms.io.live_sources import ReadLive, Reader
from transforms.records import RawRecord

FIRED = []  # (window end, records the source had sent, source still open, window total)
SOURCE = {}  # the running source's progress; one process, so the firing DoFn reads it
BUNDLES = []


def test_refuses_other_beam_versions(monkeypatch):
  monkeypatch.setattr(beam, '__version__', '2.78.0')
  monkeypatch.setattr(local_streaming, '_installed', False)
  with pytest.raises(RuntimeError, match='2.77.0'):
    local_streaming.install()


def _watermarks_with_timer(time_domain, at, clock):
  """One transform's watermarks, its input watermark at +inf, one key holding one timer."""
  state = DirectUnmergedState()
  state.set_timer(window.GlobalWindow(), 'user/tick', time_domain, Timestamp.of(at))
  watermarks = _TransformWatermarks(clock, {b'key': state}, 'Tick')
  watermarks.refresh()  # no inputs: the input watermark goes to +inf
  return watermarks


def test_a_timer_in_flight_is_not_delivered_again():
  local_streaming.install()
  watermarks = _watermarks_with_timer(TimeDomain.WATERMARK, 10, TestClock())
  first, _ = watermarks.extract_transform_timers()
  assert [(t.name, t.timestamp) for t in first] == [('user/tick', Timestamp(10))]
  # The timer stays in keyed state until the bundle delivering it commits;
  # the monitor extracts again meanwhile.
  assert watermarks.extract_transform_timers()[0] == []
  watermarks.update_timers(first)  # that bundle completed (and here left the timer set)
  assert len(watermarks.extract_transform_timers()[0]) == 1


def test_processing_time_timers_wait_for_running_bundles_a_bounded_time():
  local_streaming.install()
  clock = TestClock(Timestamp(100))
  overdue = local_streaming.REALTIME_TIMER_MAX_DEFER_SECS / 2
  idle = _watermarks_with_timer(TimeDomain.REAL_TIME, 100 - overdue, clock)
  assert len(idle.extract_transform_timers()[0]) == 1
  busy = _watermarks_with_timer(TimeDomain.REAL_TIME, 100 - overdue, clock)
  local_streaming._monitor_state.busy = True
  try:
    assert busy.extract_transform_timers()[0] == []
    clock.advance_time(overdue + 0.01)
    assert len(busy.extract_transform_timers()[0]) == 1
  finally:
    local_streaming._monitor_state.busy = False


class _Counted(beam.DoFn):

  def __init__(self):
    self._seen = Metrics.counter('local_streaming_test', 'seen')

  def start_bundle(self):
    BUNDLES.append(1)

  def process(self, element):
    self._seen.inc()
    yield element


def test_user_counters_count_every_bundle():
  local_streaming.install()
  BUNDLES.clear()
  events = TestStream()
  for n in range(5):  # each event is a bundle of its own
    events = events.add_elements(list(range(10 * n, 10 * n + 10))).advance_watermark_to(n + 1)
  pipeline = streaming_pipeline()
  _ = pipeline | events.advance_watermark_to_infinity() | 'Count' >> beam.ParDo(_Counted())
  result = pipeline.run()
  result.wait_until_finish()
  (counter,) = result.metrics().query(MetricsFilter().with_name('seen'))['counters']
  assert len(BUNDLES) >= 2
  assert counter.committed == 50


class _Clocked(Reader):
  """50 records per second, event time = now. Exhausted once it has sent 200
  records and two windows have fired, or after 60 s: a runner that fires
  windows only at the end of the stream stops it at 60 s, with no firing while
  it was open."""

  def open(self):
    self._started = time.time()
    SOURCE.update(sent=0, open=True)

  def poll(self, max_records):
    due = int((time.time() - self._started) * 50)
    batch = [RawRecord(str(time.time_ns() // 1000), 'clock', n)
             for n in range(SOURCE['sent'], due)][:max_records]
    SOURCE['sent'] += len(batch)
    return batch

  def exhausted(self):
    if SOURCE['sent'] >= 200 and (len(FIRED) >= 2 or time.time() - self._started > 60):
      SOURCE['open'] = False
    return not SOURCE['open']


def test_windows_fire_while_the_source_runs():
  local_streaming.install()
  FIRED.clear()
  options = PipelineOptions(streaming=True)
  with beam.Pipeline(runner='BundleBasedDirectRunner', options=options) as p:
    _ = (p
         | ReadLive(_Clocked, lambda record: int(record.raw), max_out_of_orderness_s=0.5,
                    poll_interval_s=0.1)
         | beam.Map(lambda record: window.TimestampedValue(1, int(record.raw) / 1e6))
         | beam.WindowInto(window.FixedWindows(1))
         | beam.CombineGlobally(sum).without_defaults()
         | beam.Map(lambda total: ('n', total))
         | beam.ParDo(_FiringDoFn()))
  assert sum(total for *_, total in FIRED) == SOURCE['sent'] >= 200
  while_open = [firing for firing in FIRED if firing[2]]
  assert len(while_open) >= 2, FIRED  # fired live, not at the end of the stream


class _FiringDoFn(beam.DoFn):

  def process(self, kv, win=beam.DoFn.WindowParam):
    FIRED.append((float(win.end), SOURCE['sent'], SOURCE['open'], kv[1]))
