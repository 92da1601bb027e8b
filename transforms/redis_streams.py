"""Redis Streams addresses and the small client calls the job makes.

`redis://HOST:PORT/DB?stream=NAME&group=GROUP&field=event&consumer=NAME`
names a stream, the consumer group that reads it, the entry field holding
the JSON event, and this reader's consumer name.
"""
import socket
import urllib.parse
from typing import NamedTuple, Optional


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
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
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
