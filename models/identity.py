"""A model's identity: its name and a fingerprint of its weights and the settings that shape
its vectors, computed once per process for a model folder.

Two vectors can be compared only when the same identity made them: the same
weights at another precision, backend, quantization, normalization or pooling
give other vectors. Every enriched row, every vector-store row and the summary
carry it; a vector store records the identity that filled it
(transforms/io/vector_store.py) and refuses others.
"""
import functools
import hashlib
import json
import os
from typing import NamedTuple, Optional, Tuple

# Files of a model folder that do not change its vectors.
_IGNORED = frozenset({'README.md', '.gitattributes'})
_FINGERPRINT_HEX = 16


class ModelIdentity(NamedTuple):
  """name: the --model as given; fingerprint: 16 hex digits of weights and settings."""
  name: str
  fingerprint: str

  def __str__(self) -> str:
    return f'{self.name}@{self.fingerprint}'

  @classmethod
  def parse(cls, spelled: Optional[str]) -> Optional['ModelIdentity']:
    """The identity spelled NAME@FINGERPRINT (a PredictionResult's model_id), or None."""
    if not spelled or '@' not in spelled:
      return None
    name, _, fingerprint = spelled.rpartition('@')
    return cls(name, fingerprint)

  def table(self, base: str) -> str:
    """The vector-store table this model writes when `base` holds another model's vectors."""
    return f'{base}_{self.fingerprint[:12]}'


class FolderFacts(NamedTuple):
  """What a sentence-transformers folder says about its vectors, read without loading it."""
  digest: str  # blake2b of every file that shapes the vectors
  window: Optional[int]  # max_seq_length in word pieces, special tokens included
  pooling: str  # e.g. 'mean', 'cls', 'max'
  normalizes: bool  # the folder ends in a Normalize module


def _json(path: str) -> dict:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _files(folder: str) -> Tuple[str, ...]:
  found = []
  for root, dirs, names in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    found += [os.path.relpath(os.path.join(root, n), folder) for n in names
              if n not in _IGNORED and not n.startswith('.')]
  return tuple(sorted(found))


@functools.lru_cache(maxsize=8)
def _folder_facts(folder: str, stamp: Tuple) -> FolderFacts:
  del stamp  # part of the cache key only: a rewritten file is read again
  digest = hashlib.blake2b(digest_size=16)
  for name in _files(folder):
    digest.update(name.encode() + b'\0')
    with open(os.path.join(folder, name), 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
  modules = _json(os.path.join(folder, 'modules.json'))
  pooling, normalizes = 'mean', False
  for module in modules if isinstance(modules, list) else ():
    kind = str(module.get('type', ''))
    if kind.endswith('Normalize'):
      normalizes = True
    elif kind.endswith('Pooling'):
      config = _json(os.path.join(folder, module.get('path', ''), 'config.json'))
      modes = [k[len('pooling_mode_'):] for k, v in config.items()
               if k.startswith('pooling_mode_') and v is True]
      pooling = '+'.join(sorted(modes)) or config.get('pooling_mode', 'mean')
  window = _json(os.path.join(folder, 'sentence_bert_config.json')).get('max_seq_length')
  return FolderFacts(digest.hexdigest(), window, pooling, normalizes)


def folder_facts(folder: str) -> FolderFacts:
  """FolderFacts of a local model folder, hashed once per process while its files stay."""
  stamp = []
  for name in _files(folder):
    info = os.stat(os.path.join(folder, name))
    stamp.append((name, info.st_size, info.st_mtime_ns))
  return _folder_facts(os.path.abspath(folder), tuple(stamp))


def identify(name: str, folder: Optional[str], precision: str, backend: str, quantize: str,
             normalize: bool) -> ModelIdentity:
  """The identity of model `name` loaded from `folder` (None: not a local folder, then only
  the name and settings are fingerprinted) with those settings."""
  facts = folder_facts(folder) if folder and os.path.isdir(folder) else None
  settings = {
      'weights': facts.digest if facts else name,
      'precision': precision, 'backend': backend, 'quantize': quantize,
      'normalize': bool(normalize) or bool(facts and facts.normalizes),
      'pooling': facts.pooling if facts else 'mean',
  }
  fingerprint = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(),
                                digest_size=_FINGERPRINT_HEX // 2).hexdigest()
  return ModelIdentity(name, fingerprint)


def model_folder(config) -> Optional[str]:
  """The local folder a ModelConfig loads from (None for a hub name)."""
  from models.loading import packaged_model_path
  if config.is_packaged_default():
    return packaged_model_path()
  path = os.path.expanduser(config.model)
  return path if os.path.isdir(path) else None


def of_config(config) -> ModelIdentity:
  """The identity of the model a ModelConfig loads (auto and fast as this machine resolves
  them, so the summary, the store and search name what the rows carry)."""
  if config.precision in ('auto', 'fast'):
    from models.loading import pick_device  # pylint: disable=import-outside-toplevel
    from models.precision import resolved  # precision imports loading, which is heavier
    config = resolved(config, pick_device(config.device))
  return identify(config.model, model_folder(config), config.precision, config.backend,
                  config.quantize, config.normalize)


def window_of(config) -> Optional[int]:
  """The model's window in word pieces (special tokens included), from its folder."""
  folder = model_folder(config)
  return folder_facts(folder).window if folder else None
