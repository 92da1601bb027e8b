"""Small inline SVG charts for the run report: no scripts, no network, no plotting library."""
import datetime
import html
import math
import types
from typing import Callable, Dict, List, Optional, Sequence, Tuple

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 14, 36
COLORS = types.MappingProxyType({'enriched': '#3b7dd8', 'dead letters': '#d9534f', 'read': '#8a8f98',
          'written': '#3b7dd8', 'p50': '#3b7dd8', 'p95': '#e08a1e', 'texts/s': '#3b7dd8',
          'seconds per call': '#e08a1e'})
_PALETTE = ('#3b7dd8', '#d9534f', '#e08a1e', '#5cb85c', '#8e6bbf', '#8a8f98')


def _color(name: str, n: int) -> str:
  return COLORS.get(name, _PALETTE[n % len(_PALETTE)])


def nice_ticks(top: float, count: int = 4) -> List[float]:
  """0 and round steps up to at least `top`."""
  if top <= 0:
    return [0.0, 1.0]
  raw = top / count
  magnitude = 10 ** math.floor(math.log10(raw))
  step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
  return [step * i for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def _number(value: float) -> str:
  if value >= 1e6:
    return f'{value / 1e6:g}M'
  if value >= 1e4:
    return f'{value / 1e3:g}k'
  return f'{value:g}'


def utc_label(seconds: float, span_s: float) -> str:
  moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
  if span_s >= 2 * 86400:
    return moment.strftime('%m-%d %H:%M')
  return moment.strftime('%H:%M:%S' if span_s < 600 else '%H:%M')


def _frame(ticks: List[float], y_label: str, x_labels: Sequence[Tuple[float, str]]) -> List[str]:
  """Grid, y ticks and x labels; x positions are fractions 0..1 of the plot width."""
  plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
  parts = []
  for tick in ticks:
    y = TOP + plot_h * (1 - tick / ticks[-1])
    parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" '
                 'stroke="#e3e5e8"/>')
    parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(tick)}</text>')
  for fraction, label in x_labels:
    x = LEFT + plot_w * fraction
    anchor = 'start' if fraction <= 0.02 else 'end' if fraction >= 0.98 else 'middle'
    parts.append(f'<line x1="{x:.1f}" y1="{TOP + plot_h}" x2="{x:.1f}" y2="{TOP + plot_h + 4}" '
                 'stroke="#888"/>')
    parts.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 17}" text-anchor="{anchor}">'
                 f'{html.escape(label)}</text>')
  parts.append(f'<text x="14" y="{TOP + plot_h / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {TOP + plot_h / 2:.1f})">{html.escape(y_label)}</text>')
  parts.append(f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" '
               'stroke="#888"/>')
  return parts


def _svg(parts: List[str], legend: Sequence[str], title: str) -> str:
  keys = []
  x = LEFT
  for n, name in enumerate(legend):
    keys.append(f'<rect x="{x}" y="{HEIGHT - 12}" width="10" height="10" '
                f'fill="{_color(name, n)}"/><text x="{x + 14}" y="{HEIGHT - 3}">'
                f'{html.escape(name)}</text>')
    x += 24 + 7 * len(name)
  return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
          f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{html.escape(title)}" '
          'font-family="sans-serif" font-size="11" fill="#333">'
          + ''.join(parts + keys) + '</svg>')


def x_labels(start: float, end: float, label: Callable[[float], str],
             count: int = 5) -> List[Tuple[float, str]]:
  if end <= start:
    return [(0.5, label(start))]
  return [(i / (count - 1), label(start + (end - start) * i / (count - 1)))
          for i in range(count)]


def stacked_bars(starts: Sequence[float], series: Dict[str, Sequence[float]], y_label: str,
                 labels: Sequence[Tuple[float, str]], title: str) -> str:
  """One stacked bar per bin (bins of equal width, in order)."""
  plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
  totals = [sum(values[i] for values in series.values()) for i in range(len(starts))]
  ticks = nice_ticks(max(totals, default=0))
  parts = _frame(ticks, y_label, labels)
  width = plot_w / max(len(starts), 1)
  for i in range(len(starts)):
    base = 0.0
    for n, (name, values) in enumerate(series.items()):
      if values[i] <= 0:
        continue
      h = plot_h * values[i] / ticks[-1]
      y = TOP + plot_h - base - h
      parts.append(f'<rect x="{LEFT + i * width:.2f}" y="{y:.2f}" '
                   f'width="{max(width * 0.9, 0.6):.2f}" height="{h:.2f}" '
                   f'fill="{_color(name, n)}"><title>{html.escape(name)}: '
                   f'{values[i]:g}</title></rect>')
      base += h
  return _svg(parts, list(series), title)


def lines(xs: Sequence[float], series: Dict[str, Sequence[Optional[float]]], y_label: str,
          labels: Sequence[Tuple[float, str]], title: str) -> str:
  """Line per series over xs (gaps where a value is None)."""
  plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
  values = [v for ys in series.values() for v in ys if v is not None]
  ticks = nice_ticks(max(values, default=0))
  parts = _frame(ticks, y_label, labels)
  lo, hi = (min(xs), max(xs)) if xs else (0, 1)
  span = (hi - lo) or 1
  for n, (name, ys) in enumerate(series.items()):
    points, runs = [], []
    for x, y in zip(xs, ys):
      if y is None:
        if points:
          runs.append(points)
        points = []
        continue
      points.append(f'{LEFT + plot_w * (x - lo) / span:.1f},'
                    f'{TOP + plot_h * (1 - y / ticks[-1]):.1f}')
    runs.append(points)
    for run in runs:
      if len(run) == 1:
        cx, cy = run[0].split(',')
        parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{_color(name, n)}"/>')
      elif run:
        parts.append(f'<polyline fill="none" stroke="{_color(name, n)}" stroke-width="2" '
                     f'points="{" ".join(run)}"/>')
  return _svg(parts, list(series), title)


def hbars(items: Sequence[Tuple[str, float]], title: str, color: str = '#d9534f',
          ordered: bool = False) -> str:
  """Horizontal bars with their values, largest first unless `ordered`."""
  if not ordered:
    items = sorted(items, key=lambda item: -item[1])
  row = 22
  height = max(len(items), 1) * row + 8
  top = max((v for _, v in items), default=0) or 1
  parts = []
  for n, (label, value) in enumerate(items):
    y = 4 + n * row
    w = (WIDTH - 260) * value / top
    parts.append(f'<text x="150" y="{y + 14}" text-anchor="end">{html.escape(label)}</text>'
                 f'<rect x="158" y="{y + 3}" width="{max(w, 1):.1f}" height="{row - 8}" '
                 f'fill="{color}"/><text x="{164 + w:.1f}" y="{y + 14}">{value:g}</text>')
  if not items:
    parts.append('<text x="10" y="18">none</text>')
  return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
          f'width="{WIDTH}" height="{height}" role="img" aria-label="{html.escape(title)}" '
          'font-family="sans-serif" font-size="12" fill="#333">' + ''.join(parts) + '</svg>')
