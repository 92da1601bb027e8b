"""Checks before a job starts: what would otherwise fail minutes later, or in a worker.

Each failure is a ConfigError (one `error:` line, exit 2). Checks that only
hold where the job runs in this process (a reachable Redis, a local model,
CUDA) are made for local runners only: a Dataflow or Flink launcher has no
GPU and may not reach a Redis its workers reach. Output folders are checked
when they are local paths (not gs://, s3://, ...).
"""
import os
from typing import Optional

from apache_beam.options.pipeline_options import PipelineOptions

from models.loading import ModelConfig
from pipelines.config import JobConfig
from pipelines.options import ConfigError
from transforms.io.kafka_client import check_kafka
from transforms.io.kafka_urls import KafkaAddress
from transforms.io.redis_streams import ensure_group
from transforms.io.redis_urls import RedisStreamAddress
from apache_beam.io.filesystems import FileSystems

from runners.choice import runs_locally
from transforms.fields import MISSING, format_path, resolve
from transforms.io.sources import format_of, read_archive
from transforms.records import Undecodable, decode_object
from transforms.io.targets import KafkaTarget, RedisTarget, VectorStoreTarget, is_redis
from transforms.io.vector_store import check_store

_CONNECT_TIMEOUT_S = 3
_SAMPLE_RECORDS = 100  # records of the first archive file the field paths are tried on
_SAMPLE_ENTRIES = 20  # latest entries of a Redis source its field= is looked for in


def check_start(options: PipelineOptions, config: JobConfig, source: Optional[str] = None):
  """Raises ConfigError for an output, model, device, Redis or Kafka the job could not use."""
  check_output(config.output)
  if not runs_locally(options):
    return
  check_device(config.model.device)
  check_model(config.model.model)
  if source and is_redis(source):
    check_redis(RedisStreamAddress.parse(source), 'source')
  for target in config.sinks:
    if isinstance(target, RedisTarget):
      check_redis(target.address, 'sink')
    elif isinstance(target, VectorStoreTarget):
      try:
        check_store(target.uri, target.table, config.model)
      except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from None
  kafka = [(source, 'source')] if source and source.startswith('kafka://') else []
  kafka += [(target.spelled, 'sink') for target in config.sinks
            if isinstance(target, KafkaTarget)]
  for uri, role in kafka:
    problem = check_kafka(KafkaAddress.parse(uri), role)
    if problem:
      raise ConfigError(problem)


def check_output(output: str) -> None:
  """A local --output must be a folder, or not exist yet under an existing folder."""
  if '://' in output and not output.startswith('file://'):
    return  # an object store: no folders to check
  path = os.path.abspath(os.path.expanduser(output[len('file://'):] if output.startswith(
      'file://') else output))
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise ConfigError(f'--output {output} is a file, not a folder')
    folder = path
  else:
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
      raise ConfigError(f'--output {output}: the folder it would go in, {folder}, does not '
                        'exist (create it, or check for a typo)')
  if not os.access(folder, os.W_OK | os.X_OK):
    raise ConfigError(f'--output {output}: no permission to write in {folder}')


def check_device(device: str) -> None:
  """--device cuda[:N] needs a CUDA device that torch sees here."""
  if not device.startswith('cuda'):
    return
  from models.loading import cuda_possible
  if cuda_possible():
    import torch  # seconds: only where a driver makes CUDA possible
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    seen = f'torch sees {count} CUDA device(s)'
  else:
    count, seen = 0, 'no NVIDIA driver, so no CUDA device,'
  index = device.partition(':')[2] or '0'
  if not index.isdigit():
    raise ConfigError(f'--device {device}: the CUDA device index must be a number')
  index = int(index)
  if index >= count:
    raise ConfigError(f'--device {device}: {seen} on this machine; use --device cpu or auto '
                      '(on a remote runner the workers are not checked here)')


