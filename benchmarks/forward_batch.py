"""The size of a forward pass at each precision, on this machine.

  python -m benchmarks.forward_batch [--limit 1000] [--rounds 3] [--batches 32]
      [--budgets 1024,2048,3072,4096] [--precisions fp32,bf16] [--device cpu] [--bundle 0]

Encodes the first `limit` distinct comments of the shared Wikipedia edit stream
with every setting once per round, alternating the order between rounds, all
in one process after a warm-up:
  batch N    one `encode(texts, batch_size=N)` call: sentence-transformers' own
             passes of N texts in character order (N=32 is bare encode);
  tokens N   the job's passes (models/forward_passes.py): texts sorted by token
             count, cut into passes of at most N padded tokens, one `encode` per pass;
             with --bundle B, planned for B texts at a time, as a live job's bundles
             (a poll's worth of events) reach its model, while `batch N` stays one call.
A precision is a torch precision (fp32, bf16, fp16) or a setting of the throughput
benchmark (auto, openvino-bf16, ...: benchmarks/throughput.py SETTINGS).
Prints texts/s (median of the rounds) and each setting's ratio to the best at its
precision; writes JSON to benchmarks/results/. The table in models/loading.py
(FORWARD_TOKENS) records what this measured.
"""
import argparse
import os
import statistics
import time

from benchmarks.common import DEFAULT_INPUT, RESULTS, archive_texts, describe, write_result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--input', default=str(DEFAULT_INPUT))
  parser.add_argument('--text_field', default='comment')
  parser.add_argument('--limit', type=int, default=1000)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--batches', default='32',
                      help="encode's own batch sizes to run (texts, character order).")
  parser.add_argument('--budgets', default='1024,2048,3072,4096',
                      help="the job's token budgets to run (padded tokens per pass).")
  parser.add_argument('--precisions', default='fp32,bf16')
  parser.add_argument('--device', default='cpu')
  parser.add_argument('--torch_threads', type=int, default=0,
                      help="torch threads (0: torch's default, one per core).")
  parser.add_argument('--bundle', type=int, default=0,
                      help="texts planned at a time for the job's passes (0: all at once).")
  parser.add_argument('--label', default='')
  parser.add_argument('--results', default=str(RESULTS), help='Folder for the JSON.')
  args = parser.parse_args(argv)
  from models.forward_passes import encode_in_passes
  from models.loading import ModelConfig, load_sentence_transformer
  load_before = os.getloadavg()
  texts = archive_texts(args.input, args.text_field, args.limit, distinct=True)
  batches = [('batch', int(b)) for b in args.batches.split(',') if b]
  batches += [('tokens', int(b)) for b in args.budgets.split(',') if b]
  precisions = args.precisions.split(',')
  from benchmarks.throughput import SETTINGS, setting_config

  def config(precision):
    if precision in SETTINGS:
      return setting_config(precision, args.device)._replace(torch_threads=args.torch_threads)
    return ModelConfig(device=args.device, precision=precision,
                       torch_threads=args.torch_threads)

  models = {p: load_sentence_transformer(config(p)) for p in precisions}
  bundle = args.bundle or len(texts)
  settings = [(p, b) for p in precisions for b in batches]
  for precision in precisions:  # warm-up: first calls allocate and pick kernels
    models[precision].encode(texts[:200], batch_size=32, show_progress_bar=False)
  times = {s: [] for s in settings}
  for round_number in range(args.rounds):
    for precision, batch in settings if round_number % 2 == 0 else reversed(settings):
      kind, size = batch
      started = time.perf_counter()
      if kind == 'batch':
        models[precision].encode(texts, batch_size=size, show_progress_bar=False,
                                 convert_to_tensor=True)
      else:
        for start in range(0, len(texts), bundle):
          encode_in_passes(models[precision], texts[start:start + bundle],
                           {'show_progress_bar': False, 'convert_to_tensor': True}, size)
      if args.device.startswith('cuda'):
        import torch
        torch.cuda.synchronize()
      times[(precision, batch)].append(time.perf_counter() - started)
      print(f'round {round_number + 1} {precision} {kind} {size}: '
            f'{times[(precision, batch)][-1]:.2f} s', flush=True)
  machine = describe() if args.device == 'cpu' else _gpu_name()
  rates = {s: len(texts) / statistics.median(t) for s, t in times.items()}
  results = {}
  print(f'\n{len(texts)} distinct texts on {args.device}, median of {args.rounds}'
        f'{f", job passes planned {bundle} texts at a time" if args.bundle else ""}; {machine}')
  for precision in precisions:
    best = max(rates[(precision, b)] for b in batches)
    for batch in batches:
      rate = rates[(precision, batch)]
      name = f'{batch[0]} {batch[1]}'
      results[f'{precision}@{name}'] = {
          'texts_per_s': rate, 'ratio_to_best': rate / best,
          'seconds': [round(t, 3) for t in times[(precision, batch)]]}
      print(f'{precision:<5} {name:>11}: {rate:8.1f} texts/s  {rate / best:5.2f} of best')
  stem = f'forward-batch-{args.device}{"-" + args.label if args.label else ""}'
  record = {'texts': len(texts), 'device': args.device, 'machine': machine,
            'rounds': args.rounds, 'bundle': args.bundle, 'torch_threads': args.torch_threads,
            'results': results}
  write_result(args.results, stem, record, load_before[0])


def _gpu_name() -> str:
  import torch
  return torch.cuda.get_device_name(0)


if __name__ == '__main__':
  main()
