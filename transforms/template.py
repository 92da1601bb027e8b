"""Text from a template: `{repo.name}: {payload.pull_request.title}` over dotted paths."""
import string
from typing import Any, NamedTuple, Optional, Tuple

from transforms.fields import Path, format_path, parse_path, resolve


class TextTemplate(NamedTuple):
  """A compiled --text_template: literal text and field paths, alternating.

  Attributes:
    spelling: the template as given, for messages.
    parts: (literal, path or None) pairs; the last path may be None.
  """
  spelling: str
  parts: Tuple[Tuple[str, Optional[Path]], ...]

  @classmethod
  def parse(cls, template: str) -> 'TextTemplate':
    """Raises ValueError for an empty field, a format spec or a conversion."""
    parts = []
    try:
      pieces = list(string.Formatter().parse(template))
    except ValueError as e:
      raise ValueError(f'--text_template {template!r}: {e}') from None
    for literal, field, spec, conversion in pieces:
      path = None
      if field is not None:
        if spec or conversion:
          raise ValueError(f'--text_template {template!r}: {{{field}}} takes no format '
                           'spec or conversion; write the path alone')
        if not field.strip():
          raise ValueError(f'--text_template {template!r}: an empty {{}} names no field')
        path = parse_path(field)
      parts.append((literal, path))
    if not any(path for _, path in parts):
      raise ValueError(f'--text_template {template!r} names no {{field}}')
    return cls(template, tuple(parts))

  @property
  def paths(self) -> Tuple[Path, ...]:
    return tuple(path for _, path in self.parts if path is not None)

  def render(self, record: Any) -> Optional[str]:
    """The text, or None when it is blank.

    A missing or non-string value renders empty. A text made of the template's
    own literal text alone (every field empty) carries nothing either: None.
    """
    out = []
    filled = False
    for literal, path in self.parts:
      out.append(literal)
      if path is not None:
        value = resolve(record, path)
        if isinstance(value, str):
          out.append(value)
          filled = filled or bool(value.strip())
    text = ''.join(out)
    return text if filled and text.strip() else None

  def describe(self) -> str:
    return ', '.join(format_path(p) for p in self.paths)
