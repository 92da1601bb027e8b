"""Window specs, the lateness rule, and the bounded (replay) path with Create: late events
flagged in stream order, sessions and sliding windows. Live event time, driven by TestStream
through the job's steps, is in test_event_time.py."""
import apache_beam as beam
import pytest
from tests.runners import batch_pipeline, streaming_pipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms.window import IntervalWindow, TimestampedValue

from transforms import records as r
from transforms.windowing import AssignEventTime, FlagLateEvents, WindowEvents, WindowSpec

S = 1_000_000


def event(n, seconds, stream='s'):
  return r.Event(f'e{n}', round(seconds * S), f'text {n}', f'{stream}:{n}', stream, '{}')


def test_window_spec_kinds_and_ends():
  assert WindowSpec(10).kind == 'fixed'
  assert WindowSpec(10).last_window_end_us(25 * S) == 30 * S
  assert WindowSpec(10).last_window_end_us(30 * S) == 40 * S
  assert WindowSpec(10, period_s=5).kind == 'sliding'
  assert WindowSpec(10, period_s=5).last_window_end_us(27 * S) == 35 * S
  assert WindowSpec(10, session_gap_s=4).kind == 'sessions'
  assert WindowSpec(10, session_gap_s=4).last_window_end_us(27 * S) == 31 * S


@pytest.mark.parametrize('spec', [
    WindowSpec(0), WindowSpec(10, period_s=20), WindowSpec(10, period_s=5, session_gap_s=3),
    WindowSpec(10, allowed_lateness_s=-1), WindowSpec(10, session_gap_s=0),
])
def test_window_spec_rejects_nonsense(spec):
  with pytest.raises(ValueError):
    spec.validate()


def test_windows_with_allowed_lateness_fire_a_late_pane():
  spec = WindowSpec(10, allowed_lateness_s=30)
  stream = (TestStream()
            .add_elements([TimestampedValue(event(1, 1), 1), TimestampedValue(event(2, 12), 12)])
            .advance_watermark_to(20)
            .add_elements([TimestampedValue(event(3, 5), 5)])    # late, within lateness
            .advance_watermark_to(60)
            .add_elements([TimestampedValue(event(4, 8), 8)])    # beyond lateness: dropped
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    counts = (p | stream
              | WindowEvents(spec)
              | beam.Map(lambda e: ('n', e.id))
              | beam.GroupByKey()
              | beam.Map(lambda kv: sorted(kv[1])))
    assert_that(counts, equal_to_per_window({
        IntervalWindow(0, 10): [['e1'], ['e3']],  # on-time pane, then the late pane
        IntervalWindow(10, 20): [['e2']],
    }))


def test_late_events_are_flagged_in_stream_order_instead_of_dropped():
  spec = WindowSpec(10, allowed_lateness_s=0, max_out_of_orderness_s=2)
  events = [event(1, 1), event(2, 9), event(3, 14), event(4, 8), event(5, 11), event(6, 25),
            event(7, 19)]
  # Watermark after e3 is 12: e4 (window ends 10) is late; after e6 it is 23: e7 (ends 20) too.
  with batch_pipeline() as p:
    on_time, late = p | beam.Create(events) | FlagLateEvents(spec)
    assert_that(on_time | 'on time ids' >> beam.Map(lambda e: e.id),
                equal_to(['e1', 'e2', 'e3', 'e5', 'e6']), label='on time')
    assert_that(late | beam.Map(lambda d: (d.id, d.reason)),
                equal_to([('e4', r.LATE), ('e7', r.LATE)]), label='late')


def test_streams_keep_separate_watermarks():
  spec = WindowSpec(10, max_out_of_orderness_s=0)
  events = [event(1, 100, 'a'), event(2, 1, 'b'), event(3, 1, 'a')]
  with batch_pipeline() as p:
    _, late = p | beam.Create(events) | FlagLateEvents(spec)
    assert_that(late | beam.Map(lambda d: d.id), equal_to(['e3']))


def test_sessions_merge_when_grouped():
  spec = WindowSpec(session_gap_s=5)
  events = [event(1, 1), event(2, 3), event(3, 20)]
  with batch_pipeline() as p:
    windows = (p | beam.Create(events) | AssignEventTime() | WindowEvents(spec)
               | beam.Map(lambda e: (None, e)) | beam.GroupByKey()
               | beam.ParDo(_GroupWindowOf()))
    assert_that(windows, equal_to([(('e1', 'e2'), 1, 8), (('e3',), 20, 25)]))


class _GroupWindowOf(beam.DoFn):

  def process(self, keyed, win=beam.DoFn.WindowParam):
    yield tuple(sorted(e.id for e in keyed[1])), int(win.start), int(win.end)


def test_sliding_windows_hold_an_event_once_per_window():
  spec = WindowSpec(10, period_s=5)
  with batch_pipeline() as p:
    windows = (p | beam.Create([event(1, 7)]) | AssignEventTime() | WindowEvents(spec)
               | beam.ParDo(_WindowOf()))
    assert_that(windows, equal_to([('e1', 0, 10), ('e1', 5, 15)]))


class _WindowOf(beam.DoFn):

  def process(self, element, win=beam.DoFn.WindowParam):
    yield element.id, int(win.start), int(win.end)
