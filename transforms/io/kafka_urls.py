"""Kafka addresses: brokers, topics, the job's parameters and librdkafka settings.

  kafka://HOST:PORT[,HOST:PORT]/TOPIC[,TOPIC]?group=G[&max_bytes=N][&properties=FILE]
      [&revoke_wait=S][&LIBRDKAFKA.SETTING=VALUE...]

A query parameter with a dot in its name (`security.protocol`, `sasl.mechanism`,
`ssl.ca.location`, `session.timeout.ms`, ...) is a librdkafka setting, passed
through as it is; so are the lines of a Java-style properties file
(`properties=FILE`, `key=value` per line, `#` comments), which the query
overrides. A secret setting (a name with `password`, `secret` or `key.pem`)
may be given as `env:NAME` (read from the environment) or `file:PATH` (read
from a file, stripped), so it need not appear in the URI at all. Secrets never
leave this module in the clear: `describe()`, `repr()` and every error show
only the brokers and topics, and transforms.io.uri_query.redacted hides them
in log lines.
"""
import os
import re
import urllib.parse
from typing import Dict, NamedTuple, Optional, Tuple

from transforms.io.uri_query import redacted

JOB_PARAMETERS = ('group', 'max_bytes', 'properties', 'revoke_wait', 'timestamp_policy',
                  'expansion_service')
_SECRET = re.compile(r'password|secret|key\.pem', re.IGNORECASE)
_TOPIC = re.compile(r'^[A-Za-z0-9._-]{1,249}$')
DEFAULT_MAX_BYTES = 1 << 20


def is_secret(name: str) -> bool:
  return bool(_SECRET.search(name))


def _resolve_secret(name: str, value: str) -> str:
  """A secret setting's value, read from the environment or a file when it says so."""
  if not is_secret(name):
    return value
  if value.startswith('env:'):
    variable = value[len('env:'):]
    if variable not in os.environ:
      raise ValueError(f'{name}=env:{variable}: the environment has no {variable}')
    return os.environ[variable]
  if value.startswith('file:'):
    path = os.path.expanduser(value[len('file:'):])
    try:
      with open(path, encoding='utf-8') as secret:
        return secret.read().strip()
    except OSError as e:
      raise ValueError(f'{name}=file:{path}: cannot read it: {e.strerror}') from None
  return value


def read_properties(path: str) -> Dict[str, str]:
  """A Java-style properties file: `key=value` (or `key: value`) lines, `#`/`!` comments."""
  settings = {}
  try:
    with open(os.path.expanduser(path), encoding='utf-8') as lines:
      for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line[0] in '#!':
          continue
        match = re.match(r'([^=:\s]+)\s*[=:]\s*(.*)$', line)
        if not match:
          raise ValueError(f'properties={path} line {number}: expected key=value')
        settings[match.group(1)] = match.group(2)
  except OSError as e:
    raise ValueError(f'properties={path}: cannot read it: {e.strerror}') from None
  return settings


class KafkaAddress(NamedTuple):
  """Topics on a Kafka cluster; `settings` are librdkafka's and may hold secrets."""
  brokers: str
  topics: Tuple[str, ...]
  group: Optional[str] = None
  settings: Tuple[Tuple[str, str], ...] = ()
  max_bytes: int = DEFAULT_MAX_BYTES
  revoke_wait_s: float = 60.0

  @classmethod
  def parse(cls, uri: str) -> 'KafkaAddress':
    """Raises ValueError (its message without secrets) for an address the job cannot use."""
    shown = redacted(uri)
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme != 'kafka':
      raise ValueError(f'not a kafka:// address: {shown}')
    brokers = parsed.netloc
    topics = tuple(t for t in parsed.path.strip('/').split(',') if t)
    if not brokers or not topics:
      raise ValueError(f'{shown}: expected kafka://HOST:PORT[,HOST:PORT]/TOPIC[,TOPIC][?group=G]')
    for topic in topics:
      if not _TOPIC.match(topic):
        raise ValueError(f'{shown}: {topic!r} is not a Kafka topic name (letters, digits, . _ -)')
    pairs = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
    query = dict(pairs)
    unknown = sorted(k for k in query if k not in JOB_PARAMETERS and '.' not in k)
    if unknown:
      raise ValueError(f'unknown parameter(s) {", ".join(unknown)} in {shown} (librdkafka '
                       'settings have dots: security.protocol, sasl.mechanism, ...)')
    settings = read_properties(query['properties']) if 'properties' in query else {}
    settings.update((k, v) for k, v in pairs if '.' in k)
    for forced in ('bootstrap.servers', 'group.id'):
      if forced in settings:
        raise ValueError(f'{shown}: {forced} comes from the address itself (kafka://BROKERS/'
                         'TOPIC?group=G), not from a setting')
    settings = {k: _resolve_secret(k, v) for k, v in settings.items()}
    try:
      max_bytes = int(query.get('max_bytes', DEFAULT_MAX_BYTES))
      revoke_wait_s = float(query.get('revoke_wait', 60))
    except ValueError:
      raise ValueError(f'{shown}: max_bytes is a whole number of bytes, revoke_wait seconds') \
          from None
    if max_bytes <= 0 or revoke_wait_s < 0:
      raise ValueError(f'{shown}: max_bytes must be positive, revoke_wait not negative')
    return cls(brokers, topics, query.get('group'), tuple(sorted(settings.items())), max_bytes,
               revoke_wait_s)

  def client_config(self, **overrides) -> Dict[str, str]:
    """librdkafka settings for a client of this address: the job's defaults, then the user's."""
    return {'bootstrap.servers': self.brokers, **overrides, **dict(self.settings)}

  def key(self) -> str:
    """What identifies this source within a process: brokers, topics and group."""
    return f'{self.brokers}/{",".join(self.topics)}?group={self.group}'

  def describe(self) -> str:
    return f'kafka://{self.brokers}/{",".join(self.topics)}'

  def __repr__(self) -> str:
    shown = tuple((k, '***' if is_secret(k) else v) for k, v in self.settings)
    return (f'KafkaAddress({self.brokers!r}, topics={self.topics!r}, group={self.group!r}, '
            f'settings={shown!r}, max_bytes={self.max_bytes!r})')
