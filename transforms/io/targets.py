"""Sink URIs parsed once, into one typed value per kind of sink.

`--sink` entries become these values when the options are read
(pipelines.options); the sink steps take the values, never the URIs.
Every value keeps `spelled`, the URI as the user wrote it, for step labels
and messages (redacted where shown).
"""
import re
import urllib.parse
from typing import NamedTuple, Optional, Tuple, Union

from transforms.io.redis_urls import SCHEMES as REDIS_SCHEMES
from transforms.io.redis_urls import RedisStreamAddress
from transforms.io.uri_query import redacted, uri_query

VECTORS_DIR = 'vectors'
BIGQUERY_METHODS = ('STREAMING_INSERTS', 'FILE_LOADS', 'STORAGE_WRITE_API')


class VectorStoreTarget(NamedTuple):
  """A LanceDB store: `vectors` (DIR/vectors under the output) or lancedb:URI, each with an
  optional ?table=NAME (default events): the table this job's model fills."""
  uri: str
  spelled: str
  table: str = 'events'


# Entries the Redis sink keeps (XADD MAXLEN ~, about 8 KB each with 384 floats: ~800 MB);
# `maxlen=N` in its URI sets another bound, `maxlen=0` none.
DEFAULT_REDIS_MAXLEN = 100_000
# How long the sink remembers which rows of a window it has added (`dedup_s=S`; 0: not at
# all): a row handed to it again within that time (its source entry re-read after a kill
# between the write and the acknowledgement, a retried write) is not added twice.
DEFAULT_REDIS_DEDUP_S = 3600


class RedisTarget(NamedTuple):
  """A Redis Stream the enriched rows are XADDed to, trimmed to about `maxlen` entries, each
  row (source, window, model) added once within `dedup_s` seconds."""
  address: RedisStreamAddress
  spelled: str
  maxlen: int = DEFAULT_REDIS_MAXLEN
  dedup_s: int = DEFAULT_REDIS_DEDUP_S


def _redis(uri: str) -> RedisTarget:
  parsed = urllib.parse.urlsplit(uri)
  pairs = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
  numbers = {'maxlen': (DEFAULT_REDIS_MAXLEN, 'a number of entries (0: no trimming)'),
             'dedup_s': (DEFAULT_REDIS_DEDUP_S, 'whole seconds (0: rows not remembered)')}
  values = {}
  for name, (default, meaning) in numbers.items():
    given = [v for k, v in pairs if k == name]
    if given and not given[-1].isdigit():
      raise ValueError(f'{name} in {redacted(uri)} is {meaning}')
    values[name] = int(given[-1]) if given else default
  rest = urllib.parse.urlencode([(k, v) for k, v in pairs if k not in numbers])
  address = RedisStreamAddress.parse(urllib.parse.urlunsplit(parsed._replace(query=rest)))
  return RedisTarget(address, uri, **values)


class PubSubTarget(NamedTuple):
  """projects/P/topics/T, through Beam's Pub/Sub IO."""
  topic: str
  spelled: str


class KafkaTarget(NamedTuple):
  """kafka://BROKERS/TOPIC through Beam's (Java) Kafka IO."""
  brokers: str
  topic: str
  expansion_service: Optional[str]
  spelled: str


class BigQueryTarget(NamedTuple):
  """PROJECT:DATASET.TABLE through Beam's WriteToBigQuery."""
  table: str
  method: Optional[str]  # None: chosen by the collection mode (bigquery.WriteBigQuery)
  triggering_frequency_s: float
  spelled: str


SinkTarget = Union[VectorStoreTarget, RedisTarget, PubSubTarget, KafkaTarget, BigQueryTarget]


def is_redis(uri: str) -> bool:
  """Whether `uri` names a Redis Stream (redis://, rediss:// or unix://)."""
  return uri.startswith(tuple(f'{scheme}://' for scheme in REDIS_SCHEMES))


