"""Sources and sinks by URI: each URI becomes one PTransform, here and nowhere else.

Sources (live): synthetic://?rate=N[&seed=S], redis://HOST:PORT/DB?stream=S&group=G,
file://GLOB, pubsub://projects/P/subscriptions/S, kafka://BROKERS/TOPIC?group=G. Archives for replay are globs (transforms.sources.ReadArchive).
Sinks beside Parquet: vectors (a LanceDB store under the output), lancedb:URI,
redis://HOST:PORT/DB?stream=NAME.
"""
import urllib.parse
from typing import Callable, Optional

import apache_beam as beam

from transforms.live_sources import ArchiveReader, ReadLive, Reader
from transforms.redis_streams import RedisStreamAddress, RedisStreamReader, WriteRedisStream
from transforms.synthetic import SyntheticReader
from transforms.vector_store import VECTORS_DIR, UpsertVectors


def reader_factory(uri: str, input_format: Optional[str] = None) -> Callable[[], Reader]:
  """What a live source polls, built on the worker; raises ValueError for a bad URI."""
  if uri.startswith('synthetic://'):
    query = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)
    rate = float(query.get('rate', ['20'])[-1])
    seed = int(query.get('seed', ['7'])[-1])
    if rate <= 0:
      raise ValueError(f'{uri}: rate must be positive')
    return lambda: SyntheticReader(rate, seed)
  if uri.startswith('redis://'):
    address = RedisStreamAddress.parse(uri)
    RedisStreamReader(address)  # checks the address here rather than on a worker
    return lambda: RedisStreamReader(address)
  if uri.startswith('file://'):
    pattern = uri[len('file://'):]
    return lambda: ArchiveReader(pattern, input_format)
  raise ValueError(f'unknown --source {uri}: use synthetic://, redis://, file://, pubsub:// '
                   'or kafka://')


def live_source(uri: str, event_time_us: Callable, max_out_of_orderness_s: float,
                poll_interval_s: float, input_format: Optional[str] = None) -> beam.PTransform:
  """The unbounded read for a source URI."""
  if uri.startswith('pubsub://'):
    return ReadPubSub(uri)
  if uri.startswith('kafka://'):
    return ReadKafka(uri)
  return ReadLive(reader_factory(uri, input_format), event_time_us, max_out_of_orderness_s,
                  poll_interval_s)


def acknowledged_stream(uri: str) -> Optional[RedisStreamAddress]:
  """The stream whose entries must be acknowledged after writing, if the source has one."""
  return RedisStreamAddress.parse(uri) if uri.startswith('redis://') else None


def check_sink(uri: str) -> None:
  """Raises ValueError unless `uri` names a known sink."""
  if uri.startswith('redis://'):
    RedisStreamAddress.parse(uri)
  elif uri != 'vectors' and not uri.startswith('lancedb:'):
    raise ValueError(f'unknown --sink {uri}: use vectors, lancedb:URI or '
                     'redis://HOST:PORT/DB?stream=NAME')


def sink(uri: str, output_dir: str, model: str) -> beam.PTransform:
  """The step that writes each WindowRows to `uri` and then passes it on."""
  check_sink(uri)
  if uri.startswith('redis://'):
    return WriteRedisStream(RedisStreamAddress.parse(uri), model)
  store = f'{output_dir.rstrip("/")}/{VECTORS_DIR}' if uri == 'vectors' else uri[len('lancedb:'):]
  return UpsertVectors(store, model)


class UnavailableIO(RuntimeError):
  """A source or sink whose runtime pieces are missing here (a jar, a client library)."""


def _pubsub_path(uri: str, kind: str) -> str:
  path = uri[len('pubsub://'):]
  parts = path.split('/')
  if len(parts) != 4 or parts[0] != 'projects' or parts[2] != kind or not all(parts):
    raise ValueError(f'{uri}: expected pubsub://projects/PROJECT/{kind}/NAME')
  return path.split('?')[0]


def _query(uri: str) -> dict:
  return {k: v[-1] for k, v in urllib.parse.parse_qs(urllib.parse.urlparse(uri).query).items()}


class ReadPubSub(beam.PTransform):
  """Pub/Sub messages as RawRecords: the data is the event, the message id its position.

  Query parameters: timestamp_attribute (Pub/Sub's own watermark follows that
  attribute) and id_attribute (the runner drops redelivered messages with the
  same value: deduplication by event id, on Dataflow).
  """

  def __init__(self, uri: str):
    super().__init__()
    self._subscription = _pubsub_path(uri.split('?')[0], 'subscriptions')
    query = _query(uri)
    self._timestamp_attribute = query.get('timestamp_attribute')
    self._id_attribute = query.get('id_attribute')

  def expand(self, pbegin):
    from apache_beam.io.gcp.pubsub import ReadFromPubSub
    from transforms.records import RawRecord
    subscription = self._subscription
    return (pbegin
            | 'Read Pub/Sub' >> ReadFromPubSub(
                subscription=subscription, with_attributes=True,
                timestamp_attribute=self._timestamp_attribute, id_label=self._id_attribute)
            | 'As raw records' >> beam.Map(lambda message: RawRecord(
                message.data.decode('utf-8', 'backslashreplace'), subscription,
                message.message_id or '')))


def _expansion_error(uri: str, error: Exception) -> UnavailableIO:
  return UnavailableIO(
      f'{uri}: Kafka runs in Java through Beam\'s IO expansion service, which Beam could not '
      f'fetch or start here ({type(error).__name__}). Install Java 11+ and make '
      'beam-sdks-java-io-expansion-service-2.77.0.jar reachable (Maven Central, or a copy in '
      '~/.apache_beam/cache/jars/), or run on Flink/Dataflow, which provide it.')


class ReadKafka(beam.PTransform):
  """kafka://BROKERS/TOPIC?group=G through Beam's ReadFromKafka (cross-language), as RawRecords."""

  def __init__(self, uri: str):
    super().__init__()
    parsed = urllib.parse.urlparse(uri)
    self._uri = uri
    self._brokers = parsed.netloc
    self._topic = parsed.path.strip('/')
    self._group = _query(uri).get('group')
    if not self._brokers or not self._topic:
      raise ValueError(f'{uri}: expected kafka://BROKER[,BROKER]/TOPIC?group=GROUP')

  def expand(self, pbegin):
    from apache_beam.io.kafka import ReadFromKafka
    from transforms.records import RawRecord
    config = {'bootstrap.servers': self._brokers}
    if self._group:
      config.update({'group.id': self._group, 'enable.auto.commit': 'false'})
    topic = self._topic
    try:
      # commit_offset_in_finalize: offsets commit when the runner finalizes a
      # checkpoint (Flink), so a restart resumes after what was written.
      records = pbegin | 'Read Kafka' >> ReadFromKafka(
          consumer_config=config, topics=[topic], with_metadata=True,
          commit_offset_in_finalize=bool(self._group))
    except RuntimeError as e:
      raise _expansion_error(self._uri, e) from None
    return records | 'As raw records' >> beam.Map(lambda record: RawRecord(
        bytes(record.value or b'').decode('utf-8', 'backslashreplace'), topic,
        f'{record.partition}-{record.offset}'))
