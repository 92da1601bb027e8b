"""Replays archives (backfills, reprocessing) through the enrichment job.

Bounded, on the DirectRunner unless a runner is named; any Beam option passes through:

  python -m pipelines.replay --input 'archive/*.json.gz' --output out \\
      --time_field time --text_field comment
  python -m pipelines.replay --input 'gs://bucket/events-*.parquet' --output gs://bucket/out \\
      --runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp \\
      --setup_file ./setup.py
"""
from typing import Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.launcher import JobResult, build_job, main, run_job
from pipelines.config import csv_delimiter, job_config
from pipelines.options import ArchiveOptions
from pipelines.preflight import check_archive, check_start
from transforms.io.sources import ReadArchive


def run(argv=None, test_pipeline: Optional[beam.Pipeline] = None) -> JobResult:
  options = PipelineOptions(argv)
  archive = options.view_as(ArchiveOptions)
  config = job_config(options)
  delimiter = csv_delimiter(options)
  check_archive(archive.input, archive.input_format, config, delimiter)
  if test_pipeline is None:
    check_start(options, config)
  return run_job(build_job(options, config,
                           ReadArchive(archive.input, archive.input_format, delimiter),
                           test_pipeline))


if __name__ == '__main__':
  import sys
  main(run, sys.argv[1:])
