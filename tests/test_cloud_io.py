"""Pub/Sub, Kafka and BigQuery: URIs to Beam's IO with their settings, records both ways,
and lateness for sources whose watermark the runner owns (TestStream)."""
import datetime
import json
import pathlib
from collections import namedtuple

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from models.loading import ModelConfig
from pipelines.builder import build_enrichment
from pipelines.config import JobConfig, parse_sinks
from pipelines.options import ConfigError
from tests.fakes import HashingModelHandler
from tests.runners import streaming_pipeline
from transforms import records as r
from transforms.io.bigquery import WriteBigQuery, bigquery_schema
from transforms.io.targets import (BigQueryTarget, KafkaTarget, PubSubTarget, VectorStoreTarget,
                                   bigquery_table, parse_sink)
from transforms.derive import DeriveSpec
from transforms.io.cloud_io import (KafkaRecordToRaw, PubSubMessageToRaw, ReadKafka, ReadPubSub,
                                 UnavailableIO, WriteKafka, _StampedRawFn, kafka_records,
                                 pubsub_messages)
from transforms.eventtime import TimeParser
from transforms.fields import FieldMapping
from transforms.io.formats import enriched_records
from transforms.io.kafka import ReadKafkaTopics
from transforms.grouping import GroupWindows
from transforms.records import WindowRows
from transforms.io.uris import live_source, sink, watermark_slack_s
from transforms.windowing import WindowSpec

S = 1_000_000
# Where Beam keeps the jar that Kafka's expansion service runs from.
KAFKA_EXPANSION_JAR = (pathlib.Path.home() / '.apache_beam' / 'cache' / 'jars' /
                       'beam-sdks-java-io-expansion-service-2.77.0.jar')


def window_rows(extras=None):
  rows = [r.Embedded(r.Event(f'e{n}', (n + 1) * S, f'text {n}', f'topic:{n}', 'topic', '{}'),
                     np.full(4, n + 0.5, np.float32)) for n in range(2)]
  return WindowRows(0, 10 * S, 0, rows, extras)


def _applied(pipeline, kind):
  found = []

  class Visitor(beam.pipeline.PipelineVisitor):

    def enter_composite_transform(self, node):
      self.visit_transform(node)

    def visit_transform(self, node):
      if isinstance(node.transform, kind):
        found.append(node.transform)

  pipeline.visit(Visitor())
  return found


def _pipeline(streaming):
  return beam.Pipeline(options=PipelineOptions(['--streaming'] if streaming else []))


def _config(streaming, derive=DeriveSpec()):
  return JobConfig(mapping=FieldMapping.from_flags('id', 'time', 'text'),
                   time_parser=TimeParser(), window=WindowSpec(10), model=ModelConfig(model='m'),
                   output='out', streaming=streaming, derive=derive)


def test_sink_uris_are_parsed_once_into_typed_values():
  assert parse_sinks('pubsub://projects/my-project/topics/t, kafka://b:9092/out,bq://p.d.t,'
                     'vectors,lancedb:/tmp/store', 'out') == (
      PubSubTarget('projects/my-project/topics/t', 'pubsub://projects/my-project/topics/t'),
      KafkaTarget('b:9092', 'out', None, 'kafka://b:9092/out'),
      BigQueryTarget('p:d.t', None, 60.0, 'bq://p.d.t'),
      VectorStoreTarget('out/vectors', 'vectors'),
      VectorStoreTarget('/tmp/store', 'lancedb:/tmp/store'))
  for bad in ('pubsub://projects/my-project/subscriptions/s', 'pubsub://projects/p/topics/t',
              'kafka:///t', 'bq://p.d', 'bq://p.d.t?method=X', 'mqtt://x', 'lancedb:'):
    with pytest.raises(ConfigError):
      parse_sinks(bad, 'out')
  assert bigquery_table('bq://my-project.analytics.events') == 'my-project:analytics.events'
  assert bigquery_table('bq://my-project:analytics.events') == 'my-project:analytics.events'


