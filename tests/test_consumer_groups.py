"""Consumer groups: a live peer's work is never claimed, a dead one's is, periodically, and
silent consumers leave the group. Against a real redis-server; real time passes."""
import json
import time

from tests.redis_server import redis_server
from transforms.io.redis_streams import RedisStreamAddress, RedisStreamReader, claim_idle_s
from transforms.windowing import WindowSpec

IDLE_MS = 400


def _reader(url, consumer):
  reader = RedisStreamReader(
      RedisStreamAddress.parse(f'{url}?stream=ev&group=g&consumer={consumer}'),
      block_ms=10, claim_idle_ms=IDLE_MS)
  reader.open()
  return reader


def _poll_for(reader, seconds):
  got, until = [], time.monotonic() + seconds
  while time.monotonic() < until:
    got += reader.poll(100)
    time.sleep(0.02)
  return got


def test_the_claim_threshold_follows_the_job_s_settings():
  assert claim_idle_s(WindowSpec(60, allowed_lateness_s=30, max_out_of_orderness_s=10)) == (
      60 + 30 + 10 + 120)
  assert claim_idle_s(WindowSpec(60, session_gap_s=5)) == 5 + 0 + 10 + 120


def test_a_live_peer_s_backlog_is_never_claimed_a_dead_one_s_is_and_it_leaves_the_group():
  with redis_server() as url:
    busy = _reader(url, 'busy')
    client = busy._client
    for n in range(50):
      client.xadd('ev', {'event': json.dumps({'n': n})})
    backlog = busy.poll(100)
    assert len(backlog) == 50  # pending, unacknowledged: its windows are still open
    newcomer = _reader(url, 'newcomer')
    # Both poll for several claim thresholds: the busy peer keeps its entries fresh.
    until = time.monotonic() + 5 * IDLE_MS / 1000
    taken = []
    while time.monotonic() < until:
      busy.poll(100)
      taken += newcomer.poll(100)
      time.sleep(0.02)
    assert taken == []
    assert client.xpending('ev', 'g')['consumers'] == [{'name': b'busy', 'pending': 50}]
    # The busy consumer dies (polls no more): its entries are claimed once they idle.
    taken = _poll_for(newcomer, 4 * IDLE_MS / 1000)
    assert sorted(json.loads(r.raw)['n'] for r in taken) == list(range(50))
    assert client.xpending('ev', 'g')['consumers'] == [{'name': b'newcomer', 'pending': 50}]
    # Silent for ten thresholds with nothing pending: removed from the group.
    _poll_for(newcomer, 12 * IDLE_MS / 1000)
    names = [c['name'] for c in client.xinfo_consumers('ev', 'g')]
    assert names == [b'newcomer']


def test_reading_pauses_while_too_much_is_in_flight_and_reads_fit_a_byte_budget():
  with redis_server() as url:
    address = RedisStreamAddress.parse(f'{url}?stream=ev&group=g&consumer=c')
    reader = RedisStreamReader(address, block_ms=10, max_in_flight=30, read_bytes=250_000)
    reader.open()
    client = reader._client
    for n in range(100):
      client.xadd('ev', {'event': json.dumps({'n': n, 'text': 'x' * 100_000})})
    sizes = [len(reader.poll(10)) for _ in range(20)]
    assert sizes[0] == 10 and max(sizes[1:]) <= 2  # ~100 KB entries: 2 fit 250 KB
    assert sum(sizes) == 30 and sizes[-1] == 0  # paused: 30 in flight
    ids = [entry_id for entry_id, _ in client.xrange('ev', count=10)]
    client.xack('ev', 'g', *ids)  # ten written and acknowledged: ten more may be read
    assert sum(len(reader.poll(10)) for _ in range(20)) == 10
