"""A RunInference model handler for sentence-transformers models."""
import logging
import time
from typing import Any, Dict, Iterable, NamedTuple, Optional, Sequence

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from models import embedding_cache
from models.embedding_cache import CachingEncoder, EmbeddingCache
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

  @property
  def config(self) -> ModelConfig:
    return self._config

  def load_model(self) -> CachingEncoder:
    return self.wrap(load_sentence_transformer(self._config))

  def wrap(self, model, cached: bool = True) -> CachingEncoder:
    """The model with this handler's encode arguments and a fresh cache (if configured)."""
    device = getattr(model, 'device', None)
    # auto and fast as load_sentence_transformer chose them for this machine.
    config = resolved(self._config, str(device or 'cpu'))
    token_budget, max_texts = forward_pass_limits(config, device)
    cache = None
    if cached and config.embedding_cache:
      cache = EmbeddingCache(config.embedding_cache, '|'.join(map(str, (
          config.model, config.precision, config.normalize, config.backend, config.quantize))))
    return CachingEncoder(model, {'normalize_embeddings': config.normalize}, cache,
                          token_budget, max_texts)

  def run_inference(self, batch: Sequence[str], model,
                    inference_args: Optional[Dict[str, Any]] = None
                    ) -> Iterable[PredictionResult]:
    # A bare model (tests hand one in) is wrapped on the spot, without a lasting cache.
    encoder = model if hasattr(model, 'embed') else self.wrap(model, cached=False)
    texts = list(batch)
    started = time.monotonic()
    hits = misses = 0
    try:
      vectors, hits, misses = encoder.embed(texts, inference_args)
    except Exception:  # pylint: disable=broad-except
      vectors = []
      for text in texts:
        try:
          vector, hit, miss = encoder.embed([text], inference_args)
          vectors.append(vector[0])
          hits, misses = hits + hit, misses + miss
        except Exception as e:  # pylint: disable=broad-except
          vectors.append(InferenceFailure(f'{type(e).__name__}: {e}'))
    self._count(hits, misses)
    self._progress.add(len(texts), started)
    return [PredictionResult(text, vector) for text, vector in zip(texts, vectors)]

  def _count(self, hits: int, misses: int) -> None:
    if self._config.embedding_cache:
      Metrics.counter('enrichment', 'embedding_cache_hits').inc(hits)
      Metrics.counter('enrichment', 'embedding_cache_misses').inc(misses)
      embedding_cache.count(hits, misses)

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
