"""Window topics: clusters of a window's embeddings, summarised per window firing."""
import collections
import json
from typing import List, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
import pyarrow as pa

from models.vectors import unit_rows
from transforms.io import faults
from transforms.records import WindowRows
from transforms.io.files import ParquetFiles
from transforms.io.sinks import TIMESTAMP, embedding_matrix, not_yet_written, window_part_path

WINDOWS_DIR = 'windows'
TOPIC_TYPE = pa.struct([
    ('size', pa.int32()),
    ('new', pa.bool_()),  # null without a look-back
    ('examples', pa.list_(pa.string())),
    ('labels', pa.string()),  # JSON: label -> count
])
SUMMARY_SCHEMA = pa.schema([
    ('window_start', TIMESTAMP),
    ('window_end', TIMESTAMP),
    ('pane', pa.int32()),
    ('part', pa.string()),  # the enriched file summarised: DIR/enriched/window=START/PART
    ('events', pa.int32()),
    ('deadletters', pa.int32()),  # with an event time in the window, late ones excepted
    ('duplicates', pa.int32()),
    ('label_counts', pa.string()),  # JSON: label -> count
    ('topics', pa.list_(TOPIC_TYPE)),
    ('new_topics', pa.int32()),  # null without a look-back
])


# Rows of a window clustered (average linkage needs rows^2 memory: 50,000 rows ~10 GB);
# beyond it an evenly spaced sample of this many is clustered and every other row joins
# the topic whose centroid is nearest (counted in topic_rows_assigned).
MAX_CLUSTERED = 3000
_ASSIGN_BLOCK = 4096


def topic_assignment(embeddings: np.ndarray, distance: float,
                     max_clustered: int = MAX_CLUSTERED) -> np.ndarray:
  """The topic of each row: clustered, or past `max_clustered` rows sampled (see above)."""
  n = len(embeddings)
  if n == 1:
    return np.zeros(1, int)
  from sklearn.cluster import AgglomerativeClustering
  sample = (np.arange(n) if n <= max_clustered
            else np.linspace(0, n - 1, max_clustered).round().astype(int))
  clustered = AgglomerativeClustering(
      n_clusters=None, metric='cosine', linkage='average',
      distance_threshold=distance).fit_predict(embeddings[sample])
  if n <= max_clustered:
    return clustered
  unit = unit_rows(embeddings)
  centroids = unit_rows(np.stack([unit[sample[clustered == c]].mean(axis=0)
                                  for c in range(clustered.max() + 1)]))
  assignment = np.empty(n, int)
  for start in range(0, n, _ASSIGN_BLOCK):
    assignment[start:start + _ASSIGN_BLOCK] = (
        unit[start:start + _ASSIGN_BLOCK] @ centroids.T).argmax(axis=1)
  assignment[sample] = clustered
  return assignment


def window_topics(texts: Sequence[str], embeddings: np.ndarray,
                  labels: Optional[Sequence[Optional[str]]], distance: float,
                  examples: int = 3, earlier: Optional[np.ndarray] = None,
                  max_clustered: int = MAX_CLUSTERED) -> List[dict]:
  """Clusters embeddings (average linkage, cosine distance below `distance`), largest first.

  Each topic lists its size, the texts nearest its centroid, and its label mix.
  With `earlier` (embeddings of the recent past), a topic is new when none of
  them lies within `distance` of its centroid; without, `new` is None.
  Deterministic: agglomerative clustering has no random start.
  """
  assignment = topic_assignment(embeddings, distance, max_clustered)
  unit = unit_rows(embeddings)
  if earlier is not None and len(earlier):
    earlier = unit_rows(earlier)
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
    new = None
    if earlier is not None:
      direction = centroid / max(float(np.linalg.norm(centroid)), 1e-12)
      new = not len(earlier) or bool((earlier @ direction).max() < 1 - distance)
    topics.append({'size': len(members), 'new': new, 'examples': shown,
                   'labels': json.dumps(dict(sorted(mix.items())))})
  topics.sort(key=lambda topic: (-topic['size'], topic['examples'][0]))
  return topics


class _SummarizeFn(beam.DoFn):

  def __init__(self, output_dir: str, distance: float, horizon_s: float,
               policy: faults.WritePolicy):
    self._output_dir = output_dir.rstrip('/')
    self._distance = distance
    self._horizon_us = round(horizon_s * 1_000_000)
    self._policy = policy
    self._files = None
    self._assigned = Metrics.counter('enrichment', 'topic_rows_assigned')

  def setup(self):
    self._files = ParquetFiles(self._policy)

  def process(self, whole: WindowRows):
    # Rows an earlier file of the window holds were summarised with it (entries read again
    # after a restart): this summary covers what its own file holds, and none is written for
    # a firing whose every row was written before.
    batch = not_yet_written(whole, whole.written_before)
    if not batch.rows:
      yield whole
      return
    self._assigned.inc(max(0, len(batch.rows) - MAX_CLUSTERED))
    extras = batch.extras or {}
    labels = extras.get('label')
    texts = [row.event.text for row in batch.rows]
    embeddings = embedding_matrix(batch.rows)
    label_counts = collections.Counter(label for label in labels or () if label)
    earlier = None
    if self._horizon_us:
      recent = [row for row in batch.context
                if row.event.event_time_us >= batch.start_us - self._horizon_us]
      earlier = embedding_matrix(recent) if recent else np.zeros((0, 1), np.float32)
    topics = window_topics(texts, embeddings, labels, self._distance, earlier=earlier)
    path = window_part_path(f'{self._output_dir}/{WINDOWS_DIR}', whole)  # as its file's
    summary = pa.table([
        pa.array([batch.start_us], pa.int64()).cast(TIMESTAMP),
        pa.array([batch.end_us], pa.int64()).cast(TIMESTAMP),
        pa.array([batch.pane], pa.int32()),
        pa.array([path.rsplit('/', 1)[1]], pa.string()),
        pa.array([len(batch.rows)], pa.int32()),
        pa.array([batch.deadletters], pa.int32()),
        pa.array([sum(d is not None for d in extras.get('duplicate_of', ()))], pa.int32()),
        pa.array([json.dumps(dict(sorted(label_counts.items())))]),
        pa.array([topics], pa.list_(TOPIC_TYPE)),
        pa.array([sum(t['new'] for t in topics) if earlier is not None else None], pa.int32()),
    ], schema=SUMMARY_SCHEMA)
    try:
      self._files.write(summary, path)
    except faults.WriteAbandoned:
      pass  # the job is stopping; not passed on, so never acknowledged
    else:
      yield whole


class SummarizeWindows(beam.PTransform):
  """Writes one summary per window file to DIR/windows/window=START/PART, named as the
  enriched file it summarises (DIR/enriched/window=START/PART).

  With several writers of one output (consumers of one group), a window holds one
  enriched file per writer and so one summary per writer: each is partial, over
  that writer's rows; counts add up across a window's summaries, topics do not merge.
  Entries read again after a restart are summarised only where their rows were written:
  a summary covers exactly the rows of its file.
  """

  def __init__(self, output_dir: str, distance: float, horizon_s: float = 0.0,
               policy: faults.WritePolicy = faults.WritePolicy()):
    super().__init__()
    self._output_dir = output_dir
    self._distance = distance
    self._horizon_s = horizon_s
    self._policy = policy

  def expand(self, windows):
    return windows | 'Summarize window' >> beam.ParDo(
        _SummarizeFn(self._output_dir, self._distance, self._horizon_s, self._policy))
