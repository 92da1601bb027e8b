"""Parsing: raw records to events, with every failure sent to dead letters."""
from typing import Union

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import records as r
from transforms.eventtime import TimeParser
from transforms.fields import MISSING, FieldMapping, format_path, derive_id, resolve



def parse_record(record: r.RawRecord, mapping: FieldMapping, time_parser: TimeParser,
                 max_record_bytes: int = r.DEFAULT_MAX_RECORD_BYTES
                 ) -> Union[r.Event, r.DeadLetter]:
  """Turns one raw record into an Event, or a DeadLetter saying why not."""

  def dead(reason, error, **kwargs):
    return r.DeadLetter(record.raw, reason, error, record.source, **kwargs)

  size = r.size_over(record, max_record_bytes)
  if size is not None:
    # Refused before it is decoded; its dead letter keeps only its beginning.
    return r.DeadLetter(record.raw[:r.KEPT_OF_REFUSED], r.TOO_LARGE,
                        f'{size:,} bytes, over --max_record_bytes {max_record_bytes:,} '
                        f'(the first {r.KEPT_OF_REFUSED:,} characters kept)', record.source)
  obj = r.decode_object(record)
  if isinstance(obj, r.Undecodable):
    return dead(obj.reason, obj.error)

  event_id = None
  if mapping.id_path is not None:
    value = resolve(obj, mapping.id_path)
    if isinstance(value, str) and value:
      if not _encodable(value):
        return dead(r.BAD_ID, f'{format_path(mapping.id_path)} holds a lone surrogate '
                    '(not encodable as UTF-8)')
      event_id = value
    elif isinstance(value, int) and not isinstance(value, bool):
      event_id = str(value)
    elif value is not MISSING and value is not None:
      return dead(r.BAD_ID, f'{format_path(mapping.id_path)} is a '
                  f'{type(value).__name__}, not a string or integer')
  if event_id is None:
    event_id = derive_id(record.stream, record.position, record.raw)

  time_value = mapping.time_of(obj)
  if time_value is MISSING:
    return dead(r.NO_TIME, f'no value at {mapping.describe_time()}', id=event_id)
  try:
    event_time_us = time_parser.parse(time_value)
  except ValueError as e:
    return dead(r.BAD_TIME, str(e), id=event_id)

  text = mapping.text_of(obj)
  if text is None:
    return dead(r.NO_TEXT, f'no non-blank string at {mapping.describe_text()}',
                id=event_id, event_time_us=event_time_us)
  if not _encodable(text):
    # JSON may escape a lone surrogate (\ud800); no UTF-8 file or model can hold it.
    return dead(r.INVALID_UTF8, 'the text holds a lone surrogate (not encodable as UTF-8)',
                id=event_id, event_time_us=event_time_us)
  return r.Event(event_id, event_time_us, text, record.source, record.stream, record.raw,
                 record.watermark_us)


def _encodable(text: str) -> bool:
  try:
    text.encode('utf-8')
    return True
  except UnicodeEncodeError:
    return False


def record_error(record: r.RawRecord, error: Exception) -> r.DeadLetter:
  """The dead letter of a record on which a per-record step raised (a poison pill otherwise:
  live, the entry would be re-read and raise again after every restart)."""
  return r.DeadLetter(record.raw[:r.KEPT_OF_REFUSED * 64], r.RECORD_ERROR,
                      f'{type(error).__name__}: {error}', record.source)


class _ParseFn(beam.DoFn):

  def __init__(self, mapping: FieldMapping, time_parser: TimeParser, max_record_bytes: int):
    self._mapping = mapping
    self._time_parser = time_parser
    self._max_record_bytes = max_record_bytes
    self._read = Metrics.counter('enrichment', 'records_read')

  def process(self, record: r.RawRecord):
    self._read.inc()
    try:
      parsed = parse_record(record, self._mapping, self._time_parser, self._max_record_bytes)
    except Exception as e:  # pylint: disable=broad-except
      parsed = record_error(record, e)
    if isinstance(parsed, r.Event):
      yield parsed
    else:
      yield beam.pvalue.TaggedOutput(r.DEADLETTER, parsed)


class ParseEvents(beam.PTransform):
  """Parses raw records into Events; returns (events, dead letters).

  Args:
    max_record_bytes: a record over this many bytes is a `too_large` dead letter.
  """

  def __init__(self, mapping: FieldMapping, time_parser: TimeParser,
               max_record_bytes: int = r.DEFAULT_MAX_RECORD_BYTES):
    super().__init__()
    self._mapping = mapping
    self._time_parser = time_parser
    self._max_record_bytes = max_record_bytes

  def expand(self, raw_records):
    outputs = raw_records | 'Parse' >> beam.ParDo(
        _ParseFn(self._mapping, self._time_parser, self._max_record_bytes)).with_outputs(r.DEADLETTER, main='events')
    return outputs.events, outputs[r.DEADLETTER]
