"""Pub/Sub and Kafka through Beam's own IO, for jobs on Flink and Dataflow (BigQuery:
transforms.io.bigquery).

Sources hand on RawRecords stamped with a watermark: the source's timestamp
for the record (Pub/Sub: publish time or the timestamp attribute; Kafka: the
timestamp policy's) minus max_out_of_orderness. The job's late flag judges by
it, as it does for its own live sources, and the windows stay open that much
longer in the runner (WindowSpec.source_slack_s), so an event the flag lets
through is never dropped silently by the runner's window grouping.

Sinks take WindowRows, write each row as one record (JSON) on a side branch, and
pass the WindowRows on.
"""
import urllib.parse

import apache_beam as beam

from transforms.records import RawRecord, decoded_record
from transforms.io.formats import enriched_records, record_json
from transforms.io.targets import KafkaTarget, PubSubTarget, kafka_address, pubsub_path
from transforms.io.uri_query import uri_query

_MICROS = 1_000_000


class UnavailableIO(RuntimeError):
  """A source or sink whose runtime pieces are missing here (a jar, a client library)."""


def need_gcp_client(library: str, uri: str) -> None:
  """Raises UnavailableIO when google-cloud-LIBRARY (apache-beam[gcp]) is not installed."""
  import importlib
  try:
    importlib.import_module(f'google.cloud.{library}')
  except ImportError:
    raise UnavailableIO(f"{uri}: Beam's Google Cloud IO needs apache-beam[gcp]: "
                        "pip install -e '.[gcp]'") from None


class _StampedRawFn(beam.DoFn):
  """Turns a source's element into a RawRecord stamped with the source's watermark."""

  def __init__(self, to_raw, max_out_of_orderness_s: float):
    self._to_raw = to_raw
    self._disorder_us = round(max_out_of_orderness_s * _MICROS)

  def process(self, element, timestamp=beam.DoFn.TimestampParam):
    record = self._to_raw(element)
    yield record._replace(watermark_us=timestamp.micros - self._disorder_us)


class PubSubMessageToRaw:
  """A Pub/Sub message as a RawRecord: the data is the event, the message id its position."""

  def __init__(self, subscription: str):
    self._subscription = subscription

  def __call__(self, message) -> RawRecord:
    return decoded_record(message.data, self._subscription, message.message_id or '')


class KafkaRecordToRaw:
  """A Kafka record (with metadata) as a RawRecord; its position is PARTITION-OFFSET."""

  def __init__(self, topic: str):
    self._topic = topic

  def __call__(self, record) -> RawRecord:
    return decoded_record(bytes(record.value or b''), self._topic,
                          f'{record.partition}-{record.offset}')


class ReadPubSub(beam.PTransform):
  """pubsub://projects/P/subscriptions/S as RawRecords, through Beam's ReadFromPubSub.

  Query parameters: timestamp_attribute (the element timestamps, and Pub/Sub's
  watermark, follow that attribute instead of the publish time) and
  id_attribute (the runner drops redeliveries with the same value:
  deduplication by event id, on Dataflow).
  """

  def __init__(self, uri: str, max_out_of_orderness_s: float):
    super().__init__()
    self._subscription = pubsub_path(uri, 'subscriptions')
    query = uri_query(uri)
    self._timestamp_attribute = query.get('timestamp_attribute')
    self._id_attribute = query.get('id_attribute')
    self._disorder_s = max_out_of_orderness_s

  def expand(self, pbegin):
    need_gcp_client('pubsub', f'pubsub://{self._subscription}')
    from apache_beam.io.gcp.pubsub import ReadFromPubSub
    return (pbegin
            | 'Read Pub/Sub' >> ReadFromPubSub(
                subscription=self._subscription, with_attributes=True,
                timestamp_attribute=self._timestamp_attribute, id_label=self._id_attribute)
            | 'As raw records' >> beam.ParDo(
                _StampedRawFn(PubSubMessageToRaw(self._subscription), self._disorder_s)))


def _expansion_error(uri: str, error: Exception) -> UnavailableIO:
  return UnavailableIO(
      f'{uri}: Kafka runs in Java through Beam\'s IO expansion service, which Beam could not '
      f'fetch or start here ({type(error).__name__}). Install Java 11+ and make '
      'beam-sdks-java-io-expansion-service-2.77.0.jar reachable (Maven Central, or a copy in '
      '~/.apache_beam/cache/jars/), pass ?expansion_service=HOST:PORT of a running one, '
      'or run on Flink/Dataflow, which provide it.')