def pubsub_path(uri: str, kind: str) -> str:
  """projects/P/KIND/NAME from pubsub://projects/P/KIND/NAME[?...]; raises ValueError."""
  from apache_beam.io.gcp.pubsub import parse_subscription, parse_topic
  path = uri[len('pubsub://'):].split('?')[0]
  parts = path.split('/')
  if len(parts) != 4 or parts[0] != 'projects' or parts[2] != kind or not all(parts):
    raise ValueError(f'{uri}: expected pubsub://projects/PROJECT/{kind}/NAME')
  try:  # Beam's own checks of project and resource names
    (parse_topic if kind == 'topics' else parse_subscription)(path)
  except ValueError as e:
    raise ValueError(f'{uri}: {e}') from None
  return path


def kafka_address(uri: str):
  """(brokers, topic) of kafka://BROKER[,BROKER]/TOPIC[?...]; raises ValueError."""
  parsed = urllib.parse.urlparse(uri)
  brokers, topic = parsed.netloc, parsed.path.strip('/')
  if not brokers or not topic or '/' in topic:
    raise ValueError(f'{uri}: expected kafka://BROKER[,BROKER]/TOPIC[?group=GROUP]')
  return brokers, topic


def bigquery_table(uri: str) -> str:
  """PROJECT:DATASET.TABLE from bq://PROJECT.DATASET.TABLE (or bq://PROJECT:DATASET.TABLE)."""
  name = uri[len('bq://'):].split('?')[0]
  parts = name.replace(':', '.', 1).split('.')
  if len(parts) != 3 or not all(parts):
    raise ValueError(f'{uri}: expected bq://PROJECT.DATASET.TABLE')
  return f'{parts[0]}:{parts[1]}.{parts[2]}'


def _bigquery(uri: str) -> BigQueryTarget:
  query = uri_query(uri)
  method = query.get('method')
  if method is not None and method not in BIGQUERY_METHODS:
    raise ValueError(f'{uri}: method is one of {", ".join(BIGQUERY_METHODS)}')
  try:
    every_s = float(query.get('triggering_frequency', 60))
  except ValueError:
    raise ValueError(f'{uri}: triggering_frequency is in seconds') from None
  return BigQueryTarget(bigquery_table(uri), method, every_s, uri)


def _vector_store(uri: str, output_dir: str) -> VectorStoreTarget:
  location, _, query = uri.partition('?')
  table = uri_query(uri).get('table', 'events') if query else 'events'
  if not re.fullmatch(r'[A-Za-z0-9_][A-Za-z0-9_.-]*', table):
    raise ValueError(f'{uri}: table is a name of letters, digits, _ . and -')
  if location == 'vectors':
    return VectorStoreTarget(f'{output_dir.rstrip("/")}/{VECTORS_DIR}', uri, table)
  return VectorStoreTarget(location[len('lancedb:'):], uri, table)


def sink_uris(flag: str) -> Tuple[str, ...]:
  """--sink's comma-separated URIs, blanks dropped."""
  return tuple(s.strip() for s in flag.split(',') if s.strip())


def parse_sink(uri: str, output_dir: str) -> SinkTarget:
  """The typed value of one --sink entry; raises ValueError for a bad URI.

  Args:
    output_dir: the job's --output, under which `vectors` puts its store.
  """
  if is_redis(uri):
    return _redis(uri)
  if uri.startswith('pubsub://'):
    return PubSubTarget(pubsub_path(uri, 'topics'), uri)
  if uri.startswith('kafka://'):
    brokers, topic = kafka_address(uri)
    return KafkaTarget(brokers, topic, uri_query(uri).get('expansion_service'), uri)
  if uri.startswith('bq://'):
    return _bigquery(uri)
  if uri.split('?')[0] == 'vectors' or (uri.startswith('lancedb:') and uri[len('lancedb:'):]):
    return _vector_store(uri, output_dir)
  raise ValueError(f'unknown --sink {redacted(uri)}: use vectors, lancedb:URI, '
                   'redis://HOST:PORT/DB?stream=NAME (or rediss://, unix://), '
                   'pubsub://projects/P/topics/T, '
                   'kafka://BROKERS/TOPIC or bq://PROJECT.DATASET.TABLE')
