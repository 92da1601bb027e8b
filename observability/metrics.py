"""The job's Beam metrics read from a PipelineResult: the one source of every count.

The summary, the run report, the live status line and the Prometheus endpoint
(observability.monitoring) all read these snapshots.
"""
import math
import time
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

from apache_beam.metrics.metric import MetricsFilter

from models.embedding_cache import hit_rate
from observability.instruments import DEADLETTERS_BY_REASON, HISTOGRAMS, NAMESPACE

CACHE_HITS, CACHE_MISSES = 'embedding_cache_hits', 'embedding_cache_misses'


class Snapshot(NamedTuple):
  """The job's metrics at one moment: counters summed over steps, gauges' latest values."""
  taken_at: float  # epoch seconds
  counters: Dict[str, int]
  gauges: Dict[str, int]

  def histogram(self, name: str):
    """(cumulative [(upper bound, count)] ending at +Inf, sum) of one of HISTOGRAMS."""
    spec = HISTOGRAMS[name]
    total, buckets = 0, []
    for i, bound in enumerate(spec.bounds + (float('inf'),)):
      total += self.counters.get(f'{name}_bucket_{i}', 0)
      buckets.append((bound, total))
    return buckets, self.counters.get(f'{name}_sum', 0) / spec.scale

  def deadletters_by_reason(self) -> Dict[str, int]:
    return {name[len(DEADLETTERS_BY_REASON):]: value for name, value in self.counters.items()
            if name.startswith(DEADLETTERS_BY_REASON)}

  def cache_hit_ratio(self) -> Optional[float]:
    """None until the cache was asked (or without a cache)."""
    hits, misses = self.counters.get(CACHE_HITS, 0), self.counters.get(CACHE_MISSES, 0)
    return hit_rate(hits, misses) if hits + misses else None


EMPTY = Snapshot(0.0, {}, {})


def quantile(buckets: Sequence[Tuple[float, int]], q: float) -> Optional[float]:
  """A quantile from cumulative histogram buckets, interpolated linearly within a bucket."""
  total = buckets[-1][1] if buckets else 0
  if not total:
    return None
  rank, below, lower = q * total, 0, 0.0
  for bound, cumulative in buckets:
    if cumulative >= rank:
      if math.isinf(bound):
        return lower  # beyond the last bound: its lower edge is all that is known
      inside = cumulative - below
      return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
    below, lower = cumulative, bound
  return lower


def snapshot(result) -> Snapshot:
  """Reads the job's metrics from a (running or finished) PipelineResult."""
  found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
  counters: Dict[str, int] = {}
  for counter in found['counters']:
    value = counter.committed if counter.committed is not None else counter.attempted
    counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + (value or 0)
  gauges, stamps = {}, {}
  for gauge in found['gauges']:
    data = gauge.committed if gauge.committed is not None else gauge.attempted
    name = gauge.key.metric.name
    if data is not None and data.value is not None and (
        name not in stamps or data.timestamp >= stamps[name]):
      gauges[name], stamps[name] = data.value, data.timestamp
  return Snapshot(time.time(), counters, gauges)
