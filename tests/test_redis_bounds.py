"""Redis over months: the sink stream trimmed, rows handed to it again added once, a wrong
field= refused at start.
Against real redis-server processes."""
import json
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pytest

from tests.conftest import ROOT
from tests.redis_server import started
from tests.runners import batch_pipeline
from transforms import records as r
from transforms.io.redis_streams import WriteRedisStream
from transforms.io.targets import DEFAULT_REDIS_DEDUP_S, DEFAULT_REDIS_MAXLEN, parse_sink

S = 1_000_000


def _windows(count, rows):
  out = []
  for w in range(count):
    out.append(r.WindowRows(w * 10 * S, (w + 1) * 10 * S, 0, [
        r.Embedded(r.Event(f'e{w}-{n}', w * 10 * S, 't', f's:{w}-{n}', 's', ''),
                   np.zeros(4, np.float32)) for n in range(rows)]))
  return out


def test_the_redis_sink_is_trimmed_to_about_maxlen(tmp_path):
  with started() as server:
    target = parse_sink(f'{server.url()}?stream=out&maxlen=200', str(tmp_path))
    assert target.maxlen == 200 and target.address.stream == 'out'
    assert parse_sink(f'{server.url()}?stream=out', str(tmp_path)).maxlen == DEFAULT_REDIS_MAXLEN
    with pytest.raises(ValueError, match='maxlen'):
      parse_sink(f'{server.url()}?stream=out&maxlen=lots', str(tmp_path))
    with batch_pipeline() as p:
      _ = (p | beam.Create(_windows(30, 100), reshuffle=False)
           | WriteRedisStream(target.address, 'm', maxlen=target.maxlen, dedup_s=target.dedup_s))
    length = server.client().xlen('out')
    # Approximate trimming removes whole nodes (100 entries each by default).
    assert 200 <= length <= 400, length
    untrimmed = parse_sink(f'{server.url()}?stream=all&maxlen=0', str(tmp_path))
    with batch_pipeline() as p:
      _ = (p | beam.Create(_windows(5, 100), reshuffle=False)
           | WriteRedisStream(untrimmed.address, 'm', maxlen=untrimmed.maxlen))
    assert server.client().xlen('all') == 500


def _write(target, windows, model='m'):
  with batch_pipeline() as p:
    _ = (p | beam.Create(windows, reshuffle=False)
         | WriteRedisStream(target.address, model, maxlen=target.maxlen, dedup_s=target.dedup_s))


def test_rows_handed_to_the_redis_sink_again_are_added_once(tmp_path):
  # As after a kill between the sink's write and the source's acknowledgement: the same
  # window firings written again (and Redis's script cache emptied, as by a restart).
  with started() as server:
    client = server.client()
    target = parse_sink(f'{server.url()}?stream=out', str(tmp_path))
    assert target.dedup_s == DEFAULT_REDIS_DEDUP_S
    windows = _windows(3, 20)
    _write(target, windows)
    client.script_flush()
    _write(target, windows[1:] + _windows(4, 20)[3:])
    entries = [json.loads(fields[b'event']) for _, fields in client.xrange('out')]
    assert len(entries) == 80
    assert len({(e['source'], e['window_start']) for e in entries}) == 80
    ttl_ms = client.pttl('out:added:0-10000000')
    assert 0 < ttl_ms <= DEFAULT_REDIS_DEDUP_S * 1000
    _write(target, windows, model='another-model')  # a new model's rows are new rows
    assert client.xlen('out') == 140
    remembered_not = parse_sink(f'{server.url()}?stream=plain&dedup_s=0', str(tmp_path))
    _write(remembered_not, windows)
    _write(remembered_not, windows)
    assert client.xlen('plain') == 120 and not client.keys('plain:added:*')
    with pytest.raises(ValueError, match='dedup_s'):
      parse_sink(f'{server.url()}?stream=out&dedup_s=soon', str(tmp_path))


def test_a_wrong_field_is_refused_at_start_with_one_line(tmp_path):
  with started() as server:
    client = server.client()
    for n in range(5):
      client.xadd('ev', {'event': json.dumps({'id': n, 'text': 'x'})})
    done = subprocess.run(
        [sys.executable, '-m', 'pipelines.stream', '--source',
         f'{server.url()}?stream=ev&group=g&field=body', '--output', str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "has the field 'body' (they hold event)" in lines[0]
    assert client.xpending('ev', 'g')['pending'] == 0  # nothing read, nothing acknowledged
