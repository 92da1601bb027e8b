"""Redis Streams: the sink and the acknowledgements (the reader: transforms.io.redis_source).

Addresses (transforms.io.redis_urls) name a stream, the consumer group that
reads it, the entry field holding the JSON event, and this reader's consumer
name. Outages are ridden out (transforms.io.faults): the reader keeps polling
with backoff, the sink and the acknowledgements retry for a bounded time.
"""
from typing import List

import apache_beam as beam

from transforms.io import faults
from transforms.io.done import done_sources
from transforms.io.formats import enriched_records, record_json
from transforms.records import WindowRows
from transforms.io.redis_urls import RedisStreamAddress
# The source lives in its own module; imported here where the stream's steps were always found.
from transforms.io.redis_source import (  # noqa: F401
    RedisStreamReader, _outages, claim_idle_s, ensure_group)


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
    ids = entry_ids(done_sources(written, self._window), self._address.stream)
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


# Adds the rows of one window firing that the window's set of added rows does not hold yet,
# in one atomic script: a retry, or the same rows after a restart, adds nothing twice.
# KEYS: the stream, the window's set. ARGV: the set's lifetime (ms), MAXLEN (0: none), the
# entry field, then (member, JSON) pairs.
_ADD_ONCE = """
local added = 0
for i = 4, #ARGV, 2 do
  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
    if ARGV[2] ~= '0' then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', ARGV[3], ARGV[i + 1])
    else
      redis.call('XADD', KEYS[1], '*', ARGV[3], ARGV[i + 1])
    end
    added = added + 1
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return added
"""


def added_rows_key(stream: str, batch: WindowRows) -> str:
  """The set of rows of a window the sink has added (members: row_member)."""
  return f'{stream}:added:{batch.start_us}-{batch.end_us}'


def row_member(record: dict) -> str:
  """A row's identity in the sink: its source entry and model (a new model's rows are new)."""
  return f'{record["source"]}|{record["model_fingerprint"] or record["model"]}'


class _XaddFn(_RedisClientFn):

  def __init__(self, address: RedisStreamAddress, model: str, policy: faults.WritePolicy,
               maxlen: int, dedup_s: int):
    super().__init__(address, 'sink', policy)
    self._model = model
    self._maxlen = maxlen
    self._trim = {'maxlen': maxlen, 'approximate': True} if maxlen else {}
    self._dedup_s = dedup_s

  def setup(self):
    super().setup()
    self._add_once = self._client.register_script(_ADD_ONCE)

  def process(self, batch: WindowRows):
    records = list(enriched_records(batch, self._model))
    field, stream = self._address.field, self._address.stream

    def send():
      if not records:
        return
      if self._dedup_s:
        pairs = [part for record in records for part in (row_member(record), record_json(record))]
        self._add_once(keys=[stream, added_rows_key(stream, batch)],
                       args=[self._dedup_s * 1000, self._maxlen, field, *pairs])
        return
      pipe = self._client.pipeline(transaction=False)
      for record in records:
        pipe.xadd(stream, {field: record_json(record)}, **self._trim)
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
  Each window firing's rows are added in one script that remembers, for `dedup_s`
  seconds, which rows (source entry and model) of that window it added: a write retried
  after a lost connection, or rows whose source entries were read again after a kill
  between the write and their acknowledgement, are not added twice. With `dedup_s=0` a
  row may be added twice then (at least once). The stream is trimmed to about `maxlen`
  entries (XADD MAXLEN ~; 0: never trimmed).
  """

  def __init__(self, address: RedisStreamAddress, model: str,
               policy: faults.WritePolicy = faults.WritePolicy(), maxlen: int = 0,
               dedup_s: int = 0):
    super().__init__()
    self._address = address
    self._model = model
    self._policy = policy
    self._maxlen = maxlen
    self._dedup_s = dedup_s

  def expand(self, windows):
    return windows | 'XADD rows' >> beam.ParDo(
        _XaddFn(self._address, self._model, self._policy, self._maxlen, self._dedup_s))
