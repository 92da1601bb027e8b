"""Live streaming: an unbounded source, windows that fire while the job runs.

  python -m pipelines.stream --source URI --output DIR [--sink URIS] [--duration S]
      [mapping, window, model options] [any Beam runner options]

Sources:
  synthetic://?rate=N                                the embedded stream (default), endless
  redis://[[USER]:PASSWORD@]HOST:PORT/DB?stream=NAME&group=GROUP[&field=event][&consumer=NAME]
                                       (also rediss:// with TLS, unix:///PATH?db=N&...)
  file://GLOB                                        an archive read as a stream; ends at its end
  pubsub://projects/P/subscriptions/S[?timestamp_attribute=A&id_attribute=B]   (Beam's Pub/Sub IO)
  kafka://BROKERS/TOPIC[,TOPIC]?group=G[&LIBRDKAFKA.SETTING=V][&properties=FILE]
                       (confluent-kafka on the local runner, Beam's KafkaIO on Flink/Dataflow;
                       see docs/kafka.md)

Locally it runs on the BundleBasedDirectRunner with runners.local_streaming;
`--runner FlinkRunner`, `DataflowRunner` or `PrismRunner --prism_location ...`
run the same pipeline. SIGINT/SIGTERM (or --duration) drain: stop reading,
close open windows, write, acknowledge, exit 0.
"""
import logging
import signal
import statistics
import threading
import time
from typing import Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.launcher import JobResult, build_job, main, run_job
from pipelines.config import csv_delimiter, stream_config
from pipelines.options import ArchiveOptions, ConfigError, StreamOptions
from pipelines.preflight import check_start
from transforms.eventtime import format_micros
from transforms import job_state
from transforms.io.live_sources import EventTimeOf
from transforms.io.redis_streams import (AcknowledgeRedisEntries, RedisStreamAddress,
                                         claim_idle_s)
from transforms.io.kafka_offsets import CommitKafkaOffsets
from transforms.io.kafka_urls import KafkaAddress
from transforms.records import WindowRows
from transforms.io.targets import BigQueryTarget, KafkaTarget, PubSubTarget
from transforms.io.uri_query import redacted
from transforms.io.uris import acknowledged_stream, live_source

_STREAM_DEFAULTS = ('--id_field', 'id', '--window_size', '5', '--max_out_of_orderness', '2',
                    '--min_batch_size', '1', '--max_batch_size', '1024')


class _ReportWindowFn(beam.DoFn):
  """One status line per written window firing.

  Args:
    job: the job's token: its latest metrics snapshot (transforms.job_state, sampled
      each second by the run's monitor where the job runs in this process) gives the
      cache hit rate.
  """

  def __init__(self, job: str):
    self._started = time.time()  # built when the job starts; runs in the same process locally
    self._job = job
    self._rows = 0

  def process(self, batch: WindowRows):
    now_us = time.time_ns() // 1000
    latencies = sorted((now_us - row.event.event_time_us) / 1e6 for row in batch.rows)
    self._rows += len(batch.rows)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    snap = job_state.of(self._job).snapshot
    ratio = snap.cache_hit_ratio() if snap is not None else None
    cache = f', embedding cache hit rate {ratio:.0%}' if ratio is not None else ''
    cut = snap.counters.get('truncated', 0) if snap is not None else 0
    cache += f', {cut} texts over the model window' if cut else ''
    logging.info('window %s..%s pane %d: %d events, latency p50 %.2f s p99 %.2f s, '
                 '%.1f events/s so far%s',
                 format_micros(batch.start_us)[11:], format_micros(batch.end_us)[11:],
                 batch.pane, len(batch.rows), statistics.median(latencies), p99,
                 self._rows / max(time.time() - self._started, 1e-9), cache)
    yield batch