def test_pubsub_sink_publishes_rows_with_id_and_event_time_attributes():
  from apache_beam.io.gcp.pubsub import WriteToPubSub
  p = _pipeline(streaming=True)
  _ = p | beam.Create([window_rows()]) | sink(
      parse_sink('pubsub://projects/my-project/topics/enriched', 'out'), _config(True))
  (write,) = _applied(p, WriteToPubSub)
  assert (write.full_topic, write.with_attributes) == ('projects/my-project/topics/enriched',
                                                       True)
  (message, _) = list(pubsub_messages(window_rows(), 'm'))
  body = json.loads(message.data)
  assert message.attributes == {'id': 'e0', 'event_time': '1970-01-01T00:00:01Z'}
  assert body['embedding'] == [0.5] * 4 and body['model'] == 'm'
  assert (body['window_start'], body['window_end']) == ('1970-01-01T00:00:00Z',
                                                        '1970-01-01T00:00:10Z')


def test_kafka_sink_keys_rows_by_event_id_and_says_when_java_is_missing():
  key, value = next(kafka_records(window_rows({'label': ['a', None]}), 'm'))
  assert key == b'e0' and json.loads(value)['label'] == 'a'
  try:
    _ = _pipeline(True) | beam.Create([window_rows()]) | WriteKafka(
        parse_sink('kafka://b1:9092/out', 'out'), 'm')
  except UnavailableIO as e:  # the expansion-service jar cannot be fetched here
    assert 'expansion service' in str(e) and 'kafka://b1:9092/out' in str(e)


def test_bigquery_sink_appends_rows_that_match_its_schema():
  from apache_beam.io.gcp.bigquery import WriteToBigQuery
  columns = ('label', 'label_score', 'labels', 'duplicate_of', 'duplicate_score')
  schema = bigquery_schema(columns)
  assert [(f['name'], f['type'], f['mode']) for f in schema['fields']] == [
      ('id', 'STRING', 'NULLABLE'), ('event_time', 'TIMESTAMP', 'NULLABLE'),
      ('window_start', 'TIMESTAMP', 'NULLABLE'), ('window_end', 'TIMESTAMP', 'NULLABLE'),
      ('text', 'STRING', 'NULLABLE'), ('embedding', 'FLOAT', 'REPEATED'),
      ('model', 'STRING', 'NULLABLE'), ('source', 'STRING', 'NULLABLE'),
      ('model_fingerprint', 'STRING', 'NULLABLE'), ('chunk_count', 'INTEGER', 'NULLABLE'),
      ('label', 'STRING', 'NULLABLE'), ('label_score', 'FLOAT', 'NULLABLE'),
      ('labels', 'STRING', 'REPEATED'), ('duplicate_of', 'STRING', 'NULLABLE'),
      ('duplicate_score', 'FLOAT', 'NULLABLE')]
  for streaming, method in ((True, 'STREAMING_INSERTS'), (False, 'FILE_LOADS')):
    p = _pipeline(streaming)
    _ = p | beam.Create([window_rows()]) | sink(
        parse_sink('bq://my-project.analytics.events', 'out'),
        _config(streaming, DeriveSpec(label_index=object(), label_top_k=1, dedup_threshold=0.9)))
    (write,) = _applied(p, WriteToBigQuery)
    assert write.method == method and write.schema == schema
    assert (write.table_reference.projectId, write.table_reference.datasetId,
            write.table_reference.tableId) == ('my-project', 'analytics', 'events')
    assert write.additional_bq_parameters['timePartitioning']['field'] == 'event_time'
  p = _pipeline(True)
  _ = p | beam.Create([window_rows()]) | WriteBigQuery(
      parse_sink('bq://p1.d.t?method=FILE_LOADS', 'out'), 'm', unbounded=True)
  write = _applied(p, WriteToBigQuery)[0]
  assert (write.method, write.triggering_frequency) == ('FILE_LOADS', 60)
  extras = {'label': ['a', None], 'label_score': [0.5, 0.1], 'labels': [['a'], ['b']],
            'duplicate_of': [None, 'e0'], 'duplicate_score': [None, 0.9]}
  rows = list(enriched_records(window_rows(extras), 'm'))
  names = [f['name'] for f in schema['fields']]
  for row in rows:
    assert list(row) == names
    for field in schema['fields']:
      if field['type'] == 'TIMESTAMP':
        datetime.datetime.fromisoformat(row[field['name']])  # RFC 3339, as BigQuery takes it
  assert rows[1]['duplicate_of'] == 'e0' and rows[0]['labels'] == ['a']


