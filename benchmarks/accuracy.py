"""The accuracy guard: what a faster setting does to rankings and similarities, beside fp32.

  python -m benchmarks.accuracy --precision fast
  python -m benchmarks.accuracy --precision bf16 --backend openvino
  python -m benchmarks.accuracy --settings openvino-bf16,openvino-int8,onnx-int8

For each setting (a named one from models/precision.py, or the flags as the job
takes them; auto and fast are chosen for this machine first), against plain
fp32 `SentenceTransformer.encode` of the same texts:
  STS-B dev Spearman   the cosine of each of the 1,500 sentence pairs of the STS
                       Benchmark's development split, ranked against the gold scores;
  near-duplicates      agreement (Jaccard) of the pairs at or above the job's default
                       --dedup_threshold among 2,000 distinct archive texts;
  top-10 overlap       the mean share of each text's 10 nearest neighbours (cosine,
                       among the same 2,000) that fp32 finds too;
  min / mean cosine    of each text's vector to its fp32 vector (information).
Verdicts: near-exact when every one of the 2,000 cosines is at least 0.995;
accurate when the Spearman is within 0.005 of fp32's and the top-10 overlap at
least 0.95. The setting's texts go through the job's own forward passes.
Writes JSON under benchmarks/results/.
"""
import argparse
import os
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np

from benchmarks.common import DEFAULT_INPUT, RESULTS, ROOT, archive_texts, describe, write_result

STS_DEV = ROOT.parent / 'shared' / 'data' / 'sts-dev.csv'
NEAR_EXACT_COSINE = 0.995
SPEARMAN_TOLERANCE = 0.005
TOP_K = 10
TOP_K_OVERLAP = 0.95


def read_sts(path) -> Tuple[List[str], List[str], np.ndarray]:
  """(first sentences, second sentences, gold scores) of an STS Benchmark file: raw
  lines split on TAB (its sentences hold quotes that a CSV reader misreads)."""
  firsts, seconds, gold = [], [], []
  with open(path, encoding='utf-8') as lines:
    for line in lines:
      columns = line.rstrip('\n').split('\t')
      if len(columns) < 7:
        continue
      gold.append(float(columns[4]))
      firsts.append(columns[5])
      seconds.append(columns[6])
  return firsts, seconds, np.array(gold)


def ranks(values: Sequence[float]) -> np.ndarray:
  """1-based ranks, ties sharing their mean rank (as Spearman's rho needs)."""
  values = np.asarray(values, np.float64)
  order = np.argsort(values, kind='stable')
  ranked = np.empty(len(values))
  sorted_values = values[order]
  start = 0
  while start < len(values):
    end = start
    while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
      end += 1
    ranked[order[start:end + 1]] = (start + end) / 2 + 1
    start = end + 1
  return ranked


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
  """Spearman's rank correlation: Pearson's of the ranks."""
  x, y = ranks(a), ranks(b)
  x, y = x - x.mean(), y - y.mean()
  return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def _unit(vectors: np.ndarray) -> np.ndarray:
  vectors = np.asarray(vectors, np.float64)
  return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Cosine of each row of `a` to the same row of `b`."""
  return (_unit(a) * _unit(b)).sum(1)


def near_duplicate_pairs(vectors: np.ndarray, threshold: float) -> set:
  """Pairs (i, j), i < j, whose cosine is at least `threshold`."""
  unit = _unit(vectors)
  similar = np.triu(unit @ unit.T >= threshold, k=1)
  return set(zip(*(axis.tolist() for axis in np.nonzero(similar))))


def pair_agreement(a: set, b: set) -> float:
  """Jaccard of two pair sets (1.0 when both are empty)."""
  return len(a & b) / len(a | b) if a | b else 1.0


def top_k_overlap(reference: np.ndarray, other: np.ndarray, k: int = TOP_K) -> float:
  """Mean share of each row's k nearest rows (cosine, itself left out) under `reference`
  that are also among its k nearest under `other`."""
  def nearest(vectors):
    unit = _unit(vectors)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argpartition(-similarity, k, axis=1)[:, :k]
  ours, theirs = nearest(reference), nearest(other)
  return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ours, theirs)]))


def verdicts(measured: Dict, reference_spearman: float) -> Dict[str, bool]:
  """The two tiers' rules on one setting's measurements."""
  return {
      'near-exact': measured['min_cosine'] >= NEAR_EXACT_COSINE,
      'accurate': (abs(measured['sts_spearman'] - reference_spearman) <= SPEARMAN_TOLERANCE
                   and measured['top10_overlap'] >= TOP_K_OVERLAP),
  }


def measure(encode, sts, texts, reference: Dict, threshold: float) -> Dict:
  """The guard's figures for one encoder (`encode(list) -> float32 rows`)."""
  firsts, seconds, gold = sts
  started = time.perf_counter()
  vectors = encode(texts)
  pairs = encode(list(firsts) + list(seconds))
  seconds_taken = time.perf_counter() - started
  sts_cosines = row_cosines(pairs[:len(firsts)], pairs[len(firsts):])
  cosines = row_cosines(vectors, reference['vectors'])
  return {
      'sts_spearman': spearman(sts_cosines, gold),
      'dedup_pairs': len(near_duplicate_pairs(vectors, threshold)),
      'dedup_agreement': pair_agreement(near_duplicate_pairs(vectors, threshold),
                                        reference['pairs']),
      'top10_overlap': top_k_overlap(reference['vectors'], vectors),
      'min_cosine': float(cosines.min()),
      'mean_cosine': float(cosines.mean()),
      'encode_s': round(seconds_taken, 2),
  }


