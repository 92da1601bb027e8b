"""Kafka on the local runner, piece by piece: addresses, the commit rule, the per-partition
watermark, and the reader, the sink and the start checks against a real broker."""
import json
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from tests.kafka_broker import FAST_GROUP, started_broker
from tests.redis_server import free_port
from tests.test_preflight import archive, refused_at_start  # noqa: F401 (a fixture)
from transforms.io import faults
from transforms.io.cloud_io import ReadKafka
from pipelines.first_checks import kafka_addresses
from runners.choice import runs_locally
from transforms.io.kafka import ReadKafkaTopics
from transforms.io.kafka_client import check_kafka, producer, send
from transforms.io.kafka_offsets import OffsetLedger, PartitionOffsets, _CommitFn, kafka_positions
from transforms.io.kafka_reader import KafkaReader
from transforms.io.kafka_watermark import PartitionWatermark
from transforms.io.kafka_urls import KafkaAddress
from transforms.io.uri_query import redacted
from transforms.records import (INVALID_UTF8, TOO_LARGE, Embedded, Event, RawRecord, Undecodable,
                                WindowRows, decode_object)
from transforms.windowing import WindowSpec

S = 1_000_000
START_CHECK_S = 5.0  # the bound for a start check, from the start to the exit


def test_addresses_take_settings_from_the_query_a_file_and_the_environment(tmp_path,
                                                                         monkeypatch):
  properties = tmp_path / 'client.properties'
  properties.write_text('# a comment\nsecurity.protocol=SASL_SSL\nsasl.mechanism = PLAIN\n'
                        'sasl.username=alice\n')
  secret = tmp_path / 'secret'
  secret.write_text('from-a-file\n')
  monkeypatch.setenv('KAFKA_PASSWORD', 'from-the-env')
  address = KafkaAddress.parse(
      f'kafka://b1:9092,b2:9092/events,more?group=enrich&properties={properties}'
      '&sasl.mechanism=SCRAM-SHA-512&sasl.password=env:KAFKA_PASSWORD'
      f'&ssl.key.password=file:{secret}&max_bytes=2048')
  assert (address.brokers, address.topics, address.group, address.max_bytes) == (
      'b1:9092,b2:9092', ('events', 'more'), 'enrich', 2048)
  config = address.client_config(**{'acks': 'all'})
  assert config['sasl.mechanism'] == 'SCRAM-SHA-512'  # the query overrides the file
  assert (config['security.protocol'], config['sasl.password'], config['ssl.key.password'],
          config['bootstrap.servers'], config['acks']) == (
              'SASL_SSL', 'from-the-env', 'from-a-file', 'b1:9092,b2:9092', 'all')
  assert 'from-the-env' not in repr(address) and 'from-a-file' not in repr(address)
  assert redacted('kafka://b/t?sasl.password=hunter2&group=g') == (
      'kafka://b/t?sasl.password=***&group=g')


@pytest.mark.parametrize('uri, message', [
    ('kafka:///events', 'expected kafka://'),
    ('kafka://b:9092/', 'expected kafka://'),
    ('kafka://b:9092/bad topic', 'not a Kafka topic name'),
    ('kafka://b:9092/t?colour=red', 'unknown parameter(s) colour'),
    ('kafka://b:9092/t?group.id=x', 'group.id comes from the address'),
    ('kafka://b:9092/t?max_bytes=lots', 'max_bytes'),
    ('kafka://b:9092/t?sasl.password=env:NO_SUCH_VARIABLE_HERE', 'has no NO_SUCH_VARIABLE_HERE'),
])
def test_bad_addresses_are_refused(uri, message):
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    KafkaAddress.parse(uri)


def test_a_source_needs_a_group():
  with pytest.raises(ValueError, match='consumer group'):
    ReadKafkaTopics('kafka://b:9092/t', None, 1.0)


