"""Running a built job: runner defaults, counts from metrics, a summary, clean errors."""
import logging
import os
import sys
import time
from typing import Callable, NamedTuple, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from models.embedding_cache import hit_rate
from models.loading import ModelConfig, threads_per_worker
from observability import monitoring
from pipelines.builder import WrittenFiles, build
from observability.report import RunFacts, invocation, write_report
from pipelines.options import ConfigError, JobConfig
from pipelines.preflight import runs_locally
from transforms.io import faults
from transforms.fields import MISSING, format_path, resolve
from transforms.records import Undecodable, decode_object
from transforms.io.sinks import DEADLETTER_DIR, ENRICHED_DIR
from transforms.io.sources import format_of, read_archive
from transforms.io.cloud_io import UnavailableIO
from observability.instruments import CALLS, CountByReason, MeasureLatency
from transforms.io.uri_query import redacted

_SAMPLE_RECORDS = 100


class JobResult(NamedTuple):
  records_read: int
  enriched_rows: int
  deadletters: int
  seconds: float
  output: str
  window_kind: str
  failure: Optional[str] = None  # why the job stopped early or read nothing (see faults)
  report: Optional[str] = None  # DIR/report.html
  cache_hits: int = 0  # texts served by the exact-repeat embedding cache
  cache_misses: int = 0  # texts the model encoded (with the cache on)

  @property
  def balanced(self) -> bool:
    return self.records_read == self.enriched_rows + self.deadletters

  @property
  def check(self) -> str:
    if self.balanced:
      return 'every record accounted for'
    if self.window_kind == 'sliding':
      return 'sliding windows write an event once per window it falls in'
    return 'MISMATCH: records read differ from rows plus dead letters'

  def summary(self) -> str:
    rate = self.records_read / self.seconds if self.seconds else 0.0
    check = self.check
    lookups = self.cache_hits + self.cache_misses
    cache = (f' Embedding cache: {self.cache_hits} of {lookups} texts were repeats served '
             f'from it ({hit_rate(self.cache_hits, self.cache_misses):.0%} hit rate).'
             if lookups else '')
    lines = [
        f'Read {_count(self.records_read, "record")}: '
        f'{_count(self.enriched_rows, "enriched row")}, '
        f'{_count(self.deadletters, "dead letter")} ({check}).',
        f'Took {self.seconds:.1f} s, {rate:.1f} events/s end to end.{cache}',
        f'Enriched rows: {self.output.rstrip("/")}/enriched/   '
        f'dead letters: {self.output.rstrip("/")}/deadletter/',
    ]
    if self.report:
      lines.append(f'Report: {self.report}')
    return '\n'.join(lines)


def _count(n: int, noun: str) -> str:
  return f'{n} {noun}' if n == 1 else f'{n} {noun}s'


def choose_local_runner(options: PipelineOptions) -> str:
  """Sets the runner when none (or plain DirectRunner) is named, and returns its name.

  Beam 2.77's DirectRunner first tries Prism, which it would download from
  GitHub on each run; offline that only costs time and noise. Batch jobs go
  straight to the FnApiRunner, the engine the DirectRunner falls back to;
  streaming jobs to the BundleBasedDirectRunner with runners.local_streaming.
  """
  standard = options.view_as(StandardOptions)
  if (standard.runner or 'DirectRunner').lower() in ('directrunner', 'direct'):
    if standard.streaming:
      # The only local runner that streams offline, with the project's fixes.
      from runners import local_streaming
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


_RERUN = 'a rerun writes what is missing and replaces the files it wrote'


class Job(NamedTuple):
  """A built job, not yet run: the entry point may add its own steps behind `written`."""
  pipeline: beam.Pipeline
  written: WrittenFiles
  config: JobConfig
  streaming: bool
  monitor: monitoring.RunMonitor
  started: float  # time.monotonic() when building began
  started_at: float  # time.time() then


def build_job(options: PipelineOptions, config: JobConfig, read: beam.PTransform,
              test_pipeline: Optional[beam.Pipeline] = None) -> Job:
  """Builds the whole job behind `read` (runner defaults, the builder, the metrics steps)."""
  started, started_at = time.monotonic(), time.time()
  local = False
  if test_pipeline is None:
    logging.info('Running on %s', choose_local_runner(options))
    config = config._replace(model=share_cores(options, config.model))
    local = runs_locally(options)
  faults.reset(local, config.write_retry_s)
  streaming = options.view_as(StandardOptions).streaming
  monitor = monitoring.monitor_for(options)
  pipeline = test_pipeline or beam.Pipeline(options=options)
  written = build(pipeline | 'Read records' >> read, config)
  written = WrittenFiles(
      written.enriched | 'Measure latency' >> MeasureLatency() if streaming
      else written.enriched,
      written.deadletters | 'Count dead letters' >> CountByReason())
  return Job(pipeline, written, config, streaming, monitor, started, started_at)


