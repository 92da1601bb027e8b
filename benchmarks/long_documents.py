"""Long documents: late-passage retrieval with chunks vs the truncated baseline, and STS-B.

  python -m benchmarks.long_documents [--limit N] [--pairs N] [--settings 128/32,256/32]

1. Retrieval. The shared Wikinews articles longer than the model's window are
   replayed through the job (`pipelines.replay --sink vectors`) once per chunk
   setting, and once with `--chunk_tokens 0` (the truncated baseline), each
   into its own store. The query for an article is one sentence from the last
   third of its text (the first there of at least 8 words); `pipelines.search`
   answers it from the store. Printed: rank-1 rate (the article is the first
   document) and whether any result list held a document twice.
2. STS-B dev through the job with chunks on (the default setting) and off:
   Spearman of the pairs' cosines against the gold scores (short texts are one
   chunk, so the two should agree).
Everything runs side by side in one process on this machine, whose CPU is printed.
"""
import argparse
import csv
import hashlib
import json
import os
import re
import tempfile
import time

import numpy as np
import pyarrow.dataset as ds

from benchmarks.common import ROOT, describe
from pipelines.options import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_TOKENS

DATA = ROOT.parent / 'shared' / 'data'
_SENTENCE = re.compile(r'(?<=[.!?])\s+(?=[A-Z"\'(])')
_JOB = ['--id_field', 'id', '--time_field', 'time', '--text_field', 'text',
        '--window_size', '86400']


def late_query(text: str):
  """The first sentence of at least 8 words that starts in the last third of `text`."""
  start = 0
  for sentence in _SENTENCE.split(text):
    begins = text.find(sentence, start)
    start = begins + len(sentence)
    if begins >= 2 * len(text) / 3 and len(sentence.split()) >= 8:
      return sentence.strip()
  return None


def long_articles(limit):
  """(id, date, text, query) of the Wikinews articles longer than the model's window."""
  from models.identity import model_folder
  from models.loading import ModelConfig
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(model_folder(ModelConfig()))
  with open(DATA / 'wikinews_2019.csv', newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  found = []
  for row in rows:
    text = row['text']
    query = late_query(text)
    pieces = len(tokenizer(text, verbose=False)['input_ids'])
    if pieces > 256 and query:
      found.append((row['url'], row['date'], text, query))
  return found[:limit] if limit else found


def replay(records, out: str, *flags) -> float:
  """Replays `records` (dicts with id, time, text) through the job; seconds taken."""
  from pipelines.replay import run
  path = os.path.join(out, 'input.jsonl')
  os.makedirs(out, exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + '\n' for r in records)
  started = time.perf_counter()
  result = run(['--input', path, '--output', out, *_JOB, *flags])
  assert result.balanced, result.summary()
  return time.perf_counter() - started


def rank_one_rate(out: str, articles, k: int = 10):
  """(rank-1 rate, whether any result list held a document twice) from the store in out."""
  from pipelines.search import search_vector_store
  queries = [query for _, _, _, query in articles]
  results = {}
  for query, rank, _, row in search_vector_store(os.path.join(out, 'vectors'), queries, k,
                                                 None, None, None, None):
    results.setdefault(query, []).append(row['id'])
  hits = sum(results.get(query, [None])[0] == url for url, _, _, query in articles)
  twice = any(len(ids) != len(set(ids)) for ids in results.values())
  return hits / len(articles), twice


def sts_spearman(out: str, pairs, *flags) -> float:
  from scipy.stats import spearmanr
  key = lambda s: hashlib.blake2b(s.encode(), digest_size=8).hexdigest()
  sentences = {key(s): s for _, a, b in pairs for s in (a, b)}
  replay([{'id': k, 'time': '2026-01-01T00:00:00Z', 'text': s} for k, s in sentences.items()],
         out, *flags)
  table = ds.dataset(os.path.join(out, 'enriched'), format='parquet',
                     partitioning='hive').to_table(columns=['id', 'embedding'])
  vectors = dict(zip(table.column('id').to_pylist(),
                     np.array(table.column('embedding').to_pylist(), np.float32)))
  cosines = []
  for _, a, b in pairs:
    u, v = vectors[key(a)], vectors[key(b)]
    cosines.append(float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v))))
  return spearmanr([score for score, _, _ in pairs], cosines).statistic


def sts_pairs(limit):
  pairs = []
  with open(DATA / 'sts-dev.csv', encoding='utf-8') as f:
    for line in f:
      cols = line.rstrip('\n').split('\t')
      if len(cols) >= 7:
        pairs.append((float(cols[4]), cols[5], cols[6]))
  return pairs[:limit] if limit else pairs


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--limit', type=int, default=0, help='Long articles (0: all).')
  parser.add_argument('--pairs', type=int, default=0, help='STS-B pairs (0: all).')
  parser.add_argument('--settings', default=f'{DEFAULT_CHUNK_TOKENS}/{DEFAULT_CHUNK_OVERLAP}',
                      help='Chunk settings TOKENS/OVERLAP to compare, comma-separated; the '
                      'first is the default.')
  args = parser.parse_args(argv)
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  print(f'CPU: {describe()}')
  articles = long_articles(args.limit)
  records = [{'id': url, 'time': date, 'text': text} for url, date, text, _ in articles]
  print(f'{len(articles)} Wikinews articles longer than the 256-word-piece window; '
        'queries: one sentence from the last third of each')
  with tempfile.TemporaryDirectory() as tmp:
    runs = [('truncated (--chunk_tokens 0)', ['--chunk_tokens', '0'])]
    for setting in args.settings.split(','):
      tokens, overlap = setting.split('/')
      runs.append((f'chunks {tokens}/{overlap}',
                   ['--chunk_tokens', tokens, '--chunk_overlap', overlap]))
    for n, (name, flags) in enumerate(runs):
      out = os.path.join(tmp, f'wiki{n}')
      seconds = replay(records, out, '--sink', 'vectors', *flags)
      rate, twice = rank_one_rate(out, articles)
      print(f'  {name:<30} rank-1 {rate:.3f} ({round(rate * len(articles))}/{len(articles)}),'
            f' a document twice in a result list: {"yes" if twice else "no"}, '
            f'replay {seconds:.0f} s')
    pairs = sts_pairs(args.pairs)
    tokens, overlap = args.settings.split(',')[0].split('/')
    on = sts_spearman(os.path.join(tmp, 'sts_on'), pairs, '--chunk_tokens', tokens,
                      '--chunk_overlap', overlap)
    off = sts_spearman(os.path.join(tmp, 'sts_off'), pairs, '--chunk_tokens', '0')
    print(f'STS-B dev ({len(pairs)} pairs) Spearman: chunks {tokens}/{overlap} {on:.5f}, '
          f'off {off:.5f}, difference {on - off:+.5f}')


if __name__ == '__main__':
  main()