def test_source_records_keep_position_and_undecodable_bytes():
  message = PubsubMessage(b'{"id": 1}', {}, message_id='m-9')
  assert PubSubMessageToRaw('projects/p/subscriptions/s')(message) == r.RawRecord(
      '{"id": 1}', 'projects/p/subscriptions/s', 'm-9')
  bad = PubSubMessageToRaw('s')(PubsubMessage(b'\xff', {}, message_id='m-1'))
  assert bad.decode_error and bad.source == 's:m-1'
  Kafka = namedtuple('Kafka', 'value partition offset')
  assert KafkaRecordToRaw('t')(Kafka(b'{}', 3, 41)).source == 't:3-41'
  assert watermark_slack_s('kafka://b/t', 2.0) == watermark_slack_s('pubsub://x', 2.0) == 2.0
  assert watermark_slack_s('redis://h/0?stream=s&group=g', 2.0) == 0.0


def test_pubsub_and_kafka_sources_resolve_with_their_settings():
  from apache_beam.io.gcp.pubsub import ReadFromPubSub
  read = live_source('pubsub://projects/my-project/subscriptions/events?timestamp_attribute=ts'
                     '&id_attribute=event_id', None, 2, 0.2)
  assert isinstance(read, ReadPubSub)
  pipeline = _pipeline(streaming=True)
  _ = pipeline | read
  (pubsub,) = _applied(pipeline, ReadFromPubSub)
  source = pubsub._source
  assert (source.full_subscription, source.timestamp_attribute, source.id_label) == (
      'projects/my-project/subscriptions/events', 'ts', 'event_id')
  with pytest.raises(ValueError, match='pubsub://projects/PROJECT/subscriptions/NAME'):
    live_source('pubsub://projects/p/topics/t', None, 2, 0.2)
  # On a portable runner (JobConfig.local False) the Kafka source is Beam's ReadKafka.
  kafka = live_source('kafka://b1:9092,b2:9092/events?group=enrich', None, 2, 0.2, local=False)
  assert isinstance(kafka, ReadKafkaTopics)
  # Kafka needs Java and Beam's expansion-service jar: where the jar cannot be had
  # (offline, none in Beam's cache) the job says so in one clear error, not a traceback.
  try:
    _ = beam.Pipeline(options=PipelineOptions(['--runner=FlinkRunner', '--streaming'])) | kafka
  except UnavailableIO as e:
    assert 'expansion service' in str(e) and 'kafka://b1:9092,b2:9092/events' in str(e)
  else:  # it expanded: only with the jar at hand
    assert KAFKA_EXPANSION_JAR.exists(), 'Kafka expanded without the expansion service jar'


def _message(n, event_s, published_s):
  data = json.dumps({'id': f'm{n}', 'time': event_s, 'text': f'message {n}'}).encode()
  return TimestampedValue(PubsubMessage(data, {}, message_id=str(n)), published_s)


@pytest.mark.parametrize('slack', [True, False])
def test_late_source_records_are_dead_lettered_and_none_is_dropped_silently(slack):
  # Fixed 10 s windows, no allowed lateness, 2 s out-of-orderness. The source
  # timestamps (publish times) lead the event times; the source's watermark
  # never passes a message it has yet to deliver.
  spec = WindowSpec(10, max_out_of_orderness_s=2,
                    source_slack_s=watermark_slack_s('pubsub://p', 2) if slack else 0)
  config = JobConfig(mapping=FieldMapping.from_flags('id', 'time', 'text'),
                     time_parser=TimeParser(), window=spec, model=ModelConfig(),
                     output='unused', streaming=True)
  stream = (TestStream()
            .add_elements([_message(1, 1, 3), _message(2, 12, 13)])
            .advance_watermark_to(11)                # window [0, 10) fires
            .add_elements([_message(3, 9, 11.5)])    # judged at 11.5 - 2: on time, a late pane
            .add_elements([_message(4, 5, 14)])      # judged at 14 - 2: its window closed
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    raw = (p | stream
           | beam.ParDo(_StampedRawFn(PubSubMessageToRaw('projects/p/subscriptions/s'), 2)))
    outputs = build_enrichment(raw, config, HashingModelHandler())
    # Without the slack the runner drops m3 at the window grouping: it is in
    # neither output. With it, every message is either enriched or a dead letter.
    grouped = outputs.enriched | GroupWindows()
    assert_that(grouped | beam.FlatMap(lambda batch: [row.event.id for row in batch.rows]),
                equal_to(['m1', 'm2', 'm3'] if slack else ['m1', 'm2']), label='enriched')
    assert_that(outputs.deadletters | beam.Map(lambda d: (d.id, d.reason)),
                equal_to([('m4', r.LATE)]), label='late')
