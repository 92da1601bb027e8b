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
from transforms.io.redis_urls import SCHEMES as _REDIS_SCHEMES
from transforms.io.synthetic import SyntheticReader
from transforms.io.uri_query import redacted, uri_query
from transforms.io.vector_store import VECTORS_DIR, UpsertVectors


def reader_factory(uri: str, input_format: Optional[str] = None,
                   csv_delimiter: str = ',') -> Callable[[], Reader]:
  """What a live source polls, built on the worker; raises ValueError for a bad URI."""
  if uri.startswith('synthetic://'):
    query = uri_query(uri)
    rate = float(query.get('rate', '20'))
    seed = int(query.get('seed', '7'))
    if rate <= 0:
      raise ValueError(f'{uri}: rate must be positive')
    return lambda: SyntheticReader(rate, seed)
  if is_redis(uri):
    address = RedisStreamAddress.parse(uri)
    RedisStreamReader(address)  # checks the address here rather than on a worker
    return lambda: RedisStreamReader(address)
  if uri.startswith('file://'):
    pattern = uri[len('file://'):]
    return lambda: ArchiveReader(pattern, input_format, csv_delimiter)
  raise ValueError(f'unknown --source {redacted(uri)}: use synthetic://, redis://, rediss://, '
                   'unix://, file://, pubsub:// or kafka://')


def is_redis(uri: str) -> bool:
  """Whether `uri` names a Redis Stream (redis://, rediss:// or unix://)."""
  return uri.startswith(tuple(f'{scheme}://' for scheme in _REDIS_SCHEMES))


def live_source(uri: str, event_time_us: Callable, max_out_of_orderness_s: float,
                poll_interval_s: float, input_format: Optional[str] = None,
                csv_delimiter: str = ',') -> beam.PTransform:
  """The unbounded read for a source URI."""
  if uri.startswith('pubsub://'):
    return ReadPubSub(uri, max_out_of_orderness_s)
  if uri.startswith('kafka://'):
    # confluent-kafka on the local runners, Beam's KafkaIO elsewhere (transforms.io.kafka).
    return ReadKafkaTopics(uri, event_time_us, max_out_of_orderness_s, poll_interval_s)
  return ReadLive(reader_factory(uri, input_format, csv_delimiter), event_time_us, max_out_of_orderness_s,
                  poll_interval_s)


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


def sink_label(uri: str) -> str:
  """The step label of a sink, from what it writes to (scheme and target), so that
  reordering --sink keeps every label (Dataflow --update and Flink savepoints match
  steps by label). No '/' (Beam's label separator) and no password."""
  return 'Write ' + re.sub(r'/+', ' ', redacted(uri)).strip()


def check_sink(uri: str) -> None:
  """Raises ValueError unless `uri` names a known sink."""
  sink(uri, '', '')


def sink(uri: str, output_dir: str, model: str, extra_columns=()) -> beam.PTransform:
  """The step that writes each WindowRows to `uri` and then passes it on.

  extra_columns: the derived columns the rows carry (for a table's schema).
  Raises ValueError for a bad URI.
  """
  if is_redis(uri):
    return WriteRedisStream(RedisStreamAddress.parse(uri), model)
  if uri.startswith('pubsub://'):
    return WritePubSub(uri, model)
  if uri.startswith('kafka://'):
    return WriteKafkaTopic(uri, model)
  if uri.startswith('bq://'):
    return WriteBigQuery(uri, model, extra_columns)
  if uri != 'vectors' and not uri.startswith('lancedb:'):
    raise ValueError(f'unknown --sink {redacted(uri)}: use vectors, lancedb:URI, '
                     'redis://HOST:PORT/DB?stream=NAME (or rediss://, unix://), '
                     'pubsub://projects/P/topics/T, '
                     'kafka://BROKERS/TOPIC or bq://PROJECT.DATASET.TABLE')
  store = f'{output_dir.rstrip("/")}/{VECTORS_DIR}' if uri == 'vectors' else uri[len('lancedb:'):]
  return UpsertVectors(store, model)
