"""Prometheus metrics from the job's Beam metrics: the export, and a live job scraped while it runs."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import redis
from apache_beam.options.pipeline_options import PipelineOptions
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from observability.monitoring import RunMonitor, Snapshot, families, monitor_for, quantile
from pipelines.options import ConfigError
from tests.conftest import ROOT
from tests.redis_server import free_port, redis_server


def exposition(snap: Snapshot) -> dict:
  """{sample name + labels: value} of the text format the endpoint serves for `snap`."""

  class Fixed:
    def collect(self):
      return families(snap)

  registry = CollectorRegistry(auto_describe=False)
  registry.register(Fixed())
  text = generate_latest(registry).decode()
  return {(s.name, tuple(sorted(s.labels.items()))): s.value
          for family in text_string_to_metric_families(text) for s in family.samples}


def test_export_names_and_histograms():
  snap = Snapshot(1000.0, {
      'records_read': 10, 'enriched_rows': 7, 'deadletters': 3,
      'deadletters_no_text': 2, 'deadletters_late': 1,
      'batch_size_bucket_0': 1, 'batch_size_bucket_3': 2, 'batch_size_sum': 17,
      'event_latency_seconds_bucket_2': 7, 'event_latency_seconds_sum': 5600,
      'events_embedded': 7}, {'source_watermark_ms': 990_500, 'source_pending': 4})
  got = exposition(snap)
  assert got[('enrichment_records_read_total', ())] == 10
  assert got[('enrichment_rows_written_total', ())] == 7
  assert got[('enrichment_deadletters_total', (('reason', 'no_text'),))] == 2
  assert got[('enrichment_deadletters_total', (('reason', 'late'),))] == 1
  assert got[('enrichment_deadletters_total', (('reason', 'bad_time'),))] == 0  # known, at 0
  assert got[('enrichment_events_embedded_total', ())] == 7  # other counters, generically
  # Cumulative buckets from per-bucket counters; the sum in its unit.
  assert got[('enrichment_batch_size_bucket', (('le', '1.0'),))] == 1
  assert got[('enrichment_batch_size_bucket', (('le', '4.0'),))] == 1
  assert got[('enrichment_batch_size_bucket', (('le', '8.0'),))] == 3
  assert got[('enrichment_batch_size_bucket', (('le', '+Inf'),))] == 3
  assert got[('enrichment_batch_size_count', ())] == 3
  assert got[('enrichment_batch_size_sum', ())] == 17
  assert got[('enrichment_event_latency_seconds_count', ())] == 7
  assert got[('enrichment_event_latency_seconds_sum', ())] == pytest.approx(5.6)
  assert got[('enrichment_inference_seconds_count', ())] == 0  # present before any call
  assert got[('enrichment_watermark_lag_seconds', ())] == pytest.approx(9.5)
  assert got[('enrichment_source_pending', ())] == 4
  assert not any(name.startswith('enrichment_embedding_cache') for name, _ in got)
  assert not any('deadletters_no_text' in name or '_bucket_' in name for name, _ in got)


def test_cache_counters_are_exported_with_a_hit_ratio_when_present():
  got = exposition(Snapshot(0.0, {'embedding_cache_hits': 30, 'embedding_cache_misses': 10}, {}))
  assert got[('enrichment_embedding_cache_hits_total', ())] == 30
  assert got[('enrichment_embedding_cache_misses_total', ())] == 10
  assert got[('enrichment_embedding_cache_hit_ratio', ())] == 0.75


def test_quantile_interpolates_within_buckets():
  buckets = [(1, 0), (2, 50), (4, 100), (float('inf'), 100)]
  assert quantile(buckets, 0.5) == 2
  assert quantile(buckets, 0.75) == 3
  assert quantile([(1, 0), (float('inf'), 0)], 0.5) is None
  assert quantile([(1, 0), (float('inf'), 5)], 0.5) == 1  # beyond the last bound


def test_busy_port_and_batch_runner_are_one_line_errors():
  first = RunMonitor(0)
  try:
    port = int(first.url.rsplit(':', 1)[1].split('/')[0])
    with pytest.raises(ConfigError, match=f'--metrics_port {port}: cannot listen'):
      RunMonitor(port)
  finally:
    first.stop()
  with pytest.raises(ConfigError, match='serves live jobs'):
    monitor_for(PipelineOptions(['--metrics_port', '9', '--runner', 'FnApiRunner']))
  with pytest.raises(ConfigError, match='not a port'):
    monitor_for(PipelineOptions(['--metrics_port', '70000']))


def scrape(url):
  with urllib.request.urlopen(url, timeout=5) as reply:
    text = reply.read().decode()
  values = {}
  for family in text_string_to_metric_families(text):
    for s in family.samples:
      key = s.name + ''.join(f'{{{k}={v}}}' for k, v in sorted(s.labels.items()))
      values[key] = s.value
  return values


def dead_total(values):
  return sum(v for k, v in values.items() if k.startswith('enrichment_deadletters_total'))


def wait_for(predicate, timeout, what):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    found = predicate()
    if found:
      return found
    time.sleep(0.5)
  raise AssertionError(f'timed out after {timeout} s waiting for {what}')


def push(client, count, start, bad=0):
  now = time.time()
  for n in range(start, start + count):
    client.xadd('events', {'event': json.dumps({'id': f'e{n}', 'time': now,
                                                'text': f'event number {n} about topic {n % 7}'})})
  for n in range(bad):
    client.xadd('events', {'event': json.dumps({'id': f'b{start}-{n}', 'time': now})})


@contextlib.contextmanager
def prometheus_scraping(target_port, folder):
  """A real Prometheus server scraping the job each second, where one is installed
  (Debian package prometheus); yields a PromQL query function, or None without one."""
  binary = shutil.which('prometheus')
  if binary is None:
    yield None
    return
  port = free_port()
  config = folder / 'prometheus.yml'
  config.write_text('global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: enrichment\n'
                    f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n")
  server = subprocess.Popen([binary, f'--config.file={config}',
                             f'--storage.tsdb.path={folder / "tsdb"}',
                             f'--web.listen-address=127.0.0.1:{port}'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

  def query(expr):
    url = f'http://127.0.0.1:{port}/api/v1/query?' + urllib.parse.urlencode({'query': expr})
    with urllib.request.urlopen(url, timeout=10) as reply:
      answer = json.load(reply)
    assert answer['status'] == 'success', (expr, answer)
    return answer['data']['result']
  try:
    yield query
  finally:
    server.terminate()
    server.wait(30)


def check_dashboard_queries(query):
  """Every query of the dashboard evaluates; all but the cache's (no cache here) find series."""
  dashboard = json.loads((ROOT / 'monitoring' / 'grafana-dashboard.json').read_text())
  for panel in dashboard['panels']:
    for target in panel['targets']:
      if 'cache' in target['expr']:
        query(target['expr'])
      else:  # rates need two scrapes of a series
        wait_for(lambda: query(target['expr']), 20, f'{panel["title"]}: {target["expr"]}')


