"""`python -m pipelines.stream --source kafka://...` as a user runs it, against a real
Kafka-protocol broker the test starts (tests/kafka_broker.py): jobs of one group, a
rebalance, kill -9 and restart, a frozen broker, a poison record, Kafka in and out.

Lost and duplicated are counted from what the jobs wrote (rows and dead letters, by
TOPIC/PARTITION:OFFSET) against what the topic holds.
"""
import datetime
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from confluent_kafka import Producer

from tests.conftest import ROOT
from tests.kafka_broker import FAST_GROUP, started_broker
from tests.test_stream_e2e import column, python, stop, wait_for, wiki_lines  # noqa: F401

pytestmark = pytest.mark.e2e
WIKI = ['--time_field', 'time', '--text_field', 'comment', '--window_size', '5',
        '--max_out_of_orderness', '1']


@pytest.fixture
def broker():
  with started_broker() as running:
    yield running


def _job(broker, topic, out, log_path, *more, group_settings=FAST_GROUP):
  log = open(log_path, 'w')  # pylint: disable=consider-using-with
  return python('pipelines.stream', '--source',
                f'kafka://{broker.bootstrap}/{topic}?group=enrich&{group_settings}',
                '--output', str(out), *WIKI, *more, log=log)


def _producer(broker, topic, lines, rate, count, log_path):
  with open(log_path, 'w') as log:
    return python('pipelines.produce', '--input', str(lines), '--target',
                  f'kafka://{broker.bootstrap}/{topic}', '--rate', str(rate), '--retime',
                  '--limit', str(count), log=log)


def _written_sources(out):
  try:
    return column(out, 'enriched', 'source') + column(out, 'deadletter', 'source')
  except (OSError, ValueError):  # a file being renamed into place
    return []


def _caught_up(broker, topic, out, expected):
  """Every record is in the topic, written, and committed by the group."""
  ends = broker.end_offsets(topic)
  return (sum(ends) >= expected and broker.committed(topic, 'enrich') == ends and
          len(set(_written_sources(out))) >= sum(ends))


def _produced(broker, topic):
  return {f'{topic}/{p}:{o}' for p, end in enumerate(broker.end_offsets(topic))
          for o in range(end)}


def _tally(broker, topic, out, logs):
  written = _written_sources(out)
  produced = _produced(broker, topic)
  lost, duplicated = produced - set(written), len(written) - len(set(written))
  late = column(out, 'deadletter', 'reason').count('late')
  print(f'{len(produced)} produced: {len(column(out, "enriched", "id"))} rows, '
        f'{len(written) - len(column(out, "enriched", "id"))} dead letters ({late} late), '
        f'{len(lost)} lost, {duplicated} duplicated')
  assert (len(lost), duplicated) == (0, 0), [log.read_text()[-1500:] for log in logs]
  assert set(written) == produced


def _stop_all(jobs):
  for job in jobs:
    if job.poll() is None:
      job.kill()
      job.wait(30)


def test_jobs_of_one_group_share_the_partitions_through_a_rebalance(broker, wiki_lines,
                                                                    tmp_path):
  """Two jobs, 3 partitions, 40 events/s for KAFKA_SECONDS (60); a third job joins a third of
  the way in and leaves at two thirds (two rebalances): 0 lost, 0 duplicated."""
  seconds = int(os.environ.get('KAFKA_SECONDS', '60'))
  topic, out = broker.topic(partitions=3), tmp_path / 'out'
  logs = [tmp_path / f'c{n}.log' for n in (1, 2, 3)]
  jobs = [_job(broker, topic, out, logs[0]), _job(broker, topic, out, logs[1])]
  try:
    producer = _producer(broker, topic, wiki_lines, 40, 40 * seconds, tmp_path / 'p.log')
    time.sleep(seconds / 3)
    jobs.append(_job(broker, topic, out, logs[2]))
    wait_for(lambda: 'assigned' in logs[2].read_text(), 300, 'the third job to join')
    time.sleep(seconds / 3)
    stop(jobs[2], logs[2])  # SIGTERM: drains, commits, leaves the group
    assert producer.wait(seconds + 60) == 0, (tmp_path / 'p.log').read_text()
    wait_for(lambda: _caught_up(broker, topic, out, 40 * seconds), 300,
             'every record to be written and committed')
    stop(jobs[0], logs[0])
    stop(jobs[1], logs[1])
  finally:
    _stop_all(jobs)
  _tally(broker, topic, out, logs)
  texts = [log.read_text() for log in logs]
  for text in texts:  # each job accounted for its share
    assert 'every record accounted for' in text and 'assigned' in text, text[-2000:]
  for text in texts[:2]:
    assert 'Read 0 records' not in text, text[-2000:]
  assert 'revoked' in texts[0] + texts[1]  # the group did rebalance
  shared = [w for w in (out / 'enriched').iterdir() if len(list(w.glob('*.parquet'))) > 1]
  assert shared, 'no window was written by more than one job'


