"""What other runners need: runner flags, pickling, stable labels, the portable path, the worker package."""
import os
import subprocess
import sys
import zipfile

import apache_beam as beam
import pyarrow.dataset as ds
import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import (FlinkRunnerOptions, GoogleCloudOptions,
                                                  PipelineOptions, PortableOptions,
                                                  StandardOptions)
from apache_beam.testing.test_pipeline import TestPipeline

from models.handler import SentenceTransformerHandler
from models.loading import ModelConfig
from pipelines import deploy
from pipelines.builder import build
from pipelines.options import ModelOptions
from tests.conftest import ROOT
from tests.fakes import HashingModelHandler
from tests.test_pipeline import RECORDS, config
from transforms.derive import DeriveSpec
from transforms.io.targets import parse_sink


def test_flink_flags_assemble_as_documented():
  full = deploy.command(['flink', 'stream', '--flink_master', 'jm:8081', '--parallelism', '4',
                         '--source', 'redis://r:6379/0?stream=s&group=g'])
  assert full[1:3] == ['-m', 'pipelines.stream']
  options = PipelineOptions(full[3:])
  assert options.view_as(StandardOptions).runner == 'FlinkRunner'
  flink = options.view_as(FlinkRunnerOptions)
  assert (flink.flink_master, flink.parallelism, flink.flink_version) == ('jm:8081', 4, '1.19')
  assert options.view_as(PortableOptions).environment_type == 'DOCKER'
  assert '--checkpointing_interval' in full and '60000' in full
  assert full[-2:] == ['--source', 'redis://r:6379/0?stream=s&group=g']


def test_dataflow_flags_assemble_as_documented():
  base = ['dataflow', 'stream', '--project', 'p', '--region', 'europe-west1',
          '--temp_location', 'gs://b/tmp']
  options = PipelineOptions(deploy.command(base)[3:])
  cloud = options.view_as(GoogleCloudOptions)
  assert (cloud.project, cloud.region, cloud.temp_location) == ('p', 'europe-west1', 'gs://b/tmp')
  assert options.view_as(StandardOptions).runner == 'DataflowRunner'
  full = deploy.command(base + ['--gpu', 'nvidia-l4', '--sdk_container_image', 'img:1'])
  assert 'worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver' in full
  assert 'no_use_multiple_sdk_containers' in full and full[full.index('--device') + 1] == 'cuda'
  assert '--enable_streaming_engine' in full
  # The checkout's setup.py by its absolute path, so the command works from any folder.
  assert full[full.index('--setup_file') + 1] == str(ROOT / 'setup.py')
  # CPU workers run one SDK process per vCPU, so one torch thread each; GPU workers keep torch's.
  cpu = PipelineOptions(deploy.command(base)[3:]).view_as(ModelOptions)
  assert cpu.torch_threads == 1 and '--torch_threads' not in full
  asked = PipelineOptions(deploy.command(base + ['--torch_threads', '4'])[3:])
  assert asked.view_as(ModelOptions).torch_threads == 4  # the user's flag comes last, and wins
  with pytest.raises(ValueError, match='sdk_container_image'):
    deploy.command(base + ['--gpu', 'nvidia-l4'])
  with pytest.raises(ValueError, match='--project'):
    deploy.command(['dataflow', 'replay'])


def test_handler_and_steps_pickle_and_translate_with_unique_labels(tmp_path):
  handler = SentenceTransformerHandler(ModelConfig())
  assert pickler.loads(pickler.dumps(handler)).config == handler.config
  job = config(tmp_path)._replace(derive=DeriveSpec(dedup_threshold=0.9, topic_distance=0.5),
                                  sinks=(parse_sink('vectors', str(tmp_path)),))
  pipeline = beam.Pipeline(runner='FnApiRunner')
  build(pipeline | 'Read records' >> beam.Create(RECORDS), job, handler)
  proto = pipeline.to_runner_api()  # pickles every DoFn into the portable proto
  labels = [t.unique_name for t in proto.components.transforms.values()]
  assert len(labels) == len(set(labels))
  assert {'Parse events', 'Embed events', 'Window events', 'Write enriched',
          'Write dead letters', 'Write vectors', 'Summarize windows'} <= {
              label.split('/')[0] for label in labels}


