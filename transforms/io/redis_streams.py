"""Redis Streams: the consumer-group reader, the sink and the acknowledgements.

Addresses (transforms.io.redis_urls) name a stream, the consumer group that
reads it, the entry field holding the JSON event, and this reader's consumer
name. Outages are ridden out (transforms.io.faults): the reader keeps polling
with backoff, the sink and the acknowledgements retry for a bounded time.
"""
import logging
import time
from typing import List

import apache_beam as beam

from transforms import job_state
from transforms.io import faults
from transforms.io.live_sources import Reader
from transforms.records import RawRecord, decoded_record
from transforms.io.formats import enriched_records, record_json
from transforms.records import WindowRows
from transforms.io.redis_urls import RedisStreamAddress


def _outages():
  """The redis-py errors of a server that is down, restarting or refusing us; retried."""
  import redis
  return (redis.ConnectionError, redis.TimeoutError)


class RedisStreamReader(Reader):
  """Reads a stream through a consumer group, at least once.

  On start it first re-reads this consumer's own pending entries (delivered
  before a crash, never acknowledged), then claims entries that other
  consumers left pending for `claim_idle_ms` (XAUTOCLAIM), then reads new ones.
  Entries stay pending until AcknowledgeRedisEntries acknowledges them after
  their rows or dead letters are written.
  """

  def __init__(self, address: RedisStreamAddress, block_ms: int = 100,
               claim_idle_ms: int = 30_000, job: str = ''):
    """Args: job: the job's token (transforms.job_state.of), whose health this source reports."""
    if not address.group:
      raise ValueError(f'{address.describe()}: a source needs a consumer group (?group=NAME)')
    self._address = address
    self._block_ms = block_ms
    self._claim_idle_ms = claim_idle_ms
    self._job = job
    self._client = None
    self._phase = 'own'
    self._cursor = '0-0'
    self._seen = set()  # entry ids emitted before the claim scan ends, still in flight

  def open(self):
    self._client = self._address.client()
    self._health = job_state.of(self._job).dependency(
        f'source {self._address.server()}')
    self._backoff, self._retry_at = faults.Backoff(), 0.0
    self._has_group = False
    self._phase, self._cursor, self._seen = 'own', '0-0', set()

  def stalled(self) -> bool:
    return self._health.down_since is not None

  def poll(self, max_records):
    """The next records; [] while the server is unreachable (retried with backoff)."""
    import redis
    if time.monotonic() < self._retry_at:
      return []
    try:
      if not self._has_group:
        ensure_group(self._client, self._address)
        self._has_group = True
      records = self._poll(max_records)
    except _outages() as e:
      self._health.lost(faults.error_text(e))
      self._retry_at = time.monotonic() + self._backoff.next()
      return []
    except redis.ResponseError as e:
      if 'NOGROUP' not in str(e):
        raise
      # The server restarted without the group (no persistence): create it
      # again and start over from this consumer's own pending entries.
      logging.warning('%s: consumer group %s is gone; creating it again',
                      self._address.describe(), self._address.group)
      self._has_group, self._phase, self._cursor = False, 'own', '0-0'
      self._seen = set()
      return []
    self._health.ok()
    self._backoff.reset()
    return records

  def _poll(self, max_records):
    address = self._address
    consumer = address.consumer_name()
    if self._phase == 'own':
      reply = self._client.xreadgroup(address.group, consumer, {address.stream: self._cursor},
                                      count=max_records)
      entries = reply[0][1] if reply else []
      if entries:
        self._cursor = entries[-1][0]
        return self._records(entries)
      self._phase, self._cursor = 'claim', '0-0'
    if self._phase == 'claim':
      reply = self._client.xautoclaim(address.stream, address.group, consumer,
                                      min_idle_time=self._claim_idle_ms,
                                      start_id=self._cursor, count=max_records)
      self._cursor = reply[0]
      # XAUTOCLAIM also returns this consumer's own entries once they idle
      # past claim_idle_ms: those re-read above (re-reading does not reset their
      # idle time), or read new while the scan goes on, whose windows are still
      # open. Emitting them again would duplicate them (and make them late).
      entries = [entry for entry in reply[1] if entry[0] not in self._seen]
      if self._cursor in (b'0-0', '0-0'):
        self._phase, self._seen = 'new', set()
      if entries:
        return self._records(entries)
    reply = self._client.xreadgroup(address.group, consumer, {address.stream: '>'},
                                    count=max_records, block=self._block_ms)
    return self._records(reply[0][1]) if reply else []

  def _records(self, entries) -> List[RawRecord]:
    if self._phase != 'new':
      self._seen.update(entry_id for entry_id, _ in entries)
    field = self._address.field.encode()
    records = []
    for entry_id, fields in entries:
      entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
      records.append(decoded_record((fields or {}).get(field, b''), self._address.stream,
                                    entry_id))
    return records

  def gauges(self):
    """source_pending: entries delivered to the group, not yet acknowledged; source_lag:
    entries not yet delivered (Redis 7+)."""
    import redis
    try:
      groups = self._client.xinfo_groups(self._address.stream)
    except redis.RedisError:
      return {}  # an outage is the reader's to report, not the gauges'
    for group in groups:
      name = group.get('name')
      if (name.decode() if isinstance(name, bytes) else name) == self._address.group:
        return {'source_pending': group.get('pending'), 'source_lag': group.get('lag')}
    return {}

  def close(self):
    if self._client is not None:
      self._client.close()


