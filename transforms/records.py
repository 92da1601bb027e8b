"""The values that flow between the steps of the job.

NamedTuples keep them cheap to pickle and easy to read in tests.
"""
import json
from typing import Any, Dict, FrozenSet, List, NamedTuple, Optional, Tuple, Union


class RawRecord(NamedTuple):
  """One record exactly as a source read it.

  Attributes:
    raw: the line (JSON Lines) or the row serialized as JSON (Parquet, CSV).
    stream: the ordered stream it came from (a file path, a Redis stream).
    position: its position in that stream (1-based line or row number).
    row: the already decoded row for columnar sources, else None.
    decode_error: why the bytes could not be decoded as UTF-8, if they could not.
    watermark_us: a live source's watermark when it read the record; None
      for archives, whose lateness is judged from the file's own order.
    file_error: set on the one record that stands for the unreadable rest of
      a damaged archive (truncated or corrupt compressed data).
    too_large: why a record is over the source's size limit (raw then holds
      only its start).
  """
  raw: str
  stream: str
  position: Union[int, str]
  row: Optional[dict] = None
  decode_error: Optional[str] = None
  watermark_us: Optional[int] = None
  file_error: Optional[str] = None
  too_large: Optional[str] = None

  @property
  def source(self) -> str:
    return f'{self.stream}:{self.position}'


def decoded_record(data: bytes, stream: str, position: Union[int, str]) -> RawRecord:
  """A RawRecord of bytes read from a source; undecodable bytes are kept as \\xNN and flagged."""
  try:
    return RawRecord(data.decode('utf-8'), stream, position)
  except UnicodeDecodeError as e:
    return RawRecord(data.decode('utf-8', 'backslashreplace'), stream, position,
                     decode_error=f'invalid UTF-8: {e}')


class Event(NamedTuple):
  """A parsed event, ready to be embedded."""
  id: str
  event_time_us: int  # microseconds since the epoch, UTC
  text: str
  source: str
  stream: str
  raw: str  # kept so a later failure can dead-letter the record as read
  watermark_us: Optional[int] = None  # see RawRecord


class DeadLetter(NamedTuple):
  """A record that could not be enriched, and why."""
  raw: str
  reason: str
  error: str
  source: str
  id: Optional[str] = None
  event_time_us: Optional[int] = None


# The tagged output on which steps emit their DeadLetters (not a reason).
DEADLETTER = 'deadletter'

# Reason codes written in the dead letters' `reason` column; REASONS lists them all.
INVALID_UTF8 = 'invalid_utf8'
INVALID_JSON = 'invalid_json'
NOT_AN_OBJECT = 'not_an_object'
EMPTY_RECORD = 'empty_record'
NO_TEXT = 'no_text'
NO_TIME = 'no_time'
BAD_TIME = 'bad_time'
BAD_ID = 'bad_id'
LATE = 'late'
FUTURE_TIME = 'future_time'
DAMAGED_FILE = 'damaged_file'
INFERENCE_ERROR = 'inference_error'
TOO_LARGE = 'too_large'  # over --max_record_bytes, refused before it is decoded
RECORD_ERROR = 'record_error'  # a per-record step raised on it: a bug, kept from crashing the job
REASONS = (INVALID_UTF8, INVALID_JSON, NOT_AN_OBJECT, EMPTY_RECORD, NO_TEXT, NO_TIME, BAD_TIME,
           BAD_ID, LATE, FUTURE_TIME, DAMAGED_FILE, INFERENCE_ERROR, TOO_LARGE, RECORD_ERROR)

# The default of --max_record_bytes: far above any event, far below what costs gigabytes.
DEFAULT_MAX_RECORD_BYTES = 4 * 1024 * 1024
# How much of a refused record its dead letter keeps.
KEPT_OF_REFUSED = 1024