KAFKA_TIMESTAMP_POLICIES = ('ProcessingTime', 'CreateTime', 'LogAppendTime')


class ReadKafka(beam.PTransform):
  """kafka://BROKERS/TOPIC?group=G through Beam's ReadFromKafka (cross-language), as RawRecords.

  Query parameters: group (consumer group; offsets commit when the runner
  finalizes a checkpoint), timestamp_policy (ProcessingTime, CreateTime or
  LogAppendTime) and expansion_service (HOST:PORT of a running expansion service).
  """

  def __init__(self, uri: str, max_out_of_orderness_s: float):
    super().__init__()
    self._uri = uri
    self._brokers, self._topic = kafka_address(uri)
    query = uri_query(uri)
    self._group = query.get('group')
    self._timestamp_policy = query.get('timestamp_policy', 'ProcessingTime')
    if self._timestamp_policy not in KAFKA_TIMESTAMP_POLICIES:
      raise ValueError(f'{uri}: timestamp_policy is one of {", ".join(KAFKA_TIMESTAMP_POLICIES)}')
    self._expansion_service = query.get('expansion_service')
    self._disorder_s = max_out_of_orderness_s

  def expand(self, pbegin):
    from apache_beam.io.kafka import ReadFromKafka
    config = {'bootstrap.servers': self._brokers}
    if self._group:
      config.update({'group.id': self._group, 'enable.auto.commit': 'false'})
    try:
      # commit_offset_in_finalize: offsets commit when the runner finalizes a
      # checkpoint (Flink), so a restart resumes after what was written.
      records = pbegin | 'Read Kafka' >> ReadFromKafka(
          consumer_config=config, topics=[self._topic], with_metadata=True,
          commit_offset_in_finalize=bool(self._group), timestamp_policy=self._timestamp_policy,
          expansion_service=self._expansion_service)
    except RuntimeError as e:
      raise _expansion_error(self._uri, e) from None
    return records | 'As raw records' >> beam.ParDo(
        _StampedRawFn(KafkaRecordToRaw(self._topic), self._disorder_s))


def pubsub_messages(batch, model: str):
  """A window firing's rows as Pub/Sub messages: JSON data, attributes id and event_time."""
  from apache_beam.io.gcp.pubsub import PubsubMessage
  for record in enriched_records(batch, model):
    yield PubsubMessage(record_json(record).encode('utf-8'),
                        {'id': record['id'], 'event_time': record['event_time']})


class WritePubSub(beam.PTransform):
  """Publishes each enriched row as JSON to pubsub://projects/P/topics/T; passes WindowRows on.

  Messages carry the attributes id and event_time (RFC 3339), so a job reading
  the topic can take ?timestamp_attribute=event_time&id_attribute=id.
  """

  def __init__(self, target: PubSubTarget, model: str):
    super().__init__()
    self._topic = target.topic
    self._model = model

  def expand(self, windows):
    need_gcp_client('pubsub', f'pubsub://{self._topic}')
    from apache_beam.io.gcp.pubsub import WriteToPubSub
    _ = (windows
         | 'As messages' >> beam.FlatMap(pubsub_messages, self._model)
         | 'Publish' >> WriteToPubSub(self._topic, with_attributes=True))
    return windows


def kafka_records(batch, model: str):
  """A window firing's rows as Kafka (key, value) pairs: the event id, the JSON.

  Keyed by event id: one event's rows land in one partition, in order.
  """
  for record in enriched_records(batch, model):
    yield record['id'].encode('utf-8'), record_json(record).encode('utf-8')


class WriteKafka(beam.PTransform):
  """Writes each enriched row as JSON, keyed by event id, to kafka://BROKERS/TOPIC; passes on."""

  def __init__(self, target: KafkaTarget, model: str):
    super().__init__()
    self._uri = target.spelled
    self._brokers, self._topic = target.brokers, target.topic
    self._expansion_service = target.expansion_service
    self._model = model

  def expand(self, windows):
    from apache_beam.io.kafka import WriteToKafka
    records = (windows
               | 'As Kafka records' >> beam.FlatMap(kafka_records, self._model)
               .with_output_types(beam.typehints.KV[bytes, bytes]))
    try:
      _ = records | 'Write Kafka' >> WriteToKafka(
          producer_config={'bootstrap.servers': self._brokers}, topic=self._topic,
          expansion_service=self._expansion_service)
    except RuntimeError as e:
      raise _expansion_error(self._uri, e) from None
    return windows
