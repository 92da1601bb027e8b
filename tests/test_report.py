"""The run report: written by a replay, self-contained, and rendered by a headless browser."""
import html.parser
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from observability import charts
from tests.conftest import ROOT

GOOD = [f'{{"time": "2015-09-12T00:{m:02d}:{s:02d}Z", "comment": "edit {m} {s}"}}'
        for m in range(3) for s in range(0, 60, 10)]
BAD = ['{"time": "2015-09-12T00:01:00Z", "comment": "trunc',
       '{"time": "2015-09-12T00:01:05Z", "comment": "  "}',
       '{"time": "soon", "comment": "bad time"}',
       '']


class _Page(html.parser.HTMLParser):
  """Collects the tags, outside references and text of a page."""

  def __init__(self):
    super().__init__()
    self.tags, self.references, self.text = [], [], []

  def handle_starttag(self, tag, attrs):
    self.tags.append(tag)
    for name, value in attrs:
      if name in ('src', 'href') or (value or '').startswith(('http:', 'https:', '//')):
        if not (name == 'xmlns' and value == 'http://www.w3.org/2000/svg'):
          self.references.append((tag, name, value))

  def handle_data(self, data):
    self.text.append(data)


@pytest.fixture(scope='module')
def replayed(tmp_path_factory):
  folder = tmp_path_factory.mktemp('report')
  (folder / 'edits.jsonl').write_text('\n'.join(GOOD + BAD) + '\n')
  out = folder / 'out'
  done = subprocess.run(
      [sys.executable, '-m', 'pipelines.replay', '--input', str(folder / 'edits.jsonl'),
       '--output', str(out), '--text_field', 'comment', '--window_size', '30'],
      cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE='1'), capture_output=True, text=True,
      timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return out, done.stdout


@pytest.mark.e2e
def test_replay_writes_a_self_contained_report(replayed):
  out, stdout = replayed
  path = out / 'report.html'
  assert f'Report: {path}' in stdout
  source = path.read_text()
  page = _Page()
  page.feed(source)
  assert 'script' not in page.tags and 'img' not in page.tags and 'link' not in page.tags
  assert page.references == []  # nothing to fetch: it opens offline
  text = ' '.join(page.text)
  for expected in ('every record accounted for', f'{len(GOOD) + len(BAD)}', 'records read',
                   'sentence-transformers/all-MiniLM-L6-v2', 'precision', 'python -m pipelines.replay',
                   '--window_size 30', 'Events and dead letters per window',
                   'Dead letters by reason', 'Throughput over the run', 'Where the time went',
                   'invalid_json', 'no_text', 'bad_time', 'empty_record'):
    assert expected in text, expected
  svgs = [source[start:source.index('</svg>', start) + 6]
          for start in _starts(source, '<svg')]
  assert len(svgs) == 4
  for svg in svgs:
    ET.fromstring(svg)  # well-formed
  # Six windows of 30 s, each holding 3 events; the one timed dead letter (no_text) in one.
  bars = ET.fromstring(svgs[0]).findall('.//{http://www.w3.org/2000/svg}title')
  counts = [bar.text for bar in bars]
  assert counts.count('enriched: 3') == 6 and counts.count('dead letters: 1') == 1


def _starts(text, needle):
  at = text.find(needle)
  while at >= 0:
    yield at
    at = text.find(needle, at + 1)


@pytest.mark.e2e
def test_report_renders_in_a_headless_browser(replayed, tmp_path):
  browser = shutil.which('chromium') or shutil.which('chromium-browser')
  if browser is None:
    pytest.skip('no headless Chromium (Debian package chromium; ./run.sh test installs it '
                'where apt-get works)')
  out, _ = replayed
  shot = tmp_path / 'report.png'
  done = subprocess.run(
      [browser, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
       '--window-size=1400,1000', f'--screenshot={shot}', f'file://{out / "report.html"}'],
      capture_output=True, text=True, timeout=120)
  assert shot.exists(), done.stderr[-2000:]
  from PIL import Image
  image = Image.open(shot).convert('RGB')
  assert image.size == (1400, 1000)
  colors = image.getcolors(maxcolors=1 << 20)
  assert len(colors) > 50  # text and charts, not a blank or error page
  blue = sum(n for n, (r, g, b) in colors if (r, g, b) == (0x3b, 0x7d, 0xd8))
  red = sum(n for n, (r, g, b) in colors if (r, g, b) == (0xd9, 0x53, 0x4f))
  assert blue > 2000 and red > 500  # the enriched bars and the dead-letter bars were drawn


def test_chart_helpers():
  assert charts.nice_ticks(0) == [0.0, 1.0]
  assert charts.nice_ticks(95) == [0, 25, 50, 75, 100]
  assert charts.nice_ticks(6)[-1] >= 6
  ET.fromstring(charts.hbars([], 'none'))
  svg = charts.lines([0, 1, 2], {'p50': [1.0, None, 2.0]}, 's', [(0, '0 s')], 'gaps')
  assert svg.count('<circle') == 2  # single points around a gap are dots
