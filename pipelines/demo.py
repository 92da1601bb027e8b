"""The main job out of the box: the embedded synthetic stream, windows, the packaged model.

  python -m pipelines.demo [--num_events 2000] [--rate 20] [--output output] [any job option]

A bounded run of the synthetic source (event-time disorder, a few late and a few
malformed events) through the same builder as replay; Parquet under ./output.
"""
from typing import Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.launcher import JobResult, build_job, main, run_job
from pipelines.config import job_config
from pipelines.preflight import check_start
from transforms.io.synthetic import GenerateSyntheticEvents

# The synthetic events carry an id and 20 events per second of event time;
# 10 s windows show several windows in a short run, and batches of 256 show
# progress every few seconds. Later flags override these.
_DEMO_DEFAULTS = ('--id_field', 'id', '--time_field', 'time', '--text_field', 'text',
                  '--window_size', '10', '--output', 'output',
                  '--min_batch_size', '256', '--max_batch_size', '256',
                  # The demo shows what a live job decides: late events are dead letters.
                  '--replay_lateness')


class SyntheticOptions(PipelineOptions):
  """The embedded event source."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--num_events', type=int, default=2000,
                        help='How many synthetic events to produce.')
    parser.add_argument('--rate', type=float, default=20.0,
                        help='Events per second of event time.')
    parser.add_argument('--seed', type=int, default=7, help='Seed of the generator.')


def run(argv=None, test_pipeline: Optional[beam.Pipeline] = None) -> JobResult:
  options = PipelineOptions([*_DEMO_DEFAULTS, *(argv or [])])
  synthetic = options.view_as(SyntheticOptions)
  config = job_config(options)
  if test_pipeline is None:
    check_start(options, config)
  read = GenerateSyntheticEvents(synthetic.num_events, synthetic.rate, synthetic.seed)
  return run_job(build_job(options, config, read, test_pipeline))


if __name__ == '__main__':
  import sys
  main(run, sys.argv[1:])
