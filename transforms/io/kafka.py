"""Kafka on the local runner: the consumer-group reader, the offset commits and the sink.

On the local runners the job reads and writes Kafka itself with confluent-kafka
(librdkafka); on Flink, Dataflow and other portable runners it keeps Beam's
KafkaIO (transforms.io.cloud_io), whose offsets commit with the runner's
checkpoints. `JobConfig.local` (runners.choice.runs_locally) makes that choice, once.

The commit rule is the XACK rule of transforms.io.redis_streams applied to
offsets: a partition's offset is committed only up to its first record whose
row or dead letter is not yet durably written, so a commit never passes an
unwritten record, and a crash re-reads what was not written.
"""
import atexit
import datetime
import json
import logging
import threading
import time
import types
from collections import Counter, deque
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam

from transforms import job_state
from transforms.io import faults
from transforms.io.cloud_io import ReadKafka, WriteKafka, kafka_records
from transforms.io.kafka_urls import KafkaAddress
from transforms.io.live_sources import ReadLive, Reader, _StreamWatermark
from transforms.io.targets import parse_sink
from transforms.watermark import Watermark
from transforms.windowing import WindowSpec
from transforms.records import DeadLetterBatch, RawRecord, WindowRows, decoded_record

_BUFFER = 5000  # records fetched ahead of the job, per reader
_SHOWN_BYTES = 1024  # of a value over max_bytes, kept in its dead letter
_UNKNOWN_BACKLOG_S = 30.0  # a new partition's backlog, until the statistics tell
_STALL_S = 2.0  # a metadata request unanswered this long: an outage
_GROUP_DEFAULTS = types.MappingProxyType({'enable.auto.commit': 'false', 'enable.auto.offset.store': 'false',
                   'auto.offset.reset': 'earliest', 'statistics.interval.ms': '500'})

def _say_which(local: bool, address: str, role: str) -> None:
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


def _logger():
  """librdkafka's log lines go to Python logging (not stderr), redacted by the launcher."""
  logger = logging.getLogger('librdkafka')
  if not logger.filters:
    logger.addFilter(_QuietConnectionFailures())
  return logger


class PartitionWatermark(_StreamWatermark):
  """A watermark per partition: the job's follows the slowest partition that is not idle.

  A partition is idle once it has nothing left to read (`backlog(part)` is
  False) and nothing arrived from it for `idle_after_s`: it no longer holds
  the watermark back. A partition with records to come whose event time is
  not known yet (just assigned, a backlog not yet fetched) holds it where it
  is. When every partition is idle, event time passes like wall time, as for
  a single stream (_StreamWatermark).
  """

  def __init__(self, max_out_of_orderness_s: float, idle_after_s: float,
               backlog: Callable[[str], bool] = lambda part: False):
    super().__init__(max_out_of_orderness_s, idle_after_s)
    self._backlog = backlog
    self._spec = WindowSpec(max_out_of_orderness_s=max_out_of_orderness_s)
    self._marks: Dict[str, Watermark] = {}  # partition (TOPIC/P) -> its own watermark
    self._arrived: Dict[str, float] = {}
    self._coming = Counter()  # records handed to the job, not yet observed
    self._lock = threading.Lock()  # assigned() and forget() come from the consumer's thread

  def observe(self, event_time_us, record=None):
    now = time.monotonic()
    self._last_arrival = now
    if record is None:
      return
    part = partition_of(record)
    with self._lock:
      self._arrived[part] = now
      if self._coming[part] > 0:
        self._coming[part] -= 1
      if event_time_us is not None:
        mark = self._marks.get(part)
        if mark is None:
          mark = self._marks[part] = Watermark(self._spec)
        mark.observe(event_time_us)
        if self.newest_us is None or event_time_us > self.newest_us:
          self.newest_us = event_time_us
      self._follow_slowest(now)

  def idle(self):
    now = time.monotonic()
    with self._lock:
      if not self._follow_slowest(now):
        super().idle()

  def assigned(self, parts: Iterable[str]) -> None:
    """Partitions this reader now owns: each holds the watermark until it is read or idle."""
    with self._lock:
      for part in parts:
        self._arrived.setdefault(part, -float('inf'))

  def coming(self, parts: Iterable[str]) -> None:
    """Records (by partition) that the reader has just handed out, to be observed next:
    a poll's later records must not find the watermark moved on by its earlier ones."""
    with self._lock:
      self._coming.update(parts)

  def forget(self, parts: Iterable[str]) -> None:
    """Partitions this reader no longer owns."""
    with self._lock:
      for part in parts:
        self._marks.pop(part, None)
        self._arrived.pop(part, None)
        self._coming.pop(part, None)

  def _follow_slowest(self, now: float) -> bool:
    """Advances to the slowest busy partition; False when every partition is idle."""
    marks = []
    parts = set(self._arrived) | {part for part, count in self._coming.items() if count > 0}
    for part in parts:
      arrived = self._arrived.get(part, -float('inf'))
      if (now - arrived >= self._idle_after_s and not self._coming[part] and
          not self._backlog(part)):
        continue
      if part not in self._marks:
        return True  # records to come, of a time not known yet: hold
      marks.append(self._marks[part].watermark_us)
    if marks:
      self._advance(min(marks))  # the slowest busy partition's own watermark
    return bool(marks)


