"""BigQuery through Beam's own IO: enriched rows appended to a day-partitioned table.

The sink takes WindowRows, writes each row as a table row on a side branch and
passes the WindowRows on, as the other sinks do (transforms.io.cloud_io).
"""
import apache_beam as beam
import pyarrow as pa
import types

from transforms.io.cloud_io import need_gcp_client
from transforms.io.formats import enriched_records
from transforms.io.sinks import EXTRA_TYPES, enriched_schema
from transforms.io.targets import BigQueryTarget


_BIGQUERY_TYPES = types.MappingProxyType({'string': 'STRING', 'float': 'FLOAT', 'double': 'FLOAT',
                   'int32': 'INTEGER', 'timestamp[us, tz=UTC]': 'TIMESTAMP'})


def bigquery_schema(extra_columns=()) -> dict:
  """The BigQuery schema of enriched rows: the Parquet columns, then the derived ones."""
  fields = list(enriched_schema(1)) + [pa.field(name, EXTRA_TYPES[name]) for name in extra_columns]
  out = []
  for field in fields:
    kind, mode = field.type, 'NULLABLE'
    if pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind):
      kind, mode = kind.value_type, 'REPEATED'
    out.append({'name': field.name, 'type': _BIGQUERY_TYPES[str(kind)], 'mode': mode})
  return {'fields': out}


class WriteBigQuery(beam.PTransform):
  """Appends enriched rows to bq://PROJECT.DATASET.TABLE through Beam's WriteToBigQuery.

  The table is created when missing, partitioned by day of event_time. Method:
  ?method=..., by default STREAMING_INSERTS for streaming jobs and FILE_LOADS
  (through --temp_location) for replays; STORAGE_WRITE_API runs in Java.
  A streaming job's FILE_LOADS or STORAGE_WRITE_API commit every
  ?triggering_frequency=S seconds (60).
  Passes WindowRows on.
  """

  def __init__(self, target: BigQueryTarget, model: str, extra_columns=(),
               unbounded: bool = False):
    """Args: unbounded: the job's collection mode is unbounded (a live job)."""
    super().__init__()
    self._table = target.table
    self._method = target.method
    self._every_s = target.triggering_frequency_s
    self._model = model
    self._extra_columns = tuple(extra_columns)
    self._unbounded = unbounded

  def expand(self, windows):
    need_gcp_client('bigquery', f'bq://{self._table}')
    from apache_beam.io.gcp.bigquery import WriteToBigQuery
    method = self._method or ('STREAMING_INSERTS' if self._unbounded else 'FILE_LOADS')
    # A streaming job's load jobs (or Storage Write commits) run this often.
    every_s = (self._every_s if self._unbounded and method != 'STREAMING_INSERTS'
               else None)
    _ = (windows
         | 'As table rows' >> beam.FlatMap(enriched_records, self._model)
         | 'Append rows' >> WriteToBigQuery(
             self._table, schema=bigquery_schema(self._extra_columns), method=method,
             triggering_frequency=every_s,
             create_disposition='CREATE_IF_NEEDED', write_disposition='WRITE_APPEND',
             additional_bq_parameters={'timePartitioning': {'type': 'DAY',
                                                            'field': 'event_time'}}))
    return windows


