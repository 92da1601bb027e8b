"""Test pipelines on named runners, so every test knows the engine it runs on.

Beam 2.77's DirectRunner would first try to download Prism; batch tests run
on the FnApiRunner (what the job uses locally), event-time tests driven by
TestStream on the BundleBasedDirectRunner (the only local runner for TestStream).
"""
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline


def batch_pipeline() -> TestPipeline:
  return TestPipeline(runner='FnApiRunner')


def streaming_pipeline() -> TestPipeline:
  options = PipelineOptions()
  options.view_as(StandardOptions).streaming = True
  return TestPipeline(runner='BundleBasedDirectRunner', options=options)