def run_job(job: Job, resume: str = _RERUN) -> JobResult:
  """Runs a built job to the end and returns its counts (and writes its report).

  Args:
    resume: what happens to unwritten records after a stop, for the stop line.
  """
  _make_output_folders(job.config.output)
  try:
    result = job.pipeline.run()
    job.monitor.watch(result)
    result.wait_until_finish()
  finally:
    final = job.monitor.stop()
  counts = final.counters
  records_read = counts.get('records_read', 0)
  outcome = JobResult(records_read, counts.get('enriched_rows', 0),
                      counts.get('deadletters', 0), time.monotonic() - job.started,
                      job.config.output, job.config.window.kind,
                      _failure(records_read, resume),
                      cache_hits=counts.get('embedding_cache_hits', 0),
                      cache_misses=counts.get('embedding_cache_misses', 0))
  return outcome._replace(report=_write_report(outcome, job.config, job.streaming,
                                               job.started_at, final, job.monitor.samples))


def _failure(records_read: int, resume: str) -> Optional[str]:
  """Why the run cannot be reported as a success: a write given up, or a dead source."""
  if faults.STOP.reason is not None:
    return f'{faults.STOP.reason}; the job stopped: {resume}'
  if records_read == 0:
    for dependency in faults.Dependency.all():
      if dependency.name.startswith('source') and not dependency.ever_ok:
        return (f'read nothing: {dependency.name} could not be read at any poll '
                f'(last error: {dependency.last_error})')
  return None


def _write_report(job: JobResult, config: JobConfig, streaming: bool, started_at: float,
                  final, samples) -> Optional[str]:
  kind, command = invocation(streaming)
  try:
    return write_report(RunFacts(
        kind, command, started_at, time.time(), job.records_read, job.enriched_rows,
        job.deadletters, job.check, job.balanced, config, final, samples,
        [call for call in list(CALLS) if call[0] >= started_at]))
  except OSError as e:  # a full disk or a read-only folder: the run's own error says more
    logging.warning('could not write the run report: %s', e)
    return None
  except Exception:  # pylint: disable=broad-except
    # A report is a by-product: the job's output is written and counted already.
    logging.exception('could not write the run report')
    return None


def _make_output_folders(output: str) -> None:
  """Both folders exist after a run, even when one stays empty, so readers need no special case."""
  for sub in (ENRICHED_DIR, DEADLETTER_DIR):
    path = f'{output.rstrip("/")}/{sub}'
    if not FileSystems.exists(path):
      try:
        FileSystems.mkdirs(path)
      except IOError:
        pass  # object stores have no folders


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

  mapping = config.mapping
  single = [('--time_field', p) for p in mapping.time_paths] + [('--id_field', mapping.id_path)]
  for flag, path in single:
    if path is not None and not matched(path):
      raise ConfigError(f'{flag} {format_path(path)} matches nothing in the first '
                        f'{len(sample)} records of {first}')
  if not any(matched(path) for path in mapping.text_paths):
    flag = '--text_template' if mapping.text_template is not None else '--text_field'
    paths = ','.join(format_path(p) for p in mapping.text_paths)
    raise ConfigError(f'{flag} {paths} matches nothing in the first '
                      f'{len(sample)} records of {first}')


class _RedactPasswords(logging.Filter):
  """Shows URI passwords in log lines (Beam's included) as ***."""

  def filter(self, record):
    message = record.getMessage()
    clean = redacted(message)
    if clean != message:
      record.msg, record.args = clean, None
    return True


def main(run: Callable[..., JobResult], argv=None) -> None:
  """What a `__main__` does: logging, run, summary, and one-line errors with exit 2."""
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s',
                      datefmt='%H:%M:%S', force=True)
  for handler in logging.getLogger().handlers:
    handler.addFilter(_RedactPasswords())
  for noisy in ('apache_beam', 'sentence_transformers', 'transformers', 'httpx',
                'huggingface_hub'):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    result = run(argv)
  except (ConfigError, UnavailableIO) as e:
    print(f'error: {redacted(str(e))}', file=sys.stderr)
    sys.exit(2)
  if result.failure:
    print(f'error: {redacted(result.failure)}', file=sys.stderr)
    sys.exit(1)
  print(result.summary())
  if not result.balanced and result.window_kind != 'sliding':
    sys.exit(1)