def test_kill_9_of_one_job_and_restart_lose_and_duplicate_nothing(broker, wiki_lines,
                                                                  tmp_path):
  topic, out = broker.topic(partitions=3), tmp_path / 'out'
  logs = [tmp_path / 'c1.log', tmp_path / 'c2.log', tmp_path / 'c1-again.log']
  jobs = [_job(broker, topic, out, logs[0]), _job(broker, topic, out, logs[1])]
  try:
    producer = _producer(broker, topic, wiki_lines, 40, 1200, tmp_path / 'p.log')
    # Once both have committed windows; each still has records in flight. (A kill between a
    # write and its commit, a fraction of a second, duplicates that window: docs/kafka.md.)
    wait_for(lambda: all(o > 0 for o in broker.committed(topic, 'enrich')), 300,
             'the first commits')
    jobs[0].kill()  # SIGKILL: no drain, no commit of what it had in flight
    jobs[0].wait(30)
    time.sleep(8)  # the survivor takes its partitions over once its session times out
    jobs.append(_job(broker, topic, out, logs[2]))
    wait_for(lambda: 'assigned' in logs[2].read_text(), 300, 'the restarted job to join')
    assert producer.wait(120) == 0, (tmp_path / 'p.log').read_text()
    wait_for(lambda: _caught_up(broker, topic, out, 1200), 300,
             'every record to be written and committed')
    stop(jobs[1], logs[1])
    stop(jobs[2], logs[2])
  finally:
    _stop_all(jobs)
  _tally(broker, topic, out, logs)


def test_a_frozen_broker_is_ridden_out(broker, wiki_lines, tmp_path):
  """The broker stops answering for 10 s (SIGSTOP) mid-run: the job waits, loses nothing."""
  if not broker.frozen_ok:
    pytest.skip('KAFKA_BOOTSTRAP names a broker this test cannot freeze')
  topic, out, log_path = broker.topic(partitions=3), tmp_path / 'out', tmp_path / 'job.log'
  # A session outlives the freeze, so the group does not move during it.
  job = _job(broker, topic, out, log_path,
             group_settings='session.timeout.ms=45000&heartbeat.interval.ms=1000')
  try:
    producer = _producer(broker, topic, wiki_lines, 40, 1000, tmp_path / 'p.log')
    wait_for(lambda: len(_written_sources(out)) > 50, 300, 'the first windows')
    broker.freeze()
    time.sleep(10)
    broker.thaw()
    assert job.poll() is None, log_path.read_text()[-3000:]
    assert producer.wait(120) == 0, (tmp_path / 'p.log').read_text()
    wait_for(lambda: _caught_up(broker, topic, out, 1000), 300,
             'every record to be written and committed')
    stop(job, log_path)
  finally:
    _stop_all([job])
  _tally(broker, topic, out, [log_path])
  text = log_path.read_text()
  assert 'lost' in text and 'restored' in text, text[-3000:]


def _event(n):
  moment = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='milliseconds')
  return json.dumps({'id': f'e{n}', 'time': moment.replace('+00:00', 'Z'),
                     'comment': f'edit number {n} of the article'}).encode()


def test_a_poison_record_is_a_dead_letter_and_kafka_out_holds_each_row_once(broker, tmp_path):
  topic, sink = broker.topic(partitions=3), broker.topic(partitions=3)
  out, log_path = tmp_path / 'out', tmp_path / 'job.log'
  job = _job(broker, topic, out, log_path, '--id_field', 'id', '--sink',
             f'kafka://{broker.bootstrap}/{sink}', group_settings=f'{FAST_GROUP}&max_bytes=2000')
  try:
    client = Producer({'bootstrap.servers': broker.bootstrap, 'enable.idempotence': True})
    poison = [b'{"id": "p1", "time": ', b'\xff\xfe broken bytes', b'{"pad": "' + b'x' * 5000 + b'"}']
    for n in range(90):
      client.produce(topic, _event(n), partition=n % 3)
      if n in (30, 31, 32):  # into partition 1, between good records
        client.produce(topic, poison[n - 30], partition=1)
      client.poll(0)
      time.sleep(0.02)
    assert client.flush(30) == 0
    wait_for(lambda: _caught_up(broker, topic, out, 93), 300,
             'every record to be written and committed')
    stop(job, log_path)
  finally:
    _stop_all([job])
  _tally(broker, topic, out, [log_path])
  letters = dict(zip(column(out, 'deadletter', 'source'), column(out, 'deadletter', 'reason')))
  assert sorted(letters.values()) == ['invalid_json', 'invalid_utf8', 'too_large']
  assert all(source.startswith(f'{topic}/1:') for source in letters)
  poisoned = max(int(source.rpartition(':')[2]) for source in letters)
  after = [s for s in column(out, 'enriched', 'source')
           if s.startswith(f'{topic}/1:') and int(s.rpartition(':')[2]) > poisoned]
  assert after, 'partition 1 went no further than its poison records'
  ids = column(out, 'enriched', 'id')
  downstream = broker.read_all(sink, len(ids))
  keys = [m.key().decode() for m in downstream]
  assert sorted(keys) == sorted(ids) and len(set(keys)) == len(ids) == 90  # each row once
  row = json.loads(downstream[0].value())
  assert len(row['embedding']) == 384 and row['id'] == downstream[0].key().decode()
  text = log_path.read_text()
  assert 'confluent-kafka in this process' in text and 'every record accounted for' in text
