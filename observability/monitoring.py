"""Live metrics: the job's Beam metrics served in the Prometheus text format.

Beam metrics stay the one source of truth (on Flink or Dataflow they reach the
runner's own monitoring); locally `--metrics_port` serves them at /metrics,
read from the running pipeline's PipelineResult.metrics() on each scrape. The
same snapshots, taken each second, make the run report's timeline.
"""
import logging
import threading
import time
import types
from typing import Callable, List, Optional

from apache_beam.options.pipeline_options import PipelineOptions

# Snapshot, EMPTY, quantile and snapshot are re-exported for the report and the tests.
from observability.metrics import EMPTY, Snapshot, quantile, snapshot  # noqa: F401
from pipelines.options import ConfigError
from runners.choice import named_runner
from transforms import records
from observability.instruments import (DEADLETTERS_BY_REASON, HISTOGRAMS, NAMESPACE,
                                       SOURCE_WATERMARK_MS)

PREFIX = 'enrichment_'
# Beam counter -> exported counter (without _total), for the names dashboards rely on.
RENAMED = types.MappingProxyType({'records_read': 'records_read', 'enriched_rows': 'rows_written',
           'deadletters': None})  # the total is the sum of enrichment_deadletters_total{reason}
GAUGES = types.MappingProxyType({'source_pending': 'Entries delivered to the consumer group, not yet acknowledged.',
          'source_lag': 'Entries in the stream not yet delivered to the group (Redis 7+).'})
# Every reason code of transforms.records is served from the start, at 0: Prometheus's
# rate() misses the first increment of a series that appears with a value.
REASONS = tuple(sorted(records.REASONS))


