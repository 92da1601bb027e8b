"""Look-back on bounded input grouped by segments: the same windows as the per-window
grouping with a copy of each row for every later window (what a live job does)."""
import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import IntervalWindow, TimestampedValue

from tests.runners import batch_pipeline
from transforms import records as r
from transforms import spill as spill_module
from transforms.grouping import GroupWindows
from models.identity import ModelIdentity
from transforms.segments import (GroupSegments, _CutSegmentFn, _KeyBySegmentFn, pack,
                                 segment_us, unpack)
from transforms.windowing import WindowEvents, WindowSpec


def _rows(n=300, span_s=400, seed=5):
  """Rows at random times (some windows empty), a few sharing a time; out of order."""
  rng = np.random.default_rng(seed)
  times = rng.integers(0, span_s * 1_000_000, n)
  times[rng.integers(0, n, 20)] = 120_000_000  # on a window (and segment) boundary
  times[(times > 200_000_000) & (times < 230_000_000)] += 40_000_000  # a gap of windows
  rows = []
  for i, t in enumerate(times):
    event = r.Event(f'e{i:03d}', int(t), f'text {i}', f'f:{i}', 'f', 'raw')
    rows.append(r.Embedded(event, rng.normal(size=4).astype(np.float32)))
  return rows


def _marks(seed=6):
  rng = np.random.default_rng(seed)
  return [(r.DeadLetterMark('no_text'), int(t)) for t in rng.integers(0, 450_000_000, 40)]


def _summary(batch):
  """What a window carries, in order: rows with their vectors, context ids, dead letters."""
  return (batch.start_us, batch.end_us, batch.pane,
          tuple((row.event.id, row.event.event_time_us, row.event.text,
                 tuple(row.embedding.tolist())) for row in batch.rows),
          tuple((row.event.id, row.event.event_time_us, tuple(row.embedding.tolist()))
                for row in batch.context),
          batch.deadletters)


def _reference(rows, marks, size_us, lookback_us):
  """The windows by definition: each window's rows; as context, the rows of earlier
  windows at most the look-back older than its start; its dead letters; none without rows."""
  def start(t):
    return t - t % size_us
  ordered = sorted(rows, key=lambda row: (row.event.event_time_us, row.event.id))
  windows = []
  for begin in sorted({start(row.event.event_time_us) for row in rows}):
    own = [row for row in ordered if start(row.event.event_time_us) == begin]
    context = [row for row in ordered if start(row.event.event_time_us) < begin
               and row.event.event_time_us >= begin - lookback_us]
    letters = sum(start(t) == begin for _, t in marks)
    windows.append(_summary(r.WindowRows(begin, begin + size_us, 0, own, None, tuple(context),
                                         letters)))
  return windows


def _grouped(pipeline, name, grouping, spec, rows, marks):
  def stamp(label, values, time_of):
    return (pipeline | f'{name} {label}' >> beam.Create(values)
            | f'{name}: stamp {label}' >> beam.Map(
                lambda v: TimestampedValue(v, time_of(v) / 1e6))
            | f'{name}: window {label}' >> WindowEvents(spec))
  stamped = stamp('rows', rows, lambda row: row.event.event_time_us)
  letters = (stamp('marks', marks, lambda mark: mark[1])
             | f'{name}: marks' >> beam.Map(lambda mark: mark[0]))
  return stamped | name >> grouping(letters)


@pytest.mark.parametrize('size_s, lookback_s, spill', [
    (10, 25, False), (10, 30, False), (10, 4, False), (7, 60, False), (10, 0, False),
    (10, 25, True), (7, 60, True), (10, 0, True)])
