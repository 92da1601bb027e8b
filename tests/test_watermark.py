"""The one watermark rule (transforms.watermark.Watermark), which the late flag, the
bounded collector and the live sources share."""
from hypothesis import given, settings, strategies as st

from transforms.watermark import Watermark
from transforms.windowing import WindowSpec

S = 1_000_000


def test_the_watermark_trails_the_newest_event_and_never_moves_back():
  mark = Watermark(WindowSpec(10, max_out_of_orderness_s=2))
  assert mark.watermark_us is None and not mark.is_late(0)
  assert mark.observe(16 * S) and mark.watermark_us == 14 * S
  assert not mark.observe(9 * S) and mark.watermark_us == 14 * S  # older: no change
  assert not mark.observe(16 * S)
  assert mark.observe(17 * S) and mark.watermark_us == 15 * S


def test_an_event_is_late_once_its_last_window_and_the_lateness_are_behind():
  mark = Watermark(WindowSpec(10, allowed_lateness_s=5, max_out_of_orderness_s=2))
  mark.observe(16 * S)  # watermark 14: window [0,10) + 5 s still open
  assert not mark.is_late(9 * S)
  mark.observe(17 * S)  # watermark 15: [0,10) closes at 15
  assert mark.is_late(9 * S) and not mark.is_late(10 * S)
  assert mark.is_late(19 * S, watermark_us=35 * S)  # judged by a watermark given


def test_sliding_windows_close_with_the_last_window_an_event_is_in():
  mark = Watermark(WindowSpec(10, period_s=5, max_out_of_orderness_s=0))
  mark.observe(14 * S)  # [0,10) has ended, but 7 s is also in [5,15), still open
  assert not mark.is_late(7 * S) and mark.is_late(4 * S)
  # A window is handed on once no on-time event can reach it: its last moment (9.99 s)
  # also falls in [5,15), so an event there stays on time until 15 s.
  assert not mark.window_closed(0)
  mark.observe(15 * S)
  assert mark.window_closed(0) and not mark.window_closed(5 * S)


def test_sessions_judge_by_the_gap():
  mark = Watermark(WindowSpec(session_gap_s=4, max_out_of_orderness_s=0))
  mark.observe(20 * S)
  assert mark.is_late(16 * S) and not mark.is_late(17 * S)  # 16 + 4 <= 20 < 17 + 4


def test_an_idle_stream_moves_with_the_clock_and_not_before_an_event():
  mark = Watermark(WindowSpec(10, max_out_of_orderness_s=2))
  assert not mark.idle_for(5) and mark.watermark_us is None
  mark.observe(10 * S)
  assert mark.idle_for(5) and mark.watermark_us == 13 * S
  assert not mark.idle_for(1)  # would move it back: it stays
  assert mark.watermark_us == 13 * S


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=60),
       st.integers(0, 5), st.integers(0, 5), st.integers(1, 10))
def test_window_closed_agrees_with_is_late_for_the_windows_last_moment(times, disorder,
                                                                       lateness, size):
  mark = Watermark(WindowSpec(size, allowed_lateness_s=lateness,
                              max_out_of_orderness_s=disorder))
  previous = None
  for t in times:
    mark.observe(t)
    assert previous is None or mark.watermark_us >= previous  # monotone
    previous = mark.watermark_us
    start = t - t % (size * S)
    assert mark.window_closed(start) == mark.is_late(start + size * S - 1)
    # Whatever is late now has every window closed: no on-time event could reach them.
    if mark.is_late(t):
      assert mark.window_closed(start)
