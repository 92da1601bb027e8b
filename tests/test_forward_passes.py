"""Forward passes sized in tokens: every text once, within the budget, the model's own vectors."""
import gzip
import itertools
import json

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from hypothesis import given, settings, strategies as st

from models.embedding_cache import CachingEncoder
from models.forward_passes import (COUNTED_BATCH, EXACT_PASS_TEXTS, PASS_OVERHEAD_TOKENS,
                                   graph_lengths, graph_pass_texts, padded_length, plan_passes,
                                   token_counts, torch_pass_texts, unpadded_texts)
from models.handler import SentenceTransformerHandler
from models.loading import ModelConfig
from pipelines.config import job_config
from pipelines.options import ConfigError
from tests.fakes import HashingModel, hashed_vector


@settings(max_examples=300, derandomize=True, deadline=None)
@given(counts=st.lists(st.integers(1, 300), max_size=200),
       budget=st.integers(0, 5000), max_texts=st.integers(0, 40),
       runs_as=st.sampled_from([unpadded_texts, torch_pass_texts, graph_pass_texts]))
def test_every_text_runs_once_in_a_pass_within_its_limits(counts, budget, max_texts, runs_as):
  if not budget and not max_texts:
    with pytest.raises(ValueError):
      plan_passes(counts, budget, max_texts, runs_as)
    return
  passes = plan_passes(counts, budget, max_texts, runs_as)
  assert sorted(itertools.chain.from_iterable(passes)) == list(range(len(counts)))
  flat = [counts[i] for i in itertools.chain.from_iterable(passes)]
  assert flat == sorted(flat, reverse=True)  # longest first: each pass pads to its first text
  for chosen in passes:
    assert chosen
    if max_texts:
      assert len(chosen) <= max_texts
    if budget and len(chosen) > 1:
      assert len(chosen) * counts[chosen[0]] <= budget
  if not budget:  # counted passes, as sentence-transformers batches: all full but the last
    assert all(len(chosen) == max_texts for chosen in passes[:-1])


def _work(lengths, cuts, runs_as):
  """Padded tokens computed by passes cut at `cuts` over `lengths` (longest first)."""
  bounds = [0, *cuts, len(lengths)]
  return sum(PASS_OVERHEAD_TOKENS + lengths[start] * runs_as(end - start)
             for start, end in zip(bounds, bounds[1:]))


@settings(max_examples=300, derandomize=True, deadline=None)
@given(counts=st.lists(st.sampled_from([16, 32, 48, 64, 128, 256]), min_size=1, max_size=9),
       budget=st.integers(16, 1200), max_texts=st.integers(0, 6),
       runs_as=st.sampled_from([unpadded_texts, torch_pass_texts, graph_pass_texts]))
def test_passes_compute_the_fewest_padded_tokens_any_cut_would(counts, budget, max_texts,
                                                                runs_as):
  lengths = sorted(counts, reverse=True)
  passes = plan_passes(counts, budget, max_texts, runs_as)
  planned = _work(lengths, list(itertools.accumulate(len(p) for p in passes[:-1])), runs_as)

  def allowed(cuts):
    bounds = [0, *cuts, len(lengths)]
    return all((end - start == 1 or lengths[start] * (end - start) <= budget)
               and (not max_texts or end - start <= max_texts)
               for start, end in zip(bounds, bounds[1:]))

  every_cut = (cuts for k in range(len(lengths))
               for cuts in itertools.combinations(range(1, len(lengths)), k))
  assert planned == min(_work(lengths, list(cuts), runs_as)
                        for cuts in every_cut if allowed(cuts))


def test_short_texts_share_a_pass_and_a_long_one_runs_alone():
  counts = [10, 3, 500, 3, 10]
  assert plan_passes(counts, 25) == [[2], [0, 4], [1, 3]]
  assert plan_passes(counts, 0, 2) == [[2, 0], [4, 1], [3]]


def test_a_long_text_does_not_pad_a_pass_of_short_ones():
  # Filling the budget would run all 16 at 128 tokens (2,048). The long text's pass is 8 wide
  # anyway (7 fillers, 1,024), so 7 short texts take the fillers' places; 8 run at 16 (128).
  counts = [128] + [16] * 15
  assert plan_passes(counts, 2048, 0, torch_pass_texts) == [list(range(8)), list(range(8, 16))]


def test_graph_passes_run_as_few_text_counts_with_few_fillers():
  # Small passes (live bundles) run as they are; larger ones as a power of two or 1.5 times
  # one: fillers add at most half the texts, and 1 to 2048 texts meet 22 counts, not 256.
  runs = [graph_pass_texts(count) for count in range(1, 2049)]
  assert runs[:EXACT_PASS_TEXTS] == list(range(1, EXACT_PASS_TEXTS + 1))
  assert all(run >= count and run * 2 <= count * 3 for count, run in enumerate(runs, 1))
  assert sorted(set(runs)) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256,
                               384, 512, 768, 1024, 1536, 2048]


class PassRecordingModel(HashingModel):
  """HashingModel with a whitespace 'tokenizer', recording each encode call's texts."""

  max_seq_length = 4

  def __init__(self):
    self.calls = []

  def tokenizer(self, texts, truncation=False, max_length=None, **_):
    ids = [['[CLS]', *text.split(), '[SEP]'] for text in texts]
    return {'input_ids': [one[:max_length] if truncation else one for one in ids]}

  def encode(self, texts, **kwargs):
    self.calls.append((list(texts), kwargs.get('batch_size')))
    return super().encode(texts, **kwargs)


