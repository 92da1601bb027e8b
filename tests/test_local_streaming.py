"""The local streaming compatibility layer: pinned to Beam 2.77.0, and windows fire live.

If a Beam upgrade breaks the patched internals, these tests fail first.
"""
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import window

from pipelines import local_streaming
from transforms.live_sources import ReadLive, Reader
from transforms.records import RawRecord

FIRED = []


def test_refuses_other_beam_versions(monkeypatch):
  monkeypatch.setattr(beam, '__version__', '2.78.0')
  monkeypatch.setattr(local_streaming, '_installed', False)
  with pytest.raises(RuntimeError, match='2.77.0'):
    local_streaming.install()


class _Clocked(Reader):
  """50 records per second with event time = now, for 4 s; then exhausted."""

  def open(self):
    self._started = time.time()
    self._sent = 0

  def poll(self, max_records):
    due = min(int((time.time() - self._started) * 50), 200)
    batch = [RawRecord(str(time.time_ns() // 1000), 'clock', n)
             for n in range(self._sent, due)][:max_records]
    self._sent += len(batch)
    return batch

  def exhausted(self):
    return self._sent >= 200


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
  assert sum(total for _, _, total in FIRED) == 200
  on_time = [fired - end for end, fired, _ in FIRED[:-2]]
  assert len(on_time) >= 2 and max(on_time) < 2.5, FIRED  # fired live, not at the end


class _FiringDoFn(beam.DoFn):

  def process(self, kv, win=beam.DoFn.WindowParam):
    FIRED.append((float(win.end), time.time(), kv[1]))