@pytest.mark.e2e
def test_live_job_is_scraped_while_it_runs_and_balances(tmp_path):
  port = free_port()
  url = f'http://127.0.0.1:{port}/metrics'
  out, log_path = tmp_path / 'out', tmp_path / 'job.log'
  with redis_server() as server, open(log_path, 'w') as log, \
      prometheus_scraping(port, tmp_path) as prometheus:
    client = redis.Redis.from_url(server)
    job = subprocess.Popen(
        [sys.executable, '-m', 'pipelines.stream', '--source',
         f'{server}?stream=events&group=enrich', '--output', str(out), '--window_size', '2',
         '--max_out_of_orderness', '1', '--metrics_port', str(port)],
        cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE='1'), stdout=log, stderr=subprocess.STDOUT)
    try:
      def up():
        assert job.poll() is None, log_path.read_text()[-3000:]
        try:
          return scrape(url)
        except OSError:
          return None
      before = wait_for(up, 60, 'the metrics endpoint')
      assert before['enrichment_records_read_total'] == 0
      push(client, 60, 0, bad=2)
      first = wait_for(lambda: (lambda v: v if v['enrichment_rows_written_total'] >= 60
                                else None)(up()), 180, 'the first rows written')
      assert first['enrichment_records_read_total'] >= 62
      push(client, 90, 60, bad=3)

      def balanced():
        values = up()
        done = values['enrichment_rows_written_total'] + dead_total(values)
        return values if values['enrichment_records_read_total'] == 155 == done else None
      last = wait_for(balanced, 120, 'read = written + dead letters')
      assert last['enrichment_rows_written_total'] == 150
      assert last['enrichment_deadletters_total{reason=no_text}'] == 5
      assert last['enrichment_event_latency_seconds_count'] == 150
      assert 0 < last['enrichment_event_latency_seconds_sum'] / 150 < 600
      assert last['enrichment_batch_size_sum'] == 150  # every embedded text, once
      assert last['enrichment_inference_seconds_count'] == last['enrichment_batch_size_count']
      assert 0 < last['enrichment_watermark_lag_seconds'] < 600
      # Every entry is acknowledged once written; the source's gauge follows within seconds.
      wait_for(lambda: up().get('enrichment_source_pending') == 0, 60, 'nothing pending')
      assert client.xpending('events', 'enrich')['pending'] == 0
      if prometheus is not None:
        check_dashboard_queries(prometheus)
      assert 'process_resident_memory_bytes' in last
      job.send_signal(signal.SIGTERM)
      assert job.wait(120) == 0, log_path.read_text()[-3000:]
    finally:
      if job.poll() is None:
        job.kill()
  text = log_path.read_text()
  assert 'Read 155 records: 150 enriched rows, 5 dead letters' in text
  assert f'Report: {out}/report.html' in text
  page = (out / 'report.html').read_text()
  assert 'Throughput over the run' in page and 'Latency over the run' in page