def test_local_runners_read_kafka_themselves_and_portable_ones_through_kafka_io():
  for runner, portable in (('DirectRunner', False), ('BundleBasedDirectRunner', False),
                           (None, False), ('FlinkRunner', True), ('DataflowRunner', True)):
    options = PipelineOptions([f'--runner={runner}'] if runner else [])
    assert runs_locally(options) != portable, runner  # JobConfig.local, read by the Kafka IO
  flink = beam.Pipeline(options=PipelineOptions(['--runner=FlinkRunner', '--streaming']))
  read = ReadKafkaTopics('kafka://b:9092/t?group=g', None, 1.0, local=False)
  try:
    _ = flink | read
  except Exception as e:  # pylint: disable=broad-except
    assert 'expansion service' in str(e)  # Beam's KafkaIO: Java is not here
  # Locally the graph holds the job's own reader, which connects only when it runs.
  local = beam.Pipeline(options=PipelineOptions(['--streaming']))
  _ = local | ReadKafkaTopics('kafka://b:9092/t?group=g', None, 1.0, local=True)
  assert not any(isinstance(t.transform, ReadKafka) for t in local.transforms_stack[0].parts)


def _offsets(topic_partitions):
  return sorted((o.topic, o.partition, o.offset) for o in topic_partitions)


def test_a_partition_given_back_in_a_rebalance_reads_on_and_commits_what_was_refused():
  ledger, tp = OffsetLedger(), ('t', 0)
  assert ledger.assign([tp]) == {}
  for offset in (5, 6, 7):
    assert ledger.handed_out(tp, offset)
  ledger.written({tp: [5, 6]})
  assert _offsets(ledger.take_queued()) == [('t', 0, 7)] and ledger.in_flight() == 1
  ledger.park([tp])  # revoked
  assert not ledger.owns(tp) and not ledger.handed_out(tp, 8)
  ledger.refused([_topic_partition('t', 0, 7)])  # its last commit, refused in the rebalance
  assert ledger.take_queued() == []  # not ours now: nothing is sent for it
  ledger.written({tp: [7]})  # its last record, written while it was away
  assert ledger.assign([tp]) == {tp: 8}  # back: reading goes on after what was handed out
  assert _offsets(ledger.take_queued()) == [('t', 0, 8)]  # the refused commit, made again
  assert ledger.in_flight() == 0


def test_a_partition_that_went_to_another_member_starts_afresh():
  ledger, mine, theirs = OffsetLedger(), ('t', 0), ('t', 1)
  ledger.assign([mine, theirs])
  ledger.handed_out(theirs, 3)
  ledger.park([mine, theirs])
  assert ledger.assign([mine]) == {}  # 't/1' went to another member: forgotten
  assert ledger.assign([theirs]) == {} and ledger.take_all() == []
  ledger.handed_out(theirs, 9)
  ledger.written({theirs: [9]})
  assert _offsets(ledger.take([theirs])) == [('t', 1, 10)] and ledger.take([theirs]) == []


def _topic_partition(topic, partition, offset):
  from confluent_kafka import TopicPartition
  return TopicPartition(topic, partition, offset)


def test_a_partition_commits_up_to_its_first_unwritten_record():
  state = PartitionOffsets()
  state.emitted.extend([10, 11, 12, 13])
  assert state.commit_to() is None
  state.written.update([11, 13])  # out of order: 10 is not written yet
  assert state.commit_to() is None
  state.written.add(10)
  assert state.commit_to() == 12  # never past 12, which is not written
  state.written.add(12)
  assert state.commit_to() == 14 and not state.emitted
  assert kafka_positions(['t.x/2:41', 't.x/2:40', 'other/0:1', 'file.jsonl:7', 'redis:1-0']) == {
      ('t.x', 2): [41, 40], ('other', 0): [1]}


def _at(partition, offset):
  return RawRecord('{}', f'events/{partition}', offset)


def test_the_watermark_follows_the_slowest_partition_until_it_goes_idle():
  watermark = PartitionWatermark(max_out_of_orderness_s=1.0, idle_after_s=0.5)
  watermark.observe(10_000_000, _at(0, 1))
  watermark.observe(20_000_000, _at(1, 1))
  assert watermark.watermark_us == 9_000_000  # partition 0 holds it back
  watermark.observe(30_000_000, _at(1, 2))
  assert watermark.watermark_us == 9_000_000
  time.sleep(0.6)  # both idle now
  watermark.observe(31_000_000, _at(1, 3))
  assert watermark.watermark_us == 30_000_000  # idle partition 0 no longer holds it
  watermark.forget(['events/1'])
  watermark.idle()
  assert watermark.watermark_us == 30_000_000  # never back


