"""What the Kafka reader, sink, producer and start checks share: librdkafka's clients.

Consumer and producer settings, librdkafka's logging, a message as a RawRecord,
the idempotent producer and its flushed send, and the start check.
"""
import datetime
import json
import logging
import time
import types
from typing import Callable, Dict, Optional, Tuple

from transforms import job_state
from transforms.io import faults
from transforms.io.kafka_urls import KafkaAddress
from transforms.records import RawRecord, decoded_record

SHOWN_BYTES = 1024  # of a value over max_bytes, kept in its dead letter
STALL_S = 2.0  # a request unanswered this long: an outage
GROUP_DEFAULTS = types.MappingProxyType({
    'enable.auto.commit': 'false', 'enable.auto.offset.store': 'false',
    'auto.offset.reset': 'earliest', 'statistics.interval.ms': '500'})
_REFUSED = frozenset({-169, 58})  # KafkaError._AUTHENTICATION, SASL_AUTHENTICATION_FAILED


def say_which(local: bool, address: str, role: str) -> None:
  """kafka:// runs through confluent-kafka in this process on the local runners and through
  Beam's Java KafkaIO elsewhere: `local` is JobConfig.local (runners.choice decides it)."""
  if not local:
    logging.info('%s %s: Beam KafkaIO (Java, through the expansion service)', role, address)
  else:
    logging.info('%s %s: confluent-kafka in this process (local runner)', role, address)


class _QuietConnectionFailures(logging.Filter):
  """librdkafka logs each failed connection attempt (FAIL), several a second while a broker
  is down; the job reports the outage once when it starts and once when it ends."""

  def filter(self, record):
    return not record.getMessage().startswith('FAIL ')


def librdkafka_logger():
  """librdkafka's log lines go to Python logging (not stderr), redacted by the launcher."""
  logger = logging.getLogger('librdkafka')
  if not logger.filters:
    logger.addFilter(_QuietConnectionFailures())
  return logger


def record_of(message, max_bytes: int) -> RawRecord:
  """A Kafka message as a RawRecord of stream TOPIC/PARTITION at its offset (its source is
  TOPIC/PARTITION:OFFSET: a partition is the ordered stream), its metadata beside its fields.

  A JSON object value gets `key`, `headers` (name -> text) and `kafka_timestamp`
  (RFC 3339) unless it has fields of those names, so field paths can read them
  (`--id_field key`, `--time_field kafka_timestamp`, `headers.NAME`). Anything
  else stays raw: the parse step dead-letters it as it would any bad record.
  """
  value = message.value() or b''
  stream, position = f'{message.topic()}/{message.partition()}', message.offset()
  if len(value) > max_bytes:
    shown = value[:min(max_bytes, SHOWN_BYTES)].decode('utf-8', 'backslashreplace')
    return RawRecord(shown, stream, position,
                     too_large=f'the value is {len(value)} bytes, over max_bytes={max_bytes}')
  record = decoded_record(value, stream, position)
  if record.decode_error is not None or not record.raw.lstrip().startswith('{'):
    return record
  try:
    obj = json.loads(record.raw)
  except (ValueError, RecursionError):
    return record
  if not isinstance(obj, dict):
    return record
  key = message.key()
  obj.setdefault('key', None if key is None else key.decode('utf-8', 'backslashreplace'))
  obj.setdefault('headers', {name: (None if v is None else v.decode('utf-8', 'backslashreplace'))
                             for name, v in (message.headers() or [])})
  kind, millis = message.timestamp()
  if kind != 0:  # TIMESTAMP_NOT_AVAILABLE
    moment = datetime.datetime.fromtimestamp(millis / 1000, datetime.timezone.utc)
    obj.setdefault('kafka_timestamp',
                   moment.isoformat(timespec='milliseconds').replace('+00:00', 'Z'))
  return record._replace(row=obj)


