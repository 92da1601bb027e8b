"""Secured Redis: passwords, ACL users, TLS and unix sockets through redis-py's URL handling.

Against real redis-server processes; the password never shows in what the job prints.
"""
import json
import shutil
import subprocess
import sys
import tempfile

import pytest
import redis

from pipelines.produce import produce
from tests.conftest import ROOT
from tests.redis_server import RedisServer, make_tls_files, started
from transforms.io.redis_streams import RedisStreamAddress, RedisStreamReader
from transforms.io.uri_query import redacted

SECRET = 'pa55-w0rd_only-in-tests'


def test_addresses_keep_the_job_parameters_and_hand_the_rest_to_redis_py():
  address = RedisStreamAddress.parse(
      f'rediss://alice:{SECRET}@h:7000/2?stream=s&group=g&field=body&consumer=c1'
      '&ssl_ca_certs=/ca.pem&ssl_cert_reqs=required')
  assert address[1:] == ('s', 'g', 'body', 'c1')
  options = redis.connection.parse_url(address.url)
  assert (options['username'], options['password'], options['host'], options['port'],
          options['db']) == ('alice', SECRET, 'h', 7000, 2)
  assert options['connection_class'] is redis.connection.SSLConnection
  assert (options['ssl_ca_certs'], options['ssl_cert_reqs']) == ('/ca.pem', 'required')
  assert not {'stream', 'group', 'field', 'consumer'} & set(options)
  unix = RedisStreamAddress.parse(f'unix://:{SECRET}@/run/redis.sock?db=3&stream=s')
  assert redis.connection.parse_url(unix.url)['path'] == '/run/redis.sock'
  assert redis.connection.parse_url(unix.url)['db'] == 3


def test_a_password_is_redacted_everywhere_it_could_be_shown():
  address = RedisStreamAddress.parse(f'redis://:{SECRET}@h:1/0?stream=s&group=g')
  for shown in (address.describe(), repr(address), str(address), address.server()):
    assert SECRET not in shown
  assert address.server() == 'redis://:***@h:1/0'
  assert redacted(f'unix://u:{SECRET}@/s.sock?password={SECRET}&ssl_password={SECRET}') == (
      'unix://u:***@/s.sock?password=***&ssl_password=***')
  for bad in (f'redis://:{SECRET}@h/x?stream=s', f'redis://:{SECRET}@h/0?stream=s&colour=red',
              f'redis://:{SECRET}@h/0?stream=s&ssl_ca_certs=/ca.pem',
              f'rediss://:{SECRET}@h/0?stream=s&socket_timeout=soon'):
    with pytest.raises(ValueError) as raised:
      RedisStreamAddress.parse(bad)
    assert SECRET not in str(raised.value) and '***' in str(raised.value)


def _round_trip(base_url: str, tmp_path):
  """Produce three events through `base_url`, read them back through a consumer group."""
  archive = tmp_path / 'events.jsonl'
  archive.write_text(''.join(json.dumps({'id': n, 'text': f't{n}'}) + '\n' for n in range(3)))
  separator = '&' if '?' in base_url else '?'
  assert produce(str(archive), RedisStreamAddress.parse(f'{base_url}{separator}stream=ev')) == 3
  reader = RedisStreamReader(RedisStreamAddress.parse(
      f'{base_url}{separator}stream=ev&group=g&consumer=c'), block_ms=10)
  reader.open()
  try:
    got = []
    for _ in range(5):
      got += reader.poll(10)
    return [json.loads(record.raw)['id'] for record in got]
  finally:
    reader.close()


def test_password_server(tmp_path):
  with started(password=SECRET) as server:
    assert _round_trip(server.url(), tmp_path) == [0, 1, 2]
    with pytest.raises(redis.AuthenticationError):
      RedisStreamAddress.parse(f'{server.url(password="wrong")}?stream=x').client().ping()


def test_acl_user(tmp_path):
  with started(users=[('enricher', SECRET)]) as server:
    assert server.url().startswith(f'redis://enricher:{SECRET}@')
    assert _round_trip(server.url(), tmp_path) == [0, 1, 2]
    assert server.client().acl_whoami() == 'enricher'


def test_unix_socket(tmp_path):
  with started(password=SECRET, unix_socket=True) as server:
    assert _round_trip(f'unix://:{SECRET}@{server.socket}?db=1', tmp_path) == [0, 1, 2]


def test_tls(tmp_path):
  if shutil.which('openssl') is None:
    pytest.skip('openssl is not installed: no certificate for a TLS server')
  with tempfile.TemporaryDirectory() as folder:
    files = make_tls_files(folder)
    server = RedisServer(folder, password=SECRET, tls=files)
    try:
      server.start()
    except RuntimeError:
      server.stop()
      pytest.skip('this redis-server does not serve TLS (built without it?)')
    try:
      assert server.url().startswith('rediss://')
      assert _round_trip(server.url(), tmp_path) == [0, 1, 2]
      # Without the CA the server's certificate is refused.
      untrusted = server.url().split('?')[0] + '?stream=ev'
      with pytest.raises(redis.ConnectionError, match='certificate'):
        RedisStreamAddress.parse(untrusted).client().ping()
    finally:
      server.stop()


@pytest.mark.e2e
def test_live_job_reads_a_password_source_and_writes_an_acl_user_sink(tmp_path):
  """Source behind a password, sink as an ACL user; nothing printed shows either secret."""
  with started(password=SECRET, users=[('writer', SECRET + 'x')]) as server:
    source = f'{server.url(user="", password=SECRET)}?stream=events&group=enrich'
    sink = f'{server.url(user="writer", password=SECRET + "x")}?stream=enriched'
    archive = tmp_path / 'events.jsonl'
    archive.write_text(''.join(json.dumps({'id': f'e{n}', 'time': 1_700_000_000 + n / 10,
                                           'text': f'event number {n}'}) + '\n'
                               for n in range(40)))
    assert produce(str(archive), RedisStreamAddress.parse(f'{server.url()}?stream=events')) == 40
    done = subprocess.run(
        [sys.executable, '-m', 'pipelines.stream', '--source', source, '--sink', sink,
         '--output', str(tmp_path / 'out'), '--duration', '20', '--max_out_of_orderness', '1'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-3000:]
    assert 'Read 40 records: 40 enriched rows' in printed
    assert SECRET not in printed
    client = server.client()
    assert client.xlen('enriched') == 40
    assert client.xpending('events', 'enrich')['pending'] == 0
    shown = subprocess.run(
        [sys.executable, '-m', 'pipelines.deploy', 'dataflow', 'stream', '--print', '--project',
         'p', '--region', 'r', '--temp_location', 'gs://b/t', '--source', source, '--sink', sink],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert SECRET not in shown.stdout and ':***@' in shown.stdout
