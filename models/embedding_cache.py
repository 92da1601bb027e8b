"""Exact-repeat embedding cache: a text already embedded by this process is not embedded again.

Real streams repeat themselves (bot edits, templated log lines): 51% of the
shared Wikipedia archive's texts repeat an earlier one. `CachingEncoder` is
what the handler's load_model returns, so the cache lives as long as the
model (Beam shares it across bundles and threads; with a model shared across
processes, across those too). Within one call each distinct text is encoded
once; across calls a bounded LRU keeps the latest vectors.

Keys are 16-byte blake2b digests of the text, keyed by everything that
changes a vector (model, precision, normalization, backend, quantization),
so one cache can never answer for another setting. Vectors are float32 rows
of preallocated blocks: memory per entry is the row (4 bytes x width) plus
about 200 bytes of index (README, Performance, has the measured figure).
"""
import collections
import hashlib
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from models.chunking import model_reading
from models.forward_passes import encode_in_passes
from models.onnx_backend import OnnxEncoder

_BLOCK_ROWS = 1024  # rows per allocated block: memory follows use, not the bound
# This process's hits and misses, for status lines (Beam counters carry the job's totals).
def hit_rate(hits: int, misses: int) -> float:
  return hits / (hits + misses) if hits + misses else 0.0


class EmbeddingCache:
  """A bounded LRU from text to vector; thread-safe.

  Args:
    capacity: most vectors held (the least recently used one goes first).
    setting: what makes vectors differ besides the text (model, precision...).
  """

  def __init__(self, capacity: int, setting: str):
    if capacity < 1:
      raise ValueError('an embedding cache holds at least one vector')
    self.capacity = capacity
    self._salt = hashlib.blake2b(setting.encode(), digest_size=16).digest()
    self._slots: 'collections.OrderedDict[bytes, int]' = collections.OrderedDict()
    self._blocks: List[np.ndarray] = []
    self._lock = threading.Lock()

  def key(self, text: str) -> bytes:
    return hashlib.blake2b(text.encode('utf-8', 'surrogatepass'), digest_size=16,
                           key=self._salt).digest()

  def __len__(self) -> int:
    return len(self._slots)

  def get(self, keys: Sequence[bytes]) -> Dict[bytes, np.ndarray]:
    """The cached vectors (copies) of those keys that are held."""
    found = {}
    with self._lock:
      for key in keys:
        slot = self._slots.get(key)
        if slot is not None and key not in found:
          self._slots.move_to_end(key)
          found[key] = self._row(slot).copy()
    return found

  def put(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
    with self._lock:
      for key, vector in zip(keys, vectors):
        slot = self._slots.get(key)
        if slot is None:
          slot = self._free_slot(vector.shape[0])
          self._slots[key] = slot
        self._slots.move_to_end(key)
        self._row(slot)[:] = vector

  def _free_slot(self, width: int) -> int:
    if len(self._slots) >= self.capacity:
      return self._slots.popitem(last=False)[1]
    slot = len(self._slots)
    if slot == len(self._blocks) * _BLOCK_ROWS:
      rows = min(_BLOCK_ROWS, self.capacity - slot)
      self._blocks.append(np.empty((rows, width), np.float32))
    return slot

  def _row(self, slot: int) -> np.ndarray:
    return self._blocks[slot // _BLOCK_ROWS][slot % _BLOCK_ROWS]


class CachingEncoder:
  """A loaded model with its cache: `embed` answers float32 rows, one per text.

  Args:
    model: anything with SentenceTransformer's `encode` (the ONNX encoder too).
    encode_kwargs: what each `encode` call gets (normalization...).
    cache: None encodes every text, repeats included, as without a cache.
    token_budget, max_texts: the limits of one forward pass (models/forward_passes.py);
      both 0: `encode` batches as it does by itself.
  """

  def __init__(self, model, encode_kwargs: dict, cache: Optional[EmbeddingCache] = None,
               token_budget: int = 0, max_texts: int = 0):
    self.model = model
    # Torch models hand over tensors (numpy has no bf16); the graph encoders float32 arrays,
    # without importing torch.
    self._kwargs = dict(encode_kwargs, show_progress_bar=False,
                        convert_to_tensor=not isinstance(model, OnnxEncoder))
    self._cache = cache
    self._token_budget = token_budget
    self._max_texts = max_texts

  def embed(self, texts: Sequence[str], inference_args: Optional[dict] = None
            ) -> Tuple[np.ndarray, int, int]:
    """(vectors, hits, misses): hits were served from the cache or an earlier copy in `texts`."""
    texts = list(texts)
    if self._cache is None or inference_args:  # other arguments may change the vectors
      return self._encode(texts, inference_args), 0, len(texts)
    keys = [self._cache.key(text) for text in texts]
    found = self._cache.get(keys)
    missing = {}  # key -> text, each distinct missing text once, in order
    for key, text in zip(keys, texts):
      if key not in found:
        missing.setdefault(key, text)
    if missing:
      fresh = self._encode(list(missing.values()), None)
      self._cache.put(list(missing), fresh)
      found.update(zip(missing, fresh))
    if not texts:
      return np.zeros((0, 0), np.float32), 0, 0
    return np.stack([found[key] for key in keys]), len(texts) - len(missing), len(missing)

  def reading(self, texts: Sequence[str]):
    """(window, token offsets) of `texts` for chunking (models/chunking.py), or (None, None)."""
    return model_reading(self.model, texts)

  def _encode(self, texts: List[str], inference_args: Optional[dict]) -> np.ndarray:
    return encode_in_passes(self.model, texts, dict(self._kwargs, **(inference_args or {})),
                            self._token_budget, self._max_texts)
