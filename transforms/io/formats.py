"""Enriched rows as JSON records, for the message and table sinks (Redis, Pub/Sub, Kafka, BigQuery)."""
import json

from transforms.eventtime import format_micros
from transforms.records import WindowRows


def enriched_records(batch: WindowRows, model: str):
  """Each row of a window firing as a dict of JSON types: the Parquet columns, times as
  RFC 3339 text, the embedding as a list; for message and table sinks."""
  start, end = format_micros(batch.start_us), format_micros(batch.end_us)
  extras = batch.extras or {}
  for n, row in enumerate(batch.rows):
    record = {
        'id': row.event.id,
        'event_time': format_micros(row.event.event_time_us),
        'window_start': start,
        'window_end': end,
        'text': row.event.text,
        'embedding': [float(x) for x in row.embedding],
        'model': row.model.name if row.model else model,
        'source': row.event.source,
        'model_fingerprint': row.model.fingerprint if row.model else None,
        'chunk_count': row.chunk_count,
    }
    for name, values in extras.items():
      record[name] = values[n]
    yield record


def record_json(record: dict) -> str:
  """One enriched record as the JSON the message sinks write."""
  return json.dumps(record, ensure_ascii=False)
