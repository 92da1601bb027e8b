"""A RunInference model handler for sentence-transformers models."""
import logging
import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

from apache_beam.metrics import Metrics
from runners.beam_inference import ModelHandler, PredictionResult

from models.chunking import embed_documents
from models.embedding_cache import CachingEncoder, EmbeddingCache
from models.identity import of_config
from models.loading import ModelConfig, forward_pass_limits, load_sentence_transformer, shares_model
from models.precision import resolved

_PROGRESS_EVERY_S = 5.0


class InferenceFailure(NamedTuple):
  """Stands in for an embedding when the model failed on one text."""
  error: str


class SentenceTransformerHandler(ModelHandler[str, PredictionResult, Any]):
  """Embeds texts with `SentenceTransformer.encode`, each distinct text once.

  One model per worker process, shared by its threads (RunInference's default);
  on a GPU one model for all the worker processes of a machine (Beam's
  multi-process sharing), see `share_model_across_processes`. The loaded model
  carries the exact-repeat embedding cache (models/embedding_cache.py), so the
  cache lives as long as the model. A batch that fails is retried text by
  text, so one bad text costs only its own embedding: its PredictionResult
  carries an InferenceFailure.

  Args:
    config: the model, device, precision, batch bounds and cache size.
  """

  def __init__(self, config: ModelConfig):
    super().__init__()
    self._config = config
    self._progress = _Progress()
    self._swapped: Dict[str, CachingEncoder] = {}  # models that replaced it, by path

  @property
  def config(self) -> ModelConfig:
    return self._config

  def load_model(self) -> CachingEncoder:
    return self.wrap(load_sentence_transformer(self._config))

  def update_model_path(self, model_path: Optional[str] = None):
    """Beam's hook for a new model: the next load_model loads `model_path`."""
    if model_path:
      self._config = self._config._replace(model=model_path)

  def wrap(self, model, cached: bool = True, config: Optional[ModelConfig] = None
           ) -> CachingEncoder:
    """The model with this handler's encode arguments and a fresh cache (if configured)."""
    device = getattr(model, 'device', None)
    # auto and fast as load_sentence_transformer chose them for this machine.
    config = resolved(config or self._config, str(device or 'cpu'))
    token_budget, max_texts = forward_pass_limits(config, device)
    cache = None
    if cached and config.embedding_cache:
      cache = EmbeddingCache(config.embedding_cache, '|'.join(map(str, (
          config.model, config.precision, config.normalize, config.backend, config.quantize))))
    encoder = CachingEncoder(model, {'normalize_embeddings': config.normalize}, cache,
                             token_budget, max_texts)
    encoder.identity = of_config(config)  # once per load: rows say which model made them
    return encoder

  def run_inference(self, batch: Sequence[Union[str, Tuple[str, str]]], model,
                    inference_args: Optional[Dict[str, Any]] = None
                    ) -> Iterable[PredictionResult]:
    """Vectors (or Chunked, models/chunking.py) of texts; an element (text, model path) is
    embedded by the model pinned to its window (models/updates.py)."""
    # A bare model (tests hand one in) is wrapped on the spot, without a lasting cache.
    encoder = model if hasattr(model, 'embed') else self.wrap(model, cached=False)
    items = list(batch)
    if not items or not isinstance(items[0], tuple):
      return self._embed(items, encoder, inference_args)
    results: List[Optional[PredictionResult]] = [None] * len(items)
    by_model: Dict[str, List[int]] = {}
    for index, (_, path) in enumerate(items):
      by_model.setdefault(path, []).append(index)
    for path, indices in by_model.items():
      found = self._embed([items[i][0] for i in indices], self._encoder_for(path, encoder),
                          inference_args)
      for index, result in zip(indices, found):
        results[index] = result
    return results

  def _encoder_for(self, path: str, loaded: CachingEncoder) -> CachingEncoder:
    """The job's own model, or one that replaced it (loaded once; the last two kept)."""
    if not path or path == self._config.model:
      return loaded
    if path not in self._swapped:
      config = self._config._replace(model=path)
      logging.info('Loading the updated model %s', path)
      self._swapped[path] = self.wrap(load_sentence_transformer(config), config=config)
      while len(self._swapped) > 2:
        self._swapped.pop(next(iter(self._swapped)))
    return self._swapped[path]

  def _embed(self, texts: List[str], encoder: CachingEncoder,
             inference_args: Optional[Dict[str, Any]]) -> List[PredictionResult]:
    started = time.monotonic()
    chunking = (self._config.chunk_tokens, self._config.chunk_overlap)
    try:
      results, hits, misses, chunks, cut = embed_documents(encoder, texts, *chunking,
                                                           inference_args)
    except Exception:  # pylint: disable=broad-except
      results, hits, misses, chunks, cut = [], 0, 0, 0, 0
      for text in texts:
        try:
          one, hit, miss, pieces, over = embed_documents(encoder, [text], *chunking,
                                                         inference_args)
          results.append(one[0])
          hits, misses, chunks, cut = hits + hit, misses + miss, chunks + pieces, cut + over
        except Exception as e:  # pylint: disable=broad-except
          results.append(InferenceFailure(f'{type(e).__name__}: {e}'))
    self._count(hits, misses, cut, chunks - len(texts))
    self._progress.add(len(texts), started)
    identity = getattr(encoder, 'identity', None)  # rows say which model made them
    model_id = str(identity) if identity else None
    return [PredictionResult(text, result, model_id) for text, result in zip(texts, results)]

  def _count(self, hits: int, misses: int, truncated: int, extra_chunks: int) -> None:
    if self._config.embedding_cache:
      Metrics.counter('enrichment', 'embedding_cache_hits').inc(hits)
      Metrics.counter('enrichment', 'embedding_cache_misses').inc(misses)
    # Texts longer than the window, chunked or cut: counted whether or not chunks are on.
    Metrics.counter('enrichment', 'truncated').inc(truncated)
    if extra_chunks:
      Metrics.counter('enrichment', 'extra_chunks').inc(extra_chunks)

  def batch_elements_kwargs(self) -> Dict[str, Any]:
    kwargs = {
        'min_batch_size': self._config.min_batch_size,
        'max_batch_size': self._config.max_batch_size,
    }
    if self._config.max_batch_duration_secs:
      kwargs['max_batch_duration_secs'] = self._config.max_batch_duration_secs
    return kwargs

  def get_metrics_namespace(self) -> str:
    return 'SentenceTransformer'

  def share_model_across_processes(self) -> bool:
    # Asked in the worker, so --share_model auto follows the device found there.
    return shares_model(self._config)


class _Progress:
  """Logs how many texts this worker embedded, at most every few seconds."""

  def __init__(self):
    self._count = 0
    self._started = None
    self._last_report = 0.0

  def __getstate__(self):
    return {}

  def __setstate__(self, state):
    self.__init__()

  def add(self, texts: int, batch_started: float) -> None:
    now = time.monotonic()
    if self._started is None:
      self._started = batch_started
    self._count += texts
    if now - self._last_report >= _PROGRESS_EVERY_S:
      self._last_report = now
      elapsed = now - self._started
      logging.info('Embedded %d texts%s', self._count,
                   f' ({self._count / elapsed:.0f} texts/s)' if elapsed > 0 else '')
