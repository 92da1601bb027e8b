"""Second models for tests, made from the packaged one (no download): same weights, linked."""
import json
import os
import shutil

from models.identity import model_folder
from models.loading import ModelConfig


def cls_pooling_copy(target) -> str:
  """The packaged all-MiniLM-L6-v2 with CLS pooling instead of mean: another identity and
  other vectors. The weights file is a link, the small files copies."""
  source = model_folder(ModelConfig())
  shutil.copytree(source, target, ignore=shutil.ignore_patterns('*.safetensors'))
  os.symlink(os.path.join(source, 'model.safetensors'), os.path.join(target, 'model.safetensors'))
  pooling = os.path.join(target, '1_Pooling', 'config.json')
  with open(pooling) as f:
    config = json.load(f)
  config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
  with open(pooling, 'w') as f:
    json.dump(config, f)
  return str(target)
