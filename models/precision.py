"""`--precision auto` and `fast`: the fastest setting of a tier for this machine, from a table.

Two tiers, judged by `python -m benchmarks.accuracy` (docs/precision.md):
  near-exact  every text's cosine to plain fp32 `encode` at least 0.995 on 2,000
              archive texts;
  accurate    STS-B dev Spearman within 0.005 of fp32's and top-10 neighbour
              overlap at least 0.95 on the same 2,000 texts.
`auto` (the job's default) takes the fastest near-exact setting measured for the
device and its CPU's vector units, `fast` the fastest accurate one; `fp32` is
exact. A row not measured on such a machine falls back to fp32: GPUs have not
been lent yet (fp16 is the row expected there; benchmarks/gpu_check.sh measures
it). The choice is made where the model loads, so each worker follows its own CPU.
"""
import importlib.util
import types
from typing import NamedTuple, Optional

from models.loading import ModelConfig, cpu_info

AUTO, FAST = 'auto', 'fast'
NEAR_EXACT, ACCURATE, EXACT = 'near-exact', 'accurate', 'exact'


class Setting(NamedTuple):
  """A concrete way to run the model: what the flags --backend, --precision, --quantize say."""
  backend: str
  precision: str
  quantize: str = 'none'

  def flags(self):
    return ['--backend', self.backend, '--precision', self.precision, '--quantize', self.quantize]


# Named settings, as the benchmarks and docs name them.
SETTINGS = types.MappingProxyType({
    'fp32': Setting('torch', 'fp32'),
    'fp16': Setting('torch', 'fp16'),
    'bf16': Setting('torch', 'bf16'),
    'onnx': Setting('onnx', 'fp32'),
    'onnx-int8': Setting('onnx', 'fp32', 'int8'),
    'openvino': Setting('openvino', 'fp32'),
    'openvino-bf16': Setting('openvino', 'bf16'),
    'openvino-int8': Setting('openvino', 'fp32', 'int8'),
    'openvino-int8-bf16': Setting('openvino', 'bf16', 'int8'),
    'openvino-int8w': Setting('openvino', 'fp32', 'int8_weights'),
    'openvino-int8w-bf16': Setting('openvino', 'bf16', 'int8_weights'),
})


class Row(NamedTuple):
  """The settings each tier takes on one kind of machine (None: not measured: fp32)."""
  near_exact: Optional[str]
  accurate: Optional[str]
  measured: str


# By (device, CPU vector units). Measured with benchmarks/accuracy.py (the verdicts) and
# benchmarks/throughput.py (the speed); figures in docs/precision.md.
TABLE = types.MappingProxyType({
    # AMD EPYC, AVX512-BF16 + AVX512-VNNI, 2 cores, 2026-12-01/02: OpenVINO bf16 is
    # near-exact (min cosine 0.9999, STS-B +0.0001) and the fastest such setting (3.29x bare
    # fp32 through the pipeline, 3000 distinct texts). No static int8 passed the accurate rule
    # (top-10 overlap: ONNX dynamic 0.861, OpenVINO static 0.918, with the FFN outputs and
    # first and last layers kept in bf16 0.948); weight-only int8 is near-exact (min cosine
    # 0.9967, top-10 0.966) but ran 3.04x, slower than bf16; so fast takes bf16 too. Again on
    # 2026-12-03 with start-up without torch: bf16 4.50x and 4.30x, int8w 3.84x.
    ('cpu', 'avx512-bf16'): Row('openvino-bf16', 'openvino-bf16',
                                'measured on AMD EPYC with AVX512-BF16 and AVX512-VNNI'),
    # Intel Xeon, AMX + AVX512-BF16 + AVX512-VNNI, 2 cores, 2026-12-02 (soak and chaos runs
    # beside it, load 3-5): OpenVINO bf16 near-exact (min cosine 0.9999, STS-B +0.0001) and
    # the fastest setting through the pipeline (1.91x bare fp32, torch bf16 1.84x); no int8
    # passed the accurate rule (top-10 overlap 0.861-0.918), so fast takes bf16 too.
    ('cpu', 'amx'): Row('openvino-bf16', 'openvino-bf16',
                        'measured on Intel Xeon with AMX, AVX512-BF16 and AVX512-VNNI'),
    ('cpu', 'avx512'): Row(None, None, 'not measured on a CPU with AVX512 but no AVX512-BF16'),
    # AMD EPYC, AVX2 only, 2 cores, 2026-12-02 (quiet, load 1.7-2.0): ONNX Runtime and
    # OpenVINO fp32 are exact (min cosine 1.0000); through the pipeline, 3000 distinct texts
    # end to end, OpenVINO fp32 1.51x bare fp32 encode, torch fp32 1.45x, ONNX 1.42x (within
    # the rounds' spread of each other). int8 is neither accurate (top-10 overlap: ONNX
    # dynamic 0.852, OpenVINO static 0.892) nor faster without VNNI (1.42x, 0.68x); torch
    # bf16 is emulated and slow. So both tiers take OpenVINO fp32. Again on 2026-12-03 (Zen 2,
    # quiet), with cached graphs opened directly and finer pass lengths: 2.02x and 2.12x, then
    # 2.32x with start-up without torch; weight-only int8 1.95x (it decompresses to fp32).
    # On Zen 3 the same afternoon: 1.91x and 1.76x; ONNX 2.03x (rounds 2.19x, 1.90x, within
    # OpenVINO's spread; its passes 179.9 against 172.7 texts/s in one process): kept.
    # Zen 3 again that evening, quiet (benchmarks/tiers_check.sh): 2.14x and 2.38x, 2.42x in
    # a run before; ONNX 1.88x and 1.95x.
    ('cpu', 'avx2'): Row('openvino', 'openvino', 'measured on AMD EPYC with AVX2 only'),
    ('cuda', None): Row(None, None, 'not measured on a GPU (fp16 is the row expected; '
                        'benchmarks/gpu_check.sh measures it)'),
})