def partition_of(record: RawRecord) -> str:
  """TOPIC/PARTITION of a record read from Kafka: its stream (its position is the offset)."""
  return record.stream


def kafka_positions(sources: Iterable[str]) -> Dict[Tuple[str, int], List[int]]:
  """(topic, partition) -> offsets, from `TOPIC/PARTITION:OFFSET` sources; others skipped."""
  found: Dict[Tuple[str, int], List[int]] = {}
  for source in sources:
    stream, _, offset = source.rpartition(':')
    topic, _, partition = stream.rpartition('/')
    if topic and partition.isdigit() and offset.isdigit():
      found.setdefault((topic, int(partition)), []).append(int(offset))
  return found


class _Partition:
  """Offsets handed to the job and not yet written, in order; what may be committed."""

  def __init__(self):
    self.emitted = deque()  # offsets handed out, ascending
    self.written = set()  # of those, written out of order
    self.next = None  # the offset after the last one written in order
    self.committed = None
    self.read_next = None  # the offset after the last one handed out

  def commit_to(self) -> Optional[int]:
    """The offset to commit: the first unwritten one (or past the last written)."""
    while self.emitted and self.emitted[0] in self.written:
      self.written.discard(self.emitted[0])
      self.next = self.emitted.popleft() + 1
    if self.emitted:
      return self.emitted[0] if self.next is not None else None
    return self.next


def _record(message, max_bytes: int) -> RawRecord:
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
    shown = value[:min(max_bytes, _SHOWN_BYTES)].decode('utf-8', 'backslashreplace')
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