def test_segments_give_the_windows_of_the_per_window_grouping(size_s, lookback_s, spill,
                                                               tmp_path, monkeypatch):
  spec = WindowSpec(size_s)
  rows, marks = _rows(), _marks()
  expected = _reference(rows, marks, size_s * 1_000_000, lookback_s * 1_000_000)
  assert len(expected) > 20
  if lookback_s:
    assert sum(bool(window[4]) for window in expected) > len(expected) // 2  # common
  assert sum(window[5] for window in expected) < len(marks)  # marks in empty windows drop
  with batch_pipeline() as p:
    per_window = _grouped(p, 'Per window', lambda letters: GroupWindows(
        lookback_s, WindowEvents(spec), letters, by_bounds=True), spec, rows, marks)
    assert_that(per_window | 'Summaries' >> beam.Map(_summary), equal_to(expected),
                label='per window')
    if spill:  # files of a few rows each, some keys written before they are complete
      monkeypatch.setattr(spill_module, 'SPILL_VALUES', 7)
      monkeypatch.setattr(spill_module, 'OPEN_KEYS', 2)
    folder = str(tmp_path / 'spill') if spill else None
    found = _grouped(p, 'Segments', lambda letters: GroupSegments(
        spec, lookback_s, letters, folder), spec, rows, marks) | 'By segment' >> beam.Map(_summary)
    assert_that(found, equal_to(expected), label='segments')
    # Each output sits in its own window, as the per-window grouping's does.
    assert_that(found | beam.ParDo(_WindowStart()), equal_to([True] * len(expected)),
                label='windows')
  if spill:  # every file read back once, and removed
    assert (tmp_path / 'spill').is_dir() and not list((tmp_path / 'spill').iterdir())


class _WindowStart(beam.DoFn):

  def process(self, summary, win=beam.DoFn.WindowParam):
    yield summary[0] == win.start.micros


def test_a_segment_covers_two_look_backs_in_whole_windows():
  assert segment_us(10, 25) == 50
  assert segment_us(10, 30) == 60
  assert segment_us(10, 4) == 10
  assert segment_us(10, 0) == 10
  assert segment_us(10, 25, lookbacks=1) == 30
  assert segment_us(60_000_000, 600_000_000) == 1_200_000_000


def test_rows_cross_the_grouping_packed_and_come_back_the_same():
  event = r.Event('a', 4, 'text', 'f:1', 'f', '', 17)
  vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
  row = r.Embedded(event, np.ones(3, np.float32), ((0, 2), (2, 4)), vectors,
                   ModelIdentity('m', '0123'))
  start_us, back = unpack(pack(40, row))
  assert start_us == 40 and back.event == event and back.chunks == row.chunks
  assert isinstance(back.model, ModelIdentity) and back.model == row.model
  np.testing.assert_array_equal(back.chunk_vectors, vectors)
  assert back.embedding.dtype == np.float32 and back.embedding.flags.writeable
  plain = unpack(pack(None, r.Embedded(event, np.zeros(3, np.float32))))
  assert plain[0] is None and plain[1].model is None and plain[1].chunk_vectors is None
  assert len(pack(0, r.Embedded(event, np.zeros(384, np.float32)))) < 1700


def test_a_segment_takes_only_the_look_back_of_the_one_before():
  """A row is offered to the next segment only within the look-back of its start."""
  key = _KeyBySegmentFn(segment_us_=30, lookback_us=25)
  event = r.Event('a', 4, 't', 's', 'f', 'raw')
  row = r.Embedded(event, np.zeros(2, np.float32))
  assert [k for k, _ in key.process(row, IntervalWindow(0, 10))] == [0]  # 4 < 30 - 25
  late = row._replace(event=event._replace(event_time_us=5))
  keyed = list(key.process(late, IntervalWindow(0, 10)))
  assert [k for k, _ in keyed] == [0, 1]
  own, copy = unpack(keyed[0][1]), unpack(keyed[1][1])
  assert own[0] == 0 and own[1].event.text == 't' and own[1].event.raw == ''
  assert copy[0] is None and copy[1].event.text == '' and copy[1].event.source == ''
  cut = _CutSegmentFn(size_us=10, lookback_us=25)
  b = row._replace(event=event._replace(id='b', event_time_us=31))
  batches = [value.value for value in cut.process((1, [keyed[1][1], pack(30, b)]), {30: 2})]
  assert [(b.start_us, [c.event.id for c in b.context], b.deadletters)
          for b in batches] == [(30, ['a'], 2)]


def test_segments_refuse_what_they_cannot_cut():
  with pytest.raises(ValueError):
    GroupSegments(WindowSpec(10, period_s=5), 20)
  with pytest.raises(ValueError):
    GroupSegments(WindowSpec(10), -1)