class Choice(NamedTuple):
  """What auto or fast became, and why (printed at start)."""
  config: ModelConfig
  name: str
  tier: str
  reason: str


def vector_units() -> str:
  """This CPU's class for TABLE: 'amx', 'avx512-bf16', 'avx512' or 'avx2' (also for less)."""
  flags = cpu_info()[1]
  if 'amx_bf16' in flags:
    return 'amx'
  if 'avx512_bf16' in flags:
    return 'avx512-bf16'
  return 'avx512' if 'avx512f' in flags else 'avx2'


def _missing(setting: Setting) -> Optional[str]:
  """The Python package a setting needs that is not installed, if any."""
  needs = {'onnx': ['onnxruntime'], 'openvino': ['openvino']}.get(setting.backend, [])
  if setting.backend == 'openvino' and setting.quantize != 'none':
    needs.append('nncf')
  for package in needs:
    if importlib.util.find_spec(package) is None:
      return package
  return None


def choose(config: ModelConfig, device: str = 'cpu', units: Optional[str] = None) -> Choice:
  """The concrete setting for `config` on `device` ('cpu', 'cuda', 'cuda:N'), whose CPU
  has `units` (this machine's vector_units() when None)."""
  if config.precision not in (AUTO, FAST):
    name = setting_name(config)
    return Choice(config, name, EXACT if name == 'fp32' else 'asked',
                  f'{name} as asked')
  if config.backend != 'torch' or config.quantize != 'none':
    # A backend named by hand: exact arithmetic on it (and int8 if asked).
    return Choice(config._replace(precision='fp32'), config.backend, EXACT,
                  f'--precision {config.precision} with --backend {config.backend}: fp32 on it')
  kind = 'cuda' if device.startswith('cuda') else 'cpu'
  units = (units or vector_units()) if kind == 'cpu' else None
  row = TABLE.get((kind, units), Row(None, None, f'no row for {kind} {units}'))
  tier = NEAR_EXACT if config.precision == AUTO else ACCURATE
  name = row.near_exact if tier == NEAR_EXACT else row.accurate or row.near_exact
  where = f'{kind}{" " + units if units else ""}'
  if name is None:
    return _exact(config, f'--precision {config.precision}: fp32, since the {tier} settings '
                  f'are {row.measured}')
  missing = _missing(SETTINGS[name])
  if missing:
    return _exact(config, f'--precision {config.precision}: fp32, since {name} (the fastest '
                  f'{tier} setting measured on {where}) needs the package {missing}')
  backend, precision, quantize = SETTINGS[name]
  return Choice(config._replace(backend=backend, precision=precision, quantize=quantize), name,
                tier, f'--precision {config.precision}: {name}, the fastest {tier} setting '
                f'{row.measured} ({where} here)')


def setting_name(config: ModelConfig) -> str:
  """The SETTINGS name of a concrete config (its flags spelled out where none matches)."""
  for name, setting in SETTINGS.items():
    if setting == (config.backend, config.precision, config.quantize):
      return name
  return f'{config.backend}-{config.precision}-{config.quantize}'


def _exact(config: ModelConfig, reason: str) -> Choice:
  return Choice(config._replace(precision='fp32'), 'fp32', EXACT, reason)


def resolved(config: ModelConfig, device: str = 'cpu') -> ModelConfig:
  return choose(config, device).config