def _config(args, named: str = ''):
  from models.loading import ModelConfig
  from models.precision import SETTINGS
  if named:
    backend, precision, quantize = SETTINGS[named] if named in SETTINGS else (
        'torch', named, 'none')
  else:
    backend, precision, quantize = args.backend, args.precision, args.quantize
  config = ModelConfig(device=args.device, precision=precision, backend=backend,
                       quantize=quantize)
  config.validate()
  return config


def _encoder(config):
  """encode(texts) through the job's forward passes at `config` (auto/fast chosen here)."""
  from models.forward_passes import encode_in_passes
  from models.loading import forward_pass_limits, load_sentence_transformer, pick_device
  from models.precision import choose
  choice = choose(config, pick_device(config.device))
  model = load_sentence_transformer(choice.config)
  limits = forward_pass_limits(choice.config, getattr(model, 'device', None))

  def encode(texts):
    return encode_in_passes(model, list(texts), {'show_progress_bar': False,
                                                 'convert_to_tensor': True}, *limits)

  return choice, encode


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--precision', default='fast')
  parser.add_argument('--backend', default='torch')
  parser.add_argument('--quantize', default='none')
  parser.add_argument('--settings', default='',
                      help='Comma-separated named settings (models/precision.py SETTINGS, or '
                      'auto, fast) instead of the three flags above.')
  parser.add_argument('--device', default='cpu')
  parser.add_argument('--input', default=str(DEFAULT_INPUT))
  parser.add_argument('--text_field', default='comment')
  parser.add_argument('--limit', type=int, default=2000, help='Distinct archive texts.')
  parser.add_argument('--sts', default=str(STS_DEV))
  parser.add_argument('--sts_limit', type=int, default=0, help='First N pairs only; 0: all.')
  parser.add_argument('--label', default='')
  parser.add_argument('--results', default=str(RESULTS))
  args = parser.parse_args(argv)
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  from models.loading import ModelConfig, load_sentence_transformer
  from pipelines.options import DEFAULT_DEDUP_THRESHOLD

  try:
    configs = ([(name, _config(args, name)) for name in args.settings.split(',') if name]
               or [(args.precision if args.backend == 'torch' and args.quantize == 'none'
                    else f'{args.backend}-{args.precision}-{args.quantize}', _config(args))])
  except (ValueError, KeyError) as e:
    parser.exit(2, f'error: {e}\n')
  sts = read_sts(args.sts)
  if args.sts_limit:
    sts = tuple(part[:args.sts_limit] for part in sts)
  texts = archive_texts(args.input, args.text_field, args.limit, distinct=True)
  load_before = os.getloadavg()[0]
  # The reference: plain fp32 encode, sentence-transformers' own batching.
  exact = load_sentence_transformer(ModelConfig(device=args.device, precision='fp32'))
  plain = lambda batch: exact.encode(list(batch), show_progress_bar=False,
                                     convert_to_numpy=True).astype(np.float32)
  vectors = plain(texts)
  reference = {'vectors': vectors,
               'pairs': near_duplicate_pairs(vectors, DEFAULT_DEDUP_THRESHOLD)}
  results = {'fp32 encode': measure(plain, sts, texts, reference, DEFAULT_DEDUP_THRESHOLD)}
  fp32_spearman = results['fp32 encode']['sts_spearman']
  results['fp32 encode'].update(verdicts(results['fp32 encode'], fp32_spearman))
  for name, config in configs:
    choice, encode = _encoder(config)
    measured = measure(encode, sts, texts, reference, DEFAULT_DEDUP_THRESHOLD)
    measured.update(verdicts(measured, fp32_spearman), chosen=choice.name, why=choice.reason)
    results[name] = measured
    print(f'{name}: rho {measured["sts_spearman"]:.5f}, top-10 {measured["top10_overlap"]:.4f}, '
          f'min cosine {measured["min_cosine"]:.4f}', flush=True)
  machine = describe()
  print(f'{len(sts[0])} STS-B dev pairs, {len(texts)} distinct archive texts, dedup threshold '
        f'{DEFAULT_DEDUP_THRESHOLD}; {machine}')
  print(f'{"setting":<22} {"chosen":<20} {"STS-B rho":>9} {"delta":>8} {"dedup agr":>9} '
        f'{"top-10":>7} {"min cos":>8} {"mean cos":>9}  verdict')
  for name, m in results.items():
    verdict = ('near-exact' if m['near-exact'] else 'accurate' if m['accurate']
               else 'neither')
    print(f'{name:<22} {m.get("chosen", "fp32"):<20} {m["sts_spearman"]:>9.5f} '
          f'{m["sts_spearman"] - fp32_spearman:>+8.5f} {m["dedup_agreement"]:>9.4f} '
          f'{m["top10_overlap"]:>7.4f} {m["min_cosine"]:>8.4f} {m["mean_cosine"]:>9.5f}  '
          f'{verdict}')
  stem = f'accuracy-{args.device}{"-" + args.label if args.label else ""}'
  write_result(args.results, stem, {
      'machine': machine, 'device': args.device, 'sts_pairs': len(sts[0]),
      'archive_texts': len(texts), 'dedup_threshold': DEFAULT_DEDUP_THRESHOLD,
      'rules': {'near-exact': f'min cosine to fp32 >= {NEAR_EXACT_COSINE}',
                'accurate': f'|STS-B rho - fp32| <= {SPEARMAN_TOLERANCE} and top-10 overlap '
                            f'>= {TOP_K_OVERLAP}'},
      'results': results}, load_before)


if __name__ == '__main__':
  main()