def _drain_on_signals(drain_event: threading.Event, duration_s: float) -> None:
  def drain(signum, _frame):
    logging.info('%s: draining (stop reading, close windows, write, acknowledge)',
                 signal.Signals(signum).name)
    drain_event.set()

  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, drain)
    signal.signal(signal.SIGTERM, drain)
  if duration_s > 0:
    timer = threading.Timer(duration_s, drain_event.set)
    timer.daemon = True
    timer.start()


def run(argv=None, test_pipeline: Optional[beam.Pipeline] = None) -> JobResult:
  options = PipelineOptions([*_STREAM_DEFAULTS, *(argv or [])])
  options.view_as(StandardOptions).streaming = True
  stream = options.view_as(StreamOptions)
  config = stream_config(options)
  try:
    read = live_source(stream.source, EventTimeOf(config.mapping, config.time_parser,
                                                  config.window.max_future_skew_s),
                       config.window.max_out_of_orderness_s, stream.poll_interval,
                       options.view_as(ArchiveOptions).input_format, csv_delimiter(options),
                       job=config.write.job, claim_idle_s=claim_idle_s(config.window),
                       local=config.local)
    acknowledged = acknowledged_stream(stream.source)
    committed = _committed_topics(config, stream.source)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  refuse_early_acknowledgement(acknowledged, config.sinks)
  if test_pipeline is None:
    check_start(options, config, stream.source)
  _drain_on_signals(job_state.of(config.write.job).drain, stream.duration)
  job = build_job(options, config, read, test_pipeline)
  windows = job.written.enriched | 'Report windows' >> beam.ParDo(
      _ReportWindowFn(config.write.job))
  if acknowledged is not None:
    # Only what is written reaches these steps: nothing is acknowledged before that.
    windows | 'Acknowledge rows' >> AcknowledgeRedisEntries(
        acknowledged, config.write, config.window)
    job.written.deadletters | 'Acknowledge dead letters' >> AcknowledgeRedisEntries(
        acknowledged, config.write)
  if committed is not None:
    windows | 'Commit rows' >> CommitKafkaOffsets(committed, config.write.job, config.window)
    job.written.deadletters | 'Commit dead letters' >> CommitKafkaOffsets(
        committed, config.write.job)
  return run_job(job, _resume(stream.source, acknowledged, committed))


def refuse_early_acknowledgement(acknowledged: Optional[RedisStreamAddress], sinks) -> None:
  """Raises ConfigError where an acknowledged source feeds a sink that Beam's IO writes on a
  side branch (Pub/Sub, Kafka, BigQuery): nothing tells when those rows are durable, so an
  entry would be acknowledged before they are (BigQuery buffers up to its triggering
  frequency)."""
  if acknowledged is None:
    return
  for target in sinks:
    if isinstance(target, (PubSubTarget, KafkaTarget, BigQueryTarget)):
      raise ConfigError(
          f'--sink {redacted(target.spelled)} does not say when a row is durable, so entries of '
          f'{acknowledged.describe()} would be acknowledged before they are: write it from a '
          'job that reads a source without acknowledgements (the Redis sink, Pub/Sub, Kafka)')


def _committed_topics(config, source: str) -> Optional[KafkaAddress]:
  """The topics whose offsets this job commits after writing: Kafka read in this process
  (Beam's KafkaIO commits with the runner's checkpoints instead)."""
  if not source.startswith('kafka://') or not config.local:
    return None
  return KafkaAddress.parse(source)


def _resume(source: str, acknowledged: Optional[RedisStreamAddress],
            committed: Optional[KafkaAddress] = None) -> str:
  """What becomes of records not written when the job stops early."""
  if acknowledged is not None:
    return (f'entries not acknowledged stay pending in {acknowledged.describe()}, group '
            f'{acknowledged.group}, and are read again on restart')
  if committed is not None:
    return (f'offsets of records not written stay uncommitted in {committed.describe()}, '
            f'group {committed.group}, and the group reads them again')
  if source.startswith('file://'):
    return 'a rerun writes what is missing and replaces the files it wrote'
  return 'records read but not written are lost unless the source delivers them again'



if __name__ == '__main__':
  import sys
  main(run, sys.argv[1:])
