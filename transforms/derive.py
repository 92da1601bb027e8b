"""What the job derives from embeddings, per window firing: labels and near-duplicates."""
import dataclasses
from typing import Dict, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from models.labels import assign_labels
from models.vectors import unit_rows

from transforms.records import WindowRows
from transforms.io.sinks import embedding_matrix


# Rows compared at once: memory stays rows x SIMILARITY_BLOCK floats (a 50,000-event window
# needed a 50,000 x 50,000 matrix, ~10 GB), the result is the same.
SIMILARITY_BLOCK = 512


def near_duplicates(ids: Sequence[str], embeddings: np.ndarray, threshold: float,
                    times_us: Optional[Sequence[int]] = None, context=(),
                    horizon_us: int = 0, block: int = SIMILARITY_BLOCK) -> Dict[str, list]:
  """Columns duplicate_of, duplicate_score for rows sorted by (event time, id).

  A row duplicates the most similar earlier row at cosine >= threshold:
  any earlier row of its window (earlier in the sort order, so live and replay
  agree), or a `context` row (Embedded, from earlier windows) at most
  `horizon_us` older than it.
  """
  unit = unit_rows(embeddings)
  if context:
    context_ids = [row.event.id for row in context]
    context_times = np.array([row.event.event_time_us for row in context])
    context_unit = unit_rows(embedding_matrix(context))
  duplicate_of, duplicate_score = [], []
  for i in range(len(ids)):
    if i % block == 0:  # the next block of rows against every row before its end
      similarity = unit[i:i + block] @ unit[:i + block].T
      if context:
        context_similarity = unit[i:i + block] @ context_unit.T
    best_id, best = None, -2.0
    if i:
      j = int(similarity[i % block, :i].argmax())
      best_id, best = ids[j], float(similarity[i % block, j])
    if context:
      recent = np.flatnonzero(context_times >= times_us[i] - horizon_us)
      if recent.size:
        j = recent[int(context_similarity[i % block, recent].argmax())]
        if float(context_similarity[i % block, j]) > best:
          best_id, best = context_ids[j], float(context_similarity[i % block, j])
    found = best_id is not None and best >= threshold
    duplicate_of.append(best_id if found else None)
    duplicate_score.append(best if found else None)
  return {'duplicate_of': duplicate_of, 'duplicate_score': duplicate_score}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeriveSpec:
  """Which derivations run (keywords only). label_index: a models.labels.LabelIndex or None."""
  label_index: Optional[object] = None
  label_threshold: float = 0.3
  label_top_k: int = 0
  dedup_threshold: Optional[float] = None
  dedup_horizon_s: float = 0.0  # also compare with earlier windows' events this recent
  topic_distance: Optional[float] = None  # None: no window summaries
  topic_horizon_s: float = 0.0  # a topic is new unless this recent past had it

  def _replace(self, **changes) -> 'DeriveSpec':
    return dataclasses.replace(self, **changes)

  @property
  def extra_columns(self) -> tuple:
    """The derived columns written beside the enriched ones, in order."""
    columns = ()
    if self.label_index is not None:
      columns += ('label', 'label_score') + (('labels',) if self.label_top_k else ())
    if self.dedup_threshold is not None:
      columns += ('duplicate_of', 'duplicate_score')
    return columns

  @property
  def lookback_s(self) -> float:
    """How far back each window needs earlier windows' rows."""
    dedup = self.dedup_horizon_s if self.dedup_threshold is not None else 0.0
    topics = self.topic_horizon_s if self.topic_distance is not None else 0.0
    return max(dedup, topics)


class _DeriveFn(beam.DoFn):

  def __init__(self, spec: DeriveSpec):
    self._spec = spec
    self._duplicates = Metrics.counter('enrichment', 'near_duplicates')

  def process(self, batch: WindowRows):
    embeddings = embedding_matrix(batch.rows)
    extras = dict(batch.extras or {})
    if self._spec.label_index is not None:
      extras.update(assign_labels(self._spec.label_index, embeddings,
                                  self._spec.label_threshold, self._spec.label_top_k))
    if self._spec.dedup_threshold is not None:
      columns = near_duplicates(
          [row.event.id for row in batch.rows], embeddings, self._spec.dedup_threshold,
          [row.event.event_time_us for row in batch.rows],
          batch.context if self._spec.dedup_horizon_s else (),
          round(self._spec.dedup_horizon_s * 1_000_000))
      self._duplicates.inc(sum(d is not None for d in columns['duplicate_of']))
      extras.update(columns)
    yield batch._replace(extras=extras)


class DeriveFromEmbeddings(beam.PTransform):
  """Adds label and near-duplicate columns to each window firing's rows."""

  def __init__(self, spec: DeriveSpec):
    super().__init__()
    self._spec = spec

  def expand(self, windows):
    return windows | 'Derive columns' >> beam.ParDo(_DeriveFn(self._spec))
