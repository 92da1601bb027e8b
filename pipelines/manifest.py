"""DIR/manifest.json: the settings that shaped an output folder.

Runs with other settings (another model, window, field mapping, derived columns
or sinks) would otherwise mix their rows, windows and vectors into the same
folder silently. A run whose settings differ from the manifest's is refused in
one line, unless it is told to replace the folder's output (--overwrite) or to
add to it knowingly (--append); runs with the same settings go on (a replay
replaces its own files, a live job resumes).
"""
import json
import logging
from typing import Dict, List

from apache_beam.io.filesystems import FileSystems

from pipelines.config import JobConfig
from pipelines.options import ConfigError
from transforms.fields import format_path
from transforms.io.uri_query import redacted

MANIFEST = 'manifest.json'
# What a run writes under its --output; --overwrite removes these.
OUTPUT_PARTS = ('enriched', 'deadletter', 'windows', 'vectors', 'report.html')
REFUSE, OVERWRITE, APPEND = 'refuse', 'overwrite', 'append'


def settings_of(config: JobConfig) -> Dict[str, dict]:
  """The settings that shape what a run writes, as plain JSON values."""
  model, window, derive, mapping = config.model, config.window, config.derive, config.mapping
  label_index = derive.label_index
  return {
      'model': {'name': model.model, 'precision': model.precision, 'backend': model.backend,
                'quantize': model.quantize, 'normalize': model.normalize},
      'window': {'kind': window.kind, 'size_s': window.size_s, 'period_s': window.period_s,
                 'session_gap_s': window.session_gap_s,
                 'allowed_lateness_s': window.allowed_lateness_s,
                 'max_out_of_orderness_s': window.max_out_of_orderness_s,
                 'replay_lateness': config.replay_lateness},
      'fields': {'id': format_path(mapping.id_path) if mapping.id_path else None,
                 'time': [format_path(p) for p in mapping.time_paths],
                 'text': [format_path(p) for p in mapping.text_paths],
                 'template': getattr(mapping.text_template, 'spelling', None)},
      'derived': {'columns': list(derive.extra_columns),
                  'labels': list(label_index.names) if label_index is not None else None,
                  'label_threshold': derive.label_threshold if label_index is not None else None,
                  'dedup_threshold': derive.dedup_threshold,
                  'dedup_horizon_s': derive.dedup_horizon_s,
                  'topic_distance': derive.topic_distance,
                  'topic_horizon_s': derive.topic_horizon_s},
      'sinks': sorted(redacted(target.spelled) for target in config.sinks),
  }


def _path(output: str, name: str) -> str:
  return f'{output.rstrip("/")}/{name}'


def _read(output: str) -> List[dict]:
  path = _path(output, MANIFEST)
  if not FileSystems.exists(path):
    return []
  try:
    with FileSystems.open(path) as stream:
      return list(json.loads(stream.read().decode('utf-8'))['settings'])
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f'--output {output}: {MANIFEST} is damaged ({e}); remove it, or use '
                      '--overwrite') from None


def _write(output: str, settings: List[dict]) -> None:
  path, temporary = _path(output, MANIFEST), _path(output, f'.{MANIFEST}.tmp')
  with FileSystems.create(temporary) as stream:
    stream.write(json.dumps({'version': 1, 'settings': settings}, indent=1).encode('utf-8'))
  FileSystems.rename([temporary], [path])


def _differences(before: dict, now: dict) -> List[str]:
  return [name for name in now if before.get(name) != now[name]]


def prepare_output(config: JobConfig, on_other_settings: str = REFUSE) -> None:
  """Checks the folder's manifest against this run's settings, then records them.

  Args:
    on_other_settings: REFUSE (ConfigError), OVERWRITE (the folder's output is
      removed first) or APPEND (both settings are recorded).
  Raises:
    ConfigError: the folder holds the output of other settings and REFUSE.
  """
  output, now = config.output, settings_of(config)
  recorded = _read(output)
  if not recorded or now in recorded:
    if not recorded:
      _write(output, [now])
    return
  if on_other_settings == OVERWRITE:
    doomed = [_path(output, part) for part in OUTPUT_PARTS
              if FileSystems.exists(_path(output, part))]
    if doomed:
      FileSystems.delete(doomed)
    logging.info('--overwrite: removed the earlier output in %s', output)
    _write(output, [now])
    return
  if on_other_settings == APPEND:
    _write(output, recorded + [now])
    return
  changed = _differences(recorded[-1], now)
  verb = 'differs' if len(changed) == 1 else 'differ'
  raise ConfigError(f'--output {output} holds the output of other settings '
                    f'({", ".join(changed)} {verb}, see {_path(output, MANIFEST)}): use another '
                    '--output, --overwrite to replace it, or --append to add to it')
