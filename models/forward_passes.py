"""Forward passes sized in tokens: texts sorted by their token count, grouped under a budget.

`SentenceTransformer.encode` sorts a call's texts by *character* count and runs
fixed batches of 32. On the shared Wikipedia archive characters are a poor proxy
for tokens (Korean, IPv6 addresses in "Reverted edits by [[Special:Contributions/
2601:646:...", wiki markup): batches of 32 in character order pad to 2.0x the
real tokens, in token order to 1.03x. And a fixed count makes passes of short
texts too small to keep the cores busy. So the job counts each text's tokens
with the model's own tokenizer and fills each pass up to a budget of padded
tokens (longest text x texts), then calls `encode` once per pass. The vectors
are the model's own: a text's embedding does not depend on its neighbours in
a pass beyond float rounding (tests compare with plain `encode`). A model's
default prompt, which `encode` prepends, is not counted: a few tokens per text.
"""
from typing import List, Optional, Sequence


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


def plan_passes(counts: Sequence[int], token_budget: int, max_texts: int = 0
                ) -> List[List[int]]:
  """Indices of the texts of each forward pass, longest texts first.

  A pass takes texts while (texts x its longest text) stays within
  `token_budget` (0: no budget) and, when `max_texts` is set, while it holds
  fewer than that. A text longer than the budget runs alone.
  """
  if not token_budget and not max_texts:
    raise ValueError('a forward pass needs a token budget or a most texts')
  order = sorted(range(len(counts)), key=lambda i: -counts[i])  # stable: ties keep arrival
  passes, current = [], []
  for index in order:
    longest = counts[current[0]] if current else 0
    full = (token_budget and (len(current) + 1) * max(longest, 1) > token_budget) or (
        max_texts and len(current) >= max_texts)
    if current and full:
      passes.append(current)
      current = []
    current.append(index)
  if current:
    passes.append(current)
  return passes