@pytest.fixture(scope='module')
def broker():
  with started_broker() as running:
    yield running


def _poll_until(reader, count, timeout_s=60):
  records, deadline = [], time.monotonic() + timeout_s
  while len(records) < count and time.monotonic() < deadline:
    records += reader.poll(100)
    time.sleep(0.05)
  return records


def test_the_reader_hands_out_metadata_dead_letters_and_commits_only_what_is_written(broker):
  topic = broker.topic(partitions=1)
  address = KafkaAddress.parse(f'kafka://{broker.bootstrap}/{topic}?group=g1&{FAST_GROUP}'
                               '&max_bytes=200')
  client = producer(address)
  values = [json.dumps({'text': 'first'}).encode(), b'\xff\xfe not utf-8', b'x' * 500,
            json.dumps({'text': 'fourth', 'key': 'own'}).encode(), b'[1, 2]']
  for n, value in enumerate(values):
    client.produce(topic, value, f'k{n}'.encode(), headers=[('origin', b'test')],
                   timestamp=1_700_000_000_000 + n)
  assert client.flush(10) == 0
  reader = KafkaReader(address)
  reader.open()
  try:
    records = _poll_until(reader, 5)
    assert [r.source for r in records] == [f'{topic}/0:{n}' for n in range(5)]
    first = decode_object(records[0])
    assert (first['key'], first['headers'], first['kafka_timestamp']) == (
        'k0', {'origin': 'test'}, '2023-11-14T22:13:20.000Z')
    assert decode_object(records[1]).reason == INVALID_UTF8
    too_large = decode_object(records[2])
    assert isinstance(too_large, Undecodable) and too_large.reason == TOO_LARGE
    assert '500 bytes' in too_large.error and len(records[2].raw) < 500
    assert decode_object(records[3])['key'] == 'own'  # the value's own field wins
    assert records[4].row is None  # not an object: the parse step dead-letters it
    reader.written({(topic, 0): [0, 1, 3]})  # 2 is not written
    _wait(lambda: broker.committed(topic, 'g1', 1) == [2], 'the commit of offset 2')
    reader.written({(topic, 0): [2, 4]})
    _wait(lambda: broker.committed(topic, 'g1', 1) == [5], 'the commit of offset 5')
  finally:
    reader.close()


def _wait(predicate, what, timeout_s=30):
  deadline = time.monotonic() + timeout_s
  while not predicate():
    assert time.monotonic() < deadline, f'timed out waiting for {what}'
    time.sleep(0.2)


def test_a_restarted_reader_starts_after_what_was_committed(broker):
  topic = broker.topic(partitions=1)
  address = KafkaAddress.parse(f'kafka://{broker.bootstrap}/{topic}?group=g2&{FAST_GROUP}')
  send(producer(address), address, [(None, json.dumps({'n': n}).encode()) for n in range(6)],
       'test')
  reader = KafkaReader(address)
  reader.open()
  try:
    assert len(_poll_until(reader, 6)) == 6
    reader.written({(topic, 0): [0, 1, 2]})  # 3..5 read, never written: a crash here
  finally:
    reader.close()
  reader = KafkaReader(address)
  reader.open()
  try:
    again = _poll_until(reader, 3)
    assert [r.position for r in again] == [3, 4, 5]
  finally:
    reader.close()


