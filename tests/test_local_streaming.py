"""The local streaming compatibility layer: pinned to the Beam 2.77.0 code it patches, the
embedding DoFn kept across bundles, and windows fire live.

If a Beam upgrade changes the patched internals, these tests fail first.
"""
import functools
import json
import os
import subprocess
import sys
import time
import types

import apache_beam as beam
import pytest
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.clock import TestClock
from apache_beam.runners.direct.evaluation_context import DirectUnmergedState
from apache_beam.runners.direct.watermark_manager import _TransformWatermarks
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.transforms.trigger import TimeDomain
from apache_beam.utils.timestamp import Timestamp

from runners import local_streaming
from runners.local_streaming import PatchRefused
from tests.conftest import ROOT
from tests.fakes import HashingModelHandler
from tests.runners import streaming_pipeline
from transforms.enrich import EmbedEvents
from transforms.io.live_sources import ArchiveReader, ReadLive, Reader
from transforms.records import Event, RawRecord

FIRED = []  # (window end, records the source had sent, source still open, window total)
SOURCE = {}  # the running source's progress; one process, so the firing DoFn reads it
BUNDLES = []


def test_refuses_other_beam_versions():
  local_streaming.check_beam(beam.__version__)  # the installed Beam is the one patched
  with pytest.raises(PatchRefused, match=r'against apache_beam 2\.77\.0, but 2\.78\.0 is'):
    local_streaming.check_beam('2.78.0')


def test_the_installed_originals_are_the_ones_the_patches_copy():
  local_streaming.install()  # replaced by now: each replacement leads back to Beam's original
  for name, digest in local_streaming.BEAM_ORIGINALS.items():
    assert local_streaming.source_digest(local_streaming.original_source(name)) == digest, name


@pytest.mark.parametrize('changed', sorted(local_streaming.BEAM_ORIGINALS))
def test_a_changed_original_is_refused_by_name(changed):
  def source_of(name):
    source = local_streaming.original_source(name)
    return source + '    pass\n' if name == changed else source

  with pytest.raises(PatchRefused) as refused:
    local_streaming.check_beam(beam.__version__, source_of)
  message = str(refused.value)
  assert f'apache_beam.runners.direct.{changed} is not' in message and '\n' not in message


def test_a_missing_original_is_refused_by_name():
  def source_of(name):
    if name.endswith('ProcessFn.process'):
      raise AttributeError("type object 'ProcessFn' has no attribute 'process'")
    return local_streaming.original_source(name)

  with pytest.raises(PatchRefused, match=r'cannot read apache_beam\.runners\.direct\.'
                     r'sdf_direct_runner\.ProcessFn\.process'):
    local_streaming.check_beam(beam.__version__, source_of)


# The stream job, on a Beam whose _OutputHandler.reset is not 2.77.0's.
CHANGED_BEAM = """\
import sys

from apache_beam.runners.direct import sdf_direct_runner


def reset(self):  # as a later Beam might write it
  self.output_iter = None
  self.extra = None


sdf_direct_runner._OutputHandler.reset = reset
from pipelines import launcher, stream
launcher.main(stream.run, sys.argv[1:])
"""


@pytest.mark.e2e
def test_the_stream_job_refuses_a_changed_beam_in_one_line(tmp_path):
  script = tmp_path / 'changed_beam.py'
  script.write_text(CHANGED_BEAM)
  done = subprocess.run(
      [sys.executable, str(script), '--source', 'synthetic://?rate=20', '--output',
       str(tmp_path / 'out'), '--duration', '5'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1'))
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2, done.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith('error: '), done.stderr[-3000:]
  assert 'apache_beam.runners.direct.sdf_direct_runner._OutputHandler.reset' in lines[0]


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


def test_a_serial_step_takes_its_bundles_in_arrival_order():
  # Beam's own order is newest first: a step that is never idle would starve its oldest
  # bundle, whose elements hold the watermark (a live job that fell behind once stopped
  # writing windows for good).
  from apache_beam.runners.direct import executor as ex
  local_streaming.install()

  class Service:
    submitted = []

    def submit(self, work):
      self.submitted.append(work)

  service = Service()
  state = ex._SerialEvaluationState(service, set())
  for work in ('first', 'second', 'third'):
    state.schedule(work)
  state.complete('first')
  state.complete('second')
  assert service.submitted == ['first', 'second', 'third']


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


LOADS = []  # one entry per load_model() call of _CountingHandler in this process
BATCHES = []  # the size of each RunInference batch


class _CountingHandler(HashingModelHandler):
  """The fake model handler, counting its loads (one per RunInference DoFn setup) and batches."""

  def load_model(self):
    LOADS.append(1)
    return super().load_model()

  def run_inference(self, batch, model, inference_args=None):
    BATCHES.append(len(batch))
    return super().run_inference(batch, model, inference_args)


def test_the_embedding_step_is_set_up_once_not_per_bundle(tmp_path):
  """A live source emits one bundle per poll; the model loads once for the run."""
  local_streaming.install()
  LOADS.clear()
  BATCHES.clear()
  archive = tmp_path / 'events.jsonl'
  archive.write_text(''.join(json.dumps({'t': n, 'text': f'event {n}'}) + '\n' for n in range(20)))
  with streaming_pipeline() as p:
    events = (p
              | ReadLive(functools.partial(ArchiveReader, str(archive)),
                         lambda record: json.loads(record.raw)['t'] * 1_000_000,
                         max_out_of_orderness_s=0, poll_interval_s=0.01, max_records=4)
              | beam.Map(_event))
    embedded, failed = events | EmbedEvents(_CountingHandler())
    assert_that(embedded | beam.Map(lambda row: row.event.id),
                equal_to([f'e{n}' for n in range(20)]), label='all embedded')
    assert_that(failed, equal_to([]), label='none failed')
  assert sum(BATCHES) == 20 and len(BATCHES) >= 5  # five polls of four, a bundle each
  assert len(LOADS) == 1, (LOADS, BATCHES)  # the local runner's one worker


def _event(record):
  body = json.loads(record.raw)
  return Event(f'e{body["t"]}', body['t'] * 1_000_000, body['text'], record.source,
               record.stream, record.raw)


def test_whether_a_step_runs_serially_is_decided_once_per_step(monkeypatch):
  """Patch 9: Beam inspected a ParDo's signatures on every scheduled bundle."""
  from apache_beam.runners.direct import transform_evaluator as te
  local_streaming.install()
  asked = []

  def counting(dofn):
    asked.append(dofn)
    return False

  monkeypatch.setattr(te, 'is_stateful_dofn', counting)
  step = types.SimpleNamespace(transform=beam.ParDo(_Doubling()))
  registry = te.TransformEvaluatorRegistry.__new__(te.TransformEvaluatorRegistry)
  assert [registry.should_execute_serially(step) for _ in range(3)] == [False] * 3
  assert len(asked) == 1
  other = types.SimpleNamespace(transform=beam.ParDo(_Doubling()))
  registry.should_execute_serially(other)
  assert len(asked) == 2  # each step asks once


class _Doubling(beam.DoFn):

  def process(self, value):
    yield 2 * value