def test_the_encoder_runs_one_encode_per_pass_and_keeps_the_order():
  model = PassRecordingModel()
  texts = ['a b c d e f', 'a', 'a b', 'b', 'c d']
  assert token_counts(model, texts) == [4, 3, 4, 3, 4]  # truncated at max_seq_length
  vectors, _, _ = CachingEncoder(model, {}, None, token_budget=8).embed(texts)
  # 4 | 4+4 | 3+3 pads to 18 tokens, where filling each pass (4+4 | 4+3 | 3) pads to 19.
  assert [call for call, _ in model.calls] == [['a b c d e f'], ['a b', 'c d'], ['a', 'b']]
  assert all(size == len(call) for call, size in model.calls)
  assert np.array_equal(vectors, np.stack([hashed_vector(t) for t in texts]))


def test_a_model_without_a_tokenizer_or_a_chosen_batch_is_batched_by_encode():
  model = PassRecordingModel()
  CachingEncoder(model, {}, None, token_budget=8).embed(['a', 'b'], {'batch_size': 1})
  assert model.calls == [(['a', 'b'], 1)]  # the caller's batch is kept
  plain = HashingModel()
  assert token_counts(plain, ['a']) is None
  calls = []
  plain.encode = lambda texts, **kwargs: calls.append(kwargs['batch_size']) or \
      HashingModel.encode(plain, texts, **kwargs)
  CachingEncoder(plain, {}, None, token_budget=8).embed(['a', 'b'])
  assert calls == [COUNTED_BATCH]


def test_the_flag_sets_the_budget_and_refuses_negatives():
  assert job_config(PipelineOptions(['--encode_batch_tokens', '512'])).model \
      .encode_batch_tokens == 512
  assert job_config(PipelineOptions([])).model.encode_batch_tokens == 0  # by device
  with pytest.raises(ConfigError, match='encode_batch_tokens'):
    job_config(PipelineOptions(['--encode_batch_tokens', '-1']))


def _first_distinct_texts(archive, limit):
  with gzip.open(archive, 'rt', encoding='utf-8') as lines:
    texts = (json.loads(line).get('comment') for line in lines)
    seen = dict.fromkeys(t for t in texts if isinstance(t, str) and t.strip())
    return list(itertools.islice(seen, limit))


@pytest.mark.slow
@pytest.mark.real_model
def test_token_passes_give_the_vectors_of_plain_encode_on_the_archive(real_model, wiki_archive):
  # 600 distinct comments of the shared archive (Korean, IPv6 addresses, wiki
  # markup: character counts order them badly) through the job's passes against
  # sentence-transformers' own encode with its defaults.
  texts = _first_distinct_texts(wiki_archive, 600)
  counts = token_counts(real_model, texts)
  # What the forward pass sees: sentence-transformers' own tokenization, unpadded.
  assert counts == real_model.tokenize(texts)['attention_mask'].sum(1).tolist()
  config = ModelConfig(device='cpu', embedding_cache=0)
  encoder = SentenceTransformerHandler(config).wrap(real_model)
  ours, _, _ = encoder.embed(texts)
  assert encoder.embed([])[0].shape[0] == 0  # the tokenizer is not asked about nothing
  plain = real_model.encode(texts, convert_to_numpy=True)
  cosines = np.sum(ours * plain, axis=1) / (
      np.linalg.norm(ours, axis=1) * np.linalg.norm(plain, axis=1))
  assert cosines.min() >= 0.99999, cosines.min()
  assert np.abs(ours - plain).max() < 1e-4


@pytest.mark.real_model
def test_passes_take_a_bounded_set_of_shapes_and_padding_leaves_the_vectors(real_model,
                                                                            wiki_archive):
  # Torch and OpenVINO keep kernels per input shape: a live job meeting every length grew
  # its memory without bound. Passes are padded to 16 tokens and 8 texts.
  texts = _first_distinct_texts(wiki_archive, 300)
  shapes = []
  hook = real_model[0].register_forward_pre_hook(
      lambda module, args: shapes.append(tuple(args[0]['input_ids'].shape)))
  try:
    encoder = SentenceTransformerHandler(ModelConfig(device='cpu', embedding_cache=0)).wrap(
        real_model)
    ours, _, _ = encoder.embed(texts)
  finally:
    hook.remove()
  assert shapes and all(length % 16 == 0 and batch % 8 == 0 for batch, length in shapes), shapes
  padding = real_model[0].processing_kwargs
  real_model[0].processing_kwargs = {}  # sentence-transformers' own: padded to the longest
  try:
    unpadded = real_model.encode(texts, convert_to_numpy=True)
  finally:
    real_model[0].processing_kwargs = padding
  assert np.abs(ours - unpadded).max() < 1e-4


@given(window=st.integers(1, 4096), count=st.integers(1, 4096))
def test_graph_lengths_rise_to_the_window_and_pad_a_text_the_least_they_can(window, count):
  lengths = graph_lengths(window)
  assert list(lengths) == sorted(set(lengths)) and lengths[-1] == window
  assert all(length % 8 == 0 for length in lengths[:-1])
  count = min(count, window)  # the tokenizer truncates at the window
  padded = padded_length(lengths, count)
  assert padded in lengths and padded >= count
  assert all(length < count for length in lengths if length < padded)
  # Fine where texts are: a text of up to 64 tokens pads by fewer than 8.
  if count <= 64:
    assert padded - count < 8
  # Few shapes, however long the window: 8 lengths to 64, then 4 per doubling.
  assert len(lengths) <= 8 + 4 * max(0, (window - 1).bit_length() - 6) + 1


def test_the_default_window_takes_sixteen_lengths():
  assert graph_lengths(256) == (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224,
                                256)
  assert graph_lengths(None) is None and graph_lengths(0) is None
