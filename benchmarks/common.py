"""What the benchmarks share: where they run and write, the default archive, the machine.

This project's machines do not always land on the same CPU (bf16 is several
times faster with AVX512-BF16 or AMX than without), so every result says which.
"""
import gzip
import itertools
import json
import os
import pathlib
import platform
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / 'benchmarks' / 'results'
# The shared Wikipedia edit stream, read in place beside the checkout.
DEFAULT_INPUT = ROOT.parent / 'shared' / 'data' / 'wikiticker-2015-09-12-sampled.json.gz'

_UNITS = (('amx_bf16', 'AMX'), ('avx512_bf16', 'AVX512-BF16'), ('avx512f', 'AVX512'),
          ('avx2', 'AVX2'))


def describe() -> str:
  """e.g. 'x86_64, 2 cores, AMD EPYC, AVX2' (from /proc/cpuinfo where there is one)."""
  from models.loading import cpu_info
  model, flags = cpu_info()
  units = '/'.join(name for flag, name in _UNITS if flag in flags) or 'no AVX2'
  return f'{platform.machine()}, {os.cpu_count()} cores, {model or platform.processor() or "cpu"}, {units}'


def records_with_text(source, text_field: str, limit=None, distinct: bool = False):
  """(line, text) of the first `limit` records of a JSON Lines archive (.gz or plain) whose
  `text_field` is a non-blank string; each text once if `distinct`."""
  opener = gzip.open if str(source).endswith('.gz') else open
  seen = set()
  with opener(source, 'rt', encoding='utf-8') as lines:
    for line in lines:
      if len(seen) == limit:
        return
      text = json.loads(line).get(text_field)
      if isinstance(text, str) and text.strip() and not (distinct and text in seen):
        seen.add(text if distinct else len(seen))
        yield line, text


def archive_texts(source, text_field: str, limit=None, distinct: bool = False) -> list:
  """The texts of records_with_text, in order."""
  return [text for _, text in records_with_text(source, text_field, limit, distinct)]


def write_slice(source: pathlib.Path, text_field: str, limit: int, folder: str,
                distinct: bool = False) -> str:
  """Copies the first `limit` records with a non-blank text (each text once if `distinct`)."""
  path = os.path.join(folder, 'slice.jsonl')
  with open(path, 'w') as out:
    for line, _ in records_with_text(source, text_field, limit, distinct):
      out.write(line if line.endswith('\n') else line + '\n')
  return path


def read_texts(path: str, text_field: str, limit=None):
  with open(path) as lines:
    return [json.loads(line)[text_field] for line in itertools.islice(lines, limit)]


def bar_chart(summary, path, title):
  """Events/s per variant, end to end and steady state, as a PNG."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  names = list(summary)
  fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(names)), 3.5))
  width = 0.38
  for offset, key, label in ((-width / 2, 'e2e_events_per_s', 'end to end'),
                             (width / 2, 'steady_events_per_s', 'steady state')):
    values = [summary[n][key] for n in names]
    bars = ax.bar([i + offset for i in range(len(names))], values, width, label=label)
    ax.bar_label(bars, labels=[f'{v:.0f}' for v in values], fontsize=8)
  ax.set_xticks(range(len(names)), names)
  ax.set_ylabel('events/s')
  ax.set_title(title, fontsize=9)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def write_result(folder, stem: str, record: dict, load_before=None) -> pathlib.Path:
  """Writes `record` as FOLDER/STEM.json, with the machine (unless given), the load average
  before (`load_before`, when given) and after, and when; says where."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  record = {'machine': record.get('machine') or describe(), **record}
  if load_before is not None:
    record['load_average_before_after'] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
  record['when'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
  path = folder / f'{stem}.json'
  path.write_text(json.dumps(record, indent=2) + '\n')
  print(f'Wrote {path}')
  return path


def fitted_rise(points):
  """(rise over the points' span, value at the first point) of the least-squares line
  through (x, y) points: a trend that one outlying sample does not move much."""
  import numpy as np
  xs, ys = np.array(points, np.float64).T
  slope, intercept = np.polyfit(xs, ys, 1)
  return float(slope * (xs[-1] - xs[0])), float(intercept + slope * xs[0])
