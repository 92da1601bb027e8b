"""The options made into one immutable, validated JobConfig: once, before anything is built."""
import dataclasses
import os
import uuid
from typing import Optional, Tuple

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from models.labels import LabelIndex, read_label_file
from models.loading import ModelConfig
from models.identity import window_of
from pipelines.options import (DEFAULT_CHUNK_TOKENS, DEFAULT_DEDUP_THRESHOLD, ArchiveOptions, ConfigError,
                               DeriveOptions, MappingOptions, ModelOptions, OutputOptions,
                               StreamOptions, WindowOptions)
from runners.choice import is_plain_direct, runs_locally
from transforms.derive import DeriveSpec
from transforms.eventtime import TimeParser
from transforms.fields import FieldMapping
from transforms.grouping import CollectionMode
from transforms.io.faults import WritePolicy
from transforms.io.targets import SinkTarget, VectorStoreTarget, parse_sink, sink_uris
from transforms.io.uris import watermark_slack_s
from transforms.records import DEFAULT_MAX_RECORD_BYTES
from transforms.spill import SPILL_DIR
from transforms.windowing import WindowSpec


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobConfig:
  """Everything the builder needs, validated and immutable; built with keywords only.

  streaming: the input is unbounded (read from the options once, in job_config).
  write: how every write of the job meets a failure (transforms.io.faults.WritePolicy).
  """
  mapping: FieldMapping
  time_parser: TimeParser
  window: WindowSpec
  model: ModelConfig
  output: str
  streaming: bool = False
  derive: DeriveSpec = DeriveSpec()
  sinks: Tuple[SinkTarget, ...] = ()  # parsed --sink entries
  write: WritePolicy = WritePolicy()
  on_other_settings: str = 'refuse'  # an output folder of other settings (pipelines.manifest)
  local: bool = True  # the job runs on a local runner, in this process (runners.choice)
  max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES  # a larger record is a too_large dead letter
  replay_lateness: bool = False  # archives judged late in file order, as live (--replay_lateness)

  @property
  def mode(self) -> CollectionMode:
    """How windows are gathered: every step that depends on it asks this."""
    return CollectionMode.decide(self.streaming, self.window.kind, whole_windows=(
        self.derive.dedup_threshold is not None or self.derive.topic_distance is not None))

  @property
  def spill_dir(self) -> Optional[str]:
    """Where a local batch job spills the rows it groups (transforms/spill.py): DIR/.spill/JOB.
    None where they are grouped as they are: live (windows fire as they close), on a remote
    runner (its shuffle spills) or into a remote output folder."""
    if self.streaming or not self.local or '://' in self.output:
      return None
    return os.path.join(self.output, SPILL_DIR, self.write.job or 'job')

  def _replace(self, **changes) -> 'JobConfig':
    return dataclasses.replace(self, **changes)


def job_config(options: PipelineOptions) -> JobConfig:
  """Reads and validates the shared option groups; raises ConfigError."""
  mapping_opts = options.view_as(MappingOptions)
  window_opts = options.view_as(WindowOptions)
  model_opts = options.view_as(ModelOptions)
  try:
    mapping = FieldMapping.from_flags(mapping_opts.id_field, mapping_opts.time_field,
                                      mapping_opts.text_field, mapping_opts.text_template)
    time_parser = TimeParser(mapping_opts.time_format, mapping_opts.timezone)
    window = WindowSpec(size_s=window_opts.window_size, period_s=window_opts.window_period,
                        session_gap_s=window_opts.session_gap,
                        allowed_lateness_s=window_opts.allowed_lateness,
                        max_out_of_orderness_s=window_opts.max_out_of_orderness,
                        max_future_skew_s=window_opts.max_future_skew)
    window.validate()
    model = ModelConfig(
        model=model_opts.model, device=model_opts.device, precision=model_opts.precision,
        normalize=model_opts.normalize, min_batch_size=model_opts.min_batch_size,
        max_batch_size=model_opts.max_batch_size,
        max_batch_duration_secs=model_opts.max_batch_duration_secs,
        encode_batch_size=model_opts.encode_batch_size,
        encode_batch_tokens=model_opts.encode_batch_tokens, backend=model_opts.backend,
        quantize=model_opts.quantize, torch_threads=model_opts.torch_threads,
        embedding_cache=model_opts.embedding_cache, share_model=model_opts.share_model,
        model_watch=model_opts.model_watch)
    model.validate()
  except ValueError as e:
    raise ConfigError(str(e)) from None
  output_opts = options.view_as(OutputOptions)
  if not output_opts.output:
    raise ConfigError('--output must name a folder')
  if not mapping_opts.max_record_bytes > 0:
    raise ConfigError('--max_record_bytes is a size in bytes, more than 0')
  sinks = parse_sinks(output_opts.sink, output_opts.output)
  # The one place the batch-or-streaming choice is read from the options.
  streaming = bool(options.view_as(StandardOptions).streaming)
  if model_opts.model_watch and not (streaming and os.path.isdir(
      os.path.expanduser(model_opts.model_watch))):
    raise ConfigError('--model_watch needs a live job (pipelines.stream) and an existing folder')
  model = chunked(model, model_opts.chunk_tokens, model_opts.chunk_overlap, sinks)
  if not output_opts.write_retry_timeout > 0:
    raise ConfigError('--write_retry_timeout is seconds, more than 0')
  if output_opts.overwrite and output_opts.append:
    raise ConfigError('choose --overwrite (replace the output) or --append (add to it), not both')
  on_other_settings = ('overwrite' if output_opts.overwrite else
                       'append' if output_opts.append else 'refuse')
  derive = derive_spec(options.view_as(DeriveOptions), model, window)
  local = runs_locally(options)
  write = WritePolicy(retry_s=output_opts.write_retry_timeout,
                      stop_job=local, job=uuid.uuid4().hex,
                      fsync=not output_opts.no_fsync)
  return JobConfig(mapping=mapping, time_parser=time_parser, window=window, model=model,
                   output=output_opts.output, derive=derive,
                   streaming=streaming, sinks=sinks, write=write,
                   on_other_settings=on_other_settings, local=local,
                   max_record_bytes=mapping_opts.max_record_bytes,
                   replay_lateness=bool(options.view_as(ArchiveOptions).replay_lateness))


