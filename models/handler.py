"""A RunInference model handler for sentence-transformers models."""
import logging
import time
from typing import Any, Dict, Iterable, NamedTuple, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from models.loading import ModelConfig, encode_batch_size, load_sentence_transformer

_PROGRESS_EVERY_S = 5.0


class InferenceFailure(NamedTuple):
  """Stands in for an embedding when the model failed on one text."""
  error: str


class SentenceTransformerHandler(ModelHandler[str, PredictionResult, Any]):
  """Embeds texts with `SentenceTransformer.encode`.

  One model per worker process, shared by its threads (RunInference's default).
  A batch that fails is retried text by text, so one bad text costs only its
  own embedding: its PredictionResult carries an InferenceFailure.

  Args:
    config: the model, device, precision and batch bounds.
  """

  def __init__(self, config: ModelConfig):
    super().__init__()
    self._config = config
    self._progress = _Progress()

  @property
  def config(self) -> ModelConfig:
    return self._config

  def load_model(self):
    return load_sentence_transformer(self._config)

  def run_inference(self, batch: Sequence[str], model,
                    inference_args: Optional[Dict[str, Any]] = None
                    ) -> Iterable[PredictionResult]:
    texts = list(batch)
    started = time.monotonic()
    try:
      vectors = self._encode(model, texts, inference_args)
    except Exception:  # pylint: disable=broad-except
      vectors = [self._encode_one(model, text, inference_args) for text in texts]
    self._progress.add(len(texts), started)
    return [PredictionResult(text, vector) for text, vector in zip(texts, vectors)]

  def _encode(self, model, texts, inference_args) -> np.ndarray:
    kwargs = {
        'batch_size': encode_batch_size(self._config, getattr(model, 'device', None)),
        'normalize_embeddings': self._config.normalize,
        'show_progress_bar': False,
        'convert_to_tensor': True,
    }
    kwargs.update(inference_args or {})
    tensor = model.encode(texts, **kwargs)
    # fp16/bf16 models still hand out float32, the type the sinks write.
    return tensor.float().cpu().numpy()

  def _encode_one(self, model, text, inference_args):
    try:
      return self._encode(model, [text], inference_args)[0]
    except Exception as e:  # pylint: disable=broad-except
      return InferenceFailure(f'{type(e).__name__}: {e}')

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
    return False


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