def exported_names() -> set:
  """Every sample name the endpoint can serve: the job's families, cache and gauges included,
  and the process collector's."""
  from prometheus_client import ProcessCollector
  every = Snapshot(0.0, {'records_read': 1, 'enriched_rows': 1, 'deadletters_no_text': 1,
                         'embedding_cache_hits': 1, 'embedding_cache_misses': 1},
                   {'source_watermark_ms': 1, 'source_pending': 1, 'source_lag': 1})
  names = {name for name, _ in exposition(every)}
  registry = CollectorRegistry()
  ProcessCollector(registry=registry)
  names |= {s.name for family in registry.collect() for s in family.samples}
  return names


def test_dashboard_is_valid_and_plots_only_exported_metrics():
  import re
  dashboard = json.loads((ROOT / 'monitoring' / 'grafana-dashboard.json').read_text())
  assert dashboard['title'] and dashboard['uid'] and dashboard['schemaVersion'] >= 36
  assert dashboard['__inputs'][0]['pluginId'] == 'prometheus'
  panels = dashboard['panels']
  assert len({p['id'] for p in panels}) == len(panels)
  exported = exported_names()
  plotted = set()
  for panel in panels:
    assert panel['title'] and panel['targets'] and set(panel['gridPos']) == {'x', 'y', 'w', 'h'}
    assert panel['gridPos']['x'] + panel['gridPos']['w'] <= 24
    for target in panel['targets']:
      assert target['datasource']['uid'] == '${DS_PROMETHEUS}'
      names = set(re.findall(r'\b(?:enrichment|process)_[a-z_]+\b', target['expr']))
      assert names, target['expr']
      plotted |= names
  missing = plotted - exported
  assert not missing, f'the dashboard plots metrics the job does not export: {missing}'
  for name in ('enrichment_records_read_total', 'enrichment_rows_written_total',
               'enrichment_deadletters_total', 'enrichment_event_latency_seconds_bucket',
               'enrichment_watermark_lag_seconds', 'enrichment_batch_size_bucket',
               'enrichment_inference_seconds_bucket', 'enrichment_embedding_cache_hit_ratio',
               'enrichment_source_pending'):
    assert name in plotted, name