def ensure_group(client, address: RedisStreamAddress) -> None:
  """Creates the address's consumer group (and its stream) unless it exists."""
  import redis
  try:
    client.xgroup_create(address.stream, address.group, id='0', mkstream=True)
  except redis.ResponseError as e:
    if 'BUSYGROUP' not in str(e):
      raise


def entry_ids(sources, stream: str) -> List[str]:
  """The entry ids among `file:line`-style sources that belong to `stream`."""
  ids = []
  for source in sources:
    name, _, entry_id = source.rpartition(':')
    if name == stream:
      ids.append(entry_id)
  return ids


class _RedisClientFn(beam.DoFn):
  """A DoFn holding one Redis client per instance, opened in setup(); its calls ride out outages.

  role: `source` or `sink`: outages are logged per role and server.
  """

  def __init__(self, address: RedisStreamAddress, role: str, policy: faults.WritePolicy):
    self._address = address
    self._role = role
    self._policy = policy
    self._client = None

  def setup(self):
    self._client = self._address.client()

  def teardown(self):
    if self._client is not None:
      self._client.close()

  def _call(self, call, what: str):
    """call(), retried; raises faults.WriteAbandoned when the job is stopping."""
    return faults.retry(call, self._policy, f'{self._role} {self._address.server()}',
                        f'{what} {self._address.describe()}', _outages())


class _AcknowledgeFn(_RedisClientFn):

  def __init__(self, address: RedisStreamAddress, role: str, policy: faults.WritePolicy,
               window=None):
    super().__init__(address, role, policy)
    self._window = window

  def process(self, written):
    if isinstance(written, WindowRows):
      # Sliding windows: an entry is done once its last window is written; a kill before
      # that would otherwise lose it from the windows still open.
      sources = [row.event.source for row in written.rows
                 if self._window is None
                 or self._window.in_last_window(row.event.event_time_us, written.start_us)]
    else:
      sources = [letter.source for letter in written.letters]
    ids = entry_ids(sources, self._address.stream)
    try:
      if ids:
        self._call(lambda: self._client.xack(self._address.stream, self._address.group, *ids),
                   'cannot acknowledge entries of')
    except faults.WriteAbandoned:
      pass  # left pending: a restart reads them again
    else:
      yield len(ids)


class AcknowledgeRedisEntries(beam.PTransform):
  """XACKs the entries behind written WindowRows and DeadLetterBatches.

  Applied after the writes, so an entry is acknowledged only once its row or
  dead letter is durably stored; a crash before that leaves it pending, and
  the next start reads it again. With sliding windows (`window`, the job's WindowSpec) an
  entry is acknowledged with its last window.
  """

  def __init__(self, address: RedisStreamAddress,
               policy: faults.WritePolicy = faults.WritePolicy(), window=None):
    super().__init__()
    self._address = address
    self._policy = policy
    self._window = window

  def expand(self, written):
    return written | 'XACK' >> beam.ParDo(
        _AcknowledgeFn(self._address, 'source', self._policy, self._window))


class _XaddFn(_RedisClientFn):

  def __init__(self, address: RedisStreamAddress, model: str, policy: faults.WritePolicy,
               maxlen: int):
    super().__init__(address, 'sink', policy)
    self._model = model
    self._trim = {'maxlen': maxlen, 'approximate': True} if maxlen else {}

  def process(self, batch: WindowRows):
    def send():
      pipe = self._client.pipeline(transaction=False)
      for record in enriched_records(batch, self._model):
        pipe.xadd(self._address.stream, {self._address.field: record_json(record)},
                  **self._trim)
      pipe.execute()

    try:
      self._call(send, 'cannot add entries to')
    except faults.WriteAbandoned:
      pass  # not passed on: nothing behind it is acknowledged
    else:
      yield batch


class WriteRedisStream(beam.PTransform):
  """XADDs each enriched row as JSON to a Redis Stream; passes the WindowRows on.

  The JSON holds every Parquet column (the embedding as a list) and the derived ones.
  A retried XADD after a lost connection may add a row twice (at least once). The stream
  is trimmed to about `maxlen` entries (XADD MAXLEN ~; 0: never trimmed).
  """

  def __init__(self, address: RedisStreamAddress, model: str,
               policy: faults.WritePolicy = faults.WritePolicy(), maxlen: int = 0):
    super().__init__()
    self._address = address
    self._model = model
    self._policy = policy
    self._maxlen = maxlen

  def expand(self, windows):
    return windows | 'XADD rows' >> beam.ParDo(
        _XaddFn(self._address, self._model, self._policy, self._maxlen))
