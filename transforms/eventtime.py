"""Event time parsing: ISO-8601, epoch seconds or milliseconds, or a strptime format."""
import datetime
import math
import re
import time
from typing import Any, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_NUMERIC = re.compile(r'^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$')
# Epoch values at or above this magnitude are read as milliseconds: as seconds
# they would lie beyond the year 5000, as milliseconds they are after 1973.
_MILLIS_THRESHOLD = 1e11
_OUT_OF_RANGE = 2**64  # any value the range check below refuses
# Years 1 to 9999 in UTC, what datetime (and so every message and file) can show.
_MIN_US, _MAX_US = -62_135_596_800_000_000, 253_402_300_799_999_999


class TimeParser:
  """Turns an event's time field into microseconds since the epoch (UTC).

  Args:
    time_format: a strptime format for string times; None accepts ISO-8601
      and epoch numbers.
    timezone: the IANA zone given to times that carry no offset.
  """

  def __init__(self, time_format: Optional[str] = None, timezone: str = 'UTC'):
    self.time_format = time_format
    self.timezone = timezone
    try:
      self._zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as e:
      raise ValueError(f'unknown time zone {timezone!r}') from e

  def __reduce__(self):
    return (TimeParser, (self.time_format, self.timezone))

  def parse(self, value: Any) -> int:
    """Returns epoch microseconds; raises ValueError with a readable message."""
    if isinstance(value, bool) or value is None:
      raise ValueError(f'time value {value!r} is not a time')
    if isinstance(value, (int, float)):
      return self._from_epoch(value)
    if isinstance(value, datetime.datetime):
      return self._from_datetime(value)
    if isinstance(value, str):
      text = value.strip()
      if not text:
        raise ValueError('time value is empty')
      if self.time_format is None and _NUMERIC.match(text):
        return self._from_epoch(float(text) if not text.lstrip('+-').isdigit()
                                else int(text))
      return self._from_datetime(self._parse_string(text))
    raise ValueError(f'time value of type {type(value).__name__} is not a time')

  def _parse_string(self, text: str) -> datetime.datetime:
    if self.time_format is not None:
      try:
        return datetime.datetime.strptime(text, self.time_format)
      except ValueError as e:
        raise ValueError(f'time {text!r} does not match {self.time_format!r}: {e}') from None
    try:
      return datetime.datetime.fromisoformat(text)
    except ValueError:
      raise ValueError(f'time {text!r} is not ISO-8601 nor an epoch number') from None

  def _from_datetime(self, moment: datetime.datetime) -> int:
    if moment.tzinfo is None:
      moment = moment.replace(tzinfo=self._zone)
    try:
      delta = moment - _EPOCH
    except OverflowError:  # a zone's offset pushes it past year 1 or 9999
      raise ValueError(f'time {moment.isoformat()} is outside years 1-9999') from None
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if not _MIN_US <= micros <= _MAX_US:  # e.g. 9999-12-31T23:00 in New York
      raise ValueError(f'time {moment.isoformat()} is outside years 1-9999 in UTC')
    return micros

  @staticmethod
  def _from_epoch(number) -> int:
    if isinstance(number, float) and not math.isfinite(number):
      raise ValueError(f'time value {number!r} is not finite')
    in_millis = abs(number) >= _MILLIS_THRESHOLD
    if isinstance(number, int):
      micros = number * (1000 if in_millis else 1_000_000)
    elif abs(number) < 1e20:  # beyond, the product may overflow to inf
      micros = round(number * (1000 if in_millis else 1_000_000))
    else:
      micros = _OUT_OF_RANGE
    if not _MIN_US <= micros <= _MAX_US:
      raise ValueError(f'time value {number!r} is outside years 1-9999')
    return micros


def format_micros(micros: int) -> str:
  """ISO-8601 UTC text for epoch microseconds, for messages and logs."""
  moment = _EPOCH + datetime.timedelta(microseconds=micros)
  return moment.isoformat().replace('+00:00', 'Z')


def is_future(event_time_us: int, max_future_skew_s: float, now_us: Optional[int] = None) -> bool:
  """Whether an event time lies more than `max_future_skew_s` ahead of the
  processing clock (0: never). Live and replay judge by the same clock."""
  if not max_future_skew_s:
    return False
  now_us = time.time_ns() // 1000 if now_us is None else now_us
  return event_time_us - now_us > max_future_skew_s * 1_000_000
