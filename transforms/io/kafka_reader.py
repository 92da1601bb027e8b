"""The Kafka source of the local runner: a consumer-group reader that commits only what
is written (the rule and its bookkeeping: transforms.io.kafka_offsets)."""
import atexit
import logging
import threading
import time
from collections import Counter, deque

from transforms import job_state
from transforms.io.kafka_client import (GROUP_DEFAULTS, STALL_S, librdkafka_logger,
                                        read_statistics, record_of)
from transforms.io.kafka_offsets import OffsetLedger, latest
from transforms.io.kafka_urls import KafkaAddress
from transforms.io.kafka_watermark import PartitionWatermark, partition_of
from transforms.io.live_sources import Reader

_BUFFER = 5000  # records fetched ahead of the job, per reader
_UNKNOWN_BACKLOG_S = 30.0  # a new partition's backlog, until the statistics tell


class KafkaReader(Reader):
  """Reads topics in a consumer group, at least once, committing only what is written.

  A thread of its own polls the consumer (so rebalances are served while the
  job is busy) and buffers what it fetches. A record is in flight from the poll
  that hands it to the job until CommitKafkaOffsets reports it written. When
  partitions are revoked, their buffered records are dropped (the new owner
  reads them) and the revocation waits, up to `revoke_wait`, for their records
  in flight to be written, then commits them: the new owner starts after them,
  so nothing is written twice. One lock (a Condition) guards the buffer and the
  ledger for the fetch thread, the rebalance callbacks and the job's threads.
  """

  def __init__(self, address: KafkaAddress, job: str = ''):
    """Args: job: the job's token (transforms.job_state): its health and commit step."""
    if not address.group:
      raise ValueError(f'{address.describe()}: a source needs a consumer group (?group=NAME)')
    self._address = address
    self._job = job
    self._consumer = None

  def open(self):
    from confluent_kafka import Consumer
    self._lock = threading.Condition()
    self._buffer = deque()
    self._ledger = OffsetLedger()
    self._revoking = set()
    self._closing = False
    self._paused = False
    self._stalled_since = None
    self._lag = {}
    self._refused_logged = 0.0
    self._probed = 0.0
    self._buffered = Counter()  # TOPIC/P -> records fetched, not yet handed out
    self._unfetched = {}  # TOPIC/P -> records on the broker not yet read (statistics)
    self._assigned_at = {}
    self._wm = None
    self._health = job_state.of(self._job).dependency(f'source {self._address.describe()}')
    self._consumer = Consumer(self._address.client_config(
        **{'group.id': self._address.group, **GROUP_DEFAULTS,
           'error_cb': self._on_error, 'stats_cb': self._on_stats,
           'on_commit': self._on_commit}), logger=librdkafka_logger())
    self._consumer.subscribe(list(self._address.topics), on_assign=self._on_assign,
                             on_revoke=self._on_revoke, on_lost=self._on_lost)
    job_state.of(self._job).add_reader(self._address.key(), self)
    self._thread = threading.Thread(target=self._fetch, name='kafka-fetch', daemon=True)
    self._thread.start()
    # The local runner may end without tearing the source down: the last commits and the
    # leave from the group must still happen before the process exits.
    atexit.register(self.close)

  def watermark(self, max_out_of_orderness_s, idle_after_s):
    self._wm = PartitionWatermark(max_out_of_orderness_s, idle_after_s, self._backlog)
    return self._wm

  def _backlog(self, part: str) -> bool:
    """Whether the partition has records left to read (so it is not idle)."""
    topic, _, partition = part.rpartition('/')
    if (topic, int(partition)) in self._revoking:
      return False  # being handed over: its windows must close without it
    if self._buffered[part]:
      return True
    unfetched = self._unfetched.get(part)
    if unfetched is None:  # not known yet: assume records, for a while
      return time.monotonic() - self._assigned_at.get(part, 0.0) < _UNKNOWN_BACKLOG_S
    return unfetched > 0

  # The consumer's thread.

  def _fetch(self):
    from confluent_kafka import KafkaError, KafkaException
    while not self._closing:
      with self._lock:
        full = len(self._buffer) >= _BUFFER
        offsets = self._ledger.take_queued()
      if offsets:  # committed here: a commit from another thread waits for consume()
        self._commit(offsets, asynchronous=True)
      try:
        if full != self._paused:  # stop fetching while the job is behind, not polling
          assigned = self._consumer.assignment()
          (self._consumer.pause if full else self._consumer.resume)(assigned)
          self._paused = full
        messages = self._consumer.consume(500, 0.2)
        self._probe()
      except KafkaException as e:
        self._health.lost(str(e.args[0]))
        time.sleep(0.5)
        continue
      except RuntimeError:  # closed under us
        return
      fetched = []
      for message in messages:
        error = message.error()
        if error is None:
          fetched.append(message)
        elif error.code() != KafkaError._PARTITION_EOF:
          self._health.lost(error.str())
      if fetched:
        self._set_stalled(False)
        with self._lock:
          for m in fetched:
            if (m.topic(), m.partition()) not in self._revoking:
              self._buffer.append(m)
              self._buffered[f'{m.topic()}/{m.partition()}'] += 1

  def _on_assign(self, consumer, partitions):
    self._paused = False
    now = time.monotonic()
    with self._lock:
      resume = self._ledger.assign((p.topic, p.partition) for p in partitions)
      for p in partitions:
        if (p.topic, p.partition) in resume:
          p.offset = resume[(p.topic, p.partition)]
        self._assigned_at[f'{p.topic}/{p.partition}'] = now
        self._unfetched.pop(f'{p.topic}/{p.partition}', None)
    if resume:
      consumer.assign(partitions)
    if self._wm is not None:
      self._wm.assigned(f'{p.topic}/{p.partition}' for p in partitions)
    logging.info('%s: assigned %s', self._address.describe(), _names(partitions))

  def _on_revoke(self, consumer, partitions):
    revoked = {(p.topic, p.partition) for p in partitions}
    deadline = time.monotonic() + self._address.revoke_wait_s
    with self._lock:
      self._revoking |= revoked
      self._drop_buffered(revoked)
      # Their windows close as the watermark moves on without them; then they are written.
      while (self._ledger.in_flight(revoked) and time.monotonic() < deadline
             and not self._closing):
        self._lock.wait(0.2)
      unwritten = self._ledger.in_flight(revoked)
      offsets = self._ledger.take(revoked)
    if offsets:
      self._commit(latest(offsets), asynchronous=False)
    with self._lock:
      self._ledger.park(revoked)
      self._revoking -= revoked
    if self._wm is not None:
      self._wm.forget(f'{topic}/{partition}' for topic, partition in revoked)
    logging.info('%s: revoked %s%s', self._address.describe(), _names(partitions),
                 f' ({unwritten} records in flight, not committed)' if unwritten else '')

  def _on_lost(self, consumer, partitions):
    # The group moved on without us (e.g. a session timeout): commits would be
    # refused; a new owner reads these records again (kept, in case they come back).
    lost = {(p.topic, p.partition) for p in partitions}
    with self._lock:
      self._drop_buffered(lost)
      self._ledger.park(lost)
    if self._wm is not None:
      self._wm.forget(f'{topic}/{partition}' for topic, partition in lost)
    logging.warning('%s: lost %s to the group', self._address.describe(), _names(partitions))

  def _drop_buffered(self, partitions) -> None:
    """Drops fetched records of partitions that are no longer ours (the new owner reads them)."""
    self._buffer = deque(m for m in self._buffer if (m.topic(), m.partition()) not in partitions)
    for topic, partition in partitions:
      self._buffered.pop(f'{topic}/{partition}', None)

  def _on_commit(self, error, offsets):
    """A refused commit of a partition still ours is made again (in the next generation)."""
    failed = [o for o in offsets or [] if error is not None or o.error is not None]
    if not failed:
      return
    with self._lock:
      self._ledger.refused(failed)
    if time.monotonic() - self._refused_logged > 10:  # once, not every 0.2 s of a rebalance
      self._refused_logged = time.monotonic()
      logging.warning('%s: a commit was refused (%s); it is made again',
                      self._address.describe(),
                      error.str() if error is not None else failed[0].error.str())

  def _set_stalled(self, stalled: bool) -> None:
    if stalled and self._stalled_since is None:
      self._stalled_since = time.monotonic()
      self._health.lost('the broker stopped answering')
    elif not stalled:
      self._stalled_since = None
      self._health.ok()  # reached: a topic with nothing to read is not a dead source

  def _probe(self) -> None:
    """Asks the cluster for the topic's metadata, each second: a broker may hold fetches (and
    heartbeats) while a topic is quiet, so only a request it must answer at once tells a
    frozen broker from an idle topic."""
    from confluent_kafka import KafkaException
    if time.monotonic() - self._probed < 1.0:
      return
    self._probed = time.monotonic()
    try:
      self._consumer.list_topics(self._address.topics[0], timeout=STALL_S)
    except KafkaException:
      self._set_stalled(True)
    else:
      self._set_stalled(False)

  def _on_error(self, error):
    self._health.lost(error.str())

  def _on_stats(self, text):
    """Outages (a partition leader disconnected), lag and backlog from librdkafka's statistics."""
    leader_down, self._lag, self._unfetched = read_statistics(text, self._ledger.owns)
    if leader_down:
      self._set_stalled(True)

  # The job's threads.

  def poll(self, max_records):
    with self._lock:
      taken = [self._buffer.popleft() for _ in range(min(max_records, len(self._buffer)))]
      records = []
      for message in taken:
        self._buffered[f'{message.topic()}/{message.partition()}'] -= 1
        if self._ledger.handed_out((message.topic(), message.partition()), message.offset()):
          records.append(record_of(message, self._address.max_bytes))
        # else: revoked since it was fetched
    if self._wm is not None:
      self._wm.coming(partition_of(record) for record in records)
    return records

  def stalled(self):
    return self._stalled_since is not None or self._health.down_since is not None

  def written(self, positions) -> None:
    """Marks records written ({(topic, partition): [offsets]}) and commits each partition up
    to its first unwritten record."""
    with self._lock:
      self._ledger.written(positions)
      self._lock.notify_all()

  def _commit(self, offsets, asynchronous: bool) -> None:
    from confluent_kafka import KafkaException
    try:
      self._consumer.commit(offsets=offsets, asynchronous=asynchronous)
    except KafkaException as e:
      # Not committed: a restart or the next owner reads these records again.
      logging.warning('%s: cannot commit offsets: %s', self._address.describe(), e.args[0])

  def gauges(self):
    """source_pending: records in flight (read, not yet written); source_lag: records on the
    broker not yet read, from librdkafka's statistics."""
    with self._lock:
      pending = self._ledger.in_flight() + len(self._buffer)
    return {'source_pending': pending, 'source_lag': sum(self._lag.values())}

  def close(self):
    if self._consumer is None:
      return
    atexit.unregister(self.close)
    self._closing = True
    with self._lock:
      self._lock.notify_all()
    self._thread.join(10)
    job_state.of(self._job).remove_reader(self._address.key(), self)
    with self._lock:
      offsets = self._ledger.take_all()
    if offsets:
      self._commit(latest(offsets), asynchronous=False)
    try:
      self._consumer.close()  # leaves the group at once: no wait for a session timeout
    except RuntimeError:
      pass
    self._consumer = None


def _names(partitions) -> str:
  return ', '.join(f'{p.topic}/{p.partition}' for p in partitions) or 'nothing'
