"""Window topics: clusters of a window's embeddings, summarised per window firing."""
import collections
import json
from typing import List, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa

from transforms.sinks import WindowRows, window_label, write_parquet

WINDOWS_DIR = 'windows'
_TS = pa.timestamp('us', tz='UTC')
TOPIC_TYPE = pa.struct([
    ('size', pa.int32()),
    ('examples', pa.list_(pa.string())),
    ('labels', pa.string()),  # JSON: label -> count
])
SUMMARY_SCHEMA = pa.schema([
    ('window_start', _TS),
    ('window_end', _TS),
    ('pane', pa.int32()),
    ('events', pa.int32()),
    ('duplicates', pa.int32()),
    ('label_counts', pa.string()),  # JSON: label -> count
    ('topics', pa.list_(TOPIC_TYPE)),
])


def window_topics(texts: Sequence[str], embeddings: np.ndarray,
                  labels: Optional[Sequence[Optional[str]]], distance: float,
                  examples: int = 3) -> List[dict]:
  """Clusters embeddings (average linkage, cosine distance below `distance`), largest first.

  Each topic lists its size, the texts nearest its centroid, and its label mix.
  Deterministic: agglomerative clustering has no random start.
  """
  if len(texts) == 1:
    assignment = np.zeros(1, int)
  else:
    from sklearn.cluster import AgglomerativeClustering
    assignment = AgglomerativeClustering(
        n_clusters=None, metric='cosine', linkage='average',
        distance_threshold=distance).fit_predict(embeddings)
  unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
  topics = []
  for cluster in np.unique(assignment):
    members = np.flatnonzero(assignment == cluster)
    centroid = unit[members].mean(axis=0)
    # Rounded, so that float noise between batchings (live vs replay) cannot
    # reorder near-ties; exact ties keep event-time order.
    closeness = np.round(unit[members] @ centroid / np.linalg.norm(centroid), 3)
    nearest = members[np.argsort(-closeness, kind='stable')]
    shown = list(dict.fromkeys(texts[m] for m in nearest))[:examples]  # distinct texts
    mix = collections.Counter(labels[m] for m in members if labels and labels[m])
    topics.append({'size': len(members), 'examples': shown,
                   'labels': json.dumps(dict(sorted(mix.items())))})
  topics.sort(key=lambda topic: (-topic['size'], topic['examples'][0]))
  return topics


class _SummarizeFn(beam.DoFn):

  def __init__(self, output_dir: str, distance: float):
    self._output_dir = output_dir.rstrip('/')
    self._distance = distance

  def process(self, batch: WindowRows):
    extras = batch.extras or {}
    labels = extras.get('label')
    texts = [row.event.text for row in batch.rows]
    embeddings = np.stack([row.embedding for row in batch.rows]).astype(np.float32)
    label_counts = collections.Counter(label for label in labels or () if label)
    summary = pa.table([
        pa.array([batch.start_us], pa.int64()).cast(_TS),
        pa.array([batch.end_us], pa.int64()).cast(_TS),
        pa.array([batch.pane], pa.int32()),
        pa.array([len(batch.rows)], pa.int32()),
        pa.array([sum(d is not None for d in extras.get('duplicate_of', ()))], pa.int32()),
        pa.array([json.dumps(dict(sorted(label_counts.items())))]),
        pa.array([window_topics(texts, embeddings, labels, self._distance)],
                 pa.list_(TOPIC_TYPE)),
    ], schema=SUMMARY_SCHEMA)
    write_parquet(summary, f'{self._output_dir}/{WINDOWS_DIR}/window={window_label(batch.start_us)}'
                  f'/part-{batch.pane:05d}.parquet')
    yield batch


class SummarizeWindows(beam.PTransform):
  """Writes one summary per window firing to DIR/windows/window=START/part-PANE.parquet."""

  def __init__(self, output_dir: str, distance: float):
    super().__init__()
    self._output_dir = output_dir
    self._distance = distance

  def expand(self, windows):
    return windows | 'Summarize window' >> beam.ParDo(
        _SummarizeFn(self._output_dir, self._distance))
