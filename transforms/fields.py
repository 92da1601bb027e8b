"""Field mapping: dotted paths into nested records, text choice and event ids."""
import hashlib
from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

PathSegment = Union[str, int]
Path = Tuple[PathSegment, ...]


class _Missing:
  """Marks a path that leads nowhere (distinct from a JSON null)."""

  def __repr__(self):
    return 'MISSING'

  def __reduce__(self):
    return (_missing_instance, ())


def _missing_instance():
  return MISSING


MISSING = _Missing()


def parse_path(dotted: str) -> Path:
  """Splits `payload.commits.0.message` into its segments.

  Integer segments are kept as strings too; `resolve` decides per step whether
  the segment indexes a list or names an object key (objects may have a key "0").
  """
  dotted = dotted.strip()
  if not dotted:
    raise ValueError('a field path must not be empty')
  segments = tuple(dotted.split('.'))
  if any(not s for s in segments):
    raise ValueError(f'field path {dotted!r} has an empty segment')
  return segments


def resolve(record: Any, path: Path) -> Any:
  """Returns the value at `path` in `record`, or MISSING."""
  value = record
  for segment in path:
    if isinstance(value, dict):
      if segment not in value:
        return MISSING
      value = value[segment]
    elif isinstance(value, (list, tuple)):
      try:
        index = int(segment)
      except ValueError:
        return MISSING
      if not -len(value) <= index < len(value):
        return MISSING
      value = value[index]
    else:
      return MISSING
  return value


def format_path(path: Path) -> str:
  return '.'.join(str(s) for s in path)


class FieldMapping(NamedTuple):
  """Where an event's id, time and text live in a record.

  Attributes:
    id_path: path to the id, or None to derive ids from the records.
    time_path: path to the event time (its first part when it is joined).
    text_paths: candidate paths to the text; the first non-blank string wins
      (with a template: the template's paths).
    more_time_paths: further parts of a joined time (`--time_field Date+Time`).
    text_template: a transforms.template.TextTemplate that builds the text
      instead of text_paths choosing it.
  """
  id_path: Optional[Path]
  time_path: Path
  text_paths: Tuple[Path, ...]
  more_time_paths: Tuple[Path, ...] = ()
  text_template: Any = None

  @classmethod
  def from_flags(cls, id_field: Optional[str], time_field: str, text_field: Optional[str],
                 text_template: Optional[str] = None) -> 'FieldMapping':
    """Builds a mapping from the command-line spellings.

    text_field: comma-separated paths (None: `text`); time_field: one path or
    several joined with `+`; text_template: exclusive with text_field.
    """
    template = None
    if text_template is not None:
      if text_field is not None:
        raise ValueError('--text_template and --text_field exclude each other; give one')
      from transforms.template import TextTemplate  # it imports this module
      template = TextTemplate.parse(text_template)
      text_paths = template.paths
    else:
      text_paths = tuple(parse_path(p) for p in (text_field or 'text').split(',') if p.strip())
    if not text_paths:
      raise ValueError('--text_field needs at least one path')
    time_paths = tuple(parse_path(p) for p in time_field.split('+'))
    return cls(
        id_path=parse_path(id_field) if id_field else None,
        time_path=time_paths[0],
        text_paths=text_paths,
        more_time_paths=time_paths[1:],
        text_template=template)

  @property
  def time_paths(self) -> Tuple[Path, ...]:
    return (self.time_path,) + tuple(self.more_time_paths)

  def time_of(self, record: Any) -> Any:
    """The raw event time: the value at time_path, or the parts joined by one space.

    MISSING when any part is missing, null or blank.
    """
    if not self.more_time_paths:
      value = resolve(record, self.time_path)
      return MISSING if value is None else value
    parts = []
    for path in self.time_paths:
      value = resolve(record, path)
      if value is MISSING or value is None or isinstance(value, (dict, list)):
        return MISSING
      part = str(value).strip()
      if not part:
        return MISSING
      parts.append(part)
    return ' '.join(parts)

  def text_of(self, record: Any) -> Optional[str]:
    """The text to embed, or None when there is none."""
    if self.text_template is not None:
      return self.text_template.render(record)
    return pick_text(record, self.text_paths)

  def describe_time(self) -> str:
    return '+'.join(format_path(p) for p in self.time_paths)

  def describe_text(self) -> str:
    if self.text_template is not None:
      return f'template {self.text_template.spelling!r}'
    return ', '.join(format_path(p) for p in self.text_paths)

  def paths(self) -> Sequence[Tuple[str, Path]]:
    """(flag name, path) for every configured path, for validation messages."""
    named = [('--time_field', p) for p in self.time_paths]
    if self.id_path is not None:
      named.append(('--id_field', self.id_path))
    flag = '--text_template' if self.text_template is not None else '--text_field'
    named.extend((flag, p) for p in self.text_paths)
    return named


def pick_text(record: Any, text_paths: Sequence[Path]) -> Optional[str]:
  """The first value among `text_paths` that is a string with non-blank content."""
  for path in text_paths:
    value = resolve(record, path)
    if isinstance(value, str) and value.strip():
      return value
  return None


def derive_id(stream: str, position: int, raw: str) -> str:
  """A deterministic id for a record that has none.

  It hashes the record's content together with its position, so replaying an
  archive gives the same ids while identical records at different positions
  stay apart. Only the stream's base name is used, so moving an archive to
  another folder or bucket keeps its ids.
  """
  base = stream.replace('\\', '/').rsplit('/', 1)[-1]
  digest = hashlib.blake2b(digest_size=16)
  # surrogatepass: a file name with undecodable bytes reaches Python as surrogates.
  digest.update(f'{base}\0{position}\0'.encode('utf-8', 'surrogatepass'))
  digest.update(raw.encode('utf-8', 'surrogatepass'))
  return digest.hexdigest()


def assign(record: Any, path: Path, value: Any) -> None:
  """Sets the value at `path`, creating objects on the way; lists must already hold the index."""
  target = record
  for segment in path[:-1]:
    if isinstance(target, list):
      target = target[int(segment)]
    else:
      target = target.setdefault(segment, {})
  if isinstance(target, list):
    target[int(path[-1])] = value
  else:
    target[path[-1]] = value
