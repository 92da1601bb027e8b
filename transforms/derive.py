"""What the job derives from embeddings, per window firing: labels and near-duplicates."""
from typing import Dict, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.sinks import WindowRows


def near_duplicates(ids: Sequence[str], embeddings: np.ndarray,
                    threshold: float) -> Dict[str, list]:
  """Columns duplicate_of, duplicate_score for rows sorted by (event time, id).

  A row duplicates the most similar earlier row at cosine >= threshold
  (earlier: before it in the sort order, so live and replay agree).
  """
  unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
  similarity = unit @ unit.T
  duplicate_of, duplicate_score = [], []
  for i in range(len(ids)):
    if i == 0:
      duplicate_of.append(None)
      duplicate_score.append(None)
      continue
    j = int(similarity[i, :i].argmax())
    score = float(similarity[i, j])
    if score >= threshold:
      duplicate_of.append(ids[j])
      duplicate_score.append(score)
    else:
      duplicate_of.append(None)
      duplicate_score.append(None)
  return {'duplicate_of': duplicate_of, 'duplicate_score': duplicate_score}


class DeriveSpec(NamedTuple):
  """Which derivations run. label_index: a models.labels.LabelIndex or None."""
  label_index: Optional[object] = None
  label_threshold: float = 0.3
  label_top_k: int = 0
  dedup_threshold: Optional[float] = None
  topic_distance: Optional[float] = None  # None: no window summaries


class _DeriveFn(beam.DoFn):

  def __init__(self, spec: DeriveSpec):
    self._spec = spec
    self._duplicates = Metrics.counter('enrichment', 'near_duplicates')

  def process(self, batch: WindowRows):
    embeddings = np.stack([row.embedding for row in batch.rows]).astype(np.float32)
    extras = dict(batch.extras or {})
    if self._spec.label_index is not None:
      from models.labels import assign_labels
      extras.update(assign_labels(self._spec.label_index, embeddings,
                                  self._spec.label_threshold, self._spec.label_top_k))
    if self._spec.dedup_threshold is not None:
      columns = near_duplicates([row.event.id for row in batch.rows], embeddings,
                                self._spec.dedup_threshold)
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
