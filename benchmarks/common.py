"""What the benchmarks share: where they run and write, the default archive, the machine.

This project's machines do not always land on the same CPU (bf16 is several
times faster with AVX512-BF16 or AMX than without), so every result says which.
"""
import os
import pathlib
import platform

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