class KafkaReader(Reader):
  """Reads topics in a consumer group, at least once, committing only what is written.

  A thread of its own polls the consumer (so rebalances are served while the
  job is busy) and buffers what it fetches. A record is in flight from the poll
  that hands it to the job until CommitKafkaOffsets reports it written. When
  partitions are revoked, their buffered records are dropped (the new owner
  reads them) and the revocation waits, up to `revoke_wait`, for their records
  in flight to be written, then commits them: the new owner starts after them,
  so nothing is written twice.
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
    self._partitions: Dict[Tuple[str, int], _Partition] = {}
    self._revoking = set()
    self._parked: Dict[Tuple[str, int], _Partition] = {}  # revoked, maybe coming back
    self._to_commit = {}  # (topic, partition) -> TopicPartition, for the consumer's thread
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
        **{'group.id': self._address.group, **_GROUP_DEFAULTS,
           'error_cb': self._on_error, 'stats_cb': self._on_stats,
           'on_commit': self._on_commit}), logger=_logger())
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
        offsets, self._to_commit = list(self._to_commit.values()), {}
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
    resumed = False
    with self._lock:
      for p in partitions:
        tp = (p.topic, p.partition)
        state = self._parked.pop(tp, None)
        if state is not None and state.read_next is not None:
          # Back to us: go on after what we handed out (its records are still ours to
          # write), and commit again what a refused commit left behind.
          p.offset, state.committed, resumed = state.read_next, None, True
          for offset in self._committable([tp]):
            self._to_commit[tp] = offset
        self._partitions.setdefault(tp, state or _Partition())
        self._assigned_at[f'{p.topic}/{p.partition}'] = now
        self._unfetched.pop(f'{p.topic}/{p.partition}', None)
      self._parked.clear()  # went to others: their new owners read them again
    if resumed:
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
      while (any(self._partitions[tp].emitted for tp in revoked if tp in self._partitions)
             and time.monotonic() < deadline and not self._closing):
        self._lock.wait(0.2)
      unwritten = sum(len(self._partitions[tp].emitted) for tp in revoked
                      if tp in self._partitions)
      offsets = self._committable(revoked) + [self._to_commit.pop(tp) for tp in revoked
                                              if tp in self._to_commit]
    if offsets:
      self._commit(_latest(offsets), asynchronous=False)
    with self._lock:
      for tp in revoked:
        self._park(tp)
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
      for tp in lost:
        self._park(tp)
    if self._wm is not None:
      self._wm.forget(f'{topic}/{partition}' for topic, partition in lost)
    logging.warning('%s: lost %s to the group', self._address.describe(), _names(partitions))

  def _park(self, tp) -> None:
    """Keeps a partition given up in a rebalance until the next assignment: if it comes back
    (the range assignor often hands a member its partitions again), reading goes on after
    what was handed out, and no record of it is read twice."""
    state = self._partitions.pop(tp, None)
    if state is not None:
      self._parked[tp] = state

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
      for offset in failed:
        tp = (offset.topic, offset.partition)
        state = self._partitions.get(tp) or self._parked.get(tp)
        if state is not None and state.committed == offset.offset:
          state.committed = None  # the next commit round sends it again
          if tp in self._partitions and tp not in self._to_commit:
            from confluent_kafka import TopicPartition
            self._to_commit[tp] = TopicPartition(offset.topic, offset.partition, offset.offset)
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
      self._consumer.list_topics(self._address.topics[0], timeout=_STALL_S)
    except KafkaException:
      self._set_stalled(True)
    else:
      self._set_stalled(False)

  def _on_error(self, error):
    self._health.lost(error.str())

  def _on_stats(self, text):
    """Outages from librdkafka's statistics: a broker that stopped answering requests."""
    stats = json.loads(text)
    if any(broker.get('toppars') and broker.get('state') != 'UP'
           for broker in stats.get('brokers', {}).values()):
      self._set_stalled(True)  # a partition leader is disconnected
    lag, unfetched = {}, {}
    for topic in stats.get('topics', {}).values():
      for partition in topic.get('partitions', {}).values():
        number = partition.get('partition', -1)
        if number < 0 or (topic['topic'], number) not in self._partitions:
          continue
        if partition.get('consumer_lag', -1) >= 0:
          lag[(topic['topic'], number)] = partition['consumer_lag']
        # Not yet fetched from the broker, plus fetched into librdkafka's own queue but
        # not yet handed to this reader.
        high, following = partition.get('hi_offset', -1), partition.get('next_offset', -1)
        if high >= 0 and following >= 0:
          unfetched[f'{topic["topic"]}/{number}'] = (max(0, high - following) +
                                                     max(0, partition.get('fetchq_cnt', 0)))
    self._lag, self._unfetched = lag, unfetched

  # The job's threads.

  def poll(self, max_records):
    with self._lock:
      taken = [self._buffer.popleft() for _ in range(min(max_records, len(self._buffer)))]
      records = []
      for message in taken:
        self._buffered[f'{message.topic()}/{message.partition()}'] -= 1
        state = self._partitions.get((message.topic(), message.partition()))
        if state is None:
          continue  # revoked since it was fetched
        state.emitted.append(message.offset())
        state.read_next = message.offset() + 1
        records.append(_record(message, self._address.max_bytes))
    if self._wm is not None:
      self._wm.coming(partition_of(record) for record in records)
    return records

  def stalled(self):
    return self._stalled_since is not None or self._health.down_since is not None

  def written(self, positions: Dict[Tuple[str, int], List[int]]) -> None:
    """Marks records written and commits each partition up to its first unwritten record."""
    with self._lock:
      for tp, offsets in positions.items():
        state = self._partitions.get(tp) or self._parked.get(tp)
        if state is not None:
          state.written.update(offsets)
      for offset in self._committable(positions):
        self._to_commit[(offset.topic, offset.partition)] = offset
      self._lock.notify_all()

  def _committable(self, partitions) -> list:
    from confluent_kafka import TopicPartition
    offsets = []
    for tp in partitions:
      state = self._partitions.get(tp)
      if state is None:
        continue
      offset = state.commit_to()
      if offset is not None and offset != state.committed:
        state.committed = offset
        offsets.append(TopicPartition(tp[0], tp[1], offset))
    return offsets

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
      pending = sum(len(state.emitted) for state in self._partitions.values())
      buffered = len(self._buffer)
    return {'source_pending': pending + buffered, 'source_lag': sum(self._lag.values())}

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
      offsets = list(self._to_commit.values()) + self._committable(list(self._partitions))
    if offsets:
      self._commit(_latest(offsets), asynchronous=False)
    try:
      self._consumer.close()  # leaves the group at once: no wait for a session timeout
    except RuntimeError:
      pass
    self._consumer = None


def _latest(offsets) -> list:
  """One offset per partition, the highest, from TopicPartitions."""
  latest = {}
  for offset in offsets:
    key = (offset.topic, offset.partition)
    if key not in latest or offset.offset > latest[key].offset:
      latest[key] = offset
  return list(latest.values())


def _names(partitions) -> str:
  return ', '.join(f'{p.topic}/{p.partition}' for p in partitions) or 'nothing'


def _sources(written) -> List[str]:
  if isinstance(written, WindowRows):
    return [row.event.source for row in written.rows]
  if isinstance(written, DeadLetterBatch):
    return [letter.source for letter in written.letters]
  return []