def test_a_cloud_streaming_job_translates_with_unique_labels(tmp_path):
  # Pub/Sub in, Parquet, BigQuery and Pub/Sub out, as a Dataflow job would be built.
  from transforms.io.uris import live_source
  options = PipelineOptions(['--streaming'])
  pipeline = beam.Pipeline(runner='FnApiRunner', options=options)
  job = config(str(tmp_path), streaming=True)._replace(sinks=tuple(
      parse_sink(uri, str(tmp_path)) for uri in ('bq://my-project.analytics.enriched',
                                                 'pubsub://projects/my-project/topics/enriched')))
  read = live_source('pubsub://projects/my-project/subscriptions/events?id_attribute=id',
                     None, 5, 0.2)
  build(pipeline | 'Read records' >> read, job, SentenceTransformerHandler(ModelConfig()))
  labels = [t.unique_name for t in pipeline.to_runner_api().components.transforms.values()]
  assert len(labels) == len(set(labels))
  steps = {label.split('/')[0] for label in labels}
  assert {'Read records', 'Write bq: my-project.analytics.enriched',
          'Write pubsub: projects my-project topics enriched'} <= steps


def test_sink_labels_stay_when_the_sinks_are_reordered(tmp_path):
  sinks = ('vectors', 'redis://:secret@127.0.0.1:6379/0?stream=enriched',
           'pubsub://projects/my-project/topics/enriched')

  def labels(order):
    pipeline = beam.Pipeline(runner='FnApiRunner', options=PipelineOptions(['--streaming']))
    build(pipeline | 'Read records' >> beam.Create(RECORDS),
          config(str(tmp_path), streaming=True)._replace(
              sinks=tuple(parse_sink(uri, str(tmp_path)) for uri in order)),
          SentenceTransformerHandler(ModelConfig()))
    return {t.unique_name for t in pipeline.to_runner_api().components.transforms.values()}

  first, reordered = labels(sinks), labels(tuple(reversed(sinks)))
  assert first == reordered
  assert {'Write vectors', 'Write redis: :***@127.0.0.1:6379 0?stream=enriched'} <= {
      label.split('/')[0] for label in first}
  assert not any('secret' in label for label in first)


def _rows(folder):
  table = ds.dataset(folder / 'enriched', format='parquet', partitioning='hive').to_table()
  return sorted((r['id'], r['window_start'], tuple(r['embedding'])) for r in table.to_pylist())


def test_portable_runner_gives_the_same_rows_as_the_direct_runner(tmp_path):
  portable = PipelineOptions(['--runner', 'PortableRunner', '--job_endpoint', 'embed',
                              '--environment_type', 'LOOPBACK'])
  for folder, pipeline in ((tmp_path / 'direct', TestPipeline(runner='FnApiRunner')),
                           (tmp_path / 'portable', TestPipeline(options=portable))):
    with pipeline as p:
      build(p | beam.Create(RECORDS), config(folder), HashingModelHandler())
  assert _rows(tmp_path / 'direct') == _rows(tmp_path / 'portable')
  assert len(_rows(tmp_path / 'direct')) == 4


@pytest.mark.slow
def test_worker_package_holds_the_job_and_imports_outside_the_checkout(tmp_path):
  built = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                          '-w', str(tmp_path / 'wheel'), str(ROOT)],
                         capture_output=True, text=True, timeout=300)
  assert built.returncode == 0, built.stderr[-2000:]
  (wheel,) = (tmp_path / 'wheel').glob('*.whl')
  names = zipfile.ZipFile(wheel).namelist()
  for package in ('pipelines/stream.py', 'pipelines/replay.py', 'transforms/parse.py',
                  'models/handler.py', 'runners/local_streaming.py'):
    assert package in names
  assert not any(name.startswith('tests/') for name in names)
  target = tmp_path / 'site'
  installed = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--target',
                              str(target), str(wheel)], capture_output=True, text=True, timeout=300)
  assert installed.returncode == 0, installed.stderr[-2000:]
  imported = subprocess.run(
      [sys.executable, '-c', 'import pipelines.stream, pipelines.replay, pipelines.search, '
       'models.handler, transforms.io.live_sources; print(pipelines.stream.__file__)'],
      cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(target)), capture_output=True,
      text=True, timeout=120)
  assert imported.returncode == 0, imported.stderr[-2000:]
  assert imported.stdout.strip().startswith(str(target))