def chunked(model: ModelConfig, chunk_tokens, overlap: int, sinks) -> ModelConfig:
  """The model config with its chunk settings: --chunk_tokens, or by default chunks where a
  vector store is written (retrieval finds late passages; Parquet rows keep one vector)."""
  window = window_of(model)
  if chunk_tokens is None:
    chunk_tokens = min(DEFAULT_CHUNK_TOKENS, window or DEFAULT_CHUNK_TOKENS) if any(
        isinstance(target, VectorStoreTarget) for target in sinks) else 0
  if window and chunk_tokens > window:
    raise ConfigError(f'--chunk_tokens {chunk_tokens} is more than the model\'s window of '
                      f'{window} word pieces')
  model = model._replace(chunk_tokens=chunk_tokens, chunk_overlap=overlap if chunk_tokens else 0)
  try:
    model.validate()
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return model


def csv_delimiter(options: PipelineOptions) -> str:
  """The validated --csv_delimiter (`\\t` spelled out means a tab)."""
  delimiter = options.view_as(ArchiveOptions).csv_delimiter
  delimiter = '\t' if delimiter in ('\\t', 'tab') else delimiter
  if len(delimiter) != 1 or delimiter in '"\r\n':
    raise ConfigError(f'--csv_delimiter must be one character other than a quote or newline, '
                      f'not {delimiter!r}')
  return delimiter


def parse_sinks(flag: str, output: str) -> Tuple[SinkTarget, ...]:
  """--sink's comma-separated URIs, each parsed once into its typed value."""
  uris = sink_uris(flag)
  if len(set(uris)) < len(uris):
    raise ConfigError('--sink names the same sink twice')
  try:
    return tuple(parse_sink(uri, output) for uri in uris)
  except ValueError as e:
    raise ConfigError(str(e)) from None


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
  spec = DeriveSpec(label_index=index, label_threshold=derive.label_threshold,
                    label_top_k=derive.label_top_k, dedup_threshold=threshold,
                    dedup_horizon_s=derive.dedup_horizon,
                    topic_distance=derive.topic_distance if derive.topics else None,
                    topic_horizon_s=derive.topic_horizon)
  if spec.lookback_s and window.kind != 'fixed':
    raise ConfigError('--dedup_horizon and --topic_horizon need fixed windows')
  return spec


def stream_config(options: PipelineOptions) -> JobConfig:
  """job_config for a live job: windows held open for the source's own timestamps, and
  settings that the local streaming runner cannot honour refused."""
  config = job_config(options)
  source = options.view_as(StreamOptions).source
  slack_s = watermark_slack_s(source, config.window.max_out_of_orderness_s)
  if config.model.max_batch_duration_secs and is_plain_direct(options):
    # Measured: with Beam's stateful batching, a drained local run wrote 415 of
    # 488 events. Batches already follow the source's polls here.
    raise ConfigError('--max_batch_duration_secs loses buffered events on the local streaming '
                      'runner; leave it out locally (batches follow the source polls)')
  return config._replace(window=config.window._replace(source_slack_s=slack_s))
