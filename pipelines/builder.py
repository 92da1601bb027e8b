"""The one builder: raw records in, enriched rows and dead letters out.

Entry points differ only in the read step; everything after it is built here,
so a live stream and an archive replay go through the same transforms.
"""
from typing import NamedTuple, Optional

import apache_beam as beam
from runners.beam_inference import ModelHandler
from apache_beam.transforms.window import TimestampedValue

from models.handler import SentenceTransformerHandler
from pipelines.config import JobConfig
from transforms.derive import DeriveFromEmbeddings
from transforms.enrich import EmbedEvents
from transforms.parse import ParseEvents
from transforms.grouping import CollectStreamWindows, CollectionMode, GroupWindows
from transforms.records import FUTURE_TIME, LATE, DeadLetterMark
from transforms.io.sinks import (CollectDeadLetters, GroupDeadLetters, WriteDeadLetters,
                              WriteEnrichedParquet)
from transforms.topics import SummarizeWindows
from transforms.io.uris import sink, sink_label
from transforms.segments import GroupSegments
from transforms.windowing import AssignEventTime, FlagLateEvents, WindowEvents


class EnrichmentOutputs(NamedTuple):
  # Embedded, windowed by event time; on bounded input collected per stream
  # (CollectionMode.PER_STREAM), only timestamped: the collector windows them.
  enriched: beam.PCollection
  deadletters: beam.PCollection  # DeadLetter, global window


class WrittenFiles(NamedTuple):
  enriched: beam.PCollection  # WindowRows, once written
  deadletters: beam.PCollection  # DeadLetterBatch, once written


def build_enrichment(raw_records: beam.PCollection, config: JobConfig,
                     model_handler: Optional[ModelHandler] = None) -> EnrichmentOutputs:
  """Parse, flag late events, stamp event time, embed and window (streaming: window, then embed).

  Args:
    raw_records: RawRecords from any source.
    config: the validated job configuration.
    model_handler: replaces the sentence-transformers handler (tests use a fake).
  """
  handler = model_handler or SentenceTransformerHandler(config.model)
  job = config.write.job
  events, unparsable = raw_records | 'Parse events' >> ParseEvents(
      config.mapping, config.time_parser, config.max_record_bytes)
  on_time, late = events | 'Flag late events' >> FlagLateEvents(
      config.window, archive_lateness=config.replay_lateness)
  if config.mode is CollectionMode.UNBOUNDED:
    # Batches must stay inside windows while the watermark moves: a batch of
    # the global window is emitted at its end, which no watermark hold covers.
    window = config.window
    if window.kind == 'sliding':
      # Batched inside sliding windows, each event is embedded once per window it is in
      # (and re-stamping used to copy rows into every window: transforms/enrich.py).
      # Batch inside fixed windows of one period (one inference per event), then slide.
      window = window._replace(size_s=window.period_s, period_s=None)
    windowed, failed = (on_time
                        | 'Assign event time' >> AssignEventTime()
                        | 'Window events' >> WindowEvents(window)
                        | 'Embed events' >> EmbedEvents(handler, job=job,
                                                        watch=config.model.model_watch,
                                                        default=config.model.model))
    if window is not config.window:
      windowed = windowed | 'Slide windows' >> WindowEvents(config.window)
  elif config.mode is CollectionMode.PER_STREAM:
    # Bounded input: batch across windows, so batches fill even when windows
    # are small, and a sliding window's copies share one inference. Batching
    # drops timestamps; the per-stream collector windows rows by event time.
    windowed, failed = on_time | 'Embed events' >> EmbedEvents(handler, stamp=False, job=job)
  else:
    embedded, failed = on_time | 'Embed events' >> EmbedEvents(handler, job=job)
    windowed = embedded | 'Window events' >> WindowEvents(config.window)
  deadletters = (unparsable, late, failed) | 'Collect dead letters' >> CollectDeadLetters()
  return EnrichmentOutputs(windowed, deadletters)


def collect_windows(embedded: beam.PCollection, config: JobConfig,
                    marks: Optional[beam.PCollection] = None) -> beam.PCollection:
  """Each window's rows as WindowRows, gathered as config.mode names (transforms/grouping.py).

  Args:
    embedded: Embedded rows, windowed by event time (in PER_STREAM mode only timestamped).
    marks: DeadLetterMarks windowed like the rows, counted per window.
  """
  if config.mode is CollectionMode.PER_STREAM:
    return embedded | 'Collect windows' >> CollectStreamWindows(config.window)
  lookback_s = config.derive.lookback_s
  if not config.mode.unbounded and config.window.kind == 'fixed':
    # A batch runner's grouping holds all its input at once: not a copy of each row for
    # every later window within the look-back (transforms/segments.py); locally, not in
    # memory either (transforms/spill.py).
    return embedded | 'Group windows' >> GroupSegments(config.window, lookback_s, marks,
                                                       config.spill_dir)
  return embedded | 'Group windows' >> GroupWindows(
      lookback_s, WindowEvents(config.window), marks,
      by_bounds=not config.mode.unbounded and config.window.kind != 'sessions')


def write_outputs(outputs: EnrichmentOutputs, config: JobConfig) -> WrittenFiles:
  """Writes enriched rows and dead letters as Parquet under config.output."""
  derive = config.derive
  marks = None
  if derive.topic_distance is not None:
    # Window summaries count the dead letters of their window. Late ones are
    # left out: live, their window has already fired; so are future ones,
    # whose time is not believed.
    marks = (outputs.deadletters
             | 'Keep timed dead letters' >> beam.Filter(
                 lambda d: d.event_time_us is not None and d.reason not in (LATE, FUTURE_TIME))
             | 'Mark dead letters' >> beam.Map(
                 lambda d: TimestampedValue(DeadLetterMark(d.reason), d.event_time_us / 1e6))
             | 'Window dead letters' >> WindowEvents(config.window))
  windows = collect_windows(outputs.enriched, config, marks)
  if derive.label_index is not None or derive.dedup_threshold is not None:
    windows = windows | 'Derive from embeddings' >> DeriveFromEmbeddings(derive)
  letters = outputs.deadletters | 'Group dead letters' >> GroupDeadLetters(
      periodic=config.mode.unbounded)
  written = windows | 'Write enriched' >> WriteEnrichedParquet(
      config.output, config.model.model, config.write, config.window)
  for target in config.sinks:
    written = written | sink_label(target) >> sink(target, config)
  if derive.topic_distance is not None:
    written = written | 'Summarize windows' >> SummarizeWindows(
        config.output, derive.topic_distance, derive.topic_horizon_s, config.write)
  return WrittenFiles(written, letters | 'Write dead letters' >> WriteDeadLetters(
      config.output, config.write))


def build(raw_records: beam.PCollection, config: JobConfig,
          model_handler: Optional[ModelHandler] = None) -> WrittenFiles:
  """The whole job after the read step."""
  return write_outputs(build_enrichment(raw_records, config, model_handler), config)
