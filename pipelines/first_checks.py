"""The start checks made before Beam, torch and pyarrow load: Kafka's.

`python -m pipelines COMMAND` (and so ./run.sh) makes these before it imports the
command's module, which takes seconds: a local job whose Kafka source or sink it
could not use (bootstrap servers unreachable, a topic missing, the credentials
refused) ends in one `error:` line and exit 2 about a second after it started.
Only the standard library and the Kafka address and client modules load here
(confluent-kafka once an address is named). What cannot be read here (a flag
without its value, an address that does not parse) is left to the command, which
says what is wrong as before. The command checks Kafka again (pipelines.preflight),
so a job started as `python -m pipelines.stream` or from Python is checked too,
after its imports.
"""
import argparse
import types
from typing import Iterator, Optional, Sequence, Tuple

from runners.names import is_local
from transforms.io.kafka_client import check_kafka
from transforms.io.kafka_urls import KafkaAddress
from transforms.io.targets import sink_uris

# The flags of each command that may name a Kafka address, and the role messages give it.
ADDRESS_FLAGS = types.MappingProxyType({
    'stream': (('--source', 'source'), ('--sink', 'sink')),
    'replay': (('--sink', 'sink'),),
    'demo': (('--sink', 'sink'),),
    'produce': (('--target', 'target'),),
})


def kafka_addresses(command: str, argv: Sequence[str]) -> Iterator[Tuple[KafkaAddress, str]]:
  """(address, role) of each Kafka address in `argv` that the command uses in this
  process: all of them on a local runner (produce has no other), none on Flink or
  Dataflow (Beam's KafkaIO reads there, and the launcher may not reach the brokers)."""
  flags = ADDRESS_FLAGS.get(command, ())
  if not flags or any(arg in ('-h', '--help') for arg in argv):
    return
  # As Beam's option parser reads them: whole flag names, the last value of a flag wins.
  parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
  parser.add_argument('--runner')
  for flag, _ in flags:
    parser.add_argument(flag, default='')
  try:
    known, _ = parser.parse_known_args(list(argv))
  except argparse.ArgumentError:
    return  # the command says what is wrong
  if not is_local(known.runner):
    return
  for flag, role in flags:
    value = getattr(known, flag[2:])
    for uri in sink_uris(value) if flag == '--sink' else (value,):
      if not uri.startswith('kafka://'):
        continue
      try:
        yield KafkaAddress.parse(uri), role
      except ValueError:
        continue  # the command refuses it, in its own words


def first_problem(command: str, argv: Sequence[str]) -> Optional[str]:
  """Why `command` could not use a Kafka address that `argv` names, or None."""
  for address, role in kafka_addresses(command, argv):
    problem = check_kafka(address, role)
    if problem:
      return problem
  return None