def test_sliding_windows_commit_a_record_with_its_last_window(broker):
  topic = broker.topic(partitions=1)
  address = KafkaAddress.parse(f'kafka://{broker.bootstrap}/{topic}?group=g3&{FAST_GROUP}')
  send(producer(address), address, [(None, json.dumps({'n': n}).encode()) for n in range(3)],
       'test')
  reader = KafkaReader(address, job='sliding-commit')
  reader.open()
  commit = _CommitFn(address, 'sliding-commit', WindowSpec(10, period_s=5))
  try:
    records = _poll_until(reader, 3)

    def window(start_s):  # events at t=12 s fall in [5, 15) and [10, 20)
      return WindowRows(start_s * S, (start_s + 10) * S, 0, [
          Embedded(Event(str(n), 12 * S, 't', record.source, 's', ''), np.zeros(4, np.float32))
          for n, record in enumerate(records)])

    assert list(commit.process(window(5))) == [0]  # still open in [10, 20): not committed
    time.sleep(1.5)
    assert broker.committed(topic, 'g3', 1) != [3]
    assert list(commit.process(window(10))) == [3]
    _wait(lambda: broker.committed(topic, 'g3', 1) == [3], 'the commit of offset 3')
  finally:
    reader.close()


def test_start_checks_name_an_unreachable_broker_and_a_missing_topic(broker):
  unreachable = KafkaAddress.parse(f'kafka://127.0.0.1:{free_port()}/events?group=g')
  assert 'cannot reach source' in check_kafka(unreachable, 'source')
  missing = KafkaAddress.parse(f'kafka://{broker.bootstrap}/no-such-topic?group=g')
  assert 'no topic no-such-topic' in check_kafka(missing, 'source')
  assert 'no-such-topic' not in broker.admin().list_topics(timeout=5).topics  # not created
  topic = broker.topic()
  assert check_kafka(KafkaAddress.parse(f'kafka://{broker.bootstrap}/{topic}'), 'sink') is None


def test_the_entry_points_refuse_what_they_cannot_use(broker, archive, tmp_path):  # noqa: F811
  """As run.sh starts them (python -m pipelines COMMAND) the Kafka checks come before Beam
  and torch load: within START_CHECK_S from the start to the exit."""
  secret = 'kafka-secret'
  source = (f'kafka://127.0.0.1:{free_port()}/events?group=g&security.protocol=SASL_PLAINTEXT'
            f'&sasl.mechanism=PLAIN&sasl.username=u&sasl.password={secret}')
  line = refused_at_start('pipelines', 'stream', '--source', source, '--output', str(tmp_path),
                          expect='cannot reach source', within_s=START_CHECK_S)
  assert secret not in line
  refused_at_start('pipelines', 'stream', '--source',
                   f'kafka://{broker.bootstrap}/nothing-here?group=g', '--output',
                   str(tmp_path), expect='no topic nothing-here', within_s=START_CHECK_S)
  topic = broker.topic()
  refused_at_start('pipelines', 'stream', '--source',
                   f'kafka://{broker.bootstrap}/{topic}?group=g', '--sink',
                   f'kafka://{broker.bootstrap}/missing-out', '--output', str(tmp_path),
                   expect='sink kafka://', within_s=START_CHECK_S)
  refused_at_start('pipelines', 'produce', '--input', str(archive), '--target',
                   f'kafka://{broker.bootstrap}/absent', expect='no topic absent',
                   within_s=START_CHECK_S)
  # Started as its module, the job makes the same check after its imports (preflight).
  refused_at_start('pipelines.stream', '--source',
                   f'kafka://{broker.bootstrap}/nothing-here?group=g', '--output',
                   str(tmp_path), expect='no topic nothing-here')
  refused_at_start('pipelines.produce', '--input', str(archive), '--target',
                   f'kafka://{broker.bootstrap}/absent', expect='no topic absent')


