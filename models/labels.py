"""Zero-shot labels: label descriptions embedded once with the job's model."""
import json
from typing import Dict, List, NamedTuple, Sequence

import numpy as np

from models.loading import ModelConfig, load_sentence_transformer
from models.vectors import unit_rows


def read_label_file(path: str) -> Dict[str, List[str]]:
  """Reads {label: [description, ...]} from YAML or JSON.

  Accepted shapes: a mapping of label to a description or a list of them, or a
  list of {"name": ..., "descriptions": [...]} objects.
  """
  with open(path, encoding='utf-8') as f:
    text = f.read()
  if path.endswith(('.yaml', '.yml')):
    import yaml
    data = yaml.safe_load(text)
  else:
    data = json.loads(text)
  if isinstance(data, list):
    data = {item['name']: item.get('descriptions') or item.get('description')
            for item in data}
  if not isinstance(data, dict) or not data:
    raise ValueError(f'{path}: expected labels with descriptions')
  labels = {}
  for name, descriptions in data.items():
    if isinstance(descriptions, str):
      descriptions = [descriptions]
    if not descriptions or not all(isinstance(d, str) and d.strip() for d in descriptions):
      raise ValueError(f'{path}: label {name!r} needs at least one non-empty description')
    labels[str(name)] = list(descriptions)
  return labels


class LabelIndex(NamedTuple):
  """Unit-length description embeddings and the label each belongs to."""
  names: List[str]
  owners: np.ndarray  # description -> index into names
  vectors: np.ndarray  # descriptions x dimensions, float32, unit length

  @classmethod
  def build(cls, labels: Dict[str, List[str]], config: ModelConfig) -> 'LabelIndex':
    model = load_sentence_transformer(config._replace(device='cpu', precision='fp32'))
    names = list(labels)
    texts = [d for name in names for d in labels[name]]
    owners = np.array([i for i, name in enumerate(names) for _ in labels[name]])
    vectors = model.encode(texts, normalize_embeddings=True, show_progress_bar=False)
    return cls(names, owners, np.asarray(vectors, np.float32))

  def scores(self, embeddings: np.ndarray) -> np.ndarray:
    """Cosine of each embedding to each label's closest description (rows x labels)."""
    per_description = unit_rows(embeddings) @ self.vectors.T
    best = np.full((len(embeddings), len(self.names)), -1.0, np.float32)
    for label in range(len(self.names)):
      best[:, label] = per_description[:, self.owners == label].max(axis=1)
    return best


def assign_labels(index: LabelIndex, embeddings: np.ndarray, threshold: float,
                  top_k: int = 0) -> Dict[str, Sequence]:
  """Columns label, label_score (and labels when top_k) for a batch of embeddings."""
  scores = index.scores(embeddings)
  best = scores.argmax(axis=1)
  best_scores = scores[np.arange(len(scores)), best]
  columns = {
      'label': [index.names[b] if s >= threshold else None for b, s in zip(best, best_scores)],
      'label_score': [float(s) for s in best_scores],
  }
  if top_k:
    order = np.argsort(-scores, axis=1)[:, :top_k]
    columns['labels'] = [[index.names[i] for i in row] for row in order]
  return columns
