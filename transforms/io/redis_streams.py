"""Redis Streams: the sink and the acknowledgements (the reader: transforms.io.redis_source).

Addresses (transforms.io.redis_urls) name a stream, the consumer group that
reads it, the entry field holding the JSON event, and this reader's consumer
name. Outages are ridden out (transforms.io.faults): the reader keeps polling
with backoff, the sink and the acknowledgements retry for a bounded time.
"""
from typing import List

import apache_beam as beam

from transforms.io import faults
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
