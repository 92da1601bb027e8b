import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / 'shared' / 'data'
WIKI_ARCHIVE = SHARED_DATA / 'wikiticker-2015-09-12-sampled.json.gz'

os.environ.setdefault('HF_HUB_OFFLINE', '1')
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))


@pytest.fixture(scope='session')
def wiki_archive():
  if not WIKI_ARCHIVE.exists():
    pytest.fail(f'shared data missing: {WIKI_ARCHIVE} (CI lays ../shared beside the clone)')
  return WIKI_ARCHIVE


@pytest.fixture(scope='session')
def real_model():
  """The packaged all-MiniLM-L6-v2, loaded once for the whole session."""
  from models.loading import ModelConfig, load_sentence_transformer
  return load_sentence_transformer(ModelConfig(device='cpu', precision='fp32'))


FAST_TIER_LEAVES_OUT = ('e2e', 'slow', 'real_model')


@pytest.hookimpl(tryfirst=True)  # before -m selects by marks
def pytest_collection_modifyitems(items):
  """Marks the fast tier (`-m fast`): every test that is not e2e, slow or real_model."""
  for item in items:
    if not any(item.get_closest_marker(name) for name in FAST_TIER_LEAVES_OUT):
      item.add_marker(pytest.mark.fast)
