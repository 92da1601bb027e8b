"""Checks before a job starts: what would otherwise fail minutes later, or in a worker.

Each failure is a ConfigError (one `error:` line, exit 2). Checks that only
hold where the job runs in this process (a reachable Redis, a local model,
CUDA) are made for local runners only: a Dataflow or Flink launcher has no
GPU and may not reach a Redis its workers reach. Output folders are checked
when they are local paths (not gs://, s3://, ...).
"""
import os
from typing import Iterable, Optional

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from models.loading import ModelConfig
from pipelines.options import ConfigError, JobConfig
from transforms.io.kafka import check_kafka
from transforms.io.kafka_urls import KafkaAddress
from transforms.io.redis_streams import ensure_group
from transforms.io.redis_urls import RedisStreamAddress
from transforms.io.uris import is_redis

_LOCAL_RUNNERS = ('directrunner', 'direct', 'fnapirunner', 'bundlebaseddirectrunner',
                  'switchingdirectrunner')
_CONNECT_TIMEOUT_S = 3


def runs_locally(options: PipelineOptions) -> bool:
  """Whether the job's workers run in this process (Beam's local runners)."""
  return (options.view_as(StandardOptions).runner or 'DirectRunner').lower() in _LOCAL_RUNNERS


def check_start(options: PipelineOptions, config: JobConfig, source: Optional[str] = None):
  """Raises ConfigError for an output, model, device, Redis or Kafka the job could not use."""
  check_output(config.output)
  if not runs_locally(options):
    return
  check_device(config.model.device)
  check_model(config.model.model)
  if source and is_redis(source):
    check_redis(RedisStreamAddress.parse(source), 'source')
  for sink in _redis_sinks(config.sinks):
    check_redis(RedisStreamAddress.parse(sink), 'sink')
  kafka = [(source, 'source')] if source and source.startswith('kafka://') else []
  for uri, role in kafka + [(sink, 'sink') for sink in config.sinks if sink.startswith('kafka://')]:
    problem = check_kafka(KafkaAddress.parse(uri), role)
    if problem:
      raise ConfigError(problem)


def _redis_sinks(sinks: Iterable[str]):
  return [sink for sink in sinks if is_redis(sink)]


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
  if os.path.exists('/proc/driver/nvidia') or os.path.exists('/dev/nvidia0'):
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
  if ModelConfig(model).is_packaged_default() or os.path.isdir(os.path.expanduser(model)):
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
  except redis.AuthenticationError as e:
    raise ConfigError(f'{role} {address.server()} refused the user or password: {e}') from None
  except redis.RedisError as e:
    detail = str(e) or type(e).__name__
    raise ConfigError(f'cannot use {role} {address.describe()}: {detail}') from None
  finally:
    client.close()
