"""Event time on the live path, driven by TestStream: late data, allowed lateness, sliding
and session windows, through the job's own steps (FlagLateEvents, AssignEventTime,
WindowEvents, EmbedEvents with the fake model, GroupWindows), checked per window.

Each TestStream bundle stands for one poll of a live source: its events arrive
together, then the runner's watermark moves to what the source reports (the
newest event time minus the allowed disorder, which is 0 here unless a test says).
"""
import apache_beam as beam
import pytest
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms.window import IntervalWindow, TimestampedValue

from runners import local_streaming
from tests.fakes import HashingModelHandler
from tests.runners import streaming_pipeline
from transforms import records as r
from transforms.enrich import EmbedEvents
from transforms.grouping import GroupWindows
from transforms.windowing import AssignEventTime, FlagLateEvents, WindowEvents, WindowSpec

S = 1_000_000


@pytest.fixture(autouse=True, scope='module')
def local_streaming_runner():
  # The runner live jobs run on locally; installed here, so that these results do not
  # depend on which test files ran earlier in this process.
  local_streaming.install()


def event(n, seconds, watermark_s=None):
  return r.Event(f'e{n}', round(seconds * S), f'text {n}', f's:{n}', 's', '{}',
                 None if watermark_s is None else round(watermark_s * S))


def polls(*bundles, stamped):
  """A TestStream of (events, watermark after them) bundles.

  stamped: each event carries the watermark the source had reported when it read
  it (a live source); else none, and the late flag follows the stream's own order
  (an archive). Both must decide alike.
  """
  stream, watermark_s = TestStream(), None
  for events, next_watermark_s in bundles:
    stream = stream.add_elements([
        TimestampedValue(e._replace(watermark_us=None if not stamped or watermark_s is None
                                    else round(watermark_s * S)), e.event_time_us / S)
        for e in events])
    if next_watermark_s is not None and next_watermark_s != watermark_s:
      stream = stream.advance_watermark_to(next_watermark_s)
      watermark_s = next_watermark_s
  return stream.advance_watermark_to_infinity()


def live_windows(p, stream, spec):
  """The live job's steps from parsed events to window rows: (pane rows, late ids)."""
  on_time, late = p | stream | FlagLateEvents(spec)
  embedded, failed = (on_time
                      | AssignEventTime()
                      | WindowEvents(spec)
                      | EmbedEvents(HashingModelHandler()))
  assert_that(failed, equal_to([]), label='none failed')
  panes = (embedded
           | GroupWindows()
           | beam.Map(lambda rows: (tuple(row.event.id for row in rows.rows), rows.pane)))
  late_ids = late | beam.Map(lambda letter: (letter.id, letter.reason))
  return panes, late_ids


def window(start_s, end_s):
  return IntervalWindow(start_s, end_s)


@pytest.mark.parametrize('stamped', [True, False], ids=['live', 'archive'])
def test_late_data_is_flagged_not_dropped(stamped):
  spec = WindowSpec(10, allowed_lateness_s=0, max_out_of_orderness_s=2)
  stream = polls(
      ([event(1, 1), event(2, 9), event(3, 14)], 12),
      ([event(4, 8), event(5, 11), event(6, 25)], 23),  # e4: [0,10) closed at 10 <= 12
      ([event(7, 19)], None),                           # e7: [10,20) closed at 20 <= 23
      stamped=stamped)
  with streaming_pipeline() as p:
    panes, late = live_windows(p, stream, spec)
    assert_that(panes, equal_to_per_window({
        window(0, 10): [(('e1', 'e2'), 0)],
        window(10, 20): [(('e5', 'e3'), 0)],  # rows in event-time order
        window(20, 30): [(('e6',), 0)],
    }), label='on time')
    assert_that(late, equal_to([('e4', r.LATE), ('e7', r.LATE)]), label='late')


@pytest.mark.parametrize('stamped', [True, False], ids=['live', 'archive'])
def test_allowed_lateness_fires_a_late_pane_then_flags(stamped):
  spec = WindowSpec(10, allowed_lateness_s=30, max_out_of_orderness_s=0)
  stream = polls(
      ([event(1, 1), event(2, 12)], 12),
      ([event(3, 5)], 12),    # behind the watermark, within the lateness (10 + 30 > 12)
      ([event(5, 60)], 60),
      ([event(4, 8)], None),  # beyond it: 10 + 30 <= 60
      stamped=stamped)
  with streaming_pipeline() as p:
    panes, late = live_windows(p, stream, spec)
    assert_that(panes, equal_to_per_window({
        window(0, 10): [(('e1',), 0), (('e3',), 1)],  # the on-time pane, then a late one
        window(10, 20): [(('e2',), 0)],
        window(60, 70): [(('e5',), 0)],
    }), label='panes')
    assert_that(late, equal_to([('e4', r.LATE)]), label='late')


@pytest.mark.parametrize('stamped', [True, False], ids=['live', 'archive'])
def test_sliding_windows_an_event_is_late_once_all_its_windows_closed(stamped):
  spec = WindowSpec(10, period_s=5, max_out_of_orderness_s=0)
  stream = polls(
      ([event(1, 7), event(2, 12)], 12),
      # e3 at 3: [-5,5) and [0,10) closed, late. e4 at 9: [0,10) closed but [5,15) open,
      # so it is on time and lands in [5,15) only.
      ([event(3, 3), event(4, 9)], None),
      stamped=stamped)
  with streaming_pipeline() as p:
    panes, late = live_windows(p, stream, spec)
    assert_that(panes, equal_to_per_window({
        window(0, 10): [(('e1',), 0)],
        window(5, 15): [(('e1', 'e4', 'e2'), 0)],
        window(10, 20): [(('e2',), 0)],
    }), label='windows')
    assert_that(late, equal_to([('e3', r.LATE)]), label='late')


@pytest.mark.parametrize('stamped', [True, False], ids=['live', 'archive'])
def test_sessions_merge_late_gaps_are_flagged(stamped):
  spec = WindowSpec(session_gap_s=5, max_out_of_orderness_s=0)
  stream = polls(
      ([event(1, 1), event(2, 3)], 3),
      ([event(3, 20)], 20),  # the session [1,8) closes
      # e4 at 4 would have reopened it: late (4 + 5 <= 20). e6 at 16 is on time
      # (16 + 5 > 20) and bridges into e3's session, which e5 extends.
      ([event(4, 4), event(6, 16), event(5, 22)], None),
      stamped=stamped)
  with streaming_pipeline() as p:
    panes, late = live_windows(p, stream, spec)
    assert_that(panes, equal_to_per_window({
        window(1, 8): [(('e1', 'e2'), 0)],
        window(16, 27): [(('e6', 'e3', 'e5'), 0)],
    }), label='sessions')
    assert_that(late, equal_to([('e4', r.LATE)]), label='late')
