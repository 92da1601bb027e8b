"""Submitting a job to Flink or Dataflow: the runner flags, assembled and documented.

  python -m pipelines.deploy flink JOB [--flink_master HOST:PORT] [--parallelism N]
      [--checkpointing_interval MS] [--environment_type LOOPBACK|DOCKER|PROCESS] [JOB ARGS]
  python -m pipelines.deploy dataflow JOB --project P --region R --temp_location gs://...
      [--gpu TYPE[:COUNT]] [--sdk_container_image IMAGE] [JOB ARGS]

JOB is stream or replay. Everything not listed above passes through to the
job. `--print` shows the assembled command line instead of running it.
"""
import argparse
import os
import shlex
import sys
import types
from typing import List

from transforms.io.uri_query import redacted

# The package workers install: the checkout's own, wherever the command is run from.
_SETUP_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'setup.py')

JOBS = types.MappingProxyType({'stream': 'pipelines.stream', 'replay': 'pipelines.replay'})


def flink_args(args: argparse.Namespace) -> List[str]:
  """FlinkRunner flags: cluster, Flink version, SDK environment, parallelism, checkpoints.

  Checkpointing makes the Kafka offsets and the Redis acknowledgements follow
  Flink's checkpoints; its interval is in milliseconds.
  """
  flags = ['--runner', 'FlinkRunner', '--flink_master', args.flink_master,
           '--flink_version', args.flink_version, '--environment_type', args.environment_type,
           '--parallelism', str(args.parallelism)]
  if args.checkpointing_interval:
    flags += ['--checkpointing_interval', str(args.checkpointing_interval)]
  if args.environment_config:
    flags += ['--environment_config', args.environment_config]
  return flags


def dataflow_args(args: argparse.Namespace) -> List[str]:
  """DataflowRunner flags: project, region, staging, the worker package, Streaming Engine, GPUs.

  With a GPU, workers run one SDK process holding one model copy per GPU
  (`no_use_multiple_sdk_containers`), not one per vCPU; the image must carry
  a CUDA build of torch (see the Dockerfile).
  """
  missing = [name for name in ('project', 'region', 'temp_location') if not getattr(args, name)]
  if missing:
    raise ValueError('dataflow needs ' + ', '.join(f'--{name}' for name in missing))
  flags = ['--runner', 'DataflowRunner', '--project', args.project, '--region', args.region,
           '--temp_location', args.temp_location, '--setup_file', args.setup_file,
           '--experiments', 'use_runner_v2']
  if args.job == 'stream':
    flags += ['--enable_streaming_engine']
  if args.sdk_container_image:
    flags += ['--sdk_container_image', args.sdk_container_image]
  if not args.gpu:
    # Dataflow runs one SDK process per vCPU: one torch thread each fills the cores.
    flags += ['--torch_threads', '1']
  else:
    kind, _, count = args.gpu.partition(':')
    flags += ['--dataflow_service_options',
              f'worker_accelerator=type:{kind};count:{count or 1};install-nvidia-driver',
              '--experiments', 'no_use_multiple_sdk_containers', '--device', 'cuda']
    if not args.sdk_container_image:
      raise ValueError('--gpu needs --sdk_container_image: an image with a CUDA build of torch')
  return flags


def parser() -> argparse.ArgumentParser:
  root = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  runners = root.add_subparsers(dest='runner', required=True)
  flink = runners.add_parser('flink', help='Submit to a Flink cluster.')
  flink.add_argument('--flink_master', default='localhost:8081')
  flink.add_argument('--flink_version', default='1.19')
  flink.add_argument('--environment_type', default='DOCKER',
                     choices=['DOCKER', 'PROCESS', 'LOOPBACK', 'EXTERNAL'])
  flink.add_argument('--environment_config', default=None,
                     help='Docker image, or process command, of the SDK workers.')
  flink.add_argument('--parallelism', type=int, default=1)
  flink.add_argument('--checkpointing_interval', type=int, default=60_000,
                     help='Milliseconds between checkpoints; 0 turns them off.')
  dataflow = runners.add_parser('dataflow', help='Submit to Google Cloud Dataflow.')
  dataflow.add_argument('--project')
  dataflow.add_argument('--region')
  dataflow.add_argument('--temp_location')
  dataflow.add_argument('--setup_file', default=_SETUP_FILE)
  dataflow.add_argument('--sdk_container_image', default=None)
  dataflow.add_argument('--gpu', default=None, help='e.g. nvidia-l4 or nvidia-l4:2')
  for sub in (flink, dataflow):
    sub.add_argument('job', choices=sorted(JOBS))
    sub.add_argument('--print', action='store_true', help='Print the command, do not run it.')
  return root


def command(argv: List[str]) -> List[str]:
  """The full command line: python -m pipelines.JOB, runner flags, then the job's own."""
  args, job_args = parser().parse_known_args(argv)
  runner_flags = flink_args(args) if args.runner == 'flink' else dataflow_args(args)
  return [sys.executable, '-m', JOBS[args.job], *runner_flags, *job_args]


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  try:
    full = command(argv)
  except ValueError as e:
    print(f'error: {redacted(str(e))}', file=sys.stderr)
    sys.exit(2)
  if '--print' in argv:
    print(redacted(shlex.join(full)))  # a shown command keeps no password
    return
  os.execv(full[0], full)


if __name__ == '__main__':
  main()
