"""The Redis Streams source: a consumer group's reader, its claims and its group's upkeep.

Addresses (transforms.io.redis_urls) name a stream, the consumer group that
reads it, the entry field holding the JSON event, and this reader's consumer
name. Outages are ridden out (transforms.io.faults): the reader keeps polling
with backoff.
"""
import logging
import time
from typing import List

from transforms import job_state
from transforms.io import faults
from transforms.io.live_sources import Reader
from transforms.io.redis_urls import RedisStreamAddress
from transforms.records import RawRecord, decoded_record


def _outages():
  """The redis-py errors of a server that is down, restarting or refusing us; retried."""
  import redis
  return (redis.ConnectionError, redis.TimeoutError)


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else value


def ensure_group(client, address: RedisStreamAddress) -> None:
  """Creates the address's consumer group (and its stream) unless it exists."""
  import redis
  try:
    client.xgroup_create(address.stream, address.group, id='0', mkstream=True)
  except redis.ResponseError as e:
    if 'BUSYGROUP' not in str(e):
      raise


# Beyond the window, lateness and disorder an entry waits for: inference under backlog, writes.
CLAIM_MARGIN_S = 120.0
# A consumer with nothing pending, silent this many claim thresholds, is removed from the group.
CONSUMER_EXPIRY_CLAIMS = 10
_PENDING_PAGE = 1000
# Entries one consumer holds read and unacknowledged before it pauses reading.
MAX_IN_FLIGHT = 20_000
# Bytes one XREADGROUP asks for (its COUNT sized by the entries seen so far).
READ_BYTES = 8 * 1024 * 1024


def claim_idle_s(window) -> float:
  """How long an entry may stay pending in a live job before a peer may claim it: its
  window (or session gap), the allowed lateness, the out-of-orderness, the source's slack
  and a margin (a `claim_idle=SECONDS` source parameter overrides it)."""
  span = window.session_gap_s if window.kind == 'sessions' else window.size_s
  return (span + window.allowed_lateness_s + window.max_out_of_orderness_s
          + window.source_slack_s + CLAIM_MARGIN_S)


class RedisStreamReader(Reader):
  """Reads a stream through a consumer group, at least once.

  On start it first re-reads this consumer's own pending entries (delivered
  before a crash, never acknowledged), then reads new ones. Every
  `claim_idle_ms / 3` it touches its own pending entries (XCLAIM to itself, JUSTID:
  their idle time restarts, so no peer claims the work of a live consumer, however
  long its backlog), claims other consumers' entries idle longer than `claim_idle_ms`
  (a dead consumer's: XPENDING IDLE, then XCLAIM) and removes consumers with nothing
  pending that were silent for CONSUMER_EXPIRY_CLAIMS thresholds. Entries stay pending
  until AcknowledgeRedisEntries acknowledges them after their rows or dead letters are
  written.

  Bounded: reading pauses while this consumer holds `max_in_flight` entries read but not
  acknowledged (backpressure: reading never runs far ahead of inference and writes), and
  each read asks for as many entries as fit `read_bytes` at the sizes seen so far.
  """

  def __init__(self, address: RedisStreamAddress, block_ms: int = 100,
               claim_idle_ms: int = 150_000, job: str = '',
               max_in_flight: int = MAX_IN_FLIGHT, read_bytes: int = READ_BYTES):
    """Args: job: the job's token (transforms.job_state.of), whose health this source reports."""
    if not address.group:
      raise ValueError(f'{address.describe()}: a source needs a consumer group (?group=NAME)')
    self._max_in_flight = max_in_flight
    self._read_bytes = read_bytes
    self._entry_bytes = 0.0  # a running mean of the entries' sizes
    self._address = address
    self._block_ms = block_ms
    self._claim_idle_ms = max(int(claim_idle_ms), 1)
    self._job = job
    self._client = None
    self._phase = 'own'
    self._cursor = '0-0'
    self._next_claim = 0.0

  def open(self):
    self._client = self._address.client()
    self._health = job_state.of(self._job).dependency(
        f'source {self._address.server()}')
    self._backoff, self._retry_at = faults.Backoff(), 0.0
    self._has_group = False
    self._phase, self._cursor = 'own', '0-0'
    self._next_claim = time.monotonic() + self._claim_idle_ms / 3000

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
      self._phase = 'new'
    if time.monotonic() >= self._next_claim:
      self._next_claim = time.monotonic() + self._claim_idle_ms / 3000
      claimed = self.claim(max_records)
      if claimed:
        return self._records(claimed)
    room = self._max_in_flight - self._in_flight(consumer)
    if room <= 0:
      time.sleep(self._block_ms / 1000)  # backpressure: what was read must be written first
      return []
    count = min(max_records, room)
    if self._entry_bytes:
      count = max(1, min(count, int(self._read_bytes // self._entry_bytes)))
    reply = self._client.xreadgroup(address.group, consumer, {address.stream: '>'},
                                    count=count, block=self._block_ms)
    entries = reply[0][1] if reply else []
    for _, fields in entries:
      size = sum(len(k) + len(v) for k, v in (fields or {}).items())
      self._entry_bytes = size if not self._entry_bytes else 0.9 * self._entry_bytes + 0.1 * size
    return self._records(entries)

  def _in_flight(self, consumer: str) -> int:
    """Entries this consumer read and has not acknowledged (its pending entries)."""
    for peer in self._client.xpending(self._address.stream, self._address.group)['consumers']:
      if _text(peer['name']) == consumer:
        return int(peer['pending'])
    return 0

  def claim(self, max_records: int):
    """Touches this consumer's pending entries, claims a dead peer's, removes long-silent
    peers; returns the entries claimed (see the class doc)."""
    address, me = self._address, self._address.consumer_name()
    start = '-'
    while True:  # touch our own, a page at a time
      page = self._client.xpending_range(address.stream, address.group, start, '+',
                                         _PENDING_PAGE, consumername=me)
      if not page:
        break
      self._client.xclaim(address.stream, address.group, me, 0,
                          [p['message_id'] for p in page], justid=True)
      if len(page) < _PENDING_PAGE:
        break
      start = '(' + _text(page[-1]['message_id'])
    idle = self._client.xpending_range(address.stream, address.group, '-', '+', max_records,
                                       idle=self._claim_idle_ms)
    ids = [p['message_id'] for p in idle if _text(p['consumer']) != me]
    claimed = [entry for entry in self._client.xclaim(
        address.stream, address.group, me, self._claim_idle_ms, ids) if entry[1] is not None
               ] if ids else []
    if claimed:
      logging.info('Claimed %d entries of %s idle over %.0f s from other consumers',
                   len(claimed), address.describe(), self._claim_idle_ms / 1000)
    for peer in self._client.xinfo_consumers(address.stream, address.group):
      name = _text(peer['name'])
      if (name != me and not peer.get('pending')
          and peer.get('idle', 0) > CONSUMER_EXPIRY_CLAIMS * self._claim_idle_ms):
        self._client.xgroup_delconsumer(address.stream, address.group, name)
        logging.info('Removed consumer %s from group %s: silent, nothing pending',
                     name, address.group)
    return claimed

  def _records(self, entries) -> List[RawRecord]:
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
