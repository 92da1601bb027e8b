"""Feeds an archive into a Redis Stream, for demos and tests.

  python -m pipelines.produce --input GLOB --target redis://[:PASSWORD@]HOST:PORT/DB?stream=NAME \\
      [--rate 40] [--retime --time_field time] [--limit N]

Each record becomes one entry whose field `event` (or the address's `field`)
holds the record as JSON. `--retime` stamps each event with the current time,
so an old archive plays as a live stream.
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
from transforms.io.redis_streams import RedisStreamAddress
from transforms.io.sources import read_archive
from transforms.io.uri_query import redacted

_CHUNK = 100


def now_iso() -> str:
  moment = datetime.datetime.now(datetime.timezone.utc)
  return moment.isoformat(timespec='milliseconds').replace('+00:00', 'Z')


class ProduceInterrupted(KeyboardInterrupt):
  """Ctrl-C or SIGTERM while sending; `sent` entries are in the stream (buffered ones flushed)."""

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
  time_path = parse_path(time_field)
  paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
  if not paths:
    raise ValueError(f'no file matches --input {pattern}')
  sent, buffered, started = 0, 0, time.monotonic()
  pipe = client.pipeline(transaction=False)
  try:
    for path in paths:
      for record in read_archive(path):
        if limit and sent + buffered >= limit:
          break
        raw = record.raw
        if retime:
          obj = decode_object(record)
          if isinstance(obj, dict):  # else it is sent as it is: the job dead-letters it
            assign(obj, time_path, now_iso())
            raw = json.dumps(obj, ensure_ascii=False, default=str)
        pipe.xadd(target.stream, {target.field: raw.encode('utf-8', 'surrogateescape')})
        buffered += 1
        if rate > 0 or buffered >= _CHUNK:
          pipe.execute()
          sent, buffered = sent + buffered, 0
        if rate > 0:
          delay = started + sent / rate - time.monotonic()
          if delay > 0:
            time.sleep(delay)
  except KeyboardInterrupt as e:
    pipe.execute()  # the entries already buffered go out, so the count is what was sent
    raise ProduceInterrupted(sent + buffered, e) from None
  pipe.execute()
  return sent + buffered


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--input', required=True, help='Archive glob (JSON Lines, Parquet, CSV).')
  parser.add_argument('--target', required=True,
                      help='redis://[[USER]:PASSWORD@]HOST:PORT/DB?stream=NAME (or rediss://, '
                      'unix://)')
  parser.add_argument('--rate', type=float, default=0.0, help='Events per second; 0: no limit.')
  parser.add_argument('--retime', action='store_true', help='Stamp events with the current time.')
  parser.add_argument('--time_field', default='time', help='Where --retime writes the time.')
  parser.add_argument('--limit', type=int, default=0, help='Stop after N events; 0: all.')
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
  interrupts.raise_on_sigterm()
  import redis
  try:
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
  except (ValueError, OSError, redis.RedisError) as e:
    print(f'error: {redacted(str(e))}', file=sys.stderr)
    sys.exit(2)
  print(f'Sent {sent} events to {target.describe()}')


if __name__ == '__main__':
  main()