# Everything json.loads raises on bad input: JSONDecodeError, the integer digit
# limit and surrogate errors are ValueErrors; deep nesting is a RecursionError.
DECODE_ERRORS = (ValueError, RecursionError)


def event_error(event: Event, error: Exception) -> DeadLetter:
  """The dead letter of a parsed event on which a per-record step raised (a poison pill
  otherwise: live, its entry would be re-read and raise again after every restart)."""
  return DeadLetter(event.raw, RECORD_ERROR, f'{type(error).__name__}: {error}', event.source,
                    id=event.id, event_time_us=event.event_time_us
                    if isinstance(event.event_time_us, int) else None)


class Undecodable(NamedTuple):
  """Why a record holds no JSON object: a dead-letter reason and a readable error."""
  reason: str
  error: str


def size_over(record: RawRecord, limit: int) -> Optional[int]:
  """The record's size in UTF-8 bytes where it is over `limit`, else None."""
  if len(record.raw) * 4 <= limit:  # at most 4 bytes a character: no need to count
    return None
  size = len(record.raw.encode('utf-8', 'surrogatepass'))
  return size if size > limit else None


def decode_object(record: RawRecord) -> Union[dict, Undecodable]:
  """The record as a JSON object, or why it is none.

  The one decoder of the job: the parse step, the live source's event-time
  peek, the pre-start field check and the producer all call it, so a record
  is judged the same way wherever it is read.
  """
  if record.file_error is not None:
    return Undecodable(DAMAGED_FILE, record.file_error)
  if record.too_large is not None:
    return Undecodable(TOO_LARGE, record.too_large)
  if record.decode_error is not None:
    return Undecodable(INVALID_UTF8, record.decode_error)
  if record.row is not None:
    return record.row
  if not record.raw.strip():
    return Undecodable(EMPTY_RECORD, 'the record is empty')
  try:
    obj = json.loads(record.raw)
  except DECODE_ERRORS as e:
    return Undecodable(INVALID_JSON, f'invalid JSON: {e}')
  if not isinstance(obj, dict):
    return Undecodable(NOT_AN_OBJECT, f'expected a JSON object, got {type(obj).__name__}')
  return obj


class Embedded(NamedTuple):
  """An event with its embedding (float32).

  chunks: (start, end) character offsets of its text's chunks, () when embedded whole
    (models/chunking.py); chunk_vectors: their vectors (chunks x dimensions).
  model: the models.identity.ModelIdentity that made it (None: not known, e.g. a test model).
  """
  event: Event
  embedding: Any  # numpy.ndarray, float32
  chunks: Tuple[Tuple[int, int], ...] = ()
  chunk_vectors: Any = None
  model: Any = None

  @property
  def chunk_count(self) -> int:
    return len(self.chunks) or 1


class WindowRows(NamedTuple):
  """Rows of one window written as one file: its bounds, pane index and rows (Embedded,
  sorted by event time, id). A whole window firing, or on bounded input one stream's
  part of a window (transforms.grouping).

  extras: derived columns, name -> values aligned with rows.
  """
  start_us: int
  end_us: int
  pane: int
  rows: List[Embedded]
  extras: Optional[Dict[str, list]] = None
  context: Tuple[Embedded, ...] = ()  # rows of earlier windows within the look-back, sorted, not written
  deadletters: int = 0  # dead letters with an event time in this window (not late ones)
  # Sources of rows an earlier file of this window already holds (entries read again after a
  # restart): the Parquet writer left them out, and so does the window's summary.
  written_before: FrozenSet[str] = frozenset()


class DeadLetterBatch(NamedTuple):
  """Dead letters of one reason, written as one file."""
  reason: str
  letters: List[DeadLetter]


class DeadLetterMark(NamedTuple):
  """Stands for one dead letter in its event-time window, to be counted there."""
  reason: str


class Lookback(NamedTuple):
  """An earlier window's row, offered to a later window as context (never written there)."""
  row: Embedded
