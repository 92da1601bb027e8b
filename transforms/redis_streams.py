"""Redis Streams addresses and the small client calls the job makes.

`redis://HOST:PORT/DB?stream=NAME&group=GROUP&field=event&consumer=NAME`
names a stream, the consumer group that reads it, the entry field holding
the JSON event, and this reader's consumer name.
"""
import socket
import urllib.parse
from typing import List, NamedTuple, Optional

import apache_beam as beam

from transforms.live_sources import Reader
from transforms.records import RawRecord, decoded_record
from transforms.sinks import WindowRows, enriched_records, record_json
from transforms.uri_query import uri_query


class RedisStreamAddress(NamedTuple):
  host: str
  port: int
  db: int
  stream: str
  group: Optional[str] = None
  field: str = 'event'
  consumer: Optional[str] = None

  @classmethod
  def parse(cls, uri: str, default_stream: Optional[str] = None) -> 'RedisStreamAddress':
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != 'redis':
      raise ValueError(f'not a redis:// address: {uri}')
    query = uri_query(uri)
    unknown = set(query) - {'stream', 'group', 'field', 'consumer'}
    if unknown:
      raise ValueError(f'unknown parameter(s) {", ".join(sorted(unknown))} in {uri}')
    stream = query.get('stream', default_stream)
    if not stream:
      raise ValueError(f'{uri} names no stream (add ?stream=NAME)')
    path = parsed.path.strip('/')
    try:
      db = int(path) if path else 0
    except ValueError:
      raise ValueError(f'the database in {uri} must be a number') from None
    return cls(parsed.hostname or '127.0.0.1', parsed.port or 6379, db, stream,
               query.get('group'), query.get('field', 'event'), query.get('consumer'))

  def client(self):
    import redis
    return redis.Redis(host=self.host, port=self.port, db=self.db,
                       socket_connect_timeout=5, health_check_interval=30)

  def consumer_name(self) -> str:
    """This reader's name in its group: stable across restarts on one host."""
    return self.consumer or f'{socket.gethostname()}-enrich'

  def describe(self) -> str:
    return f'redis://{self.host}:{self.port}/{self.db} stream {self.stream}'


class RedisStreamReader(Reader):
  """Reads a stream through a consumer group, at least once.

  On start it first re-reads this consumer's own pending entries (delivered
  before a crash, never acknowledged), then claims entries that other
  consumers left pending for `claim_idle_ms` (XAUTOCLAIM), then reads new ones.
  Entries stay pending until AcknowledgeRedisEntries acknowledges them after
  their rows or dead letters are written.
  """

  def __init__(self, address: RedisStreamAddress, block_ms: int = 100,
               claim_idle_ms: int = 30_000):
    if not address.group:
      raise ValueError(f'{address.describe()}: a source needs a consumer group (?group=NAME)')
    self._address = address
    self._block_ms = block_ms
    self._claim_idle_ms = claim_idle_ms
    self._client = None
    self._phase = 'own'
    self._cursor = '0-0'
    self._seen = set()  # entry ids emitted before the claim scan ends, still in flight

  def open(self):
    import redis
    self._client = self._address.client()
    try:
      self._client.xgroup_create(self._address.stream, self._address.group, id='0',
                                 mkstream=True)
    except redis.ResponseError as e:
      if 'BUSYGROUP' not in str(e):
        raise
    self._phase, self._cursor, self._seen = 'own', '0-0', set()

  def poll(self, max_records):
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
      # past claim_idle_ms: those re-read above, or read new while the scan
      # goes on, whose windows are still open. Emitting them again would
      # duplicate them (and make them late).
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

  def close(self):
    if self._client is not None:
      self._client.close()


def entry_ids(sources, stream: str) -> List[str]:
  """The entry ids among `file:line`-style sources that belong to `stream`."""
  ids = []
  for source in sources:
    name, _, entry_id = source.rpartition(':')
    if name == stream:
      ids.append(entry_id)
  return ids


class _RedisClientFn(beam.DoFn):
  """A DoFn holding one Redis client per instance, opened in setup()."""

  def __init__(self, address: RedisStreamAddress):
    self._address = address
    self._client = None

  def setup(self):
    self._client = self._address.client()

  def teardown(self):
    if self._client is not None:
      self._client.close()


class _AcknowledgeFn(_RedisClientFn):

  def process(self, written):
    if isinstance(written, WindowRows):
      sources = [row.event.source for row in written.rows]
    else:
      sources = [letter.source for letter in written.letters]
    ids = entry_ids(sources, self._address.stream)
    if ids:
      self._client.xack(self._address.stream, self._address.group, *ids)
    yield len(ids)


class AcknowledgeRedisEntries(beam.PTransform):
  """XACKs the entries behind written WindowRows and DeadLetterBatches.

  Applied after the writes, so an entry is acknowledged only once its row or
  dead letter is durably stored; a crash before that leaves it pending, and
  the next start reads it again.
  """

  def __init__(self, address: RedisStreamAddress):
    super().__init__()
    self._address = address

  def expand(self, written):
    return written | 'XACK' >> beam.ParDo(_AcknowledgeFn(self._address))


class _XaddFn(_RedisClientFn):

  def __init__(self, address: RedisStreamAddress, model: str):
    super().__init__(address)
    self._model = model

  def process(self, batch: WindowRows):
    pipe = self._client.pipeline(transaction=False)
    for record in enriched_records(batch, self._model):
      pipe.xadd(self._address.stream, {self._address.field: record_json(record)})
    pipe.execute()
    yield batch


class WriteRedisStream(beam.PTransform):
  """XADDs each enriched row as JSON to a Redis Stream; passes the WindowRows on.

  The JSON holds every Parquet column (the embedding as a list) and the derived ones.
  """

  def __init__(self, address: RedisStreamAddress, model: str):
    super().__init__()
    self._address = address
    self._model = model

  def expand(self, windows):
    return windows | 'XADD rows' >> beam.ParDo(_XaddFn(self._address, self._model))
