"""The house rules that a reviewer would otherwise check by hand: no module-level mutable
state outside the allow-list, the streaming decision read once, no module too long."""
import ast
import collections
import importlib
import pathlib
import re
import threading

from tests.conftest import ROOT

PACKAGES = ('pipelines', 'transforms', 'models', 'observability', 'runners')
# (module, name): why the state must live in the process. Everything else a module
# binds at its top level is immutable (tuples, frozensets, MappingProxyType).
ALLOWED_STATE = {
    ('transforms.job_state', '_STATES'): 'Beam pickles DoFns: the steps of one job meet '
                                         'through its token (drain, stop, health, calls)',
    ('transforms.job_state', '_STATES_LOCK'): 'guards _STATES across worker threads',
    ('runners.local_streaming', '_install_lock'): 'the runner patches are installed once '
                                                  'per process',
}
_MUTABLE = (dict, list, set, bytearray, collections.deque, threading.Event,
            type(threading.Lock()), type(threading.RLock()))
LONGEST = 300
LONG_ALLOWED = {
    'runners/local_streaming.py': "copies of Beam's own runner functions",
}


def _modules():
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob('*.py')):
      relative = path.relative_to(ROOT)
      name = '.'.join(relative.with_suffix('').parts)
      yield path, name[:-len('.__init__')] if name.endswith('.__init__') else name


def _top_level_names(path: pathlib.Path):
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.Assign):
      targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
      targets = [node.target]
    else:
      continue
    for target in targets:
      yield from (n.id for n in ast.walk(target) if isinstance(n, ast.Name))


def test_no_module_level_mutable_state_outside_the_allow_list():
  found = set()
  for path, name in _modules():
    module = importlib.import_module(name)
    for attribute in _top_level_names(path):
      if isinstance(getattr(module, attribute, None), _MUTABLE):
        found.add((name, attribute))
  assert found == set(ALLOWED_STATE), (
      f'module-level mutable state: {sorted(found - set(ALLOWED_STATE))}; '
      f'allow-listed but gone: {sorted(set(ALLOWED_STATE) - found)}')


def test_the_streaming_choice_is_read_from_the_options_in_one_place():
  """pipelines.stream sets it (a live job streams); pipelines.config alone reads it."""
  read = re.compile(r'StandardOptions\)\.streaming(?!\s*=[^=])')
  readers = [str(path.relative_to(ROOT)) for path, _ in _modules()
             if read.search(path.read_text())]
  assert readers == ['pipelines/config.py']


def test_no_module_is_longer_than_the_house_limit():
  long = {str(path.relative_to(ROOT)): len(path.read_text().splitlines())
          for path, _ in _modules()}
  assert {p: n for p, n in long.items() if n > LONGEST and p not in LONG_ALLOWED} == {}


def test_steps_and_models_never_import_entry_points():
  """transforms/ and models/ import nothing from pipelines/; models/ nothing from transforms/."""
  for path, name in _modules():
    tree = ast.parse(path.read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module} | {alias.name for node in ast.walk(tree)
                                    if isinstance(node, ast.Import) for alias in node.names}
    if name.startswith(('transforms', 'models')):
      assert not any(m.startswith('pipelines') for m in imported), (name, imported)
    if name.startswith('models'):
      assert not any(m.startswith(('transforms', 'observability')) for m in imported), name