def check_model(model: str) -> None:
  """With the hub offline, a model must be a local folder or in the Hugging Face cache."""
  if ModelConfig(model=model).is_packaged_default() or os.path.isdir(os.path.expanduser(model)):
    return
  if os.environ.get('HF_HUB_OFFLINE', '').lower() not in ('1', 'true', 'yes', 'on'):
    return  # it may be downloaded
  from huggingface_hub import try_to_load_from_cache
  # sentence-transformers reads a bare name as one of its own models too.
  names = [model] if '/' in model else [model, f'sentence-transformers/{model}']
  for name in names:
    try:
      if isinstance(try_to_load_from_cache(name, 'config.json'), str):
        return
    except ValueError:  # not a valid repository id
      pass
  raise ConfigError(f'--model {model}: not a local folder and not in the Hugging Face cache, '
                    'and HF_HUB_OFFLINE=1 forbids a download (give a path, or download it first)')


def check_redis(address: RedisStreamAddress, role: str) -> None:
  """The server answers and accepts our user and password; a source's group exists or is made."""
  import redis
  from redis.backoff import NoBackoff
  from redis.retry import Retry
  client = address.client(socket_connect_timeout=_CONNECT_TIMEOUT_S,
                          socket_timeout=_CONNECT_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
  try:
    client.ping()
    if role == 'source':
      ensure_group(client, address)
      check_stream_field(client, address)
  except redis.AuthenticationError as e:
    raise ConfigError(f'{role} {address.server()} refused the user or password: {e}') from None
  except redis.RedisError as e:
    detail = str(e) or type(e).__name__
    raise ConfigError(f'cannot use {role} {address.describe()}: {detail}') from None
  finally:
    client.close()


def check_stream_field(client, address: RedisStreamAddress) -> None:
  """Refuses a `field=` that none of the stream's latest entries holds: every entry would
  be an empty_record dead letter, and acknowledged."""
  latest = client.xrevrange(address.stream, count=_SAMPLE_ENTRIES)
  if not latest or any(address.field.encode() in fields for _, fields in latest):
    return
  held = sorted({name.decode('utf-8', 'replace') for _, fields in latest for name in fields})
  raise ConfigError(f'source {address.describe()}: none of its latest {len(latest)} entries '
                    f'has the field {address.field!r} (they hold {", ".join(held)}); '
                    'name it with field=NAME in the source URI')


def check_archive(pattern: Optional[str], declared_format: Optional[str], config: JobConfig,
                  csv_delimiter: str = ','):
  """Fails early when the input matches nothing or the field paths match nothing."""
  if not pattern:
    raise ConfigError('--input is required: a file glob of the archive(s) to replay')
  try:
    matches = FileSystems.match([pattern])[0].metadata_list
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'cannot list --input {pattern}: {e}') from None
  if not matches:
    raise ConfigError(f'no file matches --input {pattern}')
  first = sorted(m.path for m in matches)[0]
  try:
    format_of(first, declared_format)
    sample = []
    for record in read_archive(first, declared_format, csv_delimiter):
      obj = decode_object(record)  # a record the parse step would dead-letter is skipped
      if not isinstance(obj, Undecodable):
        sample.append(obj)
      if len(sample) >= _SAMPLE_RECORDS:
        break
  except ValueError as e:
    raise ConfigError(str(e)) from None
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'cannot read {first}: {type(e).__name__}: {e}') from None
  if not sample:
    raise ConfigError(f'found no readable record in {first}')

  def matched(path):
    return any(resolve(record, path) is not MISSING for record in sample)

  text_flags = ('--text_field', '--text_template')
  named = config.mapping.paths()
  for flag, path in named:  # the time and id paths must each match
    if flag not in text_flags and not matched(path):
      raise ConfigError(f'{flag} {format_path(path)} matches nothing in the first '
                        f'{len(sample)} records of {first}')
  texts = [(flag, path) for flag, path in named if flag in text_flags]
  if not any(matched(path) for _, path in texts):  # any one of the text paths will do
    paths = ','.join(format_path(path) for _, path in texts)
    raise ConfigError(f'{texts[0][0]} {paths} matches nothing in the first '
                      f'{len(sample)} records of {first}')
