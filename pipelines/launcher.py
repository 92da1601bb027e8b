"""Running a built job: build_job, run_job (counts from its metrics, the report), main."""
import logging
import sys
import time
from typing import Callable, NamedTuple, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from models.embedding_cache import hit_rate
from models.identity import of_config
from observability import monitoring
from observability.instruments import CountByReason, MeasureLatency
from observability.logs import configure_logging
from observability.metrics import snapshot
from observability.report import RunFacts, invocation, write_report
from pipelines.builder import WrittenFiles, build
from pipelines.config import JobConfig
from pipelines.manifest import prepare_output
from pipelines.options import ConfigError
from runners.choice import choose_local_runner, share_cores
from runners.local_streaming import PatchRefused
from transforms import job_state
from transforms.io.cloud_io import UnavailableIO
from transforms.io.files import remove_stale_temporaries
from transforms.io.sinks import DEADLETTER_DIR, ENRICHED_DIR
from transforms.io.uri_query import redacted
from transforms.spill import remove_spill, remove_stale_spills


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
  enriched_events: int = 0  # sliding windows: events written in their last window
  window_copies: int = 0  # sliding windows: the rows those events should have made
  model: str = ''  # the model's identity, NAME@FINGERPRINT (models/identity.py)
  truncated: int = 0  # texts longer than the model's window
  chunked: bool = False  # whether those were embedded in chunks (else cut at the window)

  @property
  def balanced(self) -> bool:
    if self.window_kind == 'sliding':
      # An event is written once per window it falls in: rows = windows x events.
      return (self.records_read == self.enriched_events + self.deadletters
              and self.enriched_rows == self.window_copies)
    return self.records_read == self.enriched_rows + self.deadletters

  @property
  def check(self) -> str:
    if self.balanced:
      if self.window_kind == 'sliding':
        return (f'every record accounted for: {self.enriched_events} events, each written '
                f'once per window it falls in, {self.enriched_rows} rows')
      return 'every record accounted for'
    if self.window_kind == 'sliding':
      return (f'MISMATCH: {self.enriched_events} events in their last window plus dead '
              f'letters differ from records read, or {self.enriched_rows} rows from the '
              f'{self.window_copies} their windows make')
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
    if self.model:
      over = (f'; {self.truncated} texts were longer than its window '
              f'({"embedded in chunks" if self.chunked else "cut at the window"})'
              if self.truncated else '')
      lines.append(f'Model: {self.model}{over}.')
    if self.report:
      lines.append(f'Report: {self.report}')
    return '\n'.join(lines)


def _count(n: int, noun: str) -> str:
  return f'{n} {noun}' if n == 1 else f'{n} {noun}s'


_RERUN = 'a rerun writes what is missing and replaces the files it wrote'


class Job(NamedTuple):
  """A built job, not yet run: the entry point may add its own steps behind `written`."""
  pipeline: beam.Pipeline
  written: WrittenFiles
  config: JobConfig
  monitor: monitoring.RunMonitor
  started: float  # time.monotonic() when building began
  started_at: float  # time.time() then


def build_job(options: PipelineOptions, config: JobConfig, read: beam.PTransform,
              test_pipeline: Optional[beam.Pipeline] = None) -> Job:
  """Builds the whole job behind `read` (runner defaults, the builder, the metrics steps)."""
  started, started_at = time.monotonic(), time.time()
  prepare_output(config, config.on_other_settings)  # refuses a folder of other settings
  if test_pipeline is None:
    logging.info('Running on %s', choose_local_runner(options, config.streaming))
    config = config._replace(model=share_cores(options, config.model))
  monitor = monitoring.monitor_for(options)
  state = job_state.of(config.write.job)
  monitor.on_sample = lambda snap: setattr(state, 'snapshot', snap)
  pipeline = test_pipeline or beam.Pipeline(options=options)
  written = build(pipeline | 'Read records' >> read, config)
  written = WrittenFiles(
      written.enriched | 'Measure latency' >> MeasureLatency() if config.mode.unbounded
      else written.enriched,
      written.deadletters | 'Count dead letters' >> CountByReason())
  return Job(pipeline, written, config, monitor, started, started_at)


