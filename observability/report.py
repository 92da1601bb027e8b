"""The run report: DIR/report.html, one self-contained page (inline SVG, no script, no network).

Built after every replay and at the end of a live run from what the run left:
the Parquet output (events and dead letters over event time, by reason), the
final Beam metrics (counts, latency, cache), the metrics sampled each second
while it ran (throughput, latency over the run) or, where the runner gives no
metrics until the end, the inference calls timed in this process.
"""
import datetime
import html
import logging
import math
import os
import shlex
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from observability import charts
from observability.monitoring import quantile
from transforms.io.files import write_text
from transforms.io.uri_query import redacted

REPORT_NAME = 'report.html'
_MAX_BINS = 120


class RunFacts(NamedTuple):
  """What the launcher knows about a finished run."""
  kind: str  # 'replay', 'live', 'demo'
  command: Sequence[str]
  started_at: float  # epoch seconds
  ended_at: float
  records_read: int
  enriched_rows: int
  deadletters: int
  check: str  # the summary's accounting sentence
  balanced: bool
  config: object  # pipelines.options.JobConfig
  final: object  # observability.monitoring.Snapshot or None
  samples: Sequence = ()  # Snapshots taken while it ran
  calls: Sequence[Tuple[float, int, float]] = ()  # (end, texts, seconds) per inference call
  model: str = ''  # the model's identity, NAME@FINGERPRINT


def _read_times(folder: str, columns: List[str]) -> Optional[Dict[str, np.ndarray]]:
  import pyarrow as pa
  import pyarrow.dataset as ds
  if not os.path.isdir(folder) or not any(os.scandir(folder)):
    return None
  dataset = ds.dataset(folder, format='parquet', partitioning='hive')
  if not set(columns) <= set(dataset.schema.names):
    return None  # folders but no file yet (e.g. a run stopped by a full disk)
  table = dataset.to_table(columns=columns)
  out = {}
  for name in columns:
    column = table.column(name)
    if pa.types.is_timestamp(column.type):
      out[name] = column.cast(pa.timestamp('us', 'UTC')).cast(pa.int64()).to_numpy(
          zero_copy_only=False).astype(float)  # nulls -> nan
      out[name] = np.where(column.is_null().to_numpy(zero_copy_only=False), np.nan, out[name])
    else:
      out[name] = np.array(column.to_pylist(), dtype=object)
  return out


