"""Running a built job: runner defaults, counts from metrics, a summary, clean errors."""
import json
import logging
import os
import sys
import time
from typing import Callable, NamedTuple, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from models.embedding_cache import hit_rate
from models.loading import ModelConfig, threads_per_worker
from pipelines.builder import WrittenFiles, build
from pipelines.options import ConfigError, JobConfig
from transforms.fields import MISSING, format_path, resolve
from transforms.sinks import DEADLETTER_DIR, ENRICHED_DIR
from transforms.sources import format_of, read_archive
from transforms.cloud_io import UnavailableIO

_SAMPLE_RECORDS = 100


class JobResult(NamedTuple):
  records_read: int
  enriched_rows: int
  deadletters: int
  seconds: float
  output: str
  window_kind: str
  cache_hits: int = 0  # texts served by the exact-repeat embedding cache
  cache_misses: int = 0  # texts the model encoded (with the cache on)

  @property
  def balanced(self) -> bool:
    return self.records_read == self.enriched_rows + self.deadletters

  def summary(self) -> str:
    rate = self.records_read / self.seconds if self.seconds else 0.0
    if self.balanced:
      check = 'every record accounted for'
    elif self.window_kind == 'sliding':
      check = 'sliding windows write an event once per window it falls in'
    else:
      check = 'MISMATCH: records read differ from rows plus dead letters'
    lookups = self.cache_hits + self.cache_misses
    cache = (f' Embedding cache: {self.cache_hits} of {lookups} texts were repeats served '
             f'from it ({hit_rate(self.cache_hits, self.cache_misses):.0%} hit rate).'
             if lookups else '')
    return '\n'.join([
        f'Read {self.records_read} records: {self.enriched_rows} enriched rows, '
        f'{self.deadletters} dead letters ({check}).',
        f'Took {self.seconds:.1f} s, {rate:.1f} events/s end to end.{cache}',
        f'Enriched rows: {self.output.rstrip("/")}/enriched/   '
        f'dead letters: {self.output.rstrip("/")}/deadletter/',
    ])


def _counter(result, name: str) -> int:
  found = result.metrics().query(
      MetricsFilter().with_namespace('enrichment').with_name(name))['counters']
  total = 0
  for counter in found:
    value = counter.committed if counter.committed is not None else counter.attempted
    total += value or 0
  return total


def choose_local_runner(options: PipelineOptions) -> str:
  """Sets the runner when none (or plain DirectRunner) is named, and returns its name.

  Beam 2.77's DirectRunner first tries Prism, which it would download from
  GitHub on each run; offline that only costs time and noise. Batch jobs go
  straight to the FnApiRunner, the engine the DirectRunner falls back to;
  streaming jobs to the BundleBasedDirectRunner with pipelines.local_streaming.
  """
  standard = options.view_as(StandardOptions)
  if (standard.runner or 'DirectRunner').lower() in ('directrunner', 'direct'):
    if standard.streaming:
      # The only local runner that streams offline, with the project's fixes.
      from pipelines import local_streaming
      local_streaming.install()
      standard.runner = 'BundleBasedDirectRunner'
    else:
      standard.runner = 'FnApiRunner'
  return standard.runner


def share_cores(options: PipelineOptions, model: ModelConfig) -> ModelConfig:
  """Divides this machine's cores among the local runner's workers (torch threads).

  Each of the FnApiRunner's --direct_num_workers (0: one per CPU, as Beam
  reads it) runs inference at once; with torch's default of one thread per
  core each, they would oversubscribe the cores. The local streaming runner
  has one worker whatever the flag says, so it keeps torch's default.
  """
  runner = (options.view_as(StandardOptions).runner or '').lower()
  if model.torch_threads or runner != 'fnapirunner':
    return model
  cpus = len(os.sched_getaffinity(0))
  workers = options.view_as(DirectOptions).direct_num_workers
  workers = cpus if workers == 0 else workers or 1
  if workers <= 1:
    return model
  return model._replace(torch_threads=threads_per_worker(cpus, workers))


def launch(options: PipelineOptions, config: JobConfig, read: beam.PTransform,
           test_pipeline: Optional[beam.Pipeline] = None,
           after_write: Optional[Callable[[WrittenFiles], None]] = None) -> JobResult:
  """Builds the job behind `read`, runs it to the end and returns its counts.

  Args:
    after_write: adds steps behind the Parquet writes (more sinks, acknowledgements).
  """
  started = time.monotonic()
  if test_pipeline is None:
    logging.info('Running on %s', choose_local_runner(options))
    config = config._replace(model=share_cores(options, config.model))
  pipeline = test_pipeline or beam.Pipeline(options=options)
  raw_records = pipeline | 'Read records' >> read
  written = build(raw_records, config)
  if after_write is not None:
    after_write(written)
  _make_output_folders(config.output)
  result = pipeline.run()
  result.wait_until_finish()
  return JobResult(_counter(result, 'records_read'), _counter(result, 'enriched_rows'),
                   _counter(result, 'deadletters'), time.monotonic() - started, config.output,
                   config.window.kind, _counter(result, 'embedding_cache_hits'),
                   _counter(result, 'embedding_cache_misses'))


def _make_output_folders(output: str) -> None:
  """Both folders exist after a run, even when one stays empty, so readers need no special case."""
  for sub in (ENRICHED_DIR, DEADLETTER_DIR):
    path = f'{output.rstrip("/")}/{sub}'
    if not FileSystems.exists(path):
      try:
        FileSystems.mkdirs(path)
      except IOError:
        pass  # object stores have no folders


def check_archive(pattern: Optional[str], declared_format: Optional[str], config: JobConfig):
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
    for record in read_archive(first, declared_format):
      if record.row is not None:
        sample.append(record.row)
      elif record.decode_error is None:
        try:
          sample.append(json.loads(record.raw))
        except ValueError:
          pass
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

  mapping = config.mapping
  for flag, path in (('--time_field', mapping.time_path), ('--id_field', mapping.id_path)):
    if path is not None and not matched(path):
      raise ConfigError(f'{flag} {format_path(path)} matches nothing in the first '
                        f'{len(sample)} records of {first}')
  if not any(matched(path) for path in mapping.text_paths):
    paths = ','.join(format_path(p) for p in mapping.text_paths)
    raise ConfigError(f'--text_field {paths} matches nothing in the first '
                      f'{len(sample)} records of {first}')


def main(run: Callable[..., JobResult], argv=None) -> None:
  """What a `__main__` does: logging, run, summary, and one-line errors with exit 2."""
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s',
                      datefmt='%H:%M:%S', force=True)
  for noisy in ('apache_beam', 'sentence_transformers', 'transformers', 'httpx',
                'huggingface_hub'):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    result = run(argv)
  except (ConfigError, UnavailableIO) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(result.summary())
  if not result.balanced and result.window_kind != 'sliding':
    sys.exit(1)