class MonitoringOptions(PipelineOptions):
  """Where live metrics are served."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--metrics_port', type=int, default=None,
                        help='Serve Prometheus metrics at http://ADDRESS:PORT/metrics while '
                        'the job runs.')
    parser.add_argument('--metrics_address', default='127.0.0.1',
                        help='Address the metrics endpoint binds (0.0.0.0: every interface).')


def families(snap: Snapshot):
  """The Prometheus metric families of one snapshot."""
  from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                      HistogramMetricFamily)
  counters = dict(snap.counters)
  yield CounterMetricFamily(PREFIX + 'records_read', 'Records read from the source.',
                            counters.pop('records_read', 0))
  yield CounterMetricFamily(PREFIX + 'rows_written', 'Enriched rows written (Parquet).',
                            counters.pop('enriched_rows', 0))
  dead = CounterMetricFamily(PREFIX + 'deadletters', 'Dead letters written, by reason.',
                             labels=['reason'])
  by_reason = dict.fromkeys(REASONS, 0)
  by_reason.update(snap.deadletters_by_reason())
  for reason, value in sorted(by_reason.items()):
    dead.add_metric([reason], value)
  yield dead
  for name, spec in HISTOGRAMS.items():
    buckets, total = snap.histogram(name)
    yield HistogramMetricFamily(
        PREFIX + name, spec.help, sum_value=total,
        buckets=[('+Inf' if b == float('inf') else repr(float(b)), n) for b, n in buckets])
  watermark_ms = snap.gauges.get(SOURCE_WATERMARK_MS)
  if watermark_ms is not None:
    yield GaugeMetricFamily(PREFIX + 'watermark_lag_seconds',
                            "Processing clock minus the source's watermark.",
                            snap.taken_at - watermark_ms / 1000)
  for name, help_text in GAUGES.items():
    if name in snap.gauges:
      yield GaugeMetricFamily(PREFIX + name, help_text, snap.gauges[name])
  ratio = snap.cache_hit_ratio()
  if ratio is not None:
    yield GaugeMetricFamily(PREFIX + 'embedding_cache_hit_ratio',
                            'Embedding cache hits over lookups since the start.', ratio)
  # Every other counter of the job, e.g. embedding_cache_hits, events_embedded.
  histogram_parts = tuple(f'{name}_' for name in HISTOGRAMS)
  for name, value in sorted(counters.items()):
    if name not in RENAMED and not name.startswith(histogram_parts + (DEADLETTERS_BY_REASON,)):
      yield CounterMetricFamily(PREFIX + name, f'Beam counter {NAMESPACE}/{name}.', value)


class _BeamCollector:
  """A prometheus_client collector that reads the watched PipelineResult on each scrape."""

  def __init__(self):
    self.result = None

  def collect(self):
    snap = EMPTY._replace(taken_at=time.time())
    if self.result is not None:
      try:
        snap = snapshot(self.result)
      except Exception:  # pylint: disable=broad-except
        logging.exception('could not read the job metrics')
    yield from families(snap)


class SampleSeries:
  """Snapshots over a run, bounded: when `limit` are held, every other one is dropped,
  so a run of any length keeps its whole timeline at a coarser step (the report's)."""

  def __init__(self, limit: int = 3600):
    self._limit = limit
    self._items: List[Snapshot] = []
    self._lock = threading.Lock()

  def append(self, snap: Snapshot) -> None:
    with self._lock:
      self._items.append(snap)
      if len(self._items) > self._limit:
        last = self._items[-1]
        self._items = self._items[:-1:2] + [last]  # the first and the latest stay

  def __len__(self) -> int:
    return len(self._items)

  def __iter__(self):
    with self._lock:
      return iter(list(self._items))

  def __getitem__(self, index):
    with self._lock:
      return self._items[index]


class RunMonitor:
  """Serves /metrics (with --metrics_port) and samples the metrics each second for the report.

  Each sample is also handed to `on_sample` (the job's state, for live status lines).
  """

  def __init__(self, port: Optional[int] = None, address: str = '127.0.0.1',
               sample_every_s: float = 1.0, sample_limit: int = 3600):
    self.samples = SampleSeries(sample_limit)
    self.on_sample: Optional[Callable[[Snapshot], None]] = None
    self._collector = _BeamCollector()
    self._every_s = sample_every_s
    self._stop = threading.Event()
    self._sampler = None
    self._server = None
    self.url = None
    if port is not None:
      self._serve(port, address)

  @classmethod
  def from_options(cls, options: PipelineOptions) -> 'RunMonitor':
    opts = options.view_as(MonitoringOptions)
    if opts.metrics_port is not None and not 0 <= opts.metrics_port <= 65535:
      raise ConfigError(f'--metrics_port {opts.metrics_port} is not a port (0-65535)')
    return cls(opts.metrics_port, opts.metrics_address)

  def _serve(self, port: int, address: str) -> None:
    from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
    registry = CollectorRegistry(auto_describe=False)
    registry.register(self._collector)
    ProcessCollector(registry=registry)
    try:
      self._server, _ = start_http_server(port, address, registry=registry)
    except OSError as e:
      raise ConfigError(f'--metrics_port {port}: cannot listen on {address}: '
                        f'{e.strerror or e}') from None
    host, bound = self._server.server_address[:2]
    self.url = f'http://{host}:{bound}/metrics'
    logging.info('Prometheus metrics at %s', self.url)

  def watch(self, result) -> None:
    """Reads metrics from `result` from now on (scrapes, and a sample each second)."""
    self._collector.result = result
    self._sampler = threading.Thread(target=self._sample_loop, name='metrics-sampler',
                                     daemon=True)
    self._sampler.start()

  def _sample_loop(self):
    while not self._stop.wait(self._every_s):
      self._take_sample()

  def _take_sample(self):
    try:
      snap = snapshot(self._collector.result)
    except Exception:  # pylint: disable=broad-except
      logging.debug('metrics sample failed', exc_info=True)
      return
    self.samples.append(snap)
    if self.on_sample is not None:
      self.on_sample(snap)

  def stop(self) -> Optional[Snapshot]:
    """Stops sampling and serving; returns the final snapshot (None when nothing was watched)."""
    self._stop.set()
    if self._sampler is not None:
      self._sampler.join(timeout=5)
    if self._server is not None:
      self._server.shutdown()
      self._server.server_close()
    if self._collector.result is None:
      return None
    final = snapshot(self._collector.result)
    self.samples.append(final)
    return final


def monitor_for(options: PipelineOptions) -> RunMonitor:
  """The run's monitor; refuses --metrics_port where metrics exist only at the end."""
  opts = options.view_as(MonitoringOptions)
  if opts.metrics_port is not None and named_runner(options) == 'fnapirunner':
    raise ConfigError('--metrics_port serves live jobs (python -m pipelines.stream): the batch '
                      "runner reports metrics only at the end; see the run's report.html")
  return RunMonitor.from_options(options)