def event_time_chart(output: str, window) -> Tuple[str, str]:
  """(SVG, note): enriched events and dead letters per window of event time."""
  enriched = _read_times(os.path.join(output, 'enriched'), ['id', 'event_time'])
  dead = _read_times(os.path.join(output, 'deadletter'), ['reason', 'event_time'])
  times_e = np.array([])
  if enriched is not None:
    # Sliding windows write an event once per window: count each event once.
    _, first = np.unique(enriched['id'].astype(str), return_index=True)
    times_e = enriched['event_time'][np.sort(first)] / 1e6
  times_d = dead['event_time'][~np.isnan(dead['event_time'])] / 1e6 if dead else np.array([])
  untimed = int(np.isnan(dead['event_time']).sum()) if dead else 0
  # The enriched events set the range: a few very late or wrong-clock dead letters would
  # otherwise squeeze every window into a sliver.
  both = times_e if times_e.size else times_d
  if not both.size:
    return '', 'No event with an event time was written.'
  bin_s = window.size_s if window.kind != 'sliding' else window.period_s
  lo, hi = math.floor(both.min() / bin_s) * bin_s, both.max()
  per_bin = max(1, math.ceil((hi - lo + 1e-6) / bin_s / _MAX_BINS))
  bin_s *= per_bin
  edges = lo + bin_s * np.arange(int((hi - lo) // bin_s) + 2)
  counts_e = np.histogram(times_e, edges)[0]
  counts_d = np.histogram(times_d, edges)[0]
  outside = int(times_d.size - counts_d.sum())
  span = edges[-1] - edges[0]
  svg = charts.stacked_bars(
      edges[:-1].tolist(), {'enriched': counts_e.tolist(), 'dead letters': counts_d.tolist()},
      'events', charts.x_labels(edges[0], edges[-1],
                                lambda s: charts.utc_label(s, span)), 'events per window')
  note = (f'{len(edges) - 1} bars of {_duration(bin_s)} of event time, UTC'
          + (f' ({per_bin} windows each)' if per_bin > 1 else ' (one per window)'))
  if untimed:
    note += f'; {_letters(untimed)} without an event time, not shown here'
  if outside:
    note += f"; {_letters(outside)} outside the enriched events' time range, not shown"
  return svg, note


def _letters(count: int) -> str:
  return f'{count} dead letter' + ('' if count == 1 else 's')


def _duration(seconds: float) -> str:
  if seconds >= 3600:
    return f'{seconds / 3600:g} h'
  return f'{seconds / 60:g} min' if seconds >= 60 and seconds % 60 == 0 else f'{seconds:g} s'


def _delta(now, before, name):
  buckets_now, _ = now.histogram(name)
  buckets_before, _ = before.histogram(name)
  return [(b, n - m) for (b, n), (_, m) in zip(buckets_now, buckets_before)]


def timeline_charts(facts: RunFacts) -> List[Tuple[str, str, str]]:
  """[(title, SVG, note)] for throughput and latency over the run."""
  samples = list(facts.samples)
  out = []
  if len(samples) >= 3:
    xs, read, written, p50, p95 = [], [], [], [], []
    for i in range(1, len(samples)):
      before = samples[max(0, i - 5)]  # a trailing 5-sample window smooths window-sized bursts
      dt = samples[i].taken_at - before.taken_at or 1e-9
      xs.append(samples[i].taken_at - facts.started_at)
      read.append((samples[i].counters.get('records_read', 0)
                   - before.counters.get('records_read', 0)) / dt)
      written.append((samples[i].counters.get('enriched_rows', 0)
                      - before.counters.get('enriched_rows', 0)) / dt)
      delta = _delta(samples[i], before, 'event_latency_seconds')
      p50.append(quantile(delta, 0.5))
      p95.append(quantile(delta, 0.95))
    labels = charts.x_labels(0, xs[-1], lambda s: f'{s:.0f} s')
    out.append(('Throughput over the run', charts.lines(
        xs, {'read': read, 'written': written}, 'events/s', labels, 'throughput'),
                'records read and rows written per second, over the trailing 5 s'))
    if any(v is not None for v in p50):
      out.append(('Latency over the run', charts.lines(
          xs, {'p50': p50, 'p95': p95}, 'seconds', labels, 'latency'),
                  'event time to written, rows written in the trailing 5 s (from the '
                  'latency histogram; gaps: nothing written)'))
  calls = sorted(facts.calls)
  if len(out) < 2 and calls:
    # No samples while it ran (the batch runner): the inference calls timed here. Texts
    # count as embedded over their call: (start, done before), (end, done after).
    xs, done, total = [0.0], [0], 0
    for end, texts, seconds in calls:
      xs += [end - seconds - facts.started_at, end - facts.started_at]
      done += [total, total + texts]
      total += texts
    xs.append(facts.ended_at - facts.started_at)
    done.append(total)
    labels = charts.x_labels(0, xs[-1], lambda s: f'{s:.0f} s')
    if not out:
      out.append(('Throughput over the run', charts.lines(
          xs, {'texts embedded': done}, 'texts', labels, 'throughput'),
                  f'texts embedded since the start (each call counted over its duration): '
                  f'{total / max(xs[-1], 1e-9):.1f} texts/s over the run, '
                  f'{total / max(sum(c[2] for c in calls), 1e-9):.1f} while inferring'))
    inferring = sum(c[2] for c in calls)
    first_start = calls[0][0] - calls[0][2] - facts.started_at
    after = facts.ended_at - calls[-1][0]
    phases = [('before the first call', max(0.0, first_start)), ('inference', inferring),
              ('between calls', max(0.0, xs[-1] - first_start - inferring - after)),
              ('after the last call', max(0.0, after))]
    if len(calls) >= 3:
      out.append(('Inference latency over the run', charts.lines(
          [c[0] - facts.started_at for c in calls], {'seconds per call': [c[2] for c in calls]},
          'seconds', labels, 'inference latency'),
                  f'each of {len(calls)} RunInference calls, at its end (an archive\'s event '
                  'times are not now, so event latency means nothing in a replay)'))
    out.append(('Where the time went', charts.hbars(
        [(name, round(s, 1)) for name, s in phases], 'time', color='#3b7dd8', ordered=True),
                'seconds of the run: start-up, reading and model loading come before the first '
                f'RunInference call ({len(calls)} in all), grouping windows and writing files '
                'after the last'))
  return out
  return out


_CSS = '''body{font-family:sans-serif;margin:24px auto;max-width:1340px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:15px;margin:0 0 6px}.sub{color:#666;margin-bottom:14px}
.ok{background:#e6f4ea;color:#1e6b34}.bad{background:#fdecea;color:#a12622}
.status{display:inline-block;padding:4px 10px;border-radius:4px;font-weight:bold;margin:6px 0 14px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:16px}
.card{border:1px solid #dde;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:22px}.card span{color:#666;font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(660px,1fr));gap:16px}
.panel{border:1px solid #dde;border-radius:6px;padding:10px}.note{color:#666;font-size:12px}
table{border-collapse:collapse;font-size:13px;margin-top:16px}td{padding:3px 12px 3px 0;
vertical-align:top}td:first-child{color:#666}code{background:#f4f5f7;padding:2px 4px;
word-break:break-all}'''


def render(facts: RunFacts) -> str:
  """The report page for one run."""
  config = facts.config
  seconds = max(facts.ended_at - facts.started_at, 1e-9)
  final = facts.final
  def e(text) -> str:  # every shown text redacted before it is escaped: no password in the page
    return html.escape(redacted(str(text)))

  cards = [(f'{facts.records_read:,}', 'records read'),
           (f'{facts.enriched_rows:,}', 'enriched rows'),
           (f'{facts.deadletters:,}', 'dead letters'
            + (f' ({100 * facts.deadletters / facts.records_read:.1f}%)'
               if facts.records_read else '')),
           (f'{seconds:.1f} s', 'run time'),
           (f'{facts.records_read / seconds:.1f}', 'events/s end to end')]
  if final is not None:
    buckets, _ = final.histogram('event_latency_seconds')
    if buckets[-1][1]:
      cards.append((f'{quantile(buckets, 0.5):.3g} / {quantile(buckets, 0.95):.3g} s',
                    'latency p50 / p95 (from histogram buckets)'))
    ratio = final.cache_hit_ratio()
    cards.append((f'{100 * ratio:.1f}%' if ratio is not None else 'n/a',
                  'embedding cache hit rate'))
    cards.append((f'{final.counters.get("truncated", 0):,}', 'texts over the model window'
                  + (' (chunked)' if config.model.chunk_tokens else ' (cut)')))
  panels = []
  svg, note = event_time_chart(config.output, config.window)
  panels.append(('Events and dead letters per window (event time)', svg, note))
  reasons = final.deadletters_by_reason() if final is not None else {}
  panels.append(('Dead letters by reason', charts.hbars(
      [(k, v) for k, v in reasons.items() if v], 'dead letters by reason'),
                 'from the job metrics' if reasons or final is not None else
                 'no metrics from this runner'))
  panels.extend(timeline_charts(facts))
  model = config.model
  window = config.window
  if window.kind == 'sessions':
    window_text = f'sessions, gap {window.session_gap_s:g} s'
  elif window.kind == 'sliding':
    window_text = f'sliding, {window.size_s:g} s every {window.period_s:g} s'
  else:
    window_text = f'fixed, {window.size_s:g} s'
  window_text += f', out-of-orderness {window.max_out_of_orderness_s:g} s'
  if window.allowed_lateness_s:
    window_text += f', allowed lateness {window.allowed_lateness_s:g} s'
  details = [('model', model.model), ('model identity', facts.model or 'n/a'),
             ('chunks', f'{model.chunk_tokens} word pieces, overlap {model.chunk_overlap}'
              if model.chunk_tokens else 'off (texts cut at the window)'),
             ('precision', model.precision),
             ('backend', f'{model.backend}' + (f', {model.quantize}'
                                                 if model.quantize != 'none' else '')),
             ('device', model.device), ('windows', window_text),
             ('started', _utc(facts.started_at)), ('ended', _utc(facts.ended_at)),
             ('output', os.path.abspath(config.output))]
  body = [f'<h1>Run report: {e(facts.kind)}</h1>',
          f'<div class="sub">{e(_utc(facts.started_at))}, {seconds:.1f} s, '
          f'{e(model.model)} ({e(model.precision)})</div>',
          f'<div class="status {"ok" if facts.balanced else "bad"}">{e(facts.check)}</div>',
          '<div class="cards">' + ''.join(f'<div class="card"><b>{e(v)}</b><span>{e(k)}</span>'
                                          '</div>' for v, k in cards) + '</div>',
          '<div class="grid">']
  for title, svg, note in panels:
    body.append(f'<div class="panel"><h2>{e(title)}</h2>{svg or ""}'
                f'<div class="note">{e(note)}</div></div>')
  body.append('</div><table>')
  body.extend(f'<tr><td>{e(k)}</td><td>{e(v)}</td></tr>' for k, v in details)
  command = f'{facts.command[0]} {shlex.join(facts.command[1:])}'
  body.append(f'<tr><td>command</td><td><code>{e(command)}</code></td></tr></table>')
  return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
          f'<title>Run report: {e(facts.kind)} {e(_utc(facts.started_at))}</title>'
          f'<style>{_CSS}</style></head><body>' + '\n'.join(body) + '</body></html>\n')


def _utc(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
      '%Y-%m-%d %H:%M:%S UTC')


def invocation(streaming: bool) -> Tuple[str, List[str]]:
  """(kind, command line) of this process, the entry points spelled as `python -m`."""
  entry = os.path.splitext(os.path.basename(sys.argv[0]))[0]
  if entry in ('replay', 'stream', 'demo'):
    return entry, [f'python -m pipelines.{entry}'] + sys.argv[1:]
  return 'live' if streaming else 'replay', list(sys.argv)


def write_report(facts: RunFacts) -> Optional[str]:
  """Writes DIR/report.html and returns its path; None (logged) where the output is not local."""
  output = facts.config.output
  if '://' in output:
    logging.info('No run report: %s is not a local folder', output)
    return None
  path = os.path.join(output, REPORT_NAME)
  write_text(path, render(facts), facts.config.write.fsync)
  return path
