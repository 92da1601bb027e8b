"""Forward passes sized in tokens: texts sorted by their token count, grouped under a budget.

`SentenceTransformer.encode` sorts a call's texts by *character* count and runs
fixed batches of 32. On the shared Wikipedia archive characters are a poor proxy
for tokens (Korean, IPv6 addresses in "Reverted edits by [[Special:Contributions/
2601:646:...", wiki markup): batches of 32 in character order pad to 2.0x the
real tokens, in token order to 1.03x. And a fixed count makes passes of short
texts too small to keep the cores busy. So the job counts each text's tokens
with the model's own tokenizer, cuts them in length order into the passes
within a budget of padded tokens (longest text x texts) that compute the least
padding (plan_passes), then calls `encode` once per pass. The vectors
are the model's own: a text's embedding does not depend on its neighbours in
a pass beyond float rounding (tests compare with plain `encode`). A model's
default prompt, which `encode` prepends, is not counted: a few tokens per text.
"""
import bisect
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

# Texts per pass for a model whose tokenizer cannot be asked: sentence-transformers' own.
COUNTED_BATCH = 32
# Padded passes run as a bounded set of text counts (see encode_in_passes). Torch's: multiples
# of this many. The graph backends': up to EXACT_PASS_TEXTS as they are, then each power of
# two and 1.5 times it (6, 8, 12, 16, 24, ...). Live bundles are small (18 texts on average at
# 69 events/s, OpenVINO on an AVX2 host): rounded up to multiples of 8, their fillers cost a
# quarter of the inference (83 texts/s live against 111 unrounded). The ladder bounds the
# graph's shapes at 162 for the default model and budget (108 in multiples of 8; OpenVINO
# keeps about 1.9 MB per shape); torch keeps multiples of 8 (60 shapes, not 138: it kept
# about 4 MB per shape in the soak).
TORCH_PASS_MULTIPLE = 8
EXACT_PASS_TEXTS = 4
# Forward passes are padded to a multiple of this many tokens. Torch (oneDNN) and OpenVINO
# keep compiled kernels per input shape, so a live job meeting texts of every length grew
# without bound: about 4 MB per new (batch, length) shape, 100-190 MB a minute in the soak
# at 50 events/s. Sixteen lengths cover the default model's 256 word pieces.
PAD_TO_MULTIPLE_OF = 16
# The graph backends (ONNX Runtime, OpenVINO) pad with the project's own tokenization, so
# their passes take finer lengths: multiples of 8 up to 64 tokens, then steps doubling at each
# power of two (16 to 128, 32 to 256, ...). As many lengths as multiples of 16 for the
# default model's 256, but where the texts are: on 3000 distinct archive comments (median 16
# word pieces) the passes computed 1.16x the real tokens against 1.29x padded to 16.
GRAPH_FINE_UP_TO = 64
GRAPH_FINE_STEP = 8
# Characters kept per token the model reads: a text is cut to max_seq_length x this before it
# is tokenized, so a 20 MB text costs what its readable beginning costs. Word pieces of real
# text average 3 to 5 characters; 16 leaves room for long words, numbers, markup and blanks.
CHARS_PER_TOKEN = 16
# The fixed cost of one forward pass, in padded tokens' worth: a pass of 8 texts of 16 word
# pieces took 11.7 ms where 128 tokens of larger passes took 9.6 ms (75 us a token; the
# default model, OpenVINO bf16, AVX512 host). Plans weigh fewer passes against less padding.
PASS_OVERHEAD_TOKENS = 32


def readable_part(model, texts: Sequence[str]) -> List[str]:
  """`texts`, each cut to what the model can read (max_seq_length x CHARS_PER_TOKEN
  characters); unchanged where the model names no max_seq_length."""
  try:
    limit = getattr(model, 'max_seq_length', None)
  except (AttributeError, NotImplementedError, ValueError):
    limit = None
  if not isinstance(limit, int) or limit <= 0:
    return list(texts)
  most = limit * CHARS_PER_TOKEN
  return [text if len(text) <= most else text[:most] for text in texts]


