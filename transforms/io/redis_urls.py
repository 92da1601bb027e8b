"""Redis Stream addresses: redis-py's own URL forms plus the job's query parameters.

  redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]?stream=NAME[&group=G][&field=event][&consumer=C]
  rediss://...the same...[&ssl_ca_certs=CA.pem][&ssl_certfile=C&ssl_keyfile=K][&ssl_cert_reqs=..]
  unix://[[USER]:PASSWORD@]/PATH/redis.sock?db=N&stream=NAME...
  redis://[USER@]HOST...?password_file=/run/secrets/redis&stream=NAME...

The password need not be on the command line (where /proc/PID/cmdline and a
runner's job options show it): `password_file=PATH` reads it from a file (one
line; the trailing newline dropped), else the environment variable
REDIS_PASSWORD_ENV (ENRICH_REDIS_PASSWORD) gives it to every address that names none.

The job's parameters (stream, group, field, consumer) are taken out; what is
left is handed to redis-py (`redis.Redis.from_url`), so users, passwords, ACL
users, TLS and unix sockets mean exactly what they mean to redis-py. A
password never leaves this module unredacted: `describe()`, `repr()` and
every error show `***` in its place.
"""
import os
import socket
import types
import urllib.parse
from typing import NamedTuple, Optional

from transforms.io.uri_query import redacted, uri_query

JOB_PARAMETERS = ('stream', 'group', 'field', 'consumer', 'password_file', 'claim_idle')
REDIS_PASSWORD_ENV = 'ENRICH_REDIS_PASSWORD'
SCHEMES = ('redis', 'rediss', 'unix')
# Connection parameters redis-py reads from a URL's query (ConnectionPool.from_url).
_CONNECTION_PARAMETERS = frozenset({
    'db', 'username', 'password', 'client_name', 'protocol', 'socket_timeout',
    'socket_connect_timeout', 'socket_keepalive', 'socket_read_size', 'health_check_interval',
    'retry_on_timeout', 'max_connections', 'timeout'})
_TLS_PARAMETERS = frozenset({
    'ssl_ca_certs', 'ssl_ca_path', 'ssl_certfile', 'ssl_keyfile', 'ssl_password',
    'ssl_cert_reqs', 'ssl_check_hostname', 'ssl_min_version', 'ssl_ciphers'})
# Unless the URL says otherwise: fail a connection attempt in seconds, not
# minutes, and never block forever on a server that stopped answering.
_CLIENT_DEFAULTS = types.MappingProxyType({'socket_connect_timeout': 5, 'socket_timeout': 30, 'health_check_interval': 30})


def _outside_password(query, shown: str) -> Optional[str]:
  """The password from `password_file=` or the environment; None where neither gives one."""
  path = query.get('password_file')
  if path is None:
    return os.environ.get(REDIS_PASSWORD_ENV) or None
  try:
    with open(path, encoding='utf-8') as f:
      return f.read().rstrip('\r\n')
  except OSError as e:
    raise ValueError(f'cannot read the password_file of {shown}: {e.strerror}') from None


def _with_password(parsed: urllib.parse.SplitResult, password: Optional[str]):
  """`parsed` with `password` in its authority, unless the URL itself holds one."""
  if password is None or parsed.password is not None or 'password' in uri_query(parsed.geturl()):
    return parsed
  user, _, host = parsed.netloc.rpartition('@')
  quoted = urllib.parse.quote(password, safe='')
  return parsed._replace(netloc=f'{user}:{quoted}@{host}')


class RedisStreamAddress(NamedTuple):
  """A stream on a Redis server; `url` is the connection part only (it may hold a password)."""
  url: str
  stream: str
  group: Optional[str] = None
  field: str = 'event'
  consumer: Optional[str] = None

  @classmethod
  def parse(cls, uri: str, default_stream: Optional[str] = None) -> 'RedisStreamAddress':
    """Raises ValueError (its message redacted) for an address redis-py or the job cannot use."""
    shown = redacted(uri)
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in SCHEMES:
      raise ValueError(f'not a redis://, rediss:// or unix:// address: {shown}')
    query = uri_query(uri)
    unknown = set(query) - set(JOB_PARAMETERS) - _CONNECTION_PARAMETERS - _TLS_PARAMETERS
    if unknown:
      raise ValueError(f'unknown parameter(s) {", ".join(sorted(unknown))} in {shown}')
    tls = sorted(set(query) & _TLS_PARAMETERS)
    if tls and parsed.scheme != 'rediss':
      raise ValueError(f'{", ".join(tls)} need a rediss:// (TLS) address: {shown}')
    try:
      if float(query.get('claim_idle', 1)) <= 0:
        raise ValueError
    except ValueError:
      raise ValueError(f'claim_idle in {shown} is seconds, more than 0') from None
    stream = query.get('stream', default_stream)
    if not stream:
      raise ValueError(f'{shown} names no stream (add ?stream=NAME)')
    path = parsed.path.strip('/')
    if parsed.scheme != 'unix' and path and not path.isdigit():
      raise ValueError(f'the database in {shown} must be a number')
    if parsed.scheme == 'unix' and not path:
      raise ValueError(f'{shown} names no socket (unix:///PATH/redis.sock?db=N&stream=NAME)')
    kept = [(k, v) for k, v in urllib.parse.parse_qsl(parsed.query) if k not in JOB_PARAMETERS]
    parsed = _with_password(parsed, _outside_password(query, shown))
    url = urllib.parse.urlunsplit(parsed._replace(query=urllib.parse.urlencode(kept)))
    import redis.connection
    try:
      redis.connection.parse_url(url)  # redis-py's own reading of it, checked here
    except ValueError as e:
      raise ValueError(f'{shown}: {e}') from None
    return cls(url, stream, query.get('group'), query.get('field', 'event'),
               query.get('consumer'))

  def client(self, **overrides):
    """A redis-py client for this address; `overrides` replace the job's defaults."""
    import redis
    options = {k: v for k, v in {**_CLIENT_DEFAULTS, **overrides}.items()
               if k not in uri_query(self.url)}
    return redis.Redis.from_url(self.url, **options)

  def consumer_name(self) -> str:
    """This reader's name in its group: stable across restarts on one host."""
    return self.consumer or f'{socket.gethostname()}-enrich'

  def server(self) -> str:
    """The connection URL with any password replaced by ***."""
    return redacted(self.url)

  def describe(self) -> str:
    return f'{self.server()} stream {self.stream}'

  def __repr__(self) -> str:
    return (f'RedisStreamAddress({self.server()!r}, stream={self.stream!r}, '
            f'group={self.group!r}, field={self.field!r}, consumer={self.consumer!r})')
