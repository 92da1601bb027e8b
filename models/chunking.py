"""Long texts in chunks: split at word pieces of the model's own tokenizer, embedded as one.

A sentence-transformers model sees at most its window (256 word pieces for
all-MiniLM-L6-v2) and drops the rest silently. With chunks on, a text over
`chunk_tokens` is cut into chunks of at most that many word pieces (the two
special tokens included), each repeating `overlap` pieces of the one before.
A chunk ends where a sentence ends when one does in its last quarter, else
where a word ends in its second half, else (one word longer than that) at a
word piece. Chunks start at word boundaries wherever possible, so re-tokenizing
a chunk's text gives the same pieces: the count is exact.

Every chunk is embedded through the same token-sized passes and exact-repeat
cache as whole texts (models/embedding_cache.py). A text's one vector (the
Parquet row) is the mean of its chunks' unit vectors scaled to unit length;
its chunks' own vectors go to the vector store, one row each.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

_SENTENCE_ENDS = frozenset('.!?')
_SPECIAL_TOKENS = 2  # [CLS] and [SEP] (<s> and </s>): what each chunk adds


class Chunked(NamedTuple):
  """What the handler answers for a text embedded in chunks (a text of one chunk gets its
  plain vector, exactly as without chunks).

  vector: the normalized mean of the chunks' unit vectors (float32).
  chunks: (start, end) character offsets of each chunk in the text.
  chunk_vectors: the chunks' own vectors (chunks x dimensions, float32).
  """
  vector: np.ndarray
  chunks: Tuple[Tuple[int, int], ...]
  chunk_vectors: np.ndarray


def _tokenize(tokenizer, texts: Sequence[str]):
  """Each text's word-piece character offsets; None where the tokenizer gives none (a slow
  tokenizer has no offsets)."""
  try:
    encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True,
                        return_attention_mask=False, return_token_type_ids=False,
                        verbose=False)  # longer than the window is the point: no warning
    return encoded['offset_mapping']
  except (NotImplementedError, TypeError, KeyError, ValueError):
    return None


def chunk_spans(text: str, offsets: Sequence[Tuple[int, int]], chunk_tokens: int,
                overlap: int) -> List[Tuple[int, int]]:
  """(start, end) character spans of the chunks of one text, given its word pieces' offsets
  (special tokens left out). One span, the whole text, when it fits."""
  pieces = chunk_tokens - _SPECIAL_TOKENS
  n = len(offsets)
  if n <= pieces:
    return [(0, len(text))]

  def word_start(i):  # a piece that begins a word: whitespace (or nothing) before it
    return i == 0 or offsets[i][0] > offsets[i - 1][1]

  def sentence_start(i):
    return word_start(i) and (text[offsets[i - 1][1] - 1] in _SENTENCE_ENDS
                              or '\n' in text[offsets[i - 1][1]:offsets[i][0]])

  spans, first = [], 0
  while True:
    end = min(first + pieces, n)
    if end < n:
      cut = next((j for j in range(end, first + (3 * pieces) // 4, -1) if sentence_start(j)),
                 None) or next((j for j in range(end, first + pieces // 2, -1)
                                if word_start(j)), None)
      end = cut or end
    spans.append((offsets[first][0], offsets[end - 1][1]))
    if end >= n:
      return spans
    # The overlap starts at a word where one starts within it, else at a word piece.
    nxt = next((j for j in range(end - overlap, end) if word_start(j)), end - overlap)
    first = max(nxt, first + 1)


def _unit(matrix: np.ndarray) -> np.ndarray:
  norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
  return matrix / np.where(norms > 0, norms, 1.0)


def model_reading(model, texts: Sequence[str]):
  """(the model's window in word pieces, each text's token offsets), or (None, None) for a
  model without a tokenizer."""
  tokenizer = getattr(model, 'tokenizer', None)
  window = getattr(model, 'max_seq_length', None)
  if not (callable(tokenizer) and window and texts):
    return None, None
  return window, _tokenize(tokenizer, texts)


def embed_documents(encoder, texts: Sequence[str], chunk_tokens: int, overlap: int,
                    inference_args: Optional[dict] = None):
  """(results, cache hits, cache misses, pieces embedded, texts over the window) for `texts`
  through `encoder` (models/embedding_cache.CachingEncoder): each result a vector, or
  Chunked for a text over `chunk_tokens` (0: no chunks, the model cuts at its window).
  A model without a tokenizer is neither chunked nor counted."""
  # Asked as a call: a model shared across processes is a proxy, which answers calls only.
  window, offsets = encoder.reading(list(texts)) if texts else (None, None)
  if offsets is None:
    vectors, hits, misses = encoder.embed(list(texts), inference_args)
    return list(vectors), hits, misses, len(texts), 0
  limit = min(chunk_tokens, window) if chunk_tokens else 0
  plans, pieces, truncated = [], [], 0
  for text, marks in zip(texts, offsets):
    spans = chunk_spans(text, marks, limit, overlap) if limit else [(0, len(text))]
    truncated += len(marks) + _SPECIAL_TOKENS > window
    plans.append(spans)
    pieces += [text if len(spans) == 1 else text[a:b] for a, b in spans]
  vectors, hits, misses = encoder.embed(pieces, inference_args)
  out, at = [], 0
  for spans in plans:
    if len(spans) == 1:
      out.append(vectors[at])
    else:
      own = vectors[at:at + len(spans)]
      out.append(Chunked(_unit(_unit(own).mean(axis=0)).astype(np.float32), tuple(spans), own))
    at += len(spans)
  return out, hits, misses, len(pieces), truncated