def read_statistics(text: str, owns: Callable[[Tuple[str, int]], bool]
                    ) -> Tuple[bool, Dict[Tuple[str, int], int], Dict[str, int]]:
  """From librdkafka's statistics (JSON): whether a partition leader is disconnected, and for
  the partitions `owns` accepts, the consumer lag ((topic, partition) -> records) and the
  records not yet handed to the reader (TOPIC/P -> records)."""
  stats = json.loads(text)
  leader_down = any(broker.get('toppars') and broker.get('state') != 'UP'
                    for broker in stats.get('brokers', {}).values())
  lag, unfetched = {}, {}
  for topic in stats.get('topics', {}).values():
    for partition in topic.get('partitions', {}).values():
      number = partition.get('partition', -1)
      if number < 0 or not owns((topic['topic'], number)):
        continue
      if partition.get('consumer_lag', -1) >= 0:
        lag[(topic['topic'], number)] = partition['consumer_lag']
      # Not yet fetched from the broker, plus fetched into librdkafka's own queue but
      # not yet handed to the reader.
      high, following = partition.get('hi_offset', -1), partition.get('next_offset', -1)
      if high >= 0 and following >= 0:
        unfetched[f'{topic["topic"]}/{number}'] = (max(0, high - following) +
                                                   max(0, partition.get('fetchq_cnt', 0)))
  return leader_down, lag, unfetched


def producer(address: KafkaAddress):
  """An idempotent producer: the broker drops the copies its own retries would add."""
  from confluent_kafka import Producer
  return Producer(address.client_config(**{'enable.idempotence': 'true', 'acks': 'all',
                                           'linger.ms': '5'}), logger=librdkafka_logger())


def send(client, address: KafkaAddress, records, role: str,
         policy: faults.WritePolicy = faults.WritePolicy()) -> int:
  """Produces (key, value) pairs to the address's first topic and waits until the broker
  has them all; an outage is waited out for the write bound (transforms.io.faults).

  Returns how many were sent. Raises faults.WriteAbandoned when the job is stopping.
  """
  state = job_state.of(policy.job)
  if state.stop_reason is not None:
    raise faults.WriteAbandoned(state.stop_reason)
  failed = []

  def delivered(error, message):
    if error is not None:
      failed.append(error.str())

  topic, count = address.topics[0], 0
  for key, value in records:
    while True:
      try:
        client.produce(topic, value, key, on_delivery=delivered)
        break
      except BufferError:  # librdkafka's queue is full: let it drain
        client.poll(0.1)
    client.poll(0)  # serves delivery reports as it goes
    count += 1
  health = state.dependency(f'{role} {address.describe()}')
  started = time.monotonic()
  deadline = started + policy.retry_s
  while client.flush(1.0) > 0:
    if time.monotonic() - started > STALL_S:
      health.lost(f'records not acknowledged after {STALL_S:g} s')
    if time.monotonic() > deadline or state.stop_reason is not None:
      state.stop(f'cannot produce to {address.describe()}: not acknowledged after '
                 f'{policy.retry_s:g} s')
      raise faults.WriteAbandoned(state.stop_reason)
  if failed:
    # The idempotent producer retries outages itself; what fails here is permanent.
    state.stop(f'cannot produce to {address.describe()}: {failed[0]}')
    raise faults.WriteAbandoned(state.stop_reason)
  health.ok()
  return count


def check_kafka(address: KafkaAddress, role: str, timeout_s: float = 3.0) -> Optional[str]:
  """Why the job could not use `address` (unreachable, refused credentials, a missing
  topic), or None. Lists every topic: asking for one by name may create it."""
  from confluent_kafka import KafkaError, KafkaException
  from confluent_kafka.admin import AdminClient
  errors = []
  client = AdminClient(address.client_config(**{
      'socket.connection.setup.timeout.ms': str(int(timeout_s * 1000)),
      'error_cb': errors.append}), logger=librdkafka_logger())
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      metadata = client.list_topics(timeout=0.5)
      break
    except KafkaException as e:
      client.poll(0)  # serves error_cb
      codes = {err.code() for err in errors} | {e.args[0].code()}
      if codes & _REFUSED:
        return f'{role} {address.describe()} refused the credentials: {_first(errors, e.args[0])}'
      if KafkaError._ALL_BROKERS_DOWN in codes or time.monotonic() > deadline:
        return (f'cannot reach {role} {address.describe()}: {_first(errors, e.args[0])}')
  missing = [t for t in address.topics if t not in metadata.topics]
  if missing:
    return (f'{role} {address.describe()}: no topic {", ".join(missing)} on the cluster '
            f'(it has: {", ".join(sorted(metadata.topics)) or "none"}); create it first')
  for topic in address.topics:
    error = metadata.topics[topic].error
    if error is not None:
      return f'{role} {address.describe()}: topic {topic}: {error.str()}'
  return None


def _first(errors, fallback) -> str:
  for error in errors:
    if error.code() in _REFUSED:
      return error.str()
  return (errors[0] if errors else fallback).str()
