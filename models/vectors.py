"""Small helpers on embedding matrices, shared by the model code and the steps."""
import numpy as np


def unit_rows(vectors: np.ndarray) -> np.ndarray:
  """Each row scaled to length 1 (zero rows stay zero): cosine becomes a dot product."""
  return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
