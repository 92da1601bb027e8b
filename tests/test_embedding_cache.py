"""The exact-repeat embedding cache: repeats encoded once, bounded, identical to no cache."""
import gzip
import itertools
import json

import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
import apache_beam as beam

from models import embedding_cache
from models.embedding_cache import CachingEncoder, EmbeddingCache
from models.handler import SentenceTransformerHandler
from models.loading import ModelConfig
from pipelines.config import job_config
from pipelines.options import ConfigError
from tests.fakes import HashingModel, HashingModelHandler, hashed_vector


class CountingModel(HashingModel):
  """HashingModel that remembers every text it was asked to encode."""

  def __init__(self):
    self.encoded = []

  def encode(self, texts, **kwargs):
    self.encoded.extend(texts)
    return super().encode(texts, **kwargs)


def test_repeats_within_and_across_calls_are_encoded_once():
  model = CountingModel()
  encoder = CachingEncoder(model, {}, EmbeddingCache(100, 'm'))
  vectors, hits, misses = encoder.embed(['a', 'b', 'a', 'a'])
  assert model.encoded == ['a', 'b'] and (hits, misses) == (2, 2)
  assert np.array_equal(vectors, np.stack([hashed_vector(t) for t in 'abaa']))
  vectors, hits, misses = encoder.embed(['b', 'c', 'b'])
  assert model.encoded == ['a', 'b', 'c'] and (hits, misses) == (2, 1)
  assert np.array_equal(vectors, np.stack([hashed_vector(t) for t in 'bcb']))
  assert encoder.embed([])[0].shape[0] == 0


def test_without_a_cache_every_text_is_encoded():
  model = CountingModel()
  vectors, hits, misses = CachingEncoder(model, {}).embed(['a', 'a'])
  assert model.encoded == ['a', 'a'] and (hits, misses) == (0, 2)
  assert np.array_equal(vectors[0], vectors[1])


def test_inference_args_bypass_the_cache():
  model = CountingModel()
  encoder = CachingEncoder(model, {}, EmbeddingCache(10, 'm'))
  encoder.embed(['a'])
  vectors, hits, _ = encoder.embed(['a'], {'normalize_embeddings': True})
  assert hits == 0 and model.encoded == ['a', 'a']
  assert np.isclose(np.linalg.norm(vectors[0]), 1)


def test_the_cache_is_bounded_and_evicts_the_least_recently_used():
  cache = EmbeddingCache(2, 'm')
  rows = np.eye(3, dtype=np.float32)
  cache.put([b'a', b'b'], rows[:2])
  assert set(cache.get([b'a'])) == {b'a'}  # a is now the most recent
  cache.put([b'c'], rows[2:])
  assert len(cache) == 2 and set(cache.get([b'a', b'b', b'c'])) == {b'a', b'c'}
  assert np.array_equal(cache.get([b'c'])[b'c'], rows[2])
  returned = cache.get([b'c'])[b'c']
  returned[:] = 7  # callers get copies: the cache keeps its vector
  assert np.array_equal(cache.get([b'c'])[b'c'], rows[2])


def test_keys_depend_on_the_setting_as_well_as_the_text():
  assert EmbeddingCache(1, 'fp32').key('x') != EmbeddingCache(1, 'bf16').key('x')
  assert EmbeddingCache(1, 'fp32').key('x') == EmbeddingCache(1, 'fp32').key('x')
  assert len(EmbeddingCache(1, 'fp32').key('x')) == 16
  handler = lambda **kw: SentenceTransformerHandler(ModelConfig(device='cpu', **kw))
  keys = {handler(**kw).wrap(HashingModel())._cache.key('x') for kw in (
      {}, {'precision': 'bf16'}, {'normalize': True}, {'backend': 'onnx'},
      {'backend': 'onnx', 'quantize': 'int8'}, {'model': '/some/other/model'})}
  assert len(keys) == 6


def test_the_flag_sizes_the_cache_and_zero_turns_it_off():
  config = job_config(PipelineOptions(['--embedding_cache', '123']))
  assert config.model.embedding_cache == 123
  assert SentenceTransformerHandler(config.model).wrap(HashingModel())._cache.capacity == 123
  off = job_config(PipelineOptions(['--embedding_cache', '0'])).model
  assert SentenceTransformerHandler(off).wrap(HashingModel())._cache is None
  assert job_config(PipelineOptions([])).model.embedding_cache > 0  # on by default
  with pytest.raises(ConfigError, match='embedding_cache'):
    job_config(PipelineOptions(['--embedding_cache', '-1']))


def test_hits_and_misses_are_beam_counters_and_survive_bundles():
  texts = ['x', 'y', 'x', 'z', 'y', 'x'] * 5
  # Batches of 2: the repeats are served across batches (and bundles) by one cache.
  handler = HashingModelHandler(ModelConfig(min_batch_size=2, max_batch_size=2))
  pipeline = TestPipeline(runner='FnApiRunner')
  results = (pipeline | beam.Create(texts, reshuffle=False) | RunInference(handler)
             | beam.Map(lambda r: (r.example, r.inference.tolist())))
  assert_that(results, equal_to([(t, hashed_vector(t).tolist()) for t in texts]))
  result = pipeline.run()
  result.wait_until_finish()

  def counter(name):
    found = result.metrics().query(MetricsFilter().with_namespace('enrichment')
                                   .with_name(name))['counters']
    return sum(c.committed for c in found)

  assert counter('embedding_cache_misses') == 3
  assert counter('embedding_cache_hits') == len(texts) - 3


def _first_texts(archive, limit):
  with gzip.open(archive, 'rt', encoding='utf-8') as lines:
    texts = (json.loads(line).get('comment') for line in lines)
    return list(itertools.islice((t for t in texts if isinstance(t, str) and t.strip()), limit))


@pytest.mark.slow
@pytest.mark.real_model
def test_cached_embeddings_equal_uncached_ones_on_the_archive(real_model, wiki_archive):
  # The first 2000 comments of the shared archive (39% of them repeat an earlier
  # one), in Beam batches of 250: repeats are served within and across batches.
  texts = _first_texts(wiki_archive, 2000)
  on = SentenceTransformerHandler(ModelConfig(device='cpu'))
  off = SentenceTransformerHandler(ModelConfig(device='cpu', embedding_cache=0))
  cached_encoder, plain_encoder = on.wrap(real_model), off.wrap(real_model)
  cached, plain, hits = [], [], 0
  for start in range(0, len(texts), 250):
    vectors, hit, _ = cached_encoder.embed(texts[start:start + 250])
    cached.append(vectors)
    hits += hit
    plain.append(plain_encoder.embed(texts[start:start + 250])[0])
  cached, plain = np.concatenate(cached), np.concatenate(plain)
  assert hits >= 0.3 * len(texts)
  cosines = np.sum(cached * plain, axis=1) / (
      np.linalg.norm(cached, axis=1) * np.linalg.norm(plain, axis=1))
  assert cosines.min() >= 0.99999, cosines.min()
