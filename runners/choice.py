"""Which runner a job runs on, decided here and nowhere else.

Beam 2.77's DirectRunner first tries Prism, which it would download from GitHub
on each run; offline that only costs time and noise. Batch jobs go straight to
the FnApiRunner, the engine the DirectRunner falls back to; streaming jobs to
the BundleBasedDirectRunner with runners.local_streaming. Which names are local
runners is in runners.names, which the start checks read before Beam loads.
"""
import os

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from models.loading import ModelConfig, threads_per_worker
from runners.names import is_local, runner_name


def named_runner(options: PipelineOptions) -> str:
  """The runner the options name, lower case (DirectRunner when none is)."""
  return runner_name(options.view_as(StandardOptions).runner)


def runs_locally(options: PipelineOptions) -> bool:
  """Whether the job's workers run in this process (Beam's local runners)."""
  return is_local(options.view_as(StandardOptions).runner)


def is_plain_direct(options: PipelineOptions) -> bool:
  """Whether the options leave the runner to this module (none, or plain DirectRunner)."""
  return named_runner(options) in ('directrunner', 'direct')


def choose_local_runner(options: PipelineOptions, streaming: bool) -> str:
  """Sets the runner when none (or plain DirectRunner) is named, and returns its name.

  Args:
    streaming: the job's input is unbounded (JobConfig.streaming).
  """
  standard = options.view_as(StandardOptions)
  if is_plain_direct(options):
    if streaming:
      # The only local runner that streams offline, with the project's fixes.
      from runners import local_streaming
      local_streaming.install()
      standard.runner = 'BundleBasedDirectRunner'
    else:
      standard.runner = 'FnApiRunner'
  return standard.runner


def share_cores(options: PipelineOptions, model: ModelConfig) -> ModelConfig:
  """Divides this machine's cores among the local runner's workers (torch threads).

  Each of the FnApiRunner's --direct_num_workers (0: one per CPU, as Beam
  reads it) runs inference at once; with torch's default of one thread per
  core each, they would oversubscribe the cores. The local streaming runner
  has one worker whatever the flag says, so it keeps torch's default.
  """
  if model.torch_threads or named_runner(options) != 'fnapirunner':
    return model
  cpus = len(os.sched_getaffinity(0))
  workers = options.view_as(DirectOptions).direct_num_workers
  workers = cpus if workers == 0 else workers or 1
  if workers <= 1:
    return model
  return model._replace(torch_threads=threads_per_worker(cpus, workers))
