"""Embedding: prepare the text, RunInference, and split results from failures."""
import apache_beam as beam
from runners.beam_inference import ModelHandler, RunInference
from apache_beam.metrics import Metrics
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from models.chunking import Chunked
from models.handler import InferenceFailure
from models.identity import ModelIdentity
from models.updates import ModelWatch, WindowPins
from observability.instruments import MeasuredKeyedHandler
from transforms import records as r
from transforms.records import DEADLETTER

class _SplitResultsFn(beam.DoFn):
  """Pairs events with their vectors and dead-letters failures."""

  def __init__(self, stamp: bool = True):
    self._stamp = stamp
    self._embedded = Metrics.counter('enrichment', 'events_embedded')

  def process(self, keyed_result, win=beam.DoFn.WindowParam):
    event, result = keyed_result
    try:
      split = list(self._split(event, result, win))
    except Exception as e:  # pylint: disable=broad-except
      split = [beam.pvalue.TaggedOutput(DEADLETTER, r.event_error(event, e))]
    yield from split

  def _split(self, event, result, win):
    if isinstance(result.inference, InferenceFailure):
      yield beam.pvalue.TaggedOutput(DEADLETTER, r.DeadLetter(
          event.raw, r.INFERENCE_ERROR, result.inference.error, event.source,
          id=event.id, event_time_us=event.event_time_us))
    else:
      self._embedded.inc()
      found, model = result.inference, ModelIdentity.parse(result.model_id)
      row = (r.Embedded(event, found.vector, found.chunks, found.chunk_vectors, model)
             if isinstance(found, Chunked) else r.Embedded(event, found, model=model))
      if self._stamp:
        # Batching loses element timestamps; each row gets its event time back, in
        # the window it came in. (A TimestampedValue would be assigned all its
        # windows again: each sliding window would get a copy of every window's row.)
        yield WindowedValue(row, Timestamp(micros=event.event_time_us), [win])
      else:
        yield row


class _PinModelFn(beam.DoFn):
  """Keys each event by itself with (text, the model pinned to its window): models/updates.py."""

  def __init__(self, watch: str, default: str):
    self._watch = watch
    self._default = default
    self._pins = None

  def setup(self):
    self._pins = WindowPins(ModelWatch(self._watch), self._default)

  def process(self, event, win=beam.DoFn.WindowParam):
    yield event, (event.text, self._pins.model_for(win))


class EmbedEvents(beam.PTransform):
  """Embeds each Event's text with RunInference; returns (embedded, dead letters).

  Outputs carry their event time as timestamp. On bounded input apply it
  before windowing, so that batches span windows; on unbounded input after,
  so that each batch is emitted inside its window, ahead of the watermark.

  Args:
    model_handler: a ModelHandler from texts to PredictionResults whose
      inference is a vector or an InferenceFailure.
    stamp: give each output its event time as timestamp (not needed where
      windows are computed from the event time itself, transforms.grouping).
    job: the job's token (transforms.job_state), where inference calls are kept.
    watch: a folder of model updates (models/updates.py): each window is embedded by the
      newest model there when its first event came (windowed input only); '' none.
    default: the model used until the folder holds one.
  """

  def __init__(self, model_handler: ModelHandler, stamp: bool = True, job: str = '',
               watch: str = '', default: str = ''):
    super().__init__()
    self._model_handler = model_handler
    self._stamp = stamp
    self._job = job
    self._watch = watch
    self._default = default

  def expand(self, events):
    key = ('Pin model' >> beam.ParDo(_PinModelFn(self._watch, self._default)) if self._watch
           else 'Key by event' >> beam.Map(lambda event: (event, event.text)))
    outputs = (
        events
        | key
        | 'Embed text' >> RunInference(MeasuredKeyedHandler(self._model_handler, self._job))
        | 'Split failures' >> beam.ParDo(_SplitResultsFn(self._stamp)).with_outputs(
            DEADLETTER, main='embedded'))
    return outputs.embedded, outputs[DEADLETTER]
