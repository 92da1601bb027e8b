"""Kafka on the local runner: the source and sink transforms.

On the local runners the job reads and writes Kafka itself with confluent-kafka
(librdkafka); on Flink, Dataflow and other portable runners it keeps Beam's
KafkaIO (transforms.io.cloud_io), whose offsets commit with the runner's
checkpoints. `JobConfig.local` (runners.choice.runs_locally) makes that choice, once.

The rooms: kafka_reader (the consumer-group reader), kafka_offsets (what may be
committed, and the commit step), kafka_watermark (per partition), kafka_client
(librdkafka's clients, the producer, the start check), kafka_urls (the URI).
"""
import apache_beam as beam

from transforms.io import faults
from transforms.io.cloud_io import ReadKafka, WriteKafka, kafka_records
from transforms.io.kafka_client import producer, say_which, send
from transforms.io.kafka_reader import KafkaReader
from transforms.io.kafka_urls import KafkaAddress
from transforms.io.live_sources import ReadLive
from transforms.io.targets import parse_sink
from transforms.records import WindowRows


class ReadKafkaTopics(beam.PTransform):
  """kafka://BROKERS/TOPICS?group=G as RawRecords: confluent-kafka locally, KafkaIO elsewhere."""

  def __init__(self, uri: str, event_time_us, max_out_of_orderness_s: float,
               poll_interval_s: float = 0.2, job: str = '', local: bool = True):
    """Args: job: the job's token (transforms.job_state); local: JobConfig.local."""
    super().__init__()
    self._uri = uri
    self._job = job
    self._local = local
    self._address = KafkaAddress.parse(uri)
    KafkaReader(self._address)  # checks the address here rather than on a worker
    self._event_time_us = event_time_us
    self._disorder_s = max_out_of_orderness_s
    self._poll_interval_s = poll_interval_s

  def expand(self, pbegin):
    say_which(self._local, self._address.describe(), 'source')
    if not self._local:
      return pbegin | ReadKafka(self._uri, self._disorder_s)
    address, job = self._address, self._job
    return pbegin | ReadLive(lambda: KafkaReader(address, job), self._event_time_us,
                             self._disorder_s, self._poll_interval_s, job=job)


class _ProduceFn(beam.DoFn):

  def __init__(self, address: KafkaAddress, model: str, policy: faults.WritePolicy):
    self._address = address
    self._model = model
    self._policy = policy
    self._producer = None

  def setup(self):
    self._producer = producer(self._address)

  def teardown(self):
    if self._producer is not None:
      self._producer.flush(10)

  def process(self, batch: WindowRows):
    try:
      send(self._producer, self._address, kafka_records(batch, self._model), 'sink',
           self._policy)
    except faults.WriteAbandoned:
      pass  # not passed on: nothing behind it is committed
    else:
      yield batch


class WriteKafkaTopic(beam.PTransform):
  """Produces each enriched row as JSON keyed by event id, flushed before the WindowRows
  are passed on (so the source commits only what the broker has); KafkaIO elsewhere."""

  def __init__(self, uri: str, model: str, policy: faults.WritePolicy = faults.WritePolicy(),
               local: bool = True):
    """Args: policy: the job's WritePolicy; local: JobConfig.local (KafkaIO when False)."""
    super().__init__()
    self._uri = uri
    self._address = KafkaAddress.parse(uri)
    if len(self._address.topics) != 1:
      raise ValueError(f'{self._address.describe()}: a sink writes to one topic')
    self._model = model
    self._policy = policy
    self._local = local

  def expand(self, windows):
    say_which(self._local, self._address.describe(), 'sink')
    if not self._local:
      return windows | WriteKafka(parse_sink(self._uri.split('?')[0], ''), self._model)
    return windows | 'Produce rows' >> beam.ParDo(
        _ProduceFn(self._address, self._model, self._policy))
