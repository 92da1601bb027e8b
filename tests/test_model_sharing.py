"""One model copy for all worker processes: chosen by device at run time, and it runs on CPU."""
import logging

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from models.handler import SentenceTransformerHandler
from models.loading import ModelConfig
from pipelines.config import job_config
from pipelines.options import ConfigError
from tests.fakes import HashingModelHandler, hashed_vector
from tests.runners import batch_pipeline


def _shares(*flags):
  return SentenceTransformerHandler(job_config(PipelineOptions(list(flags))).model
                                    ).share_model_across_processes()


def test_the_flag_reaches_the_handler_and_auto_follows_the_device():
  assert not _shares('--device', 'cpu')  # a copy per process: each has its own cores
  assert _shares('--device', 'cuda')
  assert _shares('--device', 'cuda:1')
  assert _shares('--device', 'cpu', '--share_model', 'always')
  assert not _shares('--device', 'cuda', '--share_model', 'never')
  import torch
  assert _shares('--device', 'auto') == torch.cuda.is_available()  # decided where it runs
  with pytest.raises(ConfigError, match='share_model'):
    job_config(PipelineOptions(['--share_model', 'sometimes']))


def test_a_model_shared_across_processes_runs_on_cpu(caplog):
  # Beam serves the shared model from one process; every call goes through its proxy,
  # the path a GPU takes, here on the CPU with the fake model.
  texts = ['a', 'b', 'a', 'c'] * 3
  handler = HashingModelHandler(ModelConfig(min_batch_size=2, max_batch_size=2,
                                            share_model='always'))
  assert handler.share_model_across_processes()
  caplog.set_level(logging.INFO)  # Beam's multi_process_shared logs on the root logger
  with batch_pipeline() as p:
    results = (p | beam.Create(texts) | RunInference(handler)
               | beam.Map(lambda r: (r.example, r.inference.tolist())))
    assert_that(results, equal_to([(t, hashed_vector(t).tolist()) for t in texts]))
  assert any('proxy server' in record.getMessage() for record in caplog.records)