def token_counts(model, texts: Sequence[str]) -> Optional[List[int]]:
  """Tokens per text as the model will see them (special tokens in, truncated at its
  max_seq_length), or None where the model exposes no text tokenizer."""
  try:
    tokenizer = getattr(model, 'tokenizer', None)
  except (AttributeError, NotImplementedError, ValueError):  # models without a text module
    return None
  if tokenizer is None or not callable(tokenizer):
    return None
  limit = getattr(model, 'max_seq_length', None)
  try:
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=bool(limit),
                    max_length=limit, return_attention_mask=False,
                    return_token_type_ids=False)['input_ids']
  except (TypeError, KeyError, ValueError):  # a tokenizer with another call shape
    return None
  return [len(one) for one in ids]


def graph_pass_texts(count: int) -> int:
  """The texts a graph backend's pass of `count` texts runs as (empty fillers make up the
  rest): up to EXACT_PASS_TEXTS as they are, then the next power of two or 1.5 times one."""
  if count <= EXACT_PASS_TEXTS:
    return count
  power = 1 << (count - 1).bit_length()  # the power of two at or above count
  return power * 3 // 4 if power * 3 // 4 >= count else power


def torch_pass_texts(count: int) -> int:
  """The texts a torch pass of `count` texts runs as: the next multiple of TORCH_PASS_MULTIPLE."""
  return -(-count // TORCH_PASS_MULTIPLE) * TORCH_PASS_MULTIPLE


def unpadded_texts(count: int) -> int:
  return count


def plan_passes(counts: Sequence[int], token_budget: int, max_texts: int = 0,
                runs_as: Callable[[int], int] = unpadded_texts) -> List[List[int]]:
  """Indices of the texts of each forward pass, longest texts first.

  With a token budget, the texts in length order are cut into the consecutive
  passes that compute the fewest padded tokens (dynamic programming): a pass
  costs its longest text x `runs_as(its texts)` (with the fillers encode_in_passes
  adds), plus PASS_OVERHEAD_TOKENS. Filling each pass
  as far as the budget allows pads a few long texts' passes with much shorter
  ones: on live bundles of 150 archive texts that computed 48 padded tokens a
  text against 35 planned this way. A pass holds at most `max_texts` texts
  (when set) and (texts x its longest text) stays within `token_budget`; a text
  longer than the budget runs alone. Without a budget, passes of `max_texts`
  texts in length order, as sentence-transformers batches.
  """
  if not token_budget and not max_texts:
    raise ValueError('a forward pass needs a token budget or a most texts')
  order = sorted(range(len(counts)), key=lambda i: -counts[i])  # stable: ties keep arrival
  if not token_budget:
    return [order[start:start + max_texts] for start in range(0, len(order), max_texts)]
  return [order[start:end] for start, end in _cheapest_cuts(
      np.array([max(counts[i], 1) for i in order], np.int64), token_budget, max_texts,
      runs_as)]


def _cheapest_cuts(lengths: np.ndarray, token_budget: int, max_texts: int,
                   runs_as: Callable[[int], int]):
  """(start, end) of each pass over `lengths` (longest first) for the least padded work."""
  n = len(lengths)
  most = max_texts or n
  rows = np.array([runs_as(k) for k in range(n + 1)], np.int64)  # rows[k]: k texts' pass
  best = np.zeros(n + 1, np.int64)  # best[j]: the least cost of the first j texts
  start_of = np.zeros(n + 1, np.int64)
  for end in range(1, n + 1):
    # Lengths fall, so a pass ending here fits only if it is at most this wide.
    widest = max(1, min(most, token_budget // int(lengths[end - 1])))
    starts = np.arange(max(0, end - widest), end)
    sizes = end - starts
    fits = (sizes == 1) | (lengths[starts] * sizes <= token_budget)
    costs = (best[starts] + PASS_OVERHEAD_TOKENS
             + lengths[starts] * rows[sizes])
    costs[~fits] = np.iinfo(np.int64).max
    pick = int(np.argmin(costs))
    best[end], start_of[end] = costs[pick], starts[pick]
  cuts, end = [], n
  while end:
    cuts.append((int(start_of[end]), end))
    end = int(start_of[end])
  return cuts[::-1]


def pad_multiple(max_seq_length) -> Optional[int]:
  """The multiple to pad passes to, or None where padding could pass the model's length."""
  if max_seq_length and max_seq_length % PAD_TO_MULTIPLE_OF == 0:
    return PAD_TO_MULTIPLE_OF
  return None


def graph_lengths(max_seq_length) -> Optional[Tuple[int, ...]]:
  """The lengths a graph backend pads its passes to, shortest first (the window last), or
  None where the model names no window."""
  if not isinstance(max_seq_length, int) or max_seq_length <= 0:
    return None
  lengths, step, length = [], GRAPH_FINE_STEP, GRAPH_FINE_STEP
  while length < max_seq_length:
    lengths.append(length)
    if length >= GRAPH_FINE_UP_TO and length & (length - 1) == 0:  # a power of two: coarser
      step *= 2
    length += step
  return tuple(lengths) + (max_seq_length,)


def pass_shapes(model) -> Tuple[Optional[Tuple[int, ...]], Callable[[int], int]]:
  """The lengths in tokens `model`'s forward passes are padded to, shortest first, and the
  texts a pass of so many runs as: a graph encoder's own lengths (`pass_lengths`) with
  graph_pass_texts, else multiples of PAD_TO_MULTIPLE_OF (bound_shapes) with
  torch_pass_texts; (None, unpadded_texts) where passes are padded to their longest text."""
  try:
    own = getattr(model, 'pass_lengths', None)
    window = getattr(model, 'max_seq_length', None)
  except (AttributeError, NotImplementedError, ValueError):
    return None, unpadded_texts
  if own:
    return tuple(own), graph_pass_texts
  pad = pad_multiple(window)
  if not pad:
    return None, unpadded_texts
  return tuple(range(pad, window + 1, pad)), torch_pass_texts


def padded_length(lengths: Sequence[int], count: int) -> int:
  """The length of `lengths` a pass whose longest text has `count` tokens is padded to."""
  at = bisect.bisect_left(lengths, count)
  return lengths[at] if at < len(lengths) else count


def bound_shapes(model) -> None:
  """Pads a SentenceTransformer's text passes to PAD_TO_MULTIPLE_OF tokens (its first
  module's processing kwargs), so it meets a bounded number of input shapes."""
  pad = pad_multiple(getattr(model, 'max_seq_length', None))
  first = model[0] if pad and len(model) else None
  kwargs = getattr(first, 'processing_kwargs', None)
  if isinstance(kwargs, dict):
    first.processing_kwargs = {**kwargs, 'text': {**kwargs.get('text', {}),
                                                  'pad_to_multiple_of': pad}}


def encode_in_passes(model, texts: List[str], encode_kwargs: dict, token_budget: int = 0,
                     max_texts: int = 0) -> np.ndarray:
  """float32 rows of `model.encode`, one call per forward pass within the limits (both 0,
  a model without a tokenizer or a caller's own batch_size: `encode` batches by itself)."""
  if not texts:  # tokenizers refuse an empty list
    return np.zeros((0, 0), np.float32)
  texts = readable_part(model, texts)
  kwargs = dict(encode_kwargs)
  counts = None
  if (token_budget or max_texts) and 'batch_size' not in kwargs:
    counts = token_counts(model, texts)
  if counts is None:  # no tokenizer to ask, or the caller chose the batch
    kwargs.setdefault('batch_size', max_texts or COUNTED_BATCH)
    return _float_rows(model.encode(texts, **kwargs))
  out = None
  # Padded passes also run as a bounded set of text counts (the plan counts the fillers).
  lengths, runs_as = pass_shapes(model)
  if lengths:  # plan with the lengths the passes are padded to
    counts = [padded_length(lengths, count) for count in counts]
  for chosen in plan_passes(counts, token_budget, max_texts, runs_as):
    batch = [texts[i] for i in chosen]
    # Empty fillers round a pass up, so passes take a bounded set of batch sizes too (each
    # new input shape keeps kernels in memory); their rows are dropped.
    batch += [''] * (runs_as(len(batch)) - len(batch))
    vectors = _float_rows(model.encode(batch, batch_size=len(batch), **kwargs))[:len(chosen)]
    if out is None:
      out = np.empty((len(texts), vectors.shape[1]), np.float32)
    out[chosen] = vectors
  return out


def _float_rows(rows) -> np.ndarray:
  # fp16/bf16 models still hand out float32, the type the sinks write.
  if isinstance(rows, np.ndarray):  # the graph encoders' rows
    return rows.astype(np.float32, copy=False)
  return rows.float().cpu().numpy()
