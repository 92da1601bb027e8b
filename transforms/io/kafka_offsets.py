"""Kafka offsets: what may be committed, and the step that reports written records.

The commit rule is the XACK rule of transforms.io.redis_streams applied to
offsets: a partition's offset is committed only up to its first record whose
row or dead letter is not yet durably written, so a commit never passes an
unwritten record, and a crash re-reads what was not written.
"""
from collections import deque
from typing import Dict, Iterable, List, Optional, Tuple

import apache_beam as beam

from transforms import job_state
from transforms.io.kafka_urls import KafkaAddress
from transforms.io.done import done_sources
from transforms.windowing import WindowSpec

TopicPartitionKey = Tuple[str, int]  # (topic, partition)


class PartitionOffsets:
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


class OffsetLedger:
  """The offsets of a reader's partitions: those it owns, those it gave up in a rebalance
  (parked until the next assignment, in case they come back), and the commits queued for
  the consumer's thread.

  Not thread-safe: KafkaReader calls it under its one lock, which the fetch
  thread, the rebalance callbacks and the job's threads share, so a rebalance
  never sees half of a `written` report.
  """

  def __init__(self):
    self._owned: Dict[TopicPartitionKey, PartitionOffsets] = {}
    self._parked: Dict[TopicPartitionKey, PartitionOffsets] = {}
    self._queued = {}  # (topic, partition) -> TopicPartition, for the consumer's thread

  def owns(self, tp: TopicPartitionKey) -> bool:
    return tp in self._owned

  def assign(self, tps: Iterable[TopicPartitionKey]) -> Dict[TopicPartitionKey, int]:
    """Takes partitions; returns, for those that came back, the offset to read on from (past
    what was handed out: its records are still ours to write). A commit refused while a
    partition was away is queued again. Parked partitions not given back went to others."""
    resume = {}
    for tp in tps:
      state = self._parked.pop(tp, None)
      if state is not None and state.read_next is not None:
        resume[tp], state.committed = state.read_next, None
      self._owned.setdefault(tp, state or PartitionOffsets())
      if tp in resume:
        self._queue(self._committable([tp]))
    self._parked.clear()  # their new owners read them again
    return resume

  def park(self, tps: Iterable[TopicPartitionKey]) -> None:
    """Partitions given up in a rebalance, kept until the next assignment: if one comes back
    (the range assignor often hands a member its partitions again), reading goes on after
    what was handed out, and no record of it is read twice."""
    for tp in tps:
      state = self._owned.pop(tp, None)
      if state is not None:
        self._parked[tp] = state

  def handed_out(self, tp: TopicPartitionKey, offset: int) -> bool:
    """Records an offset handed to the job; False when the partition is no longer ours."""
    state = self._owned.get(tp)
    if state is None:
      return False
    state.emitted.append(offset)
    state.read_next = offset + 1
    return True

  def written(self, positions: Dict[TopicPartitionKey, List[int]]) -> None:
    """Marks offsets written; queues each partition's commit up to its first unwritten one."""
    for tp, offsets in positions.items():
      state = self._owned.get(tp) or self._parked.get(tp)
      if state is not None:
        state.written.update(offsets)
    self._queue(self._committable(positions))

  def refused(self, offsets) -> None:
    """Commits the broker refused (TopicPartitions): made again in the next round, for the
    partitions still ours."""
    from confluent_kafka import TopicPartition
    for offset in offsets:
      tp = (offset.topic, offset.partition)
      state = self._owned.get(tp) or self._parked.get(tp)
      if state is not None and state.committed == offset.offset:
        state.committed = None
        if tp in self._owned and tp not in self._queued:
          self._queued[tp] = TopicPartition(offset.topic, offset.partition, offset.offset)

  def in_flight(self, tps: Optional[Iterable[TopicPartitionKey]] = None) -> int:
    """Records handed out and not yet written, of `tps` (default: every owned partition)."""
    tps = self._owned if tps is None else tps
    return sum(len(self._owned[tp].emitted) for tp in tps if tp in self._owned)

  def take_queued(self) -> list:
    """The commits queued so far, for the consumer's thread to send."""
    offsets, self._queued = list(self._queued.values()), {}
    return offsets

  def take(self, tps: Iterable[TopicPartitionKey]) -> list:
    """What may be committed now for `tps`, queued or not (a revocation commits it at once)."""
    tps = list(tps)
    return self._committable(tps) + [self._queued.pop(tp) for tp in tps if tp in self._queued]

  def take_all(self) -> list:
    """Everything that may be committed (the reader is closing)."""
    return self.take_queued() + self._committable(list(self._owned))

  def _queue(self, offsets) -> None:
    for offset in offsets:
      self._queued[(offset.topic, offset.partition)] = offset

  def _committable(self, tps) -> list:
    from confluent_kafka import TopicPartition
    offsets = []
    for tp in tps:
      state = self._owned.get(tp)
      if state is None:
        continue
      offset = state.commit_to()
      if offset is not None and offset != state.committed:
        state.committed = offset
        offsets.append(TopicPartition(tp[0], tp[1], offset))
    return offsets


def latest(offsets) -> list:
  """One offset per partition, the highest, from TopicPartitions."""
  found = {}
  for offset in offsets:
    key = (offset.topic, offset.partition)
    if key not in found or offset.offset > found[key].offset:
      found[key] = offset
  return list(found.values())


def kafka_positions(sources: Iterable[str]) -> Dict[TopicPartitionKey, List[int]]:
  """(topic, partition) -> offsets, from `TOPIC/PARTITION:OFFSET` sources; others skipped."""
  found: Dict[TopicPartitionKey, List[int]] = {}
  for source in sources:
    stream, _, offset = source.rpartition(':')
    topic, _, partition = stream.rpartition('/')
    if topic and partition.isdigit() and offset.isdigit():
      found.setdefault((topic, int(partition)), []).append(int(offset))
  return found


class _CommitFn(beam.DoFn):

  def __init__(self, address: KafkaAddress, job: str, window: Optional[WindowSpec]):
    self._key = address.key()
    self._job = job
    self._window = window

  def process(self, written):
    positions = kafka_positions(done_sources(written, self._window))
    for reader in job_state.of(self._job).readers(self._key):
      reader.written(positions)
    yield sum(len(offsets) for offsets in positions.values())


class CommitKafkaOffsets(beam.PTransform):
  """Reports written WindowRows and DeadLetterBatches to the reader, which commits offsets.

  Applied after the writes, so a partition's offset moves only past records
  whose rows or dead letters are durably stored; a crash before that leaves
  them uncommitted, and the group reads them again. With sliding windows (`window`, the
  job's WindowSpec) a record counts as written with its last window.
  """

  def __init__(self, address: KafkaAddress, job: str = '', window: Optional[WindowSpec] = None):
    super().__init__()
    self._address = address
    self._job = job
    self._window = window

  def expand(self, written):
    return written | 'Commit offsets' >> beam.ParDo(
        _CommitFn(self._address, self._job, self._window))
