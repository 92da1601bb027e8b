"""Beam metrics the job reports about itself, beyond its record counts.

Every figure is a Beam metric in namespace `enrichment`, so any runner keeps
it (Flink's and Dataflow's monitoring included); observability.monitoring exports
them locally in the Prometheus format. Beam distributions keep only count,
sum, min and max, so histograms are counters here: one per bucket
(`NAME_bucket_I`, not cumulative) and one for the sum (`NAME_sum`, in units of
1/scale), which Prometheus histograms can be rebuilt from on any runner.
"""
import time
import types
from typing import Dict, NamedTuple, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from runners.beam_inference import KeyedModelHandler

from transforms import job_state

NAMESPACE = 'enrichment'
DEADLETTERS_BY_REASON = 'deadletters_'  # + reason
SOURCE_WATERMARK_MS = 'source_watermark_ms'  # gauge, epoch ms


class HistogramSpec(NamedTuple):
  bounds: Tuple[float, ...]  # upper bounds; one more bucket holds the rest (+Inf)
  scale: int  # the sum counter counts value * scale
  help: str


HISTOGRAMS: Dict[str, HistogramSpec] = types.MappingProxyType({
    'event_latency_seconds': HistogramSpec(
        (0.25, 0.5, 1, 2, 3, 4, 5, 6, 7.5, 10, 12.5, 15, 20, 25, 30, 40, 50, 60, 75, 90, 120,
         150, 180, 240, 300, 600), 1000,
        'Event time to written, per enriched row (live jobs).'),
    'batch_size': HistogramSpec(
        (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096), 1,
        'Texts per RunInference call.'),
    'inference_seconds': HistogramSpec(
        (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), 1000,
        'Seconds per RunInference call.'),
})


def observe(name: str, value: float, count: int = 1) -> None:
  """Adds `count` observations of `value` to histogram `name`."""
  spec = HISTOGRAMS[name]
  index = next((i for i, bound in enumerate(spec.bounds) if value <= bound), len(spec.bounds))
  Metrics.counter(NAMESPACE, f'{name}_bucket_{index}').inc(count)
  Metrics.counter(NAMESPACE, f'{name}_sum').inc(round(value * spec.scale) * count)


class MeasuredKeyedHandler(KeyedModelHandler):
  """KeyedModelHandler that records each RunInference call's size and duration.

  It also sizes batches by their texts: Beam's default pickles every key (a
  whole Event) and text of each batch only to count bytes for a metric.

  Args:
    unkeyed: the model handler of texts.
    job: the job's token: each call is kept in its JobState for the run report.
  """

  def __init__(self, unkeyed, job: str = ''):
    super().__init__(unkeyed)
    self._job = job

  def get_num_bytes(self, batch) -> int:
    # A text, or (text, model path) where a live job pins models to windows.
    return sum(len(text if isinstance(text, str) else text[0]) for _, text in batch)

  def run_inference(self, batch, model, inference_args=None):
    started = time.perf_counter()
    results = list(super().run_inference(batch, model, inference_args))
    seconds = time.perf_counter() - started
    observe('batch_size', len(batch))
    observe('inference_seconds', seconds)
    job_state.of(self._job).calls.append((time.time(), len(batch), seconds))
    return results


class _MeasureWrittenFn(beam.DoFn):
  """Event latency of each written row: the clock when its file is written minus its event time."""

  def process(self, batch):
    now_us = time.time_ns() // 1000
    for row in batch.rows:
      observe('event_latency_seconds', max(0.0, (now_us - row.event.event_time_us) / 1e6))
    yield batch


class _CountByReasonFn(beam.DoFn):

  def process(self, batch):
    Metrics.counter(NAMESPACE, DEADLETTERS_BY_REASON + batch.reason).inc(len(batch.letters))
    yield batch


class MeasureLatency(beam.PTransform):
  """Behind the Parquet writes of a live job: each written row's event latency."""

  def expand(self, written_windows):
    return written_windows | 'Measure rows' >> beam.ParDo(_MeasureWrittenFn())


class CountByReason(beam.PTransform):
  """Behind the dead-letter writes: written dead letters counted by reason."""

  def expand(self, written_batches):
    return written_batches | 'Count batch' >> beam.ParDo(_CountByReasonFn())


class SourceGauges:
  """Sets a live source's gauges: its watermark, and what its reader reports, at most each second."""

  def __init__(self):
    self._watermark = Metrics.gauge(NAMESPACE, SOURCE_WATERMARK_MS)
    self._last = 0.0

  def update(self, watermark_us, reader) -> None:
    if watermark_us is not None:
      self._watermark.set(watermark_us // 1000)
    now = time.monotonic()
    if now - self._last >= 1.0:
      self._last = now
      for name, value in reader.gauges().items():
        if value is not None:
          Metrics.gauge(NAMESPACE, name).set(int(value))