def run_job(job: Job, resume: str = _RERUN) -> JobResult:
  """Runs a built job to the end and returns its counts (and writes its report).

  Args:
    resume: what happens to unwritten records after a stop, for the stop line.
  """
  _make_output_folders(job.config.output)
  state = job_state.of(job.config.write.job)
  try:
    try:
      result = job.pipeline.run()
      job.monitor.watch(result)
      result.wait_until_finish()
    finally:
      job.monitor.stop()
      if job.config.spill_dir is not None:
        remove_spill(job.config.spill_dir)
    counts = snapshot(result).counters
    records_read = counts.get('records_read', 0)
    outcome = JobResult(records_read, counts.get('enriched_rows', 0),
                        counts.get('deadletters', 0), time.monotonic() - job.started,
                        job.config.output, job.config.window.kind,
                        _failure(state, records_read, resume),
                        cache_hits=counts.get('embedding_cache_hits', 0),
                        cache_misses=counts.get('embedding_cache_misses', 0),
                        enriched_events=counts.get('enriched_events', 0),
                        window_copies=counts.get('window_copies', 0),
                        model=str(of_config(job.config.model)),
                        truncated=counts.get('truncated', 0),
                        chunked=bool(job.config.model.chunk_tokens))
    final = job.monitor.samples[-1] if len(job.monitor.samples) else None
    return outcome._replace(report=_write_report(
        outcome, job.config, job.started_at, final, job.monitor.samples,
        [call for call in list(state.calls) if call[0] >= job.started_at]))
  finally:
    job_state.release(job.config.write.job)


def _failure(state: job_state.JobState, records_read: int, resume: str) -> Optional[str]:
  """Why the run cannot be reported as a success: a write given up, or a dead source."""
  if state.stop_reason is not None:
    return f'{state.stop_reason}; the job stopped: {resume}'
  if records_read == 0:
    for dependency in state.dependencies():
      if dependency.name.startswith('source') and not dependency.ever_ok:
        return (f'read nothing: {dependency.name} could not be read at any poll '
                f'(last error: {dependency.last_error})')
  return None


def _write_report(job: JobResult, config: JobConfig, started_at: float, final, samples,
                  calls) -> Optional[str]:
  kind, command = invocation(config.mode.unbounded)
  try:
    return write_report(RunFacts(
        kind, command, started_at, time.time(), job.records_read, job.enriched_rows,
        job.deadletters, job.check, job.balanced, config, final, samples, calls, job.model))
  except OSError as e:  # a full disk or a read-only folder: the run's own error says more
    logging.warning('could not write the run report: %s', e)
    return None
  except Exception:  # pylint: disable=broad-except
    # A report is a by-product: the job's output is written and counted already.
    logging.exception('could not write the run report')
    return None


def _make_output_folders(output: str) -> None:
  """Both folders exist after a run, even when one stays empty, so readers need no special
  case; temporary files and spilled rows a killed run left there are removed."""
  remove_stale_temporaries(output)
  remove_stale_spills(output)
  for sub in (ENRICHED_DIR, DEADLETTER_DIR):
    path = f'{output.rstrip("/")}/{sub}'
    if not FileSystems.exists(path):
      try:
        FileSystems.mkdirs(path)
      except IOError:
        pass  # object stores have no folders


def main(run: Callable[..., JobResult], argv=None) -> None:
  """What a `__main__` does: logging, run, summary, and one-line errors with exit 2."""
  configure_logging()
  try:
    result = run(argv)
  except (ConfigError, UnavailableIO, PatchRefused) as e:
    print(f'error: {redacted(str(e))}', file=sys.stderr)
    sys.exit(2)
  if result.failure:
    print(f'error: {redacted(result.failure)}', file=sys.stderr)
    sys.exit(1)
  print(result.summary())
  if not result.balanced:
    sys.exit(1)
