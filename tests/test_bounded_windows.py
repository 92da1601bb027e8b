"""Near-duplicates and topics in bounded memory per window: blocked comparison (the same
answer), topics clustered from a capped sample with every other row assigned to its nearest."""
import numpy as np

from models.vectors import unit_rows
from transforms.derive import near_duplicates
from transforms.topics import topic_assignment, window_topics


def _clustered_vectors(n, centres=5, seed=3):
  rng = np.random.default_rng(seed)
  middle = unit_rows(rng.normal(size=(centres, 16)))
  which = rng.integers(0, centres, n)
  return unit_rows(middle[which] + 0.05 * rng.normal(size=(n, 16))).astype(np.float32), which


def test_blocked_near_duplicates_give_the_whole_matrix_s_answer():
  vectors, _ = _clustered_vectors(300)
  ids = [f'e{n}' for n in range(300)]
  whole = near_duplicates(ids, vectors, 0.9, block=300)
  for block in (1, 7, 64):
    blocked = near_duplicates(ids, vectors, 0.9, block=block)
    assert blocked['duplicate_of'] == whole['duplicate_of']
    np.testing.assert_allclose(  # matrix products of other shapes round differently
        [s or 0 for s in blocked['duplicate_score']], [s or 0 for s in whole['duplicate_score']],
        atol=1e-6)
  assert sum(d is not None for d in whole['duplicate_of']) > 200


def test_topics_past_the_cap_cluster_a_sample_and_assign_every_row():
  vectors, truth = _clustered_vectors(1000)
  full = topic_assignment(vectors, 0.5, max_clustered=1000)
  capped = topic_assignment(vectors, 0.5, max_clustered=100)
  assert len(capped) == 1000

  def same_grouping(a, b):  # one topic per true centre, whatever the topic numbers
    return all(len(set(b[a == c])) == 1 for c in np.unique(a))

  assert same_grouping(truth, full) and same_grouping(truth, capped)
  topics = window_topics([f't{n}' for n in range(1000)], vectors, None, 0.5, max_clustered=100)
  assert sum(topic['size'] for topic in topics) == 1000 and len(topics) == 5
