"""Streaming parts at function level: addresses, readers against a real Redis, options."""
import json

import pytest
import redis

from pipelines import stream
from pipelines.options import ConfigError
from tests.redis_server import redis_server
from transforms.eventtime import TimeParser
from transforms.fields import FieldMapping
from transforms.io.live_sources import ArchiveReader, EventTimeOf, _StreamWatermark
from transforms.records import RawRecord
from transforms.io.redis_streams import RedisStreamAddress, RedisStreamReader, entry_ids


def test_redis_addresses():
  address = RedisStreamAddress.parse('redis://h:7000/2?stream=s&group=g&field=body')
  assert address[:4] == ('redis://h:7000/2', 's', 'g', 'body')
  assert RedisStreamAddress.parse('redis://h?stream=s').url == 'redis://h'
  for bad in ('redis://h:1/0', 'redis://h:1/x?stream=s', 'redis://h/0?stream=s&colour=red',
              'kafka://h/0?stream=s'):
    with pytest.raises(ValueError):
      RedisStreamAddress.parse(bad)
  with pytest.raises(ValueError, match='consumer group'):
    RedisStreamReader(RedisStreamAddress.parse('redis://h/0?stream=s'))


def test_entry_ids_pick_the_stream():
  assert entry_ids(['a:1-0', 'a:b:2-0', 'a:3-1', 'file.jsonl:4'], 'a') == ['1-0', '3-1']


def test_event_time_of_reads_the_mapping():
  of = EventTimeOf(FieldMapping.from_flags(None, 'meta.t', 'x'), TimeParser())
  assert of(RawRecord(json.dumps({'meta': {'t': 2}}), 's', 1)) == 2_000_000
  assert of(RawRecord('{broken', 's', 1)) is None
  assert of(RawRecord('[1]', 's', 1)) is None


def test_watermark_trails_newest_event_and_follows_the_clock_when_idle(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr('transforms.io.live_sources.time.monotonic', lambda: clock[0])
  mark = _StreamWatermark(max_out_of_orderness_s=2, idle_after_s=2)
  mark.observe(10_000_000)
  mark.observe(8_000_000)  # older: no change
  assert mark.watermark_us == 8_000_000
  clock[0] += 1
  mark.idle()
  assert mark.watermark_us == 8_000_000  # not idle long enough
  clock[0] += 4
  mark.idle()
  assert mark.watermark_us == 10_000_000 + 5_000_000 - 2_000_000


def test_archive_reader_ends(tmp_path):
  (tmp_path / 'a.jsonl').write_text('{"t": 1}\n{"t": 2}\n{"t": 3}\n')
  reader = ArchiveReader(str(tmp_path / '*.jsonl'))
  reader.open()
  assert [r.position for r in reader.poll(2)] == [1, 2]
  assert not reader.exhausted()
  assert [r.position for r in reader.poll(2)] == [3]
  assert reader.exhausted()


def test_redis_reader_rereads_its_own_pending_entries_then_claims_others():
  with redis_server() as url:
    client = redis.Redis.from_url(url)
    for n in range(5):
      client.xadd('events', {'event': json.dumps({'n': n})})
    client.xadd('events', {'event': b'\xff\xfe'})
    address = RedisStreamAddress.parse(f'{url}?stream=events&group=g&consumer=me')
    first = RedisStreamReader(address, block_ms=10)
    first.open()
    got = first.poll(3)
    assert [json.loads(r.raw)['n'] for r in got] == [0, 1, 2]
    assert got[0].source.startswith('events:')
    # A restart with the same consumer name sees the unacknowledged entries again.
    again = RedisStreamReader(address, block_ms=10)
    again.open()
    assert [r.position for r in again.poll(10)] == [r.position for r in got]
    rest = again.poll(10)
    assert [json.loads(r.raw)['n'] for r in rest[:2]] == [3, 4]
    assert rest[2].decode_error and 'UTF-8' in rest[2].decode_error
    client.xack('events', 'g', *[r.position for r in got])
    # Another consumer claims what `me` left pending once it has been idle long enough.
    other = RedisStreamReader(RedisStreamAddress.parse(f'{url}?stream=events&group=g&consumer=you'),
                              block_ms=10, claim_idle_ms=0)
    other.open()
    claimed = []
    for _ in range(3):
      claimed += other.poll(10)
    assert sorted(r.position for r in claimed) == sorted(r.position for r in rest)


def _restarted_after_delivering(url: str, entries: int):
  """Adds `entries` events, delivers them to consumer `me` without acknowledging them (a
  crash), and returns the client and a restarted reader that claims any idle entry."""
  client = redis.Redis.from_url(url)
  for n in range(entries):
    client.xadd('events', {'event': json.dumps({'n': n})})
  address = RedisStreamAddress.parse(f'{url}?stream=events&group=g&consumer=me')
  first = RedisStreamReader(address, block_ms=10)
  first.open()
  assert len(first.poll(10)) == entries
  restarted = RedisStreamReader(address, block_ms=10, claim_idle_ms=0)
  restarted.open()
  return client, restarted


def test_a_restarted_reader_does_not_claim_back_its_own_entries_in_flight():
  """Found by benchmarks.chaos: a restart slower than claim_idle_ms read every pending entry
  twice (once re-read, once claimed from itself), duplicating rows and making them late."""
  with redis_server() as url:
    client, again = _restarted_after_delivering(url, 5)
    seen = []
    for n in range(20):  # one entry per poll: the claim scan spans polls
      seen += [r.position for r in again.poll(1)]
      if n == 6:  # new entries read while the scan goes on must not be claimed back either
        client.xadd('events', {'event': json.dumps({'n': 5})})
        client.xadd('events', {'event': json.dumps({'n': 6})})
    assert len(seen) == len(set(seen)) == 7


def test_stream_refuses_stateful_batching_locally(tmp_path):
  with pytest.raises(ConfigError, match='max_batch_duration_secs'):
    stream.run(['--max_batch_duration_secs', '1', '--output', str(tmp_path)])
  with pytest.raises(ConfigError, match='unknown --source'):
    stream.run(['--source', 'mqtt://x/y', '--output', str(tmp_path)])
  with pytest.raises(ConfigError, match='unknown --sink'):
    stream.run(['--sink', 'mqtt://broker/t', '--output', str(tmp_path)])


def test_redis_reader_does_not_claim_the_entries_it_re_read():
  """A restart later than the claim idle time: its own pending entries come once, not twice."""
  with redis_server() as url:
    _, restarted = _restarted_after_delivering(url, 3)
    got = []
    for _ in range(4):  # own pending entries, then the claim phase, then new entries
      got += restarted.poll(10)
    assert sorted(json.loads(r.raw)['n'] for r in got) == [0, 1, 2]