class _CommitFn(beam.DoFn):

  def __init__(self, address: KafkaAddress, job: str):
    self._key = address.key()
    self._job = job

  def process(self, written):
    positions = kafka_positions(_sources(written))
    for reader in job_state.of(self._job).readers(self._key):
      reader.written(positions)
    yield sum(len(offsets) for offsets in positions.values())


class CommitKafkaOffsets(beam.PTransform):
  """Reports written WindowRows and DeadLetterBatches to the reader, which commits offsets.

  Applied after the writes, so a partition's offset moves only past records
  whose rows or dead letters are durably stored; a crash before that leaves
  them uncommitted, and the group reads them again.
  """

  def __init__(self, address: KafkaAddress, job: str = ''):
    super().__init__()
    self._address = address
    self._job = job

  def expand(self, written):
    return written | 'Commit offsets' >> beam.ParDo(_CommitFn(self._address, self._job))


class ReadKafkaTopics(beam.PTransform):
  """kafka://BROKERS/TOPICS?group=G as RawRecords: confluent-kafka locally, KafkaIO elsewhere."""

  def __init__(self, uri: str, event_time_us, max_out_of_orderness_s: float,
               poll_interval_s: float = 0.2, job: str = '', local: bool = True):
    """Args: job: the job's token (transforms.job_state); local: JobConfig.local."""
    super().__init__()
    self._uri = uri
    self._job = job
    self._local = local
    self._address = KafkaAddress.parse(uri)
    KafkaReader(self._address)  # checks the address here rather than on a worker
    self._event_time_us = event_time_us
    self._disorder_s = max_out_of_orderness_s
    self._poll_interval_s = poll_interval_s

  def expand(self, pbegin):
    _say_which(self._local, self._address.describe(), 'source')
    if not self._local:
      return pbegin | ReadKafka(self._uri, self._disorder_s)
    address, job = self._address, self._job
    return pbegin | ReadLive(lambda: KafkaReader(address, job), self._event_time_us,
                             self._disorder_s, self._poll_interval_s, job=job)


class _ProduceFn(beam.DoFn):

  def __init__(self, address: KafkaAddress, model: str, policy: faults.WritePolicy):
    self._address = address
    self._model = model
    self._policy = policy
    self._producer = None

  def setup(self):
    self._producer = producer(self._address)

  def teardown(self):
    if self._producer is not None:
      self._producer.flush(10)

  def process(self, batch: WindowRows):
    try:
      send(self._producer, self._address, kafka_records(batch, self._model), 'sink',
           self._policy)
    except faults.WriteAbandoned:
      pass  # not passed on: nothing behind it is committed
    else:
      yield batch


def producer(address: KafkaAddress):
  """An idempotent producer: the broker drops the copies its own retries would add."""
  from confluent_kafka import Producer
  return Producer(address.client_config(**{'enable.idempotence': 'true', 'acks': 'all',
                                           'linger.ms': '5'}), logger=_logger())


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
    if time.monotonic() - started > _STALL_S:
      health.lost(f'records not acknowledged after {_STALL_S:g} s')
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


class WriteKafkaTopic(beam.PTransform):
  """Produces each enriched row as JSON keyed by event id, flushed before the WindowRows
  are passed on (so the source commits only what the broker has); KafkaIO elsewhere."""

  def __init__(self, uri: str, model: str, policy: faults.WritePolicy = faults.WritePolicy(),
               local: bool = True):
    """Args: policy: the job's WritePolicy; local: JobConfig.local (KafkaIO when False)."""
    super().__init__()
    self._uri = uri
    self._address = KafkaAddress.parse(uri)
    if len(self._address.topics) != 1:
      raise ValueError(f'{self._address.describe()}: a sink writes to one topic')
    self._model = model
    self._policy = policy
    self._local = local

  def expand(self, windows):
    _say_which(self._local, self._address.describe(), 'sink')
    if not self._local:
      return windows | WriteKafka(parse_sink(self._uri.split('?')[0], ''), self._model)
    return windows | 'Produce rows' >> beam.ParDo(
        _ProduceFn(self._address, self._model, self._policy))


def check_kafka(address: KafkaAddress, role: str, timeout_s: float = 3.0) -> Optional[str]:
  """Why the job could not use `address` (unreachable, refused credentials, a missing
  topic), or None. Lists every topic: asking for one by name may create it."""
  from confluent_kafka import KafkaError, KafkaException
  from confluent_kafka.admin import AdminClient
  errors = []
  client = AdminClient(address.client_config(**{
      'socket.connection.setup.timeout.ms': str(int(timeout_s * 1000)),
      'error_cb': errors.append}), logger=_logger())
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


_REFUSED = frozenset({-169, 58})  # KafkaError._AUTHENTICATION, SASL_AUTHENTICATION_FAILED


def _first(errors, fallback) -> str:
  for error in errors:
    if error.code() in _REFUSED:
      return error.str()
  return (errors[0] if errors else fallback).str()
