"""Sources and sinks by URI: each URI becomes one PTransform, here and nowhere else.

Sources (live): synthetic://?rate=N[&seed=S], redis://HOST:PORT/DB?stream=S&group=G
(also rediss:// and unix://, see transforms.io.redis_urls), file://GLOB,
pubsub://projects/P/subscriptions/S, kafka://BROKERS/TOPIC?group=G.
Archives for replay are globs (transforms.io.sources.ReadArchive).
Sinks beside Parquet: vectors (a LanceDB store under the output), lancedb:URI,
redis://HOST:PORT/DB?stream=NAME, pubsub://projects/P/topics/T, kafka://BROKERS/TOPIC,
bq://PROJECT.DATASET.TABLE.
"""
import re
from typing import Callable, Optional

import apache_beam as beam

from transforms.io.bigquery import WriteBigQuery
from transforms.io.cloud_io import ReadPubSub, WritePubSub
from transforms.io.kafka import ReadKafkaTopics, WriteKafkaTopic
from transforms.io.live_sources import ArchiveReader, ReadLive, Reader
from transforms.io.redis_streams import RedisStreamAddress, RedisStreamReader, WriteRedisStream
from transforms.io.synthetic import SyntheticReader
from transforms.io.uri_query import redacted, uri_query
from transforms.io.targets import (BigQueryTarget, KafkaTarget, PubSubTarget, RedisTarget,
                                   SinkTarget, is_redis)
from transforms.io.vector_store import UpsertVectors


def reader_factory(uri: str, input_format: Optional[str] = None,
                   csv_delimiter: str = ',', job: str = '',
                   claim_idle_s: float = 150.0) -> Callable[[], Reader]:
  """What a live source polls, built on the worker; raises ValueError for a bad URI.

  Args:
    job: the job's token (transforms.job_state.of), for the source's health.
  """
  if uri.startswith('synthetic://'):
    query = uri_query(uri)
    rate = float(query.get('rate', '20'))
    seed = int(query.get('seed', '7'))
    if rate <= 0:
      raise ValueError(f'{uri}: rate must be positive')
    return lambda: SyntheticReader(rate, seed)
  if is_redis(uri):
    address = RedisStreamAddress.parse(uri)
    claim_ms = round(1000 * float(uri_query(uri).get('claim_idle', claim_idle_s)))
    RedisStreamReader(address)  # checks the address here rather than on a worker
    return lambda: RedisStreamReader(address, claim_idle_ms=claim_ms, job=job)
  if uri.startswith('file://'):
    pattern = uri[len('file://'):]
    return lambda: ArchiveReader(pattern, input_format, csv_delimiter)
  raise ValueError(f'unknown --source {redacted(uri)}: use synthetic://, redis://, rediss://, '
                   'unix://, file://, pubsub:// or kafka://')


def live_source(uri: str, event_time_us: Callable, max_out_of_orderness_s: float,
                poll_interval_s: float, input_format: Optional[str] = None,
                csv_delimiter: str = ',', job: str = '',
                claim_idle_s: float = 150.0, local: bool = True) -> beam.PTransform:
  """The unbounded read for a source URI (job: the job's control token; claim_idle_s: how
  long a Redis entry stays pending before a peer may claim it; local: JobConfig.local, the
  job runs on a local runner)."""
  if uri.startswith('pubsub://'):
    return ReadPubSub(uri, max_out_of_orderness_s)
  if uri.startswith('kafka://'):
    # confluent-kafka on the local runners, Beam's KafkaIO elsewhere (transforms.io.kafka).
    return ReadKafkaTopics(uri, event_time_us, max_out_of_orderness_s, poll_interval_s,
                           job=job, local=local)
  return ReadLive(reader_factory(uri, input_format, csv_delimiter, job, claim_idle_s),
                  event_time_us, max_out_of_orderness_s, poll_interval_s, job=job)


def watermark_slack_s(uri: str, max_out_of_orderness_s: float) -> float:
  """Seconds the runner must keep windows open beyond the allowed lateness for this source.

  Pub/Sub and Kafka records are judged late against their source timestamp
  minus max_out_of_orderness (transforms.io.cloud_io), while the runner's
  watermark can be up to that timestamp: windows stay open that much longer,
  so what the late flag lets through is never dropped by the runner.
  The job's own live sources stamp the very watermark they report: no slack.
  """
  return max_out_of_orderness_s if uri.startswith(('pubsub://', 'kafka://')) else 0.0


def acknowledged_stream(uri: str) -> Optional[RedisStreamAddress]:
  """The stream whose entries must be acknowledged after writing, if the source has one."""
  return RedisStreamAddress.parse(uri) if is_redis(uri) else None


def sink_label(target: SinkTarget) -> str:
  """The step label of a sink, from what it writes to (scheme and target), so that
  reordering --sink keeps every label (Dataflow --update and Flink savepoints match
  steps by label). No '/' (Beam's label separator) and no password."""
  return 'Write ' + re.sub(r'/+', ' ', redacted(target.spelled)).strip()


def sink(target: SinkTarget, config) -> beam.PTransform:
  """The step that writes each WindowRows to a parsed --sink target and then passes it on.

  Args:
    config: the JobConfig (model name, derived columns, collection mode, write policy).
  """
  model = config.model.model
  if isinstance(target, RedisTarget):
    return WriteRedisStream(target.address, model, config.write, target.maxlen,
                            target.dedup_s)
  if isinstance(target, PubSubTarget):
    return WritePubSub(target, model)
  if isinstance(target, KafkaTarget):
    return WriteKafkaTopic(target.spelled, model, config.write, config.local)
  if isinstance(target, BigQueryTarget):
    return WriteBigQuery(target, model, config.derive.extra_columns, config.mode.unbounded)
  return UpsertVectors(target.uri, config.model, target.table)
