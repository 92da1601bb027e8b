"""The docs as a user runs them: every shell and Python block of README.md and docs/*.md.

A marker, an HTML comment on the line before a block's opening fence, says how it runs:
  <!-- docs-test: skip, REASON -->  not run here (needs a cluster, a cloud, a GPU, Docker, or
                                     runs until stopped)
  <!-- docs-test: e2e -->           slow (a job over many events): the full suite only
  <!-- docs-test: long, REASON -->  a whole-archive run (10 to 30 minutes on 2 cores): only
                                     with DOCS_TEST_LONG=1, so the suite stays under 20 min
  <!-- docs-test: quick -->         quick, and reads nothing an earlier block wrote
Without one a block is quick and runs in the fast tier (`-m "not e2e"`), unless an e2e
block came before it on the same page: it may read that block's output, so it is e2e too.

A page's blocks run in order in one folder made for the page: links to the checkout's
files, with `../shared` beside it, so the blocks' relative paths work as written and the
checkout gets no output. `run.sh` is called through its link, from that folder, as a
user would call it from anywhere. Each block must exit 0 without a traceback.
"""
import os
import re
import signal
import subprocess
import sys
from typing import List, NamedTuple, Optional

import pytest

from tests.conftest import ROOT

PAGES = ['README.md'] + sorted(f'docs/{p.name}' for p in (ROOT / 'docs').glob('*.md'))
SHELL = ('bash', 'sh', 'shell')
_MARKER = re.compile(r'<!--\s*docs-test:\s*(skip|e2e|quick|long)\s*(?:,\s*(.*?))?\s*-->')
_FENCE = re.compile(r'^```(\w*)\s*$')
_LEFT_OUT = {'.git', '.pytest_cache', 'out', 'output', '__pycache__'}


class Block(NamedTuple):
  page: str
  line: int  # of the opening fence, 1-based
  language: str
  code: str
  kind: str  # quick | e2e | skip
  reason: Optional[str] = None


def blocks(page: str) -> List[Block]:
  """The page's shell and Python blocks, in order, each with how it runs."""
  found, marker, slow = [], None, False
  lines = (ROOT / page).read_text(encoding='utf-8').split('\n')
  n = 0
  while n < len(lines):
    fence = _FENCE.match(lines[n])
    if not fence:
      match = _MARKER.search(lines[n])
      if match or lines[n].strip():
        marker = match
      n += 1
      continue
    end = next(m for m in range(n + 1, len(lines)) if lines[m].startswith('```'))
    language = fence.group(1)
    if language in SHELL + ('python',):
      kind, reason = 'quick', None
      if marker and marker.group(1) == 'skip':
        kind, reason = 'skip', marker.group(2)
      elif marker and marker.group(1) == 'long':
        kind, reason, slow = 'long', marker.group(2), True
      elif marker and marker.group(1) == 'quick':
        kind = 'quick'
      elif (marker and marker.group(1) == 'e2e') or slow:
        kind, slow = 'e2e', True
      found.append(Block(page, n + 1, language, '\n'.join(lines[n + 1:end]) + '\n', kind,
                         reason))
    marker, n = None, end + 1
  return found


ALL = [block for page in PAGES for block in blocks(page)]


def _param(block: Block):
  marks = []
  if block.kind == 'e2e':
    marks.append(pytest.mark.e2e)
  if block.kind == 'skip':
    marks.append(pytest.mark.skip(reason=f'{block.page}:{block.line}: {block.reason}'))
  if block.kind == 'long':
    marks.append(pytest.mark.e2e)
    if os.environ.get('DOCS_TEST_LONG') != '1':
      marks.append(pytest.mark.skip(reason=f'{block.page}:{block.line}: {block.reason} '
                                    '(DOCS_TEST_LONG=1 runs it)'))
  return pytest.param(block, marks=marks, id=f'{block.page}:{block.line}')


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  """One working folder per page, made on first use and kept for its later blocks."""
  made = {}

  def folder(page: str):
    if page not in made:
      base = tmp_path_factory.mktemp(re.sub(r'\W', '-', page))
      (base / 'shared').symlink_to(ROOT.parent / 'shared')
      clone = base / 'clone'
      clone.mkdir()
      for entry in ROOT.iterdir():
        if entry.name not in _LEFT_OUT:
          (clone / entry.name).symlink_to(entry)
      made[page] = clone
    return made[page]

  return folder


@pytest.mark.parametrize('block', [_param(b) for b in ALL])
def test_block_runs(block: Block, folders):
  if not (ROOT / '.venv' / 'bin' / 'python').exists():
    pytest.skip('no .venv beside run.sh: run ./run.sh setup first')
  cwd = folders(block.page)
  # The suite already runs in the project's .venv, so run.sh must not set it up again.
  env = dict(os.environ, SKIP_SETUP='1', HF_HUB_OFFLINE='1')
  if block.language == 'python':
    command = [sys.executable, '-c', block.code]
  else:
    command = ['bash', '-e', '-c', block.code]  # no pipefail: `zcat | head` ends zcat early
  job = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
  try:
    printed, _ = job.communicate(timeout=3600 if block.kind == 'e2e' else 300)  # a hang guard
  finally:
    try:  # whatever the block left running (a Redis it started, a producer) ends with it
      os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    job.wait()
  where = f'{block.page}:{block.line}'
  print(f'{where}:\n{printed[-3000:]}')  # what a user would see (pytest -s shows it)
  assert job.returncode == 0, f'{where} exited {job.returncode}:\n{printed[-4000:]}'
  assert 'Traceback (most recent call last)' not in printed, f'{where}:\n{printed[-4000:]}'


def test_every_block_is_counted_and_the_count_is_in_the_docs():
  """Prints how many blocks run in each tier, and checks that docs/tests.md says so."""
  counts = {kind: sum(b.kind == kind for b in ALL) for kind in ('quick', 'e2e', 'long', 'skip')}
  line = (f'{len(ALL)} blocks: {counts["quick"]} quick, {counts["e2e"]} e2e, '
          f'{counts["long"]} long, {counts["skip"]} skipped')
  print(f'docs test: {line}')
  for block in ALL:
    print(f'  {block.kind:5} {block.page}:{block.line}' + (f' ({block.reason})' if block.reason
                                                           else ''))
  assert all(b.reason for b in ALL if b.kind in ('skip', 'long')), 'a skip marker names its reason'
  assert line in (ROOT / 'docs' / 'tests.md').read_text(encoding='utf-8'), line


def test_the_marker_parser_reads_kinds_in_order(tmp_path, monkeypatch):
  page = tmp_path / 'page.md'
  page.write_text('text\n\n```bash\necho quick\n```\n<!-- docs-test: skip, needs a cluster -->\n'
                  '```bash\nflink run\n```\n```\nnot code\n```\n<!-- docs-test: e2e -->\n\n'
                  '```sh\nslow\n```\n```python\nprint(1)\n```\n<!-- docs-test: quick -->\n'
                  '```bash\nalone\n```\n')
  monkeypatch.setattr(sys.modules[__name__], 'ROOT', tmp_path)
  found = blocks('page.md')
  assert [(b.line, b.kind, b.reason, b.code) for b in found] == [
      (3, 'quick', None, 'echo quick\n'), (7, 'skip', 'needs a cluster', 'flink run\n'),
      (15, 'e2e', None, 'slow\n'), (18, 'e2e', None, 'print(1)\n'), (22, 'quick', None, 'alone\n')]