def test_credentials_the_broker_refuses_are_one_line_within_the_bound(archive, tmp_path):  # noqa: F811
  """Tansu with --authentication refuses the SCRAM credentials (it holds no user: this build
  cannot be given one, docs/kafka.md, Tests): source, sink and producer target alike."""
  secret = 'not-the-password'
  with started_broker(authenticating=True) as secured:
    scram = (f'security.protocol=SASL_PLAINTEXT&sasl.mechanism=SCRAM-SHA-512'
             f'&sasl.username=alice&sasl.password={secret}')
    topic = f'kafka://{secured.bootstrap}/events'
    line = refused_at_start('pipelines', 'stream', '--source', f'{topic}?group=g&{scram}',
                            '--output', str(tmp_path), expect='refused the credentials',
                            within_s=START_CHECK_S)
    assert line.startswith(f'error: source {topic} refused the credentials: ')
    assert secret not in line
    refused_at_start('pipelines', 'stream', '--source', 'synthetic://?rate=5', '--sink',
                     f'{topic}?{scram}', '--output', str(tmp_path),
                     expect=f'sink {topic} refused the credentials', within_s=START_CHECK_S)
    refused_at_start('pipelines', 'produce', '--input', str(archive), '--target',
                     f'{topic}?{scram}', expect=f'target {topic} refused the credentials',
                     within_s=START_CHECK_S)
    # The same check after the imports, where the job is started as its module.
    refused_at_start('pipelines.stream', '--source', f'{topic}?group=g&{scram}', '--output',
                     str(tmp_path), expect='refused the credentials')


def test_the_first_checks_read_the_flags_as_the_commands_do():
  """Only what the command would use in this process: no check for Flink or Dataflow, none
  for what does not parse (the command refuses it in its own words)."""
  def named(command, *argv):
    return [(a.describe(), role) for a, role in kafka_addresses(command, argv)]

  assert named('stream', '--source', 'kafka://b:1/t?group=g', '--sink',
               'vectors,kafka://c:2/out', '--output', 'o') == [
                   ('kafka://b:1/t', 'source'), ('kafka://c:2/out', 'sink')]
  assert named('stream', '--source=kafka://b:1/t?group=g', '--runner=BundleBasedDirectRunner'
               ) == [('kafka://b:1/t', 'source')]
  assert named('stream', '--source', 'kafka://b:1/t', '--runner', 'FlinkRunner') == []
  assert named('stream', '--source', 'kafka://b:1/bad topic') == []
  assert named('stream', '--source') == []  # a flag without its value
  assert named('stream', '--source', 'kafka://b:1/t', '--help') == []
  assert named('replay', '--sink', 'kafka://b:1/out', '--input', 'x') == [
      ('kafka://b:1/out', 'sink')]
  assert named('produce', '--target', 'kafka://b:1/t') == [('kafka://b:1/t', 'target')]
  assert named('search', '--store', 'kafka://b:1/t') == []
  for runner in ('DirectRunner', 'direct', 'BundleBasedDirectRunner', 'FlinkRunner',
                 'DataflowRunner', 'PrismRunner'):
    argv = ['--source', 'kafka://b:1/t?group=g', '--runner', runner]
    assert bool(named('stream', *argv)) == runs_locally(PipelineOptions(argv)), runner


def test_a_partition_with_records_to_come_holds_the_watermark():
  backlog = {'events/2': True}
  watermark = PartitionWatermark(max_out_of_orderness_s=1.0, idle_after_s=0.2,
                                 backlog=lambda part: backlog.get(part, False))
  watermark.assigned(['events/0', 'events/1', 'events/2'])
  watermark.observe(10_000_000, _at(0, 1))
  watermark.observe(12_000_000, _at(1, 1))
  assert watermark.watermark_us is None  # partition 2 has records of a time not known yet
  time.sleep(0.3)
  watermark.idle()
  assert watermark.watermark_us is None  # idle ones aside, 2 still has its backlog
  backlog['events/2'] = False
  watermark.idle()  # nothing left anywhere: event time passes like wall time
  assert watermark.watermark_us >= 12_000_000 - 1_000_000


def test_a_polls_later_records_find_the_watermark_where_the_poll_began():
  watermark = PartitionWatermark(max_out_of_orderness_s=1.0, idle_after_s=0.2)
  watermark.coming(['events/0', 'events/1', 'events/1'])  # one poll: 0's record, 1's two
  watermark.observe(30_000_000, _at(0, 1))
  assert watermark.watermark_us is None  # partition 1's records are still to be observed
  watermark.observe(10_000_000, _at(1, 1))
  watermark.observe(11_000_000, _at(1, 2))
  assert watermark.watermark_us == 10_000_000
