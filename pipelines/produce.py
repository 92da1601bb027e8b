"""Feeds an archive into a Redis Stream or a Kafka topic, for demos and tests.

  python -m pipelines.produce --input GLOB --target redis://[:PASSWORD@]HOST:PORT/DB?stream=NAME \\
      [--rate 40] [--retime --time_field time] [--limit N]
  python -m pipelines.produce --input GLOB --target kafka://HOST:PORT/TOPIC[?SETTINGS] ...

Each record becomes one entry whose field `event` (or the address's `field`)
holds the record as JSON, or one Kafka record (no key: spread over the
partitions) from the idempotent producer. `--retime` stamps each event with
the current time, so an old archive plays as a live stream.
"""
import argparse
import datetime
import json
import logging
import sys
import time

from apache_beam.io.filesystems import FileSystems

from pipelines import interrupts
from transforms.fields import assign, parse_path
from transforms.records import decode_object
from transforms.io import faults, kafka_client as kafka
from transforms.io.kafka_urls import KafkaAddress
from transforms.io.redis_streams import RedisStreamAddress
from transforms.io.sources import read_archive
from transforms.io.uri_query import redacted

_CHUNK = 100


def now_iso() -> str:
  moment = datetime.datetime.now(datetime.timezone.utc)
  return moment.isoformat(timespec='milliseconds').replace('+00:00', 'Z')


def archive_lines(pattern: str, retime: bool = False, time_field: str = 'time', limit: int = 0):
  """The archive's records as JSON text, retimed to now if asked, at most `limit` (0: all)."""
  time_path = parse_path(time_field)
  paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
  if not paths:
    raise ValueError(f'no file matches --input {pattern}')
  sent = 0
  for path in paths:
    for record in read_archive(path):
      if limit and sent >= limit:
        return
      raw = record.raw
      if retime:
        obj = decode_object(record)
        if isinstance(obj, dict):  # else it is sent as it is: the job dead-letters it
          assign(obj, time_path, now_iso())
          raw = json.dumps(obj, ensure_ascii=False, default=str)
      sent += 1
      yield raw.encode('utf-8', 'surrogateescape')


def _paced(values, rate: float):
  """Yields values no faster than `rate` per second (0: as fast as they come)."""
  started = time.monotonic()
  for n, value in enumerate(values, start=1):
    yield value
    if rate > 0:
      delay = started + n / rate - time.monotonic()
      if delay > 0:
        time.sleep(delay)


class ProduceInterrupted(KeyboardInterrupt):
  """Ctrl-C or SIGTERM while sending; `sent` records are in the target (buffered ones flushed)."""

  def __init__(self, sent: int, cause: KeyboardInterrupt):
    super().__init__(sent)
    self.sent = sent
    self.cause = cause


def produce(pattern: str, target: RedisStreamAddress, rate: float = 0.0, retime: bool = False,
            time_field: str = 'time', limit: int = 0) -> int:
  """Sends the records; returns how many were sent. rate 0 sends as fast as possible.

  Raises:
    ProduceInterrupted: on Ctrl-C or SIGTERM, with the count sent by then.
  """
  client = target.client()
  client.ping()  # a refused password or a dead server fails here, before reading anything
  sent = buffered = 0
  pipe = client.pipeline(transaction=False)
  try:
    for value in _paced(archive_lines(pattern, retime, time_field, limit), rate):
      pipe.xadd(target.stream, {target.field: value})
      buffered += 1
      if rate > 0 or buffered >= _CHUNK:
        pipe.execute()
        sent, buffered = sent + buffered, 0
  except KeyboardInterrupt as e:
    pipe.execute()  # the entries already buffered go out, so the count is what was sent
    raise ProduceInterrupted(sent + buffered, e) from None
  pipe.execute()
  return sent + buffered


def produce_kafka(pattern: str, target: KafkaAddress, rate: float = 0.0, retime: bool = False,
                  time_field: str = 'time', limit: int = 0) -> int:
  """Sends the records to the address's first topic; returns how many the broker has."""
  problem = kafka.check_kafka(target, 'target')
  if problem:
    raise ValueError(problem)
  client = kafka.producer(target)
  handed = [0]

  def counted(values):
    for value in values:
      handed[0] += 1
      yield None, value

  values = _paced(archive_lines(pattern, retime, time_field, limit), rate)
  try:
    return kafka.send(client, target, counted(values), 'target')
  except KeyboardInterrupt as e:
    left = client.flush(10)  # what was handed to the producer goes out
    raise ProduceInterrupted(handed[0] - left, e) from None


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--input', required=True, help='Archive glob (JSON Lines, Parquet, CSV).')
  parser.add_argument('--target', required=True,
                      help='redis://[[USER]:PASSWORD@]HOST:PORT/DB?stream=NAME (or rediss://, '
                      'unix://), or kafka://HOST:PORT/TOPIC[?SETTINGS]')
  parser.add_argument('--rate', type=float, default=0.0, help='Events per second; 0: no limit.')
  parser.add_argument('--retime', action='store_true', help='Stamp events with the current time.')
  parser.add_argument('--time_field', default='time', help='Where --retime writes the time.')
  parser.add_argument('--limit', type=int, default=0, help='Stop after N events; 0: all.')
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
  interrupts.raise_on_sigterm()
  import redis
  try:
    if args.target.startswith('kafka://'):
      target = KafkaAddress.parse(args.target)
      sent = produce_kafka(args.input, target, args.rate, args.retime, args.time_field,
                           args.limit)
    else:
      target = RedisStreamAddress.parse(args.target)
      sent = produce(args.input, target, args.rate, args.retime, args.time_field, args.limit)
  except ProduceInterrupted as stopped:
    name, status = interrupts.describe(stopped.cause)
    print(f'interrupted ({name}): sent {stopped.sent} events to {target.describe()}',
          file=sys.stderr)
    sys.exit(status)
  except redis.AuthenticationError as e:
    print(f'error: {redacted(args.target)} refused the user or password: {e}', file=sys.stderr)
    sys.exit(2)
  except (ValueError, OSError, redis.RedisError, faults.WriteAbandoned) as e:
    print(f'error: {redacted(str(e))}', file=sys.stderr)
    sys.exit(2)
  print(f'Sent {sent} events to {target.describe()}')


if __name__ == '__main__':
  main()
