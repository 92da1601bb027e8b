"""Small stand-ins for plumbing tests: a model that hashes texts into vectors."""
import hashlib

import numpy as np
import torch

from models.handler import SentenceTransformerHandler
from models.loading import ModelConfig

DIMENSIONS = 8
FAIL_MARKER = 'FAIL-ME'


class HashingModel:
  """Answers `encode` like a SentenceTransformer, from a hash of each text.

  A batch holding a text with FAIL_MARKER raises, as a broken input would.
  """

  def encode(self, texts, batch_size=32, normalize_embeddings=False,
             show_progress_bar=False, convert_to_tensor=True):
    del batch_size, show_progress_bar, convert_to_tensor
    if any(FAIL_MARKER in text for text in texts):
      raise RuntimeError('cannot embed this text')
    rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:DIMENSIONS], np.uint8)
            for t in texts]
    vectors = torch.tensor(np.stack(rows).astype(np.float32) / 255.0)
    if normalize_embeddings:
      vectors = torch.nn.functional.normalize(vectors, dim=1)
    return vectors


def hashed_vector(text: str) -> np.ndarray:
  return HashingModel().encode([text]).numpy()[0]


class HashingModelHandler(SentenceTransformerHandler):
  """The project's handler around HashingModel: real batching, cache and retry logic, no weights."""

  def __init__(self, config: ModelConfig = ModelConfig(min_batch_size=1, max_batch_size=16)):
    super().__init__(config)

  def load_model(self):
    return self.wrap(HashingModel())
