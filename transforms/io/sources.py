"""Archive sources: JSON Lines, Parquet and CSV files matched by a glob.

Each file is read in order by one DoFn call, so its records keep their
positions (line or row numbers) and the steps fused behind it see them in
stream order. Compression (.gz, .bz2, ...) follows the file extension.
"""
import csv
import json
import logging
import lzma
import sys
import types
import zlib
from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressedFile, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.records import RawRecord, decoded_record

FORMATS = ('jsonl', 'parquet', 'csv')
_EXTENSIONS = types.MappingProxyType({
    'jsonl': 'jsonl', 'json': 'jsonl', 'ndjson': 'jsonl',
    'parquet': 'parquet', 'pq': 'parquet',
    'csv': 'csv',
})
# Compressed bytes per read (Beam's default, 16 MiB, would lose up to that much before damage).
_READ_SIZE = 256 * 1024
_COMPRESSIONS = frozenset({'gz', 'gzip', 'bz2', 'zst', 'zstd', 'deflate', 'lzma', 'xz'})


def format_of(path: str, declared: Optional[str] = None) -> str:
  """The archive format: the declared one, else the one the extension names."""
  if declared:
    if declared not in FORMATS:
      raise ValueError(f'unknown --input_format {declared!r}; use one of {", ".join(FORMATS)}')
    return declared
  parts = path.rsplit('/', 1)[-1].lower().split('.')
  while len(parts) > 1 and parts[-1] in _COMPRESSIONS:
    parts.pop()
  extension = parts[-1] if len(parts) > 1 else ''
  if extension not in _EXTENSIONS:
    raise ValueError(f'cannot tell the format of {path} from its extension; '
                     f'pass --input_format ({", ".join(FORMATS)})')
  return _EXTENSIONS[extension]


def _row_as_json(row: dict) -> str:
  return json.dumps(row, ensure_ascii=False, default=str, sort_keys=False)


def read_jsonl(stream, path: str) -> Iterator[RawRecord]:
  # Beam's decompressing files are not iterable; readline works on every stream.
  for number, line in enumerate(iter(stream.readline, b''), start=1):
    yield decoded_record(line.rstrip(b'\r\n'), path, number)


def _csv_lines(stream) -> Iterator[str]:
  """Lines with their endings kept, as csv wants them (a quoted field may span lines,
  CRLF or LF); a leading byte-order mark (spreadsheet exports) is dropped."""
  first = True
  for line in iter(stream.readline, b''):
    yield line.decode('utf-8-sig' if first else 'utf-8')
    first = False


def read_csv(stream, path: str, delimiter: str = ',') -> Iterator[RawRecord]:
  """Rows of a CSV file with a header row, every value a string (ids keep leading zeros)."""
  # Fields of any size: csv's default limit (131,072 characters) would stop the whole file at
  # one long field; a record too large for the job is a too_large dead letter in the parse step.
  csv.field_size_limit(sys.maxsize)
  reader = csv.DictReader(_csv_lines(stream), delimiter=delimiter)
  number = 0
  try:
    for number, row in enumerate(reader, start=1):
      yield RawRecord(_row_as_json(row), path, number, row=row)
  except UnicodeDecodeError as e:
    # csv cannot resynchronise inside a broken row; the rest of the file is one dead letter.
    yield RawRecord(f'<undecodable bytes after row {number}>', path, number + 1,
                    decode_error=f'invalid UTF-8: {e}')


def read_parquet(stream, path: str, batch_rows: int = 4096) -> Iterator[RawRecord]:
  import pyarrow.parquet as pq
  number = 0
  for batch in pq.ParquetFile(stream).iter_batches(batch_size=batch_rows):
    for row in batch.to_pylist():
      number += 1
      yield RawRecord(_row_as_json(row), path, number, row=row)


_READERS = types.MappingProxyType({'jsonl': read_jsonl, 'csv': read_csv, 'parquet': read_parquet})


def read_archive(path: str, declared_format: Optional[str] = None,
                 csv_delimiter: str = ',') -> Iterator[RawRecord]:
  """Yields every record of one archive file, in order."""
  archive_format = format_of(path, declared_format)
  reader = _READERS[archive_format]
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
    # Parquet compresses inside the file; everything else decompresses by
    # extension, in small reads, so the records before a corrupt block are kept.
    compression = CompressionTypes.detect_compression_type(path)
    if archive_format != 'parquet' and compression != CompressionTypes.UNCOMPRESSED:
      stream = CompressedFile(stream, compression, read_size=_READ_SIZE)
    position = 0
    try:
      records = (read_csv(stream, path, csv_delimiter) if archive_format == 'csv'
                 else reader(stream, path))
      for record in records:
        position = record.position
        yield record
      error = _truncation(stream)
    except _DAMAGE_ERRORS as e:
      error = f'{type(e).__name__}: {e}'
  if error is not None:
    # One dead letter (and one warning) names the file; the records before the damage stand.
    message = (f'{path} is damaged after record {position} ({error}); the records '
               'before were read, the rest of the file is lost')
    logging.warning('%s', message)
    yield RawRecord('', path, position + 1, file_error=message)


def _damage_errors():
  errors = [OSError, EOFError, ValueError, zlib.error, lzma.LZMAError]
  try:
    import zstandard
    errors.append(zstandard.ZstdError)
  except ImportError:
    pass
  return tuple(errors)


# What a corrupt compressed stream (or Parquet file: ArrowInvalid is a ValueError) raises.
_DAMAGE_ERRORS = _damage_errors()


def _truncation(stream) -> Optional[str]:
  """Why a compressed stream read to its end is incomplete, or None.

  Beam 2.77's CompressedFile ends quietly where a truncated file ends; its
  decompressor (zlib, bz2, zstandard) knows whether the stream's end marker came.
  """
  decompressor = getattr(stream, '_decompressor', None)
  if decompressor is not None and not getattr(decompressor, 'eof', True):
    return 'compressed data ended before its end-of-stream marker: the file is truncated'
  return None


class _ReadFileFn(beam.DoFn):

  def __init__(self, declared_format: Optional[str], csv_delimiter: str):
    self._declared_format = declared_format
    self._csv_delimiter = csv_delimiter

  def process(self, metadata):
    yield from read_archive(metadata.path, self._declared_format, self._csv_delimiter)


class ReadArchive(beam.PTransform):
  """Reads every file matching a glob as RawRecords, in file order.

  Args:
    pattern: a file glob, local or on any Beam filesystem (gs://, s3://, ...).
    input_format: 'jsonl', 'parquet' or 'csv'; None decides by extension.
    csv_delimiter: the CSV field delimiter.
  """

  def __init__(self, pattern: str, input_format: Optional[str] = None,
               csv_delimiter: str = ','):
    super().__init__()
    self._pattern = pattern
    self._input_format = input_format
    self._csv_delimiter = csv_delimiter

  def expand(self, pbegin):
    return (pbegin
            | 'Match files' >> fileio.MatchFiles(self._pattern)
            | 'Read records' >> beam.ParDo(_ReadFileFn(self._input_format, self._csv_delimiter)))
